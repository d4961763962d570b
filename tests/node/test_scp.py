"""The Storage SCP and the pipeline in-process on 127.0.0.1, delivering to a pynetdicom storage SCP
standing in for the PACS (the real-Orthanc round trips are in test_roundtrip.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from fetalplanes.core.errors import UsageError
from fetalplanes.node.forward import parse_forward, parse_stow
from fetalplanes.node.journal import Journal
from fetalplanes.node.orthanc import free_port
from fetalplanes.node.pipeline import Pipeline
from fetalplanes.node.scp import STORAGE_CLASSES, StorageSCP
from fetalplanes.node.sr import read_sr


class FakePacs:
    """A storage SCP on 127.0.0.1 that keeps what it receives (SR class only)."""

    def __init__(self, port: int) -> None:
        self.port, self.received, self.server = port, [], None

    def start(self) -> None:
        ae = AE(ae_title="PACS")
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.88.34", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

        def store(event):  # noqa: ANN001, ANN202
            self.received.append(event.dataset)
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()


def _send(port: int, paths: list[Path]) -> list[tuple[int, str]]:
    ae = AE(ae_title="SCANNER")
    dss = [pydicom.dcmread(p) for p in paths]
    for uid, ts in {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in dss}:
        ae.add_requested_context(uid, ts)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="FETALPLANES")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        out = []
        for ds in dss:
            s = assoc.send_c_store(ds)
            out.append((int(s.Status), str(s.get("ErrorComment", ""))))
        return out
    finally:
        assoc.release()


def _wait(pred, timeout: float = 30) -> bool:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.1)
    return bool(pred())


def _node(predictor, tmp_path: Path):  # noqa: ANN202 - (FakePacs, Journal, Pipeline, StorageSCP), started but the PACS
    """A node (journal, pipeline, SCP) forwarding to a fake PACS on loopback; the PACS is not started."""
    pacs = FakePacs(free_port())
    journal = Journal(tmp_path / "journal")
    pipeline = Pipeline(predictor, journal, [parse_forward(f"PACS@127.0.0.1:{pacs.port}")], backoff_s=0.2)
    scp = StorageSCP(journal, pipeline, port=free_port())
    pipeline.start()
    scp.start()
    return pacs, journal, pipeline, scp


def test_receive_classify_queue_while_pacs_down_then_deliver_once(stub_predictor, dicom_us: Path, tmp_path: Path) -> None:
    bad = pydicom.dcmread(dicom_us / "US1_UNCR.dcm")
    bad.PixelData = bad.PixelData[:100]
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    bad.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    pacs, journal, pipeline, scp = _node(stub_predictor, tmp_path)
    try:
        files = [dicom_us / "US1_UNCR.dcm", dicom_us / "dbdicom_0020.DCM", tmp_path / "bad.dcm", dicom_us / "US1_UNCR.dcm"]
        statuses = _send(scp.port, files)
        assert [s for s, _ in statuses] == [0, 0, 0xC000, 0]  # the re-sent instance is acknowledged again
        assert "pixel data" in statuses[2][1]
        assert _wait(lambda: journal.counts()["processed"] == 2)
        assert _wait(lambda: all(journal.delivery(u)["attempts"] >= 1 for u in journal.uids()))
        assert journal.counts()["delivered"] == 0  # the PACS is down: queued, not lost
        pacs.start()
        assert _wait(lambda: journal.counts()["delivered"] == 2)
    finally:
        scp.stop()
        pipeline.stop()
        pacs.stop()
    assert scp.counts == {"received": 2, "duplicate": 1, "refused": 1}
    refs = sorted(read_sr(ds)[0]["referenced_sop"] for ds in pacs.received)
    assert refs == sorted(journal.uids())  # one SR per instance


def test_a_resent_failed_instance_is_processed_again_and_a_resent_done_one_is_not(
        stub_predictor, dicom_us: Path, tmp_path: Path) -> None:
    """Finding: a re-sent instance whose first copy failed was acknowledged and never classified."""
    real_predict, calls = stub_predictor.predict, []

    def predict_failing_first(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated crash of the first classification")
        return real_predict(*args, **kwargs)

    stub_predictor.predict = predict_failing_first
    uid = str(pydicom.dcmread(dicom_us / "US1_UNCR.dcm", stop_before_pixels=True).SOPInstanceUID)
    pacs, journal, pipeline, scp = _node(stub_predictor, tmp_path)
    pacs.start()
    try:
        assert _send(scp.port, [dicom_us / "US1_UNCR.dcm"]) == [(0, "")]
        assert _wait(lambda: journal.state(uid) == "failed")
        assert _send(scp.port, [dicom_us / "US1_UNCR.dcm"]) == [(0, "")]  # re-sent: classified again
        assert _wait(lambda: journal.state(uid) == "delivered")
        assert _send(scp.port, [dicom_us / "US1_UNCR.dcm"]) == [(0, "")]  # re-sent once done: acknowledged only
        time.sleep(1.5)  # give a (wrong) reprocessing time to happen
    finally:
        scp.stop()
        pipeline.stop()
        pacs.stop()
    assert len(calls) == 2 and journal.state(uid) == "delivered"
    assert "simulated crash" in journal.info(uid)["previous_failures"][0]
    assert len(pacs.received) == 1 and read_sr(pacs.received[0])[0]["referenced_sop"] == uid
    assert scp.counts == {"received": 2, "duplicate": 1, "refused": 0}


def test_a_restarted_pipeline_resumes_the_journal(stub_predictor, dicom_us: Path, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    data = (dicom_us / "OBXXXX1A_rle.dcm").read_bytes()
    uid = str(pydicom.dcmread(dicom_us / "OBXXXX1A_rle.dcm", stop_before_pixels=True).SOPInstanceUID)
    journal.receive(uid, data, {})  # as if the node had died right after acknowledging
    pacs = FakePacs(free_port())
    pacs.start()
    pipeline = Pipeline(stub_predictor, Journal(tmp_path / "journal"), [parse_forward(f"PACS@127.0.0.1:{pacs.port}")])
    pipeline.start()
    try:
        assert _wait(lambda: journal.state(uid) == "delivered")
    finally:
        pipeline.stop()
        pacs.stop()
    assert len(pacs.received) == 1


def test_other_storage_classes_are_refused_at_association(tmp_path: Path) -> None:
    scp = StorageSCP(Journal(tmp_path), None, port=free_port())
    scp.start()
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.1.2.4.50")  # US, JPEG Baseline
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="FETALPLANES")
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        assoc.release()
    finally:
        scp.stop()
    assert accepted == {"1.2.840.10008.5.1.4.1.1.6.1"}
    assert "1.2.840.10008.5.1.4.1.1.3.1" in STORAGE_CLASSES


@pytest.mark.parametrize("text", ["ORTHANC", "ORTHANC@host", "A@h:99999", "WAYTOOLONGAETITLE17@h:1"])
def test_forward_targets_are_checked(text: str) -> None:
    with pytest.raises(UsageError, match="AET@host:port"):
        parse_forward(text)
    with pytest.raises(UsageError, match="http"):
        parse_stow("ftp://x")
    assert parse_forward("PACS@10.0.0.5:104").name == "PACS@10.0.0.5:104"


def test_sop_class_mismatch_and_full_disk_statuses(dicom_us: Path, tmp_path: Path, monkeypatch) -> None:
    """0xA900 when the data set's SOP class is not its context's; 0xA700 when the journal cannot write."""
    from types import SimpleNamespace

    from fetalplanes.node.journal import JournalError

    data = (dicom_us / "US1_UNCR.dcm").read_bytes()

    def event(context_class: str) -> SimpleNamespace:
        return SimpleNamespace(request=SimpleNamespace(AffectedSOPInstanceUID="1.2"),
                               assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="US1")),
                               context=SimpleNamespace(abstract_syntax=context_class),
                               encoded_dataset=lambda include_meta=True: data)

    journal = Journal(tmp_path)
    scp = StorageSCP(journal, None)
    status = scp.handle_store(event("1.2.840.10008.5.1.4.1.1.7"))  # SC context, US data set
    assert status.Status == 0xA900 and journal.uids() == []

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise JournalError("No space left on device")

    monkeypatch.setattr(journal, "receive", full)
    assert scp.handle_store(event("1.2.840.10008.5.1.4.1.1.6.1")).Status == 0xA700


def test_retired_us_storage_classes_are_stored(dicom_us: Path, tmp_path: Path) -> None:
    """Old scanners still send the retired US Image (1.6) and US Multi-frame (1.3) classes; the node
    accepts them at association, so it must also store them (pynetdicom alone answered no status)."""
    palette = dicom_us / "color-pl.dcm"  # a real US image in the retired class
    assert str(pydicom.dcmread(palette, stop_before_pixels=True).SOPClassUID) == "1.2.840.10008.5.1.4.1.1.6"
    cine = pydicom.dcmread(dicom_us / "OBXXXX1A_2frame.dcm")
    cine.SOPClassUID = cine.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3"
    cine.SOPInstanceUID = cine.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.8"
    cine.save_as(tmp_path / "retired_cine.dcm", enforce_file_format=True)
    journal = Journal(tmp_path / "journal")
    scp = StorageSCP(journal, None, port=free_port())
    scp.start()
    try:
        statuses = _send(scp.port, [palette, tmp_path / "retired_cine.dcm"])
    finally:
        scp.stop()
    assert statuses == [(0, ""), (0, "")]
    assert scp.counts["received"] == 2
