"""The run's sample count, as the dashboard, /metrics (a counter) and the summary show it."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.coordinator import Coordinator, _previous_samples_total
from swarm import records
from swarm.ledger import Ledger, LedgerEntry


def _row(peer_id: str, samples_total: int, time: float) -> records.PeerMetrics:
    return records.PeerMetrics(
        peer_id=peer_id, name="ada", team="t", epoch=3, samples_total=samples_total, samples_per_second=40.0, loss=2.5,
        averaged_rounds=2, solo_rounds=0, last_group_size=2, device="cpu", version="0.1.0", time=time,
        client_mode=False, addresses=[])


def _counting_coordinator(ledger: Ledger) -> Coordinator:
    coordinator = Coordinator.__new__(Coordinator)  # the counting alone: no DHT, data or model
    coordinator.ledger = ledger
    coordinator._samples_at_launch = sum(peer.claimed_samples for peer in ledger.totals.peers.values())
    coordinator._samples_seen = coordinator._samples_floor = coordinator._samples_high = 0
    coordinator._earlier = {}
    return coordinator


def _entry(epoch: int, peer: str, samples: int) -> LedgerEntry:
    return LedgerEntry(run_id="r", epoch=epoch, peer_id=peer, name=peer[2:].lower(), team="t", claimed_samples=samples,
                       granted_samples=samples, reason="", compute_s=3.0, timestamp=1.7e9)


def test_a_restarted_peers_new_count_adds_to_the_total_instead_of_lowering_it(tmp_path):
    """The total summed the peers' own counts, which restart at 0 with their process: it fell from 1360 to 768 when
    a volunteer restarted, and Prometheus read the fall as a counter reset, a burst of 768 samples."""
    coordinator = _counting_coordinator(Ledger.open(tmp_path / "ledger", Ed25519PrivateKey.generate(), run_id="r"))
    rows, seen = {}, []
    for peer, samples, time in [("QmAda", 100, 1.0), ("QmBob", 50, 1.0), ("QmAda", 400, 2.0), ("QmBob", 90, 2.0),
                                ("QmAda", 16, 3.0),  # ada restarted: 16 new samples
                                ("QmAda", 64, 4.0)]:
        row = _row(peer, samples, time)
        coordinator._count_new_samples(rows.get(peer), row)
        rows[peer] = row
        seen.append(coordinator.samples_total())
    assert seen == [100, 150, 450, 490, 506, 554]


def test_a_relaunched_coordinator_counts_on_from_the_ledgers_claims(tmp_path):
    key = Ed25519PrivateKey.generate()
    ledger = Ledger.open(tmp_path / "ledger", key, run_id="r")
    ledger.commit_epoch([LedgerEntry(run_id="r", epoch=0, peer_id="QmAda", name="ada", team="t", claimed_samples=256,
                                     granted_samples=256, reason="", compute_s=3.0, timestamp=1.7e9)])
    coordinator = _counting_coordinator(ledger)
    coordinator._count_new_samples(None, _row("QmAda", 300, 1.0))  # its first 256 are the ledger's claim already
    assert coordinator.samples_total() == 256
    coordinator._count_new_samples(None, _row("QmNew", 40, 1.0))  # a peer the ledger has never credited
    assert coordinator.samples_total() == 296


def test_a_relaunch_never_lowers_the_total_and_catches_up_with_what_the_ledger_credits_of_the_outage(tmp_path):
    """A long run's relaunch lowered the total (60,720 to 59,984: a counter reset, to Prometheus, and a spike of
    rate()), and the work trained while the coordinator was down never came back into it: it ended 3% below the
    ledger."""
    ledger = Ledger.open(tmp_path / "ledger", Ed25519PrivateKey.generate(), run_id="r")
    ledger.commit_epoch([_entry(0, "QmAda", 256)])
    (tmp_path / "status.json").write_text('{"samples_total": 300}')  # the last launch had seen 44 more, uncredited
    coordinator = _counting_coordinator(ledger)
    coordinator._samples_floor = _previous_samples_total(tmp_path / "status.json")
    assert coordinator.samples_total() == 300
    coordinator._count_new_samples(None, _row("QmAda", 400, 1.0))  # credited already: its work so far is in the ledger
    assert coordinator.samples_total() == 300
    for epoch in (1, 2, 3):  # the epochs trained meanwhile are credited from the peers' claims
        ledger.commit_epoch([_entry(epoch, "QmAda", 256)])
    assert coordinator.samples_total() == 1024
    coordinator._count_new_samples(_row("QmAda", 400, 1.0), _row("QmAda", 500, 2.0))
    assert coordinator.samples_total() == 1024  # 256 + 100 reported since this launch: the ledger says more
    ledger.commit_epoch([_entry(4, "QmAda", 256)])
    assert coordinator.samples_total() == 1280


def test_a_damaged_or_missing_status_file_gives_no_floor(tmp_path):
    assert _previous_samples_total(tmp_path / "missing.json") == 0
    for text in ("{", "[1, 2]", '{"samples_total": -5}', '{"samples_total": true}', '{"samples_total": "9"}'):
        (tmp_path / "status.json").write_text(text)
        assert _previous_samples_total(tmp_path / "status.json") == 0, text


def test_a_peers_counts_over_its_restarts_are_its_own(tmp_path):
    """The summary gave a volunteer the samples of its last process: 5,856 where the ledger had 47,072."""
    coordinator = _counting_coordinator(Ledger.open(tmp_path / "ledger", Ed25519PrivateKey.generate(), run_id="r"))
    first, second = _row("QmAda", 400, 1.0), _row("QmAda", 30, 2.0)  # ada restarted in between
    coordinator._count_new_samples(None, first)
    coordinator._count_new_samples(first, second)
    assert coordinator._run_counts(second) == (430, 4, 0)  # samples, averaged rounds (2 + 2), solo rounds


def test_the_dashboards_history_keeps_the_whole_run_coarser_where_older_and_every_validation_point():
    """It kept the last 2,000 epochs only: a fast run's first hours vanished from the loss curve."""
    from coordinator.coordinator import thinned_history

    rows = []
    for epoch in range(10_000):
        rows.append(dict(epoch=epoch, time=float(epoch), val_loss=1.0 if epoch % 250 == 0 else None))
        rows = thinned_history(rows, keep=500)
    epochs = [row["epoch"] for row in rows]
    assert len(rows) <= 500 and epochs == sorted(epochs)
    assert epochs[0] == 0 and epochs[-1] == 9_999
    assert epochs[-100:] == list(range(9_900, 10_000)), "the newest epochs keep every row"
    assert [row["epoch"] for row in rows if row["val_loss"] is not None] == list(range(0, 10_000, 250))
    spans = [later - earlier for earlier, later in zip(epochs, epochs[1:])]
    assert max(spans[:50]) > max(spans[-50:]) == 1  # coarser at the start
    assert thinned_history([dict(epoch=e, time=0.0, val_loss=1.0) for e in range(10)], keep=4) == [
        dict(epoch=e, time=0.0, val_loss=1.0) for e in range(6, 10)]


def test_peers_that_train_apart_in_short_epochs_are_named_once_with_a_batch_that_fits(caplog):
    """A newcomer's recipe made 0.1 s epochs: two volunteers trained as separate models (no round with two peers)
    and nothing said why. The coordinator now says it once, from what the peers report, with a target_batch_size
    for ~10 s epochs; peers that average their short epochs (1.4 s against a 2 s window, seen) are not named."""
    import logging
    import time

    from hivemind.utils import get_dht_time

    from swarm.recipe import Recipe

    coordinator = Coordinator.__new__(Coordinator)  # the check alone: no DHT, data or model
    coordinator.recipe = Recipe(run={"id": "r"}, collaboration={"target_batch_size": 64, "matchmaking_time_s": 2.0})
    coordinator.view = type("View", (), {"samples_per_second": 640.0, "peers": {}})()
    coordinator._said_short_epochs, coordinator._rounds_seen = False, {}
    now = time.time()
    # a long wait for the first volunteer (no one alive) is not an epoch's length; then 0.1 s epochs
    coordinator.epoch_history = [dict(epoch=0, time=now - 50, alive_peers=0)] + [
        dict(epoch=epoch, time=now - 3 + 0.1 * epoch, alive_peers=2) for epoch in range(1, 30)]

    def report(averaged: int, solo: int) -> None:
        for peer in ("12D3KooWada", "12D3KooWbob"):
            row = _row(peer, 640, get_dht_time())
            coordinator.view.peers[peer] = row.copy(update=dict(averaged_rounds=averaged, solo_rounds=solo))
        coordinator._check_epoch_length()

    with caplog.at_level(logging.WARNING, logger="swarm.coordinator"):
        report(0, 0)
        report(10, 0)  # 20 rounds, every one averaged: short epochs, but the peers keep in step
        report(11, 9)  # 20 more, 18 of them alone
        report(11, 15)  # said once
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(
        "18 of the last 20 rounds of 2 peers ran alone: epochs last 0.1 s, less than collaboration.matchmaking_time_s "
        "(2 s), too short for peers to keep in step")
    assert "Raise collaboration.target_batch_size (now 64) to about 6400, an epoch of ~10 s at the swarm's 640 " \
           "samples/s" in caplog.records[0].getMessage()
