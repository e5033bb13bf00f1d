"""Turning peers' claims into granted credit, epoch by epoch, and committing them to the ledger.

Claims arrive as signed `ContributionRecord`s from the DHT (each peer re-publishes every epoch the ledger
has not committed). Claimed and granted are kept apart from the start. A claim is granted when it is
plausible (the rules get stricter later; each rejection is written into the entry's `reason`):

1. **Seen**: if the coordinator watched epoch e, the peer must have been seen alive (progress or metrics
   record) during it. Epochs the coordinator did not watch (it was down) are credited on the signed claims
   alone, within the bounds below: an outage delays credit but loses none.
2. **Rate**: claimed samples / claimed compute seconds must not exceed `credit.max_samples_per_second`.
3. **Swarm total**: the epoch's claims together cannot exceed what the whole swarm can have accumulated in it;
   above that bound, claims are scaled down in proportion. A single claim above the whole bound gets what the
   others leave of it (scaled to the bound when alone), so it cannot crowd honest peers out. The bound
   is the largest sum of hivemind progress reports seen for the epoch (never less than the target batch size:
   the epoch only ends once that much is accumulated), plus the overshoot: every peer finishes the micro-batch
   in progress when the target is reached (a lone peer with micro-batch 16 closes epochs of 128 at 144), and the
   swarm keeps accumulating for up to a progress refresh and a matchmaking window before peers notice (measured:
   epochs of 256 closed at 384-400), at the swarm's rate. An epoch the coordinator did not watch (it was down,
   or the epoch passed between two looks) takes the rate of the nearest watched epochs. A claim's micro-batch
   counts at most the recipe's (`micro_batch_size`, or `max_micro_batch_size` for `auto`), so a claim cannot
   raise its own allowance.

>>> accounting = Accounting(run_id="r", credit=CreditConfig(), target_batch_size=256)   # doctest: +SKIP
>>> accounting.observe_epoch(3, samples_accumulated=200, now=t); accounting.observe_peer("Qm..", now=t)
>>> accounting.add_claims(record); entries = accounting.finalize(up_to_epoch=3)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from swarm.ledger import LedgerEntry
from swarm.recipe import CreditConfig
from swarm.records import ContributionRecord, EpochWork

# progress reports are sampled, not exact: a margin on top of the overshoot allowance
SWARM_TOTAL_TOLERANCE = 1.1
# hivemind.Optimizer's tracker refreshes global progress at most this often (swarm sets max_refresh_period=5)
PROGRESS_REFRESH_S = 5.0
# an epoch the coordinator did not watch takes the swarm's rate from this many watched epochs on each side of it
NEAREST_WATCHED_EPOCHS = 3
# a peer is "seen" in an epoch if seen within this many seconds of the epoch's observed window
SEEN_SLACK_S = 10.0


@dataclass
class EpochWindow:
    first_seen: float
    last_seen: float
    max_samples_accumulated: int = 0
    max_samples_per_second: float = 0.0


@dataclass
class Claim:
    work: EpochWork
    name: str
    team: str


@dataclass
class Accounting:
    run_id: str
    credit: CreditConfig
    target_batch_size: int
    matchmaking_time_s: float = 5.0
    max_micro_batch_size: int = 64  # the largest micro-batch the recipe lets a peer pick (its overshoot allowance)
    committed_epoch: int = -1  # the ledger's last epoch: claims for it and before are final
    windows: dict[int, EpochWindow] = field(default_factory=dict)
    sightings: dict[str, list[list[float]]] = field(default_factory=dict)  # peer -> [[from, to], ...]
    claims: dict[int, dict[str, Claim]] = field(default_factory=dict)  # epoch -> peer -> claim
    contributors: dict[int, set[str]] = field(default_factory=dict)  # epoch -> peers whose progress showed samples

    # ---------------------------------------------------------------- observations
    def observe_epoch(self, epoch: int, samples_accumulated: int, samples_per_second: float = 0.0,
                      now: float | None = None) -> None:
        """The swarm is at `epoch` with this many samples accumulated, at this total rate (hivemind's progress)."""
        now = time.time() if now is None else now
        window = self.windows.get(epoch)
        if window is None:
            window = self.windows[epoch] = EpochWindow(first_seen=now, last_seen=now)
        window.last_seen = now
        window.max_samples_accumulated = max(window.max_samples_accumulated, samples_accumulated)
        window.max_samples_per_second = max(window.max_samples_per_second, samples_per_second)

    def observe_peer(self, peer_id: str, now: float | None = None) -> None:
        """The peer was alive (a fresh progress or metrics record) at `now`."""
        now = time.time() if now is None else now
        intervals = self.sightings.setdefault(peer_id, [])
        if intervals and now - intervals[-1][1] <= 3 * SEEN_SLACK_S:
            intervals[-1][1] = now
        else:
            intervals.append([now, now])

    def observe_contributor(self, epoch: int, peer_id: str) -> None:
        """The peer's progress record showed samples accumulated in `epoch`: a claim of it is to be expected."""
        if epoch > self.committed_epoch:
            self.contributors.setdefault(epoch, set()).add(peer_id)

    def unclaimed(self, epoch: int) -> set[str]:
        """The peers seen contributing to `epoch` whose claim of it has not arrived."""
        return self.contributors.get(epoch, set()) - set(self.claims.get(epoch, {}))

    def add_claims(self, record: ContributionRecord) -> None:
        """Take the newest claim per (peer, epoch); epochs the ledger already committed are final."""
        for work in record.epochs:
            if work.epoch <= self.committed_epoch:
                continue
            self.claims.setdefault(work.epoch, {})[record.peer_id] = Claim(work, record.name, record.team)

    # ---------------------------------------------------------------- granting
    def _seen(self, peer_id: str, window: EpochWindow) -> bool:
        start, end = window.first_seen - SEEN_SLACK_S, window.last_seen + SEEN_SLACK_S
        return any(a <= end and b >= start for a, b in self.sightings.get(peer_id, []))

    def _rate_near(self, epoch: int) -> float:
        """The swarm's rate in `epoch`: measured if watched, else the largest of the nearest watched epochs'."""
        window = self.windows.get(epoch)
        if window is not None:
            return window.max_samples_per_second
        watched = sorted(self.windows)
        before = [e for e in watched if e < epoch][-NEAREST_WATCHED_EPOCHS:]
        after = [e for e in watched if e > epoch][:NEAREST_WATCHED_EPOCHS]
        return max((self.windows[e].max_samples_per_second for e in before + after), default=0.0)

    def swarm_total(self, epoch: int, claims: dict[str, Claim] | None = None) -> int:
        """The most samples the swarm can plausibly have accumulated in `epoch` (see rule 3 above), counting one
        micro-batch of overshoot for each of `claims` (the epoch's claims by default)."""
        claims = self.claims.get(epoch, {}) if claims is None else claims
        window = self.windows.get(epoch)
        observed = window.max_samples_accumulated if window is not None else 0
        micro_batches = sum(min(_micro_batch(claim.work), self.max_micro_batch_size) for claim in claims.values())
        overshoot = self._rate_near(epoch) * (PROGRESS_REFRESH_S + self.matchmaking_time_s) + micro_batches
        return int((max(observed, self.target_batch_size) + overshoot) * SWARM_TOTAL_TOLERANCE)

    def grant(self, epoch: int, now: float | None = None) -> list[LedgerEntry]:
        """Ledger entries for one epoch's claims (sorted by peer id, as the ledger requires)."""
        now = time.time() if now is None else now
        claims = self.claims.get(epoch, {})
        window = self.windows.get(epoch)
        granted: dict[str, int] = {}
        reasons: dict[str, str] = {}
        for peer_id, claim in claims.items():
            work = claim.work
            rate = work.samples / work.compute_s if work.compute_s > 0 else float("inf")
            if window is not None and not self._seen(peer_id, window):
                granted[peer_id], reasons[peer_id] = 0, f"not seen by the coordinator during epoch {epoch}"
            elif work.samples > 0 and rate > self.credit.max_samples_per_second:
                granted[peer_id], reasons[peer_id] = 0, (
                    f"claimed {rate:.0f} samples/s, above credit.max_samples_per_second "
                    f"({self.credit.max_samples_per_second:g})")
            else:
                granted[peer_id], reasons[peer_id] = work.samples, ""
        # only the claims that passed the checks above widen the bound by their micro-batch
        total = self.swarm_total(epoch, {peer_id: claims[peer_id] for peer_id in granted if granted[peer_id]})
        # claims within the bound come first, scaled in proportion if together they exceed it; a claim above the
        # whole bound is scaled to what they leave of it, so it cannot crowd honest peers out of their credit
        within = {peer_id: samples for peer_id, samples in granted.items() if 0 < samples <= total}
        beyond = {peer_id: samples for peer_id, samples in granted.items() if samples > total}
        claimed_within = sum(within.values())
        if claimed_within > total:
            scale = total / claimed_within
            for peer_id, samples in within.items():
                granted[peer_id] = int(samples * scale)
                reasons[peer_id] = (f"scaled by {scale:.2f}: epoch {epoch}'s claims ({claimed_within} samples) "
                                    f"exceed what the whole swarm can have accumulated in it ({total})")
        room = total - sum(granted[peer_id] for peer_id in within)
        claimed_beyond = sum(beyond.values())
        for peer_id, samples in beyond.items():
            granted[peer_id] = int(room * samples / claimed_beyond)
            reasons[peer_id] = (f"scaled by {granted[peer_id] / samples:.2f}: claimed {samples} samples, more than the "
                                f"whole swarm can have accumulated in epoch {epoch} ({total}); granted what the "
                                f"other claims left of it")
        return [
            LedgerEntry(run_id=self.run_id, epoch=epoch, peer_id=peer_id, name=claim.name, team=claim.team,
                        claimed_samples=claim.work.samples, granted_samples=granted[peer_id],
                        reason=reasons[peer_id], compute_s=round(claim.work.compute_s, 3), timestamp=round(now, 3))
            for peer_id, claim in sorted(claims.items())
        ]

    def finalize(self, up_to_epoch: int, now: float | None = None) -> list[tuple[int, list[LedgerEntry]]]:
        """Grant every epoch in (committed_epoch, up_to_epoch] that has claims; mark them committed."""
        result = []
        for epoch in sorted(e for e in self.claims if self.committed_epoch < e <= up_to_epoch):
            entries = self.grant(epoch, now)
            if entries:
                result.append((epoch, entries))
        if up_to_epoch > self.committed_epoch:
            for epoch in [e for e in self.claims if e <= up_to_epoch]:
                del self.claims[epoch]
            for epoch in [e for e in self.contributors if e <= up_to_epoch]:
                del self.contributors[epoch]
            self.committed_epoch = up_to_epoch
            self._forget_the_committed()
        return result

    def _forget_the_committed(self) -> None:
        """Drop what no later grant reads: the windows of committed epochs but the few nearest (an epoch nobody watched
        takes their rate) and the sightings that ended before the oldest window left. Both grew for the whole run."""
        committed = sorted(e for e in self.windows if e <= self.committed_epoch)
        for epoch in committed[:-NEAREST_WATCHED_EPOCHS]:
            del self.windows[epoch]
        if not self.windows:
            return
        horizon = min(window.first_seen for window in self.windows.values()) - SEEN_SLACK_S
        for peer_id in list(self.sightings):
            kept = [interval for interval in self.sightings[peer_id] if interval[1] >= horizon]
            if kept:
                self.sightings[peer_id] = kept
            else:
                del self.sightings[peer_id]


def _micro_batch(work: EpochWork) -> int:
    """The claim's micro-batch: its samples over its micro-steps, rounded up."""
    return -(-work.samples // work.micro_steps) if work.micro_steps else work.samples
