"""Granting rules: claims stay apart from grants, and each refusal says why in the ledger entry."""

from __future__ import annotations

from coordinator.accounting import SEEN_SLACK_S, Accounting
from swarm.recipe import CreditConfig
from swarm.records import ContributionRecord, EpochWork


def record(peer: str, *epochs: tuple[int, int, float], name: str | None = None, team: str = "t") -> ContributionRecord:
    return ContributionRecord(peer_id=peer, name=name or peer, team=team, version="test", time=0.0,
                              epochs=[EpochWork(epoch=e, samples=s, micro_steps=max(1, s // 16), compute_s=c)
                                      for e, s, c in epochs])


def watched(accounting: Accounting, epoch: int, start: float, samples: int = 256, rate: float = 0.0, *peers: str):
    accounting.observe_epoch(epoch, samples, rate, now=start)
    accounting.observe_epoch(epoch, samples, rate, now=start + 4)
    for peer in peers:
        accounting.observe_peer(peer, now=start + 2)


def test_honest_claims_of_peers_seen_in_the_epoch_are_granted_in_full():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256)
    watched(accounting, 3, 1000.0, 256, 0.0, "a", "b")
    accounting.add_claims(record("a", (3, 128, 2.0)))
    accounting.add_claims(record("b", (3, 144, 2.5)))
    [(epoch, entries)] = accounting.finalize(up_to_epoch=3, now=1010.0)
    assert epoch == 3
    assert [(e.peer_id, e.claimed_samples, e.granted_samples, e.reason) for e in entries] == [
        ("a", 128, 128, ""), ("b", 144, 144, "")]


def test_a_peer_never_seen_during_a_watched_epoch_is_not_granted():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256)
    watched(accounting, 3, 1000.0, 256, 0.0, "a")
    accounting.observe_peer("ghost", now=1000.0 + 4 + SEEN_SLACK_S + 60)  # seen, but long after the epoch
    accounting.add_claims(record("ghost", (3, 64, 1.0)))
    [(_, [entry])] = accounting.finalize(3, now=2000.0)
    assert entry.claimed_samples == 64 and entry.granted_samples == 0
    assert "not seen" in entry.reason


def test_a_claim_faster_than_the_credit_bound_is_refused_and_says_why():
    accounting = Accounting(run_id="r", credit=CreditConfig(max_samples_per_second=100), target_batch_size=256)
    watched(accounting, 1, 1000.0, 256, 0.0, "fast")
    accounting.add_claims(record("fast", (1, 200, 0.5)))  # 400 samples/s
    [(_, [entry])] = accounting.finalize(1, now=1010.0)
    assert entry.granted_samples == 0 and "max_samples_per_second" in entry.reason


def work(peer: str, epoch: int, samples: int, micro_batch: int, compute_s: float = 2.0) -> ContributionRecord:
    """A claim made of `samples / micro_batch` micro-steps (rounded up: the last one may be short)."""
    return ContributionRecord(peer_id=peer, name=peer, team="t", version="test", time=0.0, epochs=[
        EpochWork(epoch=epoch, samples=samples, micro_steps=-(-samples // micro_batch), compute_s=compute_s)])


def test_a_lone_peer_that_overshoots_the_target_by_one_micro_batch_is_credited_in_full():
    # seen in a real run: a peer training alone closes epochs of 128 at 144, 160 or 192 (micro-batch 16, 32, 64),
    # in epochs the coordinator never watched (right after a restart, or 3.7 epochs/s against a look every 2 s)
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=128, matchmaking_time_s=2.0)
    for epoch, (samples, micro_batch) in enumerate([(144, 16), (160, 32), (192, 64)]):
        accounting.add_claims(work("alone", epoch, samples, micro_batch))
    committed = accounting.finalize(2, now=1000.0)
    assert [(e.claimed_samples, e.granted_samples, e.reason) for _, [e] in committed] == [
        (144, 144, ""), (160, 160, ""), (192, 192, "")]


def test_a_claim_above_what_the_swarm_can_have_accumulated_is_scaled_to_it_not_refused():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=100, matchmaking_time_s=1.0)
    watched(accounting, 2, 1000.0, 100, 0.0, "greedy")
    accounting.add_claims(work("greedy", 2, 10_000, 16, compute_s=100.0))
    bound = accounting.swarm_total(2)
    assert bound == int((100 + 16) * 1.1)  # the target, one micro-batch of overshoot, the sampling margin
    [(_, [entry])] = accounting.finalize(2, now=1010.0)
    assert entry.claimed_samples == 10_000 and entry.granted_samples == bound
    assert entry.reason.startswith("scaled by 0.01: claimed 10000 samples, more than the whole swarm")


def test_an_inflated_claim_only_gets_what_the_honest_claims_leave_of_the_bound():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=100, matchmaking_time_s=1.0)
    watched(accounting, 2, 1000.0, 100, 0.0, "a", "b", "greedy")
    accounting.add_claims(work("a", 2, 48, 16))
    accounting.add_claims(work("b", 2, 64, 16))
    accounting.add_claims(work("greedy", 2, 10_000, 16, compute_s=100.0))
    [(_, entries)] = accounting.finalize(2, now=1010.0)
    bound = int((100 + 3 * 16) * 1.1)
    assert {e.peer_id: e.granted_samples for e in entries} == {"a": 48, "b": 64, "greedy": bound - 48 - 64}
    assert [e.reason for e in entries if e.peer_id != "greedy"] == ["", ""]


def test_claims_that_together_exceed_the_bound_are_scaled_in_proportion():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=100, matchmaking_time_s=1.0)
    watched(accounting, 3, 1010.0, 100, 0.0, "a", "b")
    accounting.add_claims(work("a", 3, 90, 18))
    accounting.add_claims(work("b", 3, 90, 18))
    total = accounting.swarm_total(3)
    assert total == int((100 + 2 * 18) * 1.1)  # no measured rate: the target, two micro-batches, the margin
    [(_, entries)] = accounting.finalize(3, now=1020.0)
    assert sum(e.granted_samples for e in entries) <= total
    assert all(e.granted_samples == 74 and e.reason.startswith("scaled by 0.83") for e in entries)


def test_a_claimed_micro_batch_widens_the_bound_only_up_to_the_recipes_largest():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=128, matchmaking_time_s=2.0,
                            max_micro_batch_size=64)
    accounting.add_claims(work("one-big-step", 0, 1_000, 1_000))  # "one micro-batch of 1000"
    [(_, [entry])] = accounting.finalize(0, now=1000.0)
    assert entry.granted_samples == int((128 + 64) * 1.1)


def test_an_unwatched_epoch_takes_the_rate_of_the_nearest_watched_epochs_however_far():
    # a fast swarm: the coordinator saw epochs 0 and 8 only; epoch 4 overshot at the swarm's measured rate
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256, matchmaking_time_s=1.5)
    watched(accounting, 0, 1000.0, 256, 40.0, "a", "b")
    watched(accounting, 8, 1010.0, 256, 40.0, "a", "b")
    accounting.add_claims(work("a", 4, 256, 16))
    accounting.add_claims(work("b", 4, 144, 16))
    [(_, entries)] = accounting.finalize(4, now=1030.0)
    assert [e.granted_samples for e in entries] == [256, 144]


def test_the_bound_allows_what_the_swarm_computes_while_peers_notice_the_epoch_ended():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256, matchmaking_time_s=1.5)
    watched(accounting, 0, 1000.0, 250, 40.0, "a", "b")  # measured in e2e runs: epochs of 256 closed at 384-400
    accounting.add_claims(record("a", (0, 256, 3.0)))
    accounting.add_claims(record("b", (0, 144, 3.0)))
    [(_, entries)] = accounting.finalize(0, now=1010.0)
    assert [e.granted_samples for e in entries] == [256, 144]


def test_epochs_the_coordinator_missed_are_credited_from_the_signed_claims_alone():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256)
    watched(accounting, 1, 1000.0, 256, 50.0, "a")
    # epochs 2-4 happened while the coordinator was down: no window, no sightings
    accounting.add_claims(record("a", (2, 200, 2.0), (3, 210, 2.0), (4, 190, 2.0)))
    committed = accounting.finalize(4, now=3000.0)
    assert [epoch for epoch, _ in committed] == [2, 3, 4]
    assert all(entries[0].granted_samples == entries[0].claimed_samples for _, entries in committed)


def test_committed_epochs_are_final_and_the_newest_claim_per_epoch_wins():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256)
    watched(accounting, 5, 1000.0, 256, 0.0, "a")
    accounting.add_claims(record("a", (5, 10, 1.0)))
    accounting.add_claims(record("a", (5, 64, 1.0)))  # re-published with more work done in the epoch
    [(_, [entry])] = accounting.finalize(5, now=1010.0)
    assert entry.claimed_samples == 64
    accounting.add_claims(record("a", (5, 999, 1.0)))  # a claim for a committed epoch is ignored
    assert accounting.finalize(6, now=1020.0) == []
    assert accounting.committed_epoch == 6


def test_entries_are_sorted_by_peer_as_the_ledger_requires():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256)
    watched(accounting, 0, 1000.0, 256, 0.0, "zed", "amy", "kim")
    for peer in ("zed", "amy", "kim"):
        accounting.add_claims(record(peer, (0, 50, 1.0)))
    [(_, entries)] = accounting.finalize(0, now=1010.0)
    assert [e.peer_id for e in entries] == ["amy", "kim", "zed"]


def test_a_peer_that_trained_in_an_epoch_is_awaited_until_its_claim_arrives():
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256)
    watched(accounting, 7, 1000.0, 256, 0.0, "a", "b")
    for peer in ("a", "b", "a"):
        accounting.observe_contributor(7, peer)
    accounting.add_claims(record("a", (7, 128, 2.0)))
    assert accounting.unclaimed(7) == {"b"} and accounting.unclaimed(8) == set()
    accounting.add_claims(record("b", (7, 128, 2.0)))
    assert accounting.unclaimed(7) == set()
    accounting.finalize(7, now=1100.0)
    accounting.observe_contributor(7, "late")  # a progress record read after the epoch was committed
    assert accounting.contributors == {} and accounting.unclaimed(7) == set()


def test_what_no_later_grant_reads_is_forgotten_as_epochs_are_committed():
    """The windows of every epoch and every sighting were kept for the whole run (1,000 epochs a day and more)."""
    accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256)
    for epoch in range(20):
        watched(accounting, epoch, 1000.0 + 10 * epoch, 256, 50.0, "a")
    accounting.observe_peer("gone", now=1000.0)  # seen only at the start
    accounting.add_claims(record("a", *[(epoch, 128, 2.0) for epoch in range(20)]))
    accounting.finalize(14, now=1300.0)
    assert sorted(accounting.windows) == [12, 13, 14, 15, 16, 17, 18, 19]  # the 3 nearest committed ones stay
    assert "gone" not in accounting.sightings and "a" in accounting.sightings
    # an epoch nobody watched still takes the rate of the nearest watched ones, and is granted as before
    accounting.add_claims(record("a", (25, 128, 2.0)))
    [(_, [entry])] = accounting.finalize(25, now=1400.0)[-1:]
    assert entry.epoch == 25 and entry.granted_samples == 128


def test_the_ledger_holds_an_epoch_for_a_claim_from_a_peer_that_trained_in_it_for_at_most_the_grace():
    """A volunteer killed as an epoch closed, before its claim went out, restarted 31 s later with the claim in its
    log: the coordinator had committed the epoch 15 s after the kill, without it, and nothing said so."""
    import time

    from coordinator.coordinator import CLAIM_GRACE_S, FINALIZE_LAG_S, Coordinator, SwarmView

    coordinator = Coordinator.__new__(Coordinator)  # the timing alone: no DHT, data or model
    coordinator._hold_credit_until, coordinator.view = 0.0, SwarmView()
    coordinator.accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256)
    now = time.time()
    for epoch in range(4):  # epochs 0-3, 5 s each, the last ended FINALIZE_LAG_S + 5 s ago; 4 in progress
        watched(coordinator.accounting, epoch, now - 40 + 5 * epoch, 256, 50.0, "a", "b")
        coordinator.accounting.observe_contributor(epoch, "a")
        coordinator.accounting.add_claims(record("a", (epoch, 128, 2.0)))
    watched(coordinator.accounting, 4, now - FINALIZE_LAG_S - 5, 256, 50.0, "a")
    coordinator.view.epoch = 4
    assert coordinator._finalizable_epoch() == 3
    coordinator.accounting.observe_contributor(2, "b")  # b trained in epoch 2, and its claim has not come
    assert coordinator._finalizable_epoch() == 1
    coordinator.accounting.add_claims(record("b", (2, 96, 2.0)))  # b, restarted, sends it from its log
    assert coordinator._finalizable_epoch() == 3
    coordinator.accounting.observe_contributor(3, "gone")  # a peer that never comes back holds epoch 3 no longer
    assert coordinator._finalizable_epoch() == 2  # than CLAIM_GRACE_S after it ended
    for window in coordinator.accounting.windows.values():
        window.first_seen -= CLAIM_GRACE_S
    assert coordinator._finalizable_epoch() == 3
