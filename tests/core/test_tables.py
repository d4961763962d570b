"""The one CSV reading rule (core/tables.py): BOM, CRLF, ';' or ',', trailing separators, blank rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetalplanes.core.tables import TableFormatError, read_table

EXPECTED = [{"image": "a.png", "label": "Other", "patient": "1"}, {"image": "b.png", "label": "Fetal brain", "patient": "2"}]


@pytest.mark.parametrize(
    "text",
    [
        "image,label,patient\na.png,Other,1\nb.png,Fetal brain,2\n",
        "\ufeffimage,label,patient\r\na.png,Other,1\r\nb.png,Fetal brain,2\r\n,,\r\n,,\r\n",  # Excel "CSV UTF-8"
        "image;label;patient \na.png ;Other;1 \n\nb.png;Fetal brain;2;\n;;\n",  # European Excel, trailing spaces
        "image\tlabel\tpatient\na.png\tOther\t1\nb.png\tFetal brain\t2\n",
        "image,label,patient,,\na.png,Other,1,,\nb.png,Fetal brain,2\n",  # trailing separators, short row
    ],
)
def test_dialects_read_alike(tmp_path: Path, text: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode("utf-8"))
    table = read_table(path)
    assert table.columns == ["image", "label", "patient"] and table.rows == EXPECTED
    assert table.column("LABEL") == "label" and table.column("nope") is None


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n1,2,3\n")
    with pytest.raises(TableFormatError, match=r"x\.csv:3: 3 fields, expected at most 2"):
        read_table(path)
    path.write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(TableFormatError, match=r"x\.csv: not UTF-8"):
        read_table(path)
    path.write_text(",,\n\n")
    with pytest.raises(TableFormatError, match="empty file"):
        read_table(path)
