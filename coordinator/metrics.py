"""Prometheus metrics of a run, computed from the coordinator's snapshot (`GET /metrics` on the dashboard).

Every value is a copy of what the snapshot says at scrape time; nothing is accumulated here. So the totals that
only grow (`swarm_samples_total`, `swarm_peer_samples_total`, `swarm_granted_samples_total`, ...) are exported as
*counters* from a custom collector, and `rate()` works on them. The run's `swarm_samples_total` never falls, not even
across a coordinator restart (it starts from what the last launch showed, and follows the ledger's credit of what
was trained meanwhile), so a restart is no counter reset to Prometheus. `swarm_peer_samples_total` counts from the
peer's process start: a peer that restarts reads as a reset of its series, which `rate()` handles. Everything that
can go up and down is a gauge.

A value the snapshot does not have yet (a loss before the first report, a run without a ledger) is left out
rather than exported as NaN, so a Grafana panel shows a gap instead of a misleading line.

>>> metrics = CoordinatorMetrics()
>>> metrics.update(coordinator_snapshot)               # doctest: +SKIP
>>> metrics.render().decode().splitlines()[0]          # doctest: +SKIP
'# HELP swarm_info The run this coordinator follows and the swarm version it runs.'
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import swarm

PEER_LABELS = ("peer_id", "name", "team")
# A peer not seen for this long has no series any more: each peer's labels make a series per metric, and a run of
# months sees many volunteers once. A day keeps a volunteer's nightly gaps on the panels.
PEER_SERIES_TTL_S = 24 * 3600.0
# What `render` writes: the classic text format, which every Prometheus (2.x and 3.x) reads. prometheus_client's
# CONTENT_TYPE_LATEST now names format 1.0.0, which older scrapers don't know.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class CoordinatorMetrics:
    """The run's metrics in their own `CollectorRegistry`, so several coordinators in one process don't clash.

    >>> metrics = CoordinatorMetrics()
    >>> metrics.update(snapshot())                     # doctest: +SKIP  (the coordinator's snapshot dict)
    >>> body = metrics.render()                        # doctest: +SKIP  (Prometheus text format 0.0.4)

    Scrape it every 15-30 s: the coordinator refreshes its view of the swarm every 2 s, so a faster scrape only
    repeats values. If a Grafana panel stays empty, check `swarm_info` first: when it is missing, Prometheus is
    not reaching the dashboard port at all.
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self._collector = _SnapshotCollector()
        self.registry.register(self._collector)

    def update(self, snapshot: dict) -> None:
        """Replace every exported value with the snapshot's; raises KeyError/TypeError on a malformed snapshot."""
        self._collector.families = _families(snapshot)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format 0.0.4 (serve it with `CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _SnapshotCollector:
    """Yields the families built by the last `update`; swapping one list keeps a concurrent scrape consistent."""

    def __init__(self):
        self.families: list[Metric] = []

    def collect(self):
        return self.families


def _families(snapshot: dict) -> list[Metric]:
    status, ledger = snapshot["status"], snapshot["ledger"]
    peers, teams = snapshot["peers"], snapshot["leaderboard"]["teams"]

    info = GaugeMetricFamily("swarm_info", "The run this coordinator follows and the swarm version it runs.",
                             labels=["run_id", "version"])
    info.add_metric([status["run_id"], swarm.__version__], 1)
    families: list[Metric] = [info]

    def gauge(name: str, documentation: str, value) -> None:
        family = GaugeMetricFamily(name, documentation)
        if _known(value):
            family.add_metric([], float(value))
        families.append(family)

    gauge("swarm_run_finished", "1 once the run is over (the coordinator published its final version), else 0.",
          status["status"] == "finished")
    gauge("swarm_run_started_timestamp_seconds", "When the coordinator started the run, unix seconds.",
          status["started_at"])
    gauge("swarm_last_update_timestamp_seconds", "When the coordinator last refreshed its view, unix seconds.",
          status["updated_at"])
    gauge("swarm_epoch", "The swarm's current epoch (optimizer steps taken together).", status["epoch"])
    gauge("swarm_alive_peers", "Peers that reported progress recently.", status["alive_peers"])
    gauge("swarm_samples_per_second", "The swarm's throughput: the sum of alive peers' samples per second.",
          status["samples_per_second"])
    samples = CounterMetricFamily("swarm_samples", "Samples processed by all peers of the run so far.")
    samples.add_metric([], status["samples_total"])
    families.append(samples)
    gauge("swarm_training_loss", "Mean training loss of alive peers, nats per token (cross-entropy).",
          status["mean_training_loss"])
    gauge("swarm_validation_loss", "Validation loss of the last published version, nats per token.",
          status["last_val_loss"])
    gauge("swarm_last_checkpoint_epoch", "Epoch of the last published version; -1 before the first.",
          status["last_checkpoint_epoch"])

    families += _peer_families([peer for peer in peers if status["updated_at"] - peer["last_seen"] < PEER_SERIES_TTL_S])
    families += _team_families(teams)
    gauge("swarm_ledger_entries", "Entries in the contribution ledger (its Merkle tree size).", ledger["tree_size"])
    return families


def _peer_families(peers: list[dict]) -> list[Metric]:
    labels = list(PEER_LABELS)
    alive = GaugeMetricFamily("swarm_peer_alive", "1 if the peer reported recently, else 0.", labels=labels)
    epoch = GaugeMetricFamily("swarm_peer_epoch", "The epoch the peer last reported.", labels=labels)
    samples = CounterMetricFamily("swarm_peer_samples", "Samples the peer reports having processed.", labels=labels)
    # Only alive peers: a departed peer's last rate would otherwise stay on the throughput panel forever.
    rate = GaugeMetricFamily("swarm_peer_samples_per_second", "The peer's throughput (alive peers only).",
                             labels=labels)
    loss = GaugeMetricFamily("swarm_peer_training_loss", "The peer's recent training loss, nats per token.",
                             labels=labels)
    rounds = CounterMetricFamily("swarm_peer_averaged_rounds", "Averaging rounds the peer took part in.",
                                 labels=labels)
    group = GaugeMetricFamily("swarm_peer_last_group_size", "Peers in the peer's last averaging group.",
                              labels=labels)
    last_seen = GaugeMetricFamily("swarm_peer_last_seen_timestamp_seconds", "When the peer last reported, unix s.",
                                  labels=labels)
    for peer in peers:
        values = [str(peer[label]) for label in PEER_LABELS]
        alive.add_metric(values, 1 if peer["alive"] else 0)
        epoch.add_metric(values, peer["epoch"])
        samples.add_metric(values, peer["samples_total"])
        if peer["alive"]:
            rate.add_metric(values, peer["samples_per_second"])
        if _known(peer["loss"]):
            loss.add_metric(values, peer["loss"])
        rounds.add_metric(values, peer["averaged_rounds"])
        group.add_metric(values, peer["last_group_size"])
        last_seen.add_metric(values, peer["last_seen"])
    return [alive, epoch, samples, rate, loss, rounds, group, last_seen]


def _team_families(teams: list[dict]) -> list[Metric]:
    granted = CounterMetricFamily("swarm_granted_samples", "Samples the ledger credits to the team.", labels=["team"])
    claimed = CounterMetricFamily("swarm_claimed_samples", "Samples the team's volunteers claimed.", labels=["team"])
    volunteers = GaugeMetricFamily("swarm_team_volunteers", "Volunteers in the team with ledger credit.",
                                   labels=["team"])
    for team in teams:
        granted.add_metric([team["team"]], team["granted_samples"])
        claimed.add_metric([team["team"]], team["claimed_samples"])
        volunteers.add_metric([team["team"]], team["volunteers"])
    return [granted, claimed, volunteers]


def _known(value) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))
