"""fit records, inside the model file, which images (content hash + path) and patients each split holds."""

from __future__ import annotations

import json
from pathlib import Path

from fetalplanes.data.provenance import ImageRecord, image_id
from fetalplanes.data.sources import load_source


def test_record_is_in_the_model_file(tiny_checkpoint: Path, synth_data: Path):
    from fetalplanes.runtime import read_spec

    spec = read_spec(tiny_checkpoint)
    splits = json.loads((tiny_checkpoint.parent.parent / "splits.json").read_text())
    rec = spec.training["images"]
    assert {p: rec[p]["n"] for p in ("train", "val", "test")} == {p: len(splits[p]) for p in ("train", "val", "test")}
    assert rec["test"]["n"] > 0 and rec["val"]["n"] > 0
    # Every image of synth_data is in exactly the split splits.json names (by file name).
    decoded = ImageRecord.from_training(spec.training)
    for s in load_source(synth_data).samples:
        where = [p for p in ("train", "val", "test") if image_id(s.path) in decoded.parts[p].ids]
        assert where == [p for p in ("train", "val", "test") if s.path.name in splits[p]]
