"""A peer's own signed log of its work per epoch: what survives a restart, and what a replaced key makes of it."""

from __future__ import annotations

import logging

import pytest
from hivemind.p2p import P2P
from small_disk import fill, small_disk

from peer.contributions import ContributionLog
from swarm.identity import Identity


def _log_with_epochs(identity: Identity, folder, epochs: range) -> ContributionLog:
    log = ContributionLog(folder, identity)
    for epoch in epochs:
        log.add(epoch, samples=16, compute_s=0.5)
    log.close_all()
    return log


def test_closed_epochs_are_read_back_after_a_restart(tmp_path):
    identity = Identity.load_or_create(tmp_path / "identity")
    _log_with_epochs(identity, tmp_path / "run", range(3))
    reopened = ContributionLog(tmp_path / "run", Identity.load_or_create(tmp_path / "identity"))
    assert sorted(reopened.closed) == [0, 1, 2] and reopened.closed[2].samples == 16
    assert [work.epoch for work in reopened.unpublished(ledger_epoch=0)] == [1, 2]


def test_an_epoch_the_ledger_committed_before_any_record_carried_its_claim_is_named_once(tmp_path):
    """A volunteer paused (a laptop's lid closed) between closing an epoch and publishing its claim found, on
    resume, the ledger past that epoch: the claim was dropped without a word while its log counted the samples."""
    identity = Identity.load_or_create(tmp_path / "identity")
    log = ContributionLog(tmp_path / "run", identity)
    for epoch in range(4):
        log.add(epoch, samples=16, compute_s=0.5)
    log.close_epochs_before(2)
    assert [work.epoch for work in log.unpublished(ledger_epoch=-1)] == [0, 1]  # published in time
    log.close_epochs_before(4)  # epochs 2 and 3 close; the machine sleeps before its next report
    assert log.missed(ledger_epoch=1) == []  # the ledger has not reached them: they still go out
    assert [(work.epoch, work.samples) for work in log.missed(ledger_epoch=2)] == [(2, 16)]
    assert log.missed(ledger_epoch=2) == []  # named once
    assert [work.epoch for work in log.unpublished(ledger_epoch=2)] == [3]
    assert log.missed(ledger_epoch=9) == []  # 3 was carried by a record: whatever became of it, it was not late
    # epochs read back after a restart were published by the session that closed them
    assert ContributionLog(tmp_path / "run", identity).missed(ledger_epoch=9) == []


def test_a_replaced_key_is_said_once_not_once_per_line(tmp_path, caplog):
    """Deleting the key made a new one without a word, then one warning per old line (thousands on a long run), none
    of which said that the key had changed."""
    identity = Identity.load_or_create(tmp_path / "identity")
    _log_with_epochs(identity, tmp_path / "run", range(28))
    identity.p2p_key_path.unlink()
    with caplog.at_level(logging.WARNING):
        replaced = Identity.load_or_create(tmp_path / "identity")
        reopened = ContributionLog(tmp_path / "run", replaced)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "p2p.key is missing from this identity: making a new key, so this peer gets a new peer id" in warnings[0]
    assert "skipping 28 lines (1-28) whose signature does not verify with this identity's key" in warnings[1]
    assert reopened.closed == {}


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def test_lines_signed_by_an_identitys_previous_key_still_count(tmp_path):
    """Identities made before records were signed with the peer id's key had a second key; its lines stay valid."""
    folder = tmp_path / "identity"
    identity = Identity.load_or_create(folder)
    identity.p2p_key_path.unlink()
    (folder / "signing_key.der").write_bytes(identity.signing_key.to_bytes())  # as the old key
    P2P.generate_identity(str(identity.p2p_key_path))  # and hivemind's own p2p.key beside it
    _log_with_epochs(identity, tmp_path / "run", range(3))
    migrated = Identity.load_or_create(folder)
    assert migrated.signing_key.to_bytes() != identity.signing_key.to_bytes()
    log = ContributionLog(tmp_path / "run", migrated)
    assert sorted(log.closed) == [0, 1, 2]
    log.add(3, samples=16, compute_s=0.5)
    log.close_all()
    assert sorted(ContributionLog(tmp_path / "run", Identity.load_or_create(folder)).closed) == [0, 1, 2, 3]


@pytest.mark.parametrize("earlier_log", [False, True], ids=["first-run", "log-of-an-earlier-run"])
def test_a_read_only_identity_folder_is_one_warning_and_claims_are_published_from_memory(tmp_path, caplog,
                                                                                          earlier_log):
    """Keys provisioned read-only (an admin, a container's secret mount) gave a traceback once the peer had joined."""
    def provision(disk):
        identity = Identity.load_or_create(disk / "identity")
        if earlier_log:
            _log_with_epochs(identity, disk / "identity" / "runs" / "r", range(2))

    with small_disk(tmp_path / "disk", read_only=True, before_read_only=provision) as disk:
        identity = Identity.load_or_create(disk / "identity")
        with caplog.at_level(logging.INFO, logger="swarm.peer"):
            log = ContributionLog(disk / "identity" / "runs" / "r", identity)
            for epoch in (2, 3):
                log.add(epoch, samples=16, compute_s=0.5)
                log.close_epochs_before(epoch + 1)
            log.close_all()
        path = disk / "identity" / "runs" / "r" / "contributions.jsonl"
        assert _warnings(caplog) == [
            f"cannot write the contribution log {path} (Read-only file system): this peer's claims are kept in "
            "memory and still published, but those the ledger has not credited when it leaves are lost; make "
            f"{path.parent} writable (or pass --identity with a writable copy of {disk / 'identity'}) to keep a "
            "record on disk"]
        assert [work.epoch for work in log.unpublished(ledger_epoch=-1)] == ([0, 1, 2, 3] if earlier_log else [2, 3])
        assert log.unsaved_epochs == [2, 3]


def test_a_disk_that_fills_mid_run_is_one_warning_and_the_log_catches_up_once_there_is_space(tmp_path, caplog):
    """A full disk killed the volunteer with three chained tracebacks at the next epoch boundary."""
    identity = Identity.load_or_create(tmp_path / "identity")
    with small_disk(tmp_path / "disk", size="64k") as disk:
        path = disk / "runs" / "r" / "contributions.jsonl"
        log = ContributionLog(path.parent, identity)
        for epoch in range(3):
            log.add(epoch, samples=16, compute_s=0.5)
            log.close_epochs_before(epoch + 1)
        filler = fill(disk)
        with caplog.at_level(logging.INFO, logger="swarm.peer"):
            # the log's last page still has room for a line or more: the first epoch that does not fit is found
            epoch = 3
            while not log.unsaved_epochs:
                log.add(epoch, samples=16, compute_s=0.5)
                log.close_epochs_before(epoch + 1)
                epoch += 1
                assert epoch < 40, "the full disk took every line"
            first_unsaved = log.unsaved_epochs[0]
            for more in range(epoch, epoch + 3):
                log.add(more, samples=16, compute_s=0.5)
                log.close_epochs_before(more + 1)
        assert _warnings(caplog) == [
            f"cannot write the contribution log {path} (No space left on device): this peer's claims for epoch "
            f"{first_unsaved} on are kept in memory and still published; free space to keep a record on disk"]
        assert log.unsaved_epochs == list(range(first_unsaved, epoch + 3))
        assert [work.epoch for work in log.unpublished(ledger_epoch=-1)] == list(range(epoch + 3))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="swarm.peer"):  # a torn last line would be skipped here
            on_disk = ContributionLog(path.parent, identity)
        assert sorted(on_disk.closed) == list(range(first_unsaved)) and _warnings(caplog) == []

        filler.unlink()
        with caplog.at_level(logging.INFO, logger="swarm.peer"):
            log.add(epoch + 3, samples=16, compute_s=0.5)
            log.close_all()
        assert f"The contribution log {path} is written again: {epoch + 4 - first_unsaved} epochs kept in memory " \
               "are saved" in caplog.text
        assert log.unsaved_epochs == []
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="swarm.peer"):
            reopened = ContributionLog(path.parent, identity)
        assert sorted(reopened.closed) == list(range(epoch + 4)) and _warnings(caplog) == []
        assert reopened.closed == log.closed


def test_an_epoch_dropped_before_it_closes_is_never_claimed(tmp_path):
    """An epoch whose gradient was not finite gave the swarm nothing: its samples are not claimed, now or later."""
    identity = Identity.load_or_create(tmp_path / "identity")
    log = ContributionLog(tmp_path / "run", identity)
    for epoch in (4, 5):
        log.add(epoch, samples=16, compute_s=0.5)
        log.add(epoch, samples=16, compute_s=0.5)
    assert log.drop(4) == 32 and log.drop(4) == 0
    log.close_epochs_before(6)
    assert [work.epoch for work in log.unpublished(ledger_epoch=-1)] == [5]
    assert sorted(ContributionLog(tmp_path / "run", identity).closed) == [5]
