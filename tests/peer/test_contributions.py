"""A peer's own signed log of its work per epoch: what survives a restart, and what a replaced key makes of it."""

from __future__ import annotations

import logging

from hivemind.p2p import P2P

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


def test_a_replaced_signing_key_is_said_once_not_once_per_line(tmp_path, caplog):
    """Deleting signing_key.der made a new key without a word, then one warning per old line (thousands on a long
    run), none of which said that the key had changed."""
    identity = Identity.load_or_create(tmp_path / "identity")
    P2P.generate_identity(str(identity.p2p_key_path))  # as hivemind leaves it once the peer has run
    _log_with_epochs(identity, tmp_path / "run", range(28))
    (tmp_path / "identity" / "signing_key.der").unlink()
    with caplog.at_level(logging.WARNING):
        replaced = Identity.load_or_create(tmp_path / "identity")
        reopened = ContributionLog(tmp_path / "run", replaced)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "signing_key.der is missing from this identity: making a new signing key" in warnings[0]
    assert "skipping 28 lines (1-28) whose signature does not verify with this identity's signing key" in warnings[1]
    assert reopened.closed == {}
