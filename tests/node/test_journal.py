"""The journal: durable receipt, idempotence by SOP Instance UID, states, restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetalplanes.node.journal import Journal


def test_receive_is_durable_and_idempotent(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    assert j.receive("1.2.3", b"DICOM", {"calling_aet": "US1"}) is True
    assert j.receive("1.2.3", b"OTHER", {}) is False  # a re-sent instance is not journaled twice
    assert j.instance_file("1.2.3").read_bytes() == b"DICOM"
    assert j.state("1.2.3") == "received" and j.info("1.2.3")["calling_aet"] == "US1"
    assert j.state("9.9") is None


def test_states_follow_the_steps_and_survive_a_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    for uid in ("1.1", "1.2", "1.3"):
        j.receive(uid, b"x", {})
    j.save_results("1.1", {"sr.dcm": b"SR"}, {"sr": "5.5"})
    j.save_results("1.2", {"sr.dcm": b"SR"}, {"sr": "5.6"})
    j.mark_delivered("1.2", ["PACS"])
    j.mark_failed("1.3", "instance 1.3: no frame decodes")
    j.record_attempt("1.1", [], "PACS: down", next_try=123.0)
    (j.path("1.1") / ".instance.dcm.abc.tmp").write_bytes(b"half")  # a write cut by a crash
    again = Journal(tmp_path)
    assert [again.state(u) for u in ("1.1", "1.2", "1.3")] == ["processed", "delivered", "failed"]
    assert again.counts() == {"received": 0, "processed": 1, "delivered": 1, "failed": 1}
    assert again.delivery("1.1")["attempts"] == 1 and again.delivery("1.1")["next_try"] == 123.0
    assert [p.read_bytes() for p in again.results("1.1")] == [b"SR"]
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("uid", ["../etc", "1.2/3", "", "a.b", "1." * 40])
def test_only_uids_become_paths(tmp_path: Path, uid: str) -> None:
    with pytest.raises(ValueError, match="not a DICOM UID"):
        Journal(tmp_path).receive(uid, b"x", {})


def test_a_resent_failed_instance_is_journaled_again_and_the_failure_kept(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.receive("1.4", b"FIRST", {"calling_aet": "US1"})
    j.save_results("1.4", {"sr.dcm": b"SR"}, {"sr": "5.7"})  # an outcome that then failed (a bug after saving)
    j.mark_failed("1.4", "instance 1.4: no frame decodes")
    assert j.receive("1.4", b"SECOND", {"calling_aet": "US1"}) is True  # re-sent: to be classified again
    assert j.state("1.4") == "received" and j.uids("received") == ["1.4"]
    assert j.instance_file("1.4").read_bytes() == b"SECOND"
    assert j.info("1.4")["previous_failures"] == ["instance 1.4: no frame decodes"]
    assert j.outcome("1.4") == {} and j.failure("1.4") is None
    j.mark_failed("1.4", "instance 1.4: again")
    assert j.receive("1.4", b"THIRD", {}) is True
    assert j.info("1.4")["previous_failures"] == ["instance 1.4: no frame decodes", "instance 1.4: again"]


@pytest.mark.parametrize("step", ["received", "processed", "delivered"])
def test_a_resent_instance_that_did_not_fail_is_not_journaled_twice(tmp_path: Path, step: str) -> None:
    j = Journal(tmp_path)
    j.receive("1.5", b"FIRST", {})
    if step != "received":
        j.save_results("1.5", {"sr.dcm": b"SR"}, {"sr": "5.8"})
    if step == "delivered":
        j.mark_delivered("1.5", ["PACS"])
    assert j.receive("1.5", b"SECOND", {}) is False
    assert j.state("1.5") == step and j.instance_file("1.5").read_bytes() == b"FIRST"
