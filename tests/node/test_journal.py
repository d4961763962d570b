"""The journal: durable receipt, idempotence by SOP Instance UID, states, restart."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from fetalplanes.node.journal import Journal, JournalError, JournalInUse

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402


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
    j.close()  # the writer is gone (a crash drops its lock too: see the SIGKILL test below)
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


@pytest.mark.skipif(sys.platform == "win32", reason="the writer lock is flock (POSIX)")
def test_one_process_writes_a_journal_and_readers_delete_nothing_under_it(tmp_path: Path) -> None:
    """A second writer is refused in one line naming the folder and the holder's PID; a reader
    beside the live writer neither deletes its in-flight write nor can write; once the writer
    dies (SIGKILL: the kernel drops its lock), the next writer takes over and cleans up."""
    live = tmp_path / "instances" / "1.9" / ".received.json.live.tmp"
    holder = harness.hold_journal(tmp_path)
    try:
        with pytest.raises(JournalInUse, match=rf"^{tmp_path}: the journal is held by another process \(PID {holder.pid}"):
            Journal(tmp_path)
        reader = Journal(tmp_path, writer=False)
        assert reader.uids() == [] and live.read_bytes() == b"in flight"  # nothing of the writer's deleted
        with pytest.raises(JournalError, match="read-only"):
            reader.receive("1.10", b"x", {})
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with Journal(tmp_path) as j:
        assert not live.exists()  # the dead writer's half-write is never trusted
        assert j.receive("1.10", b"x", {}) is True
    Journal(tmp_path).close()  # closed: free to open again


def test_a_second_journal_in_the_same_process_shares_the_hold(tmp_path: Path) -> None:
    """The node's threads and a pull in one process share the writer lock; the second Journal
    does not clean up under the first (its temporary file is a write in progress)."""
    first = Journal(tmp_path)
    first.receive("2.1", b"x", {})
    in_flight = first.path("2.1") / ".processed.json.x.tmp"
    in_flight.write_bytes(b"half")
    second = Journal(tmp_path)
    assert in_flight.exists() and second.state("2.1") == "received"
    second.close()
    first.mark_failed("2.1", "still writable: the first share is held")
    first.close()
    with pytest.raises(JournalError, match="closed"):
        first.mark_failed("2.1", "closed")


def test_a_reader_of_a_journal_not_yet_created_sees_nothing(tmp_path: Path) -> None:
    assert Journal(tmp_path / "none", writer=False).uids() == [] and not (tmp_path / "none").exists()
