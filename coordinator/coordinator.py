"""The coordinator behind `swarm launch`: first DHT node of a run, recipe publisher, monitor and checkpointer.

Training never depends on it: peers average among themselves. It announces the run (recipe + data identity)
so volunteers can join with nothing but its address, follows the swarm's progress, publishes model versions
every `checkpoint.every_epochs` epochs and writes `status.json` (and, at the end, `summary.json`).

>>> coordinator = Coordinator(load_recipe("recipes/tiny-stdlib.yaml"), CoordinatorSettings(port=31337))
>>> coordinator.run()   # doctest: +SKIP  (prints the `swarm join` command, returns when the run is over)
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import hivemind
from hivemind.optim.progress_tracker import LocalTrainingProgress
from hivemind.p2p import PeerID
from hivemind.utils import get_dht_time

import swarm
from swarm import records
from swarm.data import build_data
from swarm.errors import SwarmError
from swarm.evaluation import validation_loss
from swarm.identity import Identity
from swarm.ledger import Ledger, key_fingerprint, load_or_create_signing_key
from swarm.model import build_model, count_parameters
from swarm.network import create_dht, join_addresses
from swarm.processes import share_with_forked_processes
from swarm.recipe import Recipe
from swarm.tokenizer import build_tokenizer
from coordinator.accounting import Accounting
from coordinator.checkpoint import VersionInfo, save_version, write_model_files
from coordinator.dashboard import DashboardServer
from coordinator.hub import HubPublisher
from coordinator.state import StateFetcher

logger = logging.getLogger("swarm.coordinator")

ANNOUNCE_PERIOD_S = 20.0
MONITOR_PERIOD_S = 2.0
FINAL_STATE_TIMEOUT_S = 90.0
# an epoch is granted once peers had time to publish it: 12 s after a later epoch was seen to begin. Not "N epochs
# later": peers publish every METRICS_PERIOD_S (5 s), and a fast swarm (1 s epochs) finalized epochs before their
# claims arrived, leaving whole epochs uncredited.
FINALIZE_LAG_S = 12.0
MAX_REMEMBERED_PEERS = 16


@dataclass
class CoordinatorSettings:
    host: str = "0.0.0.0"
    port: int = 31337
    announce_host: str | None = None
    initial_peers: list[str] = field(default_factory=list)  # other coordinators/bootstrap nodes of the same run
    state_dir: str | None = None  # default: runs/<run_id>/coordinator
    checkpoint_dir: str | None = None  # overrides recipe.checkpoint.dir
    final_model_dir: str | None = None  # also write the final version here (the demo's output folder)
    ledger_dir: str | None = None  # default: <checkpoint dir>/../ledger, next to the checkpoints
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int | None = 8080  # None: no dashboard; 0: any free port
    summary_file: str | None = None
    cache_dir: str | None = None


@dataclass
class SwarmView:
    """What the monitor knows of the run, rebuilt from the DHT every few seconds."""

    epoch: int = 0
    samples_accumulated: int = 0
    alive_peers: int = 0
    samples_per_second: float = 0.0
    peers: dict = field(default_factory=dict)  # peer_id -> latest PeerMetrics (kept after the peer leaves)

    @property
    def mean_loss(self) -> float | None:
        now = get_dht_time()
        losses = [m.loss for m in self.peers.values() if m.loss is not None and now - m.time < 30]
        return sum(losses) / len(losses) if losses else None


class Coordinator:
    def __init__(self, recipe: Recipe, settings: CoordinatorSettings):
        self.recipe, self.settings = recipe, settings
        self.view = SwarmView()
        self.stop_event = threading.Event()
        self.dht: hivemind.DHT | None = None
        self.fetcher: StateFetcher | None = None
        self.started_at = time.time()
        self.state_dir = Path(settings.state_dir or Path("runs") / recipe.run.id / "coordinator")
        self.checkpoint_dir = Path(settings.checkpoint_dir) if settings.checkpoint_dir else recipe.checkpoint_dir()
        self.ledger_dir = Path(settings.ledger_dir) if settings.ledger_dir else self.checkpoint_dir.parent / "ledger"
        self.ledger: Ledger | None = None
        self.accounting = Accounting(run_id=recipe.run.id, credit=recipe.credit,
                                     target_batch_size=recipe.collaboration.target_batch_size,
                                     matchmaking_time_s=recipe.collaboration.matchmaking_time_s)
        self.epoch_history: list[dict] = []
        self.dashboard: DashboardServer | None = None
        self.hub: HubPublisher | None = None
        self._snapshot: dict = {}
        self._snapshot_lock = threading.Lock()
        self.last_checkpoint_epoch = -1
        self.initial_val_loss: float | None = None
        self.final_val_loss: float | None = None
        self.diverged_at_epoch: int | None = None  # the swarm's state had a non-finite validation loss here
        self.finished = False
        self._forced = False

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> dict:
        try:
            self._setup()
            # after _setup: hivemind's averagers set SIGINT to SIG_IGN in this process when they start
            self._install_signal_handlers()
            self._monitor_until_done()
            return self._finish()
        finally:
            self._close()

    def _setup(self) -> None:
        recipe, s = self.recipe, self.settings
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = build_tokenizer(recipe.tokenizer)
        self.data = build_data(recipe.data, self.tokenizer, peer_id=b"coordinator", cache_dir=s.cache_dir)
        self.val_batches = self.data.validation_batches(batch_size=16)
        self.model = build_model(recipe.model, self.tokenizer.vocab_size, self.tokenizer.eos_id, self.tokenizer.pad_id)
        # hivemind forks the DHT and state-downloader processes below; every fetched checkpoint rewrites the model,
        # which left each of them a stale private copy of it (swarm.processes.share_with_forked_processes)
        share_with_forked_processes(self.model.parameters())
        self.initial_val_loss = validation_loss(self.model, self.val_batches)
        logger.info(f"Run {recipe.run.id!r}: {count_parameters(self.model) / 1e6:.2f}M-parameter "
                    f"{recipe.model.architecture or recipe.model.pretrained}, data {self.data.identity.description}, "
                    f"initial validation loss {self.initial_val_loss:.4f}")
        self.identity = Identity.load_or_create(self.state_dir / "identity", name="coordinator", team="")
        remembered = self._load_run_state()
        self.dht = create_dht(list(s.initial_peers) + remembered, host=s.host, port=s.port, identity=self.identity,
                              record_validators=records.schema_validators(recipe.run.id), announce_host=s.announce_host,
                              require_bootstrap=bool(s.initial_peers) and not remembered)
        self._join_existing_run()
        self.fetcher = StateFetcher(self.dht, recipe.run.id)
        # only now: hivemind forks its DHT and averager processes, which would inherit the ledger's locked file
        # and keep it locked after a SIGKILL of this process, blocking the restarted coordinator
        self._open_ledger()
        self.hub = HubPublisher.from_config(recipe.checkpoint)
        if self.hub is not None:
            self.hub.ensure_repo()  # a missing token or repo fails now, not at the first checkpoint
        self._announce()
        self._save_run_state()
        self._update_snapshot()
        if s.dashboard_port is not None:
            self.dashboard = DashboardServer(self.snapshot, host=s.dashboard_host, port=s.dashboard_port).start()
        self._print_join_command()

    def _join_existing_run(self) -> None:
        """A second coordinator of a running run: same recipe required, and the run's clock is the first one's."""
        existing = records.read_announcements(self.dht.get(records.RUNS_KEY, latest=True)).get(self.recipe.run.id)
        if existing is None:
            return
        if existing.recipe_fingerprint != self.recipe.fingerprint:
            raise SwarmError(f"run {self.recipe.run.id!r} is already served with another recipe (fingerprint "
                             f"{existing.recipe_fingerprint}, yours {self.recipe.fingerprint}): use the same recipe "
                             "file to add a coordinator, or another run.id for a new run")
        self.started_at = min(self.started_at, existing.started_at)
        logger.info(f"Serving run {self.recipe.run.id!r} alongside coordinator {existing.coordinator_peer_id}")

    def _open_ledger(self) -> None:
        key = load_or_create_signing_key(self.state_dir / "ledger_signing_key.pem")
        self.ledger = Ledger.open(self.ledger_dir, key, run_id=self.recipe.run.id)
        last = self.ledger.last_epoch
        self.accounting.committed_epoch = -1 if last is None else last
        logger.info(f"Ledger at {self.ledger_dir}: {self.ledger.tree_size} entries"
                    + (f", credited up to epoch {last}" if last is not None else "")
                    + f" (key {key_fingerprint(key.public_key())[:16]})")

    def _load_run_state(self) -> list[str]:
        """After a restart: keep the run's start time, and re-join through the peers seen last time."""
        path = self.state_dir / "run.json"
        if not path.exists():
            return []
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return []
        if state.get("fingerprint") != self.recipe.fingerprint:
            logger.warning(f"{path} belongs to another version of the recipe; starting the run clock anew")
            return []
        self.started_at = float(state.get("started_at", self.started_at))
        addresses = [a for a in state.get("peer_addresses", []) if "/p2p/" in a][:MAX_REMEMBERED_PEERS]
        logger.info(f"Resuming run {self.recipe.run.id!r} started {time.time() - self.started_at:.0f} s ago; "
                    f"re-joining through {len(addresses)} remembered peer address(es)")
        return addresses

    def _save_run_state(self) -> None:
        addresses = []
        for row in sorted(self.view.peers.values(), key=lambda m: -m.time):
            addresses += [a for a in row.addresses if "/p2p/" in a][:2]
        _write_json(self.state_dir / "run.json", dict(started_at=self.started_at, fingerprint=self.recipe.fingerprint,
                                                      peer_addresses=addresses[:MAX_REMEMBERED_PEERS]))

    def _print_join_command(self) -> None:
        addresses = join_addresses(self.dht)
        self.join_command = f"swarm join --initial-peers {addresses[0]}"
        lines = [f"Swarm for run {self.recipe.run.id!r} is up. Volunteers join with:", ""]
        lines += [f"    {self.join_command}", ""]
        if self.dashboard is not None:
            lines += [f"Dashboard: {self.dashboard.url} (Prometheus metrics at {self.dashboard.url}metrics)", ""]
        if len(addresses) > 1:
            lines += ["Other addresses of this coordinator (use one another machine can reach):"]
            lines += [f"    {address}" for address in addresses[1:]]
        if all("/127.0.0.1/" in a or "/ip6/::1/" in a for a in addresses):
            lines += ["(Only a loopback address is visible: other machines need --host 0.0.0.0 and "
                      "--announce-host <this machine's public IP>.)"]
        print("\n".join(lines), flush=True)

    def _latest_version_ref(self) -> str | None:
        if self.last_checkpoint_epoch < 0:
            return None
        if self.hub is not None:
            return f"{self.recipe.checkpoint.hub_repo_id}@epoch-{self.last_checkpoint_epoch:06d}"
        return str((self.checkpoint_dir / f"epoch-{self.last_checkpoint_epoch:06d}").resolve())

    def _announce(self, status: str = "running", final_epoch: int | None = None) -> None:
        self._announced_ledger_epoch = self.accounting.committed_epoch
        announcement = records.RunAnnouncement(
            run_id=self.recipe.run.id, recipe_json=self.recipe.to_json(), recipe_fingerprint=self.recipe.fingerprint,
            data_digest=self.data.identity.digest, data_description=self.data.identity.description,
            swarm_version=swarm.__version__, coordinator_peer_id=self.dht.peer_id.to_base58(),
            started_at=self.started_at, status=status, final_epoch=final_epoch,
            ledger_epoch=self.accounting.committed_epoch, latest_version=self._latest_version_ref(),
            latest_version_epoch=self.last_checkpoint_epoch if self.last_checkpoint_epoch >= 0 else None)
        self.dht.store(records.RUNS_KEY, subkey=records.announcement_subkey(self.recipe.run.id, self.dht.peer_id.to_base58()),
                       value=announcement.to_bytes(),
                       expiration_time=get_dht_time() + records.ANNOUNCEMENT_TTL_S)
        self._last_announce = time.monotonic()

    # ---------------------------------------------------------------- monitoring
    def _monitor_until_done(self) -> None:
        last_logged_epoch = -1
        while not self.stop_event.is_set():
            if time.monotonic() - self._last_announce > ANNOUNCE_PERIOD_S:
                self._announce()
            self._refresh_view()
            if self.view.epoch != last_logged_epoch:
                last_logged_epoch = self.view.epoch
                self._log_progress()
                self._save_run_state()
            self._credit(self._finalizable_epoch())
            self._update_snapshot()
            if self._checkpoint_due():
                self._publish_checkpoint()
            if self._limit_reached():
                logger.info(f"Run limit reached: {self._limit_reached()}")
                return
            self._write_status()
            self.stop_event.wait(MONITOR_PERIOD_S)

    def _refresh_view(self) -> None:
        progress = self.dht.get(f"{self.recipe.run.id}_progress", latest=True)
        now = get_dht_time()
        alive, epochs, samples, rate = 0, [0], 0, 0.0
        if progress is not None and isinstance(progress.value, dict):
            for item in progress.value.values():
                try:
                    peer = LocalTrainingProgress.parse_obj(item.value)
                except Exception:
                    continue
                if item.expiration_time < now:
                    continue
                self.accounting.observe_peer(PeerID(peer.peer_id).to_base58())
                alive += 1
                epochs.append(peer.epoch)
                rate += peer.samples_per_second
            current = max(epochs)
            for item in progress.value.values():
                try:
                    peer = LocalTrainingProgress.parse_obj(item.value)
                except Exception:
                    continue
                if peer.epoch == current:
                    samples += peer.samples_accumulated
        previous_epoch = self.view.epoch
        self.view.epoch = max(self.view.epoch, max(epochs))
        self.view.alive_peers, self.view.samples_accumulated, self.view.samples_per_second = alive, samples, rate
        if alive:
            self.accounting.observe_epoch(self.view.epoch, samples, rate)
        metrics = records.parse_metrics(self.dht.get(records.metrics_key(self.recipe.run.id), latest=True))
        for peer_id, row in metrics.items():
            known = self.view.peers.get(peer_id)
            if known is None or row.time >= known.time:
                self.view.peers[peer_id] = row
            if now - row.time < 3 * 5.0:
                self.accounting.observe_peer(peer_id)
        for record in records.parse_contributions(self.dht.get(records.contributions_key(self.recipe.run.id),
                                                               latest=True)):
            self.accounting.add_claims(record)
        if self.view.epoch != previous_epoch or not self.epoch_history:
            self.epoch_history.append(dict(epoch=self.view.epoch, time=time.time(), samples_per_second=rate,
                                           alive_peers=alive, mean_loss=self.view.mean_loss, val_loss=None))
            del self.epoch_history[:-2000]

    def _finalizable_epoch(self) -> int:
        """The newest epoch whose claims have had time to arrive: every epoch before one that began FINALIZE_LAG_S ago.

        Epochs the coordinator never watched (it was down, or they passed between two looks) count from the first
        later epoch it did see; -1 while nothing is old enough.
        """
        now = time.time()
        settled = [epoch for epoch, window in self.accounting.windows.items() if now - window.first_seen >= FINALIZE_LAG_S]
        return min(max(settled, default=0) - 1, self.view.epoch - 1)

    def _credit(self, up_to_epoch: int) -> None:
        """Grant and commit every epoch up to `up_to_epoch` into the ledger, then tell peers how far it goes."""
        for epoch, entries in self.accounting.finalize(up_to_epoch):
            checkpoint = self.ledger.commit_epoch(entries)
            granted = sum(entry.granted_samples for entry in entries)
            logger.debug(f"Credited epoch {epoch}: {granted} samples to {len(entries)} peer(s); "
                         f"ledger root {checkpoint.root_hash[:12]} over {checkpoint.tree_size} entries")
        if self.accounting.committed_epoch != self._announced_ledger_epoch:
            self._announce()

    def _log_progress(self) -> None:
        loss = self.view.mean_loss
        logger.info(f"swarm epoch {self.view.epoch} | {self.view.alive_peers} peer(s) alive | "
                    f"{self.view.samples_per_second:.1f} samples/s | "
                    f"training loss {'n/a' if loss is None else f'{loss:.3f}'}")

    def _checkpoint_due(self) -> bool:
        every = self.recipe.checkpoint.every_epochs
        last_tried = max(self.last_checkpoint_epoch, self.diverged_at_epoch or 0, 0)
        return self.view.epoch > 0 and self.view.epoch // every > last_tried // every

    def _limit_reached(self) -> str | None:
        limits = self.recipe.limits
        if limits.max_epochs is not None and self.view.epoch >= limits.max_epochs:
            return f"limits.max_epochs = {limits.max_epochs}"
        if limits.max_samples is not None and self.view.epoch * self.recipe.collaboration.target_batch_size >= limits.max_samples:
            return f"limits.max_samples = {limits.max_samples}"
        if limits.max_wall_time_s is not None and time.time() - self.started_at >= limits.max_wall_time_s:
            return f"limits.max_wall_time_s = {limits.max_wall_time_s:.0f}"
        return None

    # ---------------------------------------------------------------- checkpoints
    def _publish_checkpoint(self, timeout_s: float = 60.0) -> Path | None:
        epoch = self.fetcher.fetch_into(self.model, timeout_s=timeout_s)
        if epoch is None:
            logger.warning("No peer sent its state for the checkpoint; trying again shortly")
            return None
        val_loss = validation_loss(self.model, self.val_batches)
        if val_loss is not None and not math.isfinite(val_loss):
            # a diverged model is not a version: keep the last good one as the latest, and say so loudly
            self.diverged_at_epoch = epoch
            logger.error(f"The swarm's model has diverged: validation loss {val_loss} at epoch {epoch}. Not publishing "
                         "it; the last good version stays the latest. Lower optimizer.lr or set "
                         "optimizer.clip_grad_norm, then restart the run from that version (swarm join --from-checkpoint).")
            return None
        self.diverged_at_epoch = None
        info = self._version_info(epoch, val_loss)
        path = save_version(self.checkpoint_dir, self.model, self.tokenizer, self.recipe, info, ledger_dir=self.ledger_dir)
        if self.hub is not None:
            self.hub.publish_async(path, epoch)  # uploads in the background; failures are logged and retried
        self.last_checkpoint_epoch = epoch
        self.final_val_loss = val_loss
        for row in reversed(self.epoch_history):
            if row["epoch"] <= epoch:
                row["val_loss"] = val_loss
                break
        logger.info(f"Published version epoch {epoch} (validation loss {val_loss:.4f}) to {path}")
        self._announce()
        return path

    def _version_info(self, epoch: int, val_loss: float | None) -> VersionInfo:
        checkpoint = self.ledger.latest_checkpoint
        top = [dict(name=p.name, team=p.team, peer_id=p.peer_id, granted_samples=p.granted_samples)
               for p in self.ledger.totals.peer_leaderboard()[:10]]
        return VersionInfo(epoch=epoch, samples_seen=self.samples_total(), val_loss=val_loss,
                           recipe_fingerprint=self.recipe.fingerprint, data_digest=self.data.identity.digest,
                           data_description=self.data.identity.description,
                           ledger_root=checkpoint.root_hash if checkpoint else None,
                           ledger_tree_size=checkpoint.tree_size if checkpoint else 0, top_contributors=top)

    def samples_total(self) -> int:
        return sum(row.samples_total for row in self.view.peers.values())

    # ---------------------------------------------------------------- the end
    def _finish(self) -> dict:
        """Final version from the peers (they wait for it), the summary, then tell peers the run is over."""
        deadline = time.monotonic() + FINAL_STATE_TIMEOUT_S
        path = None
        while path is None and time.monotonic() < deadline and not self._forced:
            path = self._publish_checkpoint(timeout_s=max(5.0, deadline - time.monotonic()))
            if path is None and self.diverged_at_epoch is not None:
                break  # the peers' final state is not finite: nothing to wait for
            if path is None:
                time.sleep(3.0)  # peers may still be finishing their last epoch
                self._refresh_view()
        if path is None:
            logger.warning("Could not fetch the final state from any peer; the last published version stands")
        elif self.settings.final_model_dir:
            write_model_files(Path(self.settings.final_model_dir), self.model, self.tokenizer, self.recipe,
                              self._version_info(self.last_checkpoint_epoch, self.final_val_loss))
        time.sleep(6.0)  # peers publish every 5 s: let their last closed epochs arrive
        self._refresh_view()
        self._credit(self.view.epoch + 1)
        self._announce(status="finished", final_epoch=self.last_checkpoint_epoch)
        self.finished = True
        self._update_snapshot()
        summary = self.summary()
        if self.settings.summary_file:
            _write_json(Path(self.settings.summary_file), summary)
        self._write_status()
        logger.info(f"Run over: {summary['epochs']} epochs, {summary['samples_total']} samples, validation loss "
                    f"{summary['initial_val_loss']:.4f} -> {summary['final_val_loss'] or float('nan'):.4f}")
        return summary

    def summary(self) -> dict:
        peers = self.view.peers.values()
        return dict(
            run_id=self.recipe.run.id,
            peers=len(self.view.peers),
            epochs=max(self.view.epoch, self.last_checkpoint_epoch, 0),
            samples_total=self.samples_total(),
            wall_s=round(time.time() - self.started_at, 2),
            initial_val_loss=self.initial_val_loss,
            final_val_loss=self.final_val_loss,
            diverged_at_epoch=self.diverged_at_epoch,
            # every such round had >= 2 peers; counted by the peer that took part in most of them
            averaged_rounds=max((row.averaged_rounds for row in peers), default=0),
            solo_rounds=max((row.solo_rounds for row in peers), default=0),
            final_checkpoint_epoch=self.last_checkpoint_epoch if self.last_checkpoint_epoch >= 0 else None,
            granted_samples=sum(p.granted_samples for p in self.ledger.totals.peers.values()),
            claimed_samples=sum(p.claimed_samples for p in self.ledger.totals.peers.values()),
            ledger_dir=str(self.ledger_dir),
            ledger_root=self.ledger.root_hash if self.ledger.tree_size else None,
            checkpoint_dir=str(self.checkpoint_dir),
            volunteers=[dict(peer_id=row.peer_id, name=row.name, team=row.team, samples=row.samples_total,
                             averaged_rounds=row.averaged_rounds, device=row.device) for row in peers],
        )

    # ---------------------------------------------------------------- dashboard
    def snapshot(self) -> dict:
        """The dashboard's view of the run (built by the monitor loop; cheap and thread-safe to call)."""
        with self._snapshot_lock:
            return self._snapshot

    def _update_snapshot(self) -> None:
        now = get_dht_time()
        totals = self.ledger.totals
        checkpoint = self.ledger.latest_checkpoint
        snapshot = dict(
            status=dict(run_id=self.recipe.run.id, description=self.recipe.run.description,
                        status="finished" if self.finished else "running", epoch=self.view.epoch,
                        alive_peers=self.view.alive_peers, samples_per_second=self.view.samples_per_second,
                        samples_total=self.samples_total(), mean_training_loss=self.view.mean_loss,
                        last_val_loss=self.final_val_loss if self.final_val_loss is not None else self.initial_val_loss,
                        last_checkpoint_epoch=self.last_checkpoint_epoch, started_at=self.started_at,
                        updated_at=time.time(), join_command=getattr(self, "join_command", "")),
            peers=[dict(peer_id=m.peer_id, name=m.name, team=m.team, epoch=m.epoch, samples_total=m.samples_total,
                        samples_per_second=m.samples_per_second, loss=m.loss, averaged_rounds=m.averaged_rounds,
                        last_group_size=m.last_group_size, device=m.device, last_seen=m.time,
                        alive=now - m.time < 3 * 5.0)
                   for m in sorted(self.view.peers.values(), key=lambda m: m.name)],
            epochs=list(self.epoch_history),
            leaderboard=dict(
                volunteers=[dict(peer_id=p.peer_id, name=p.name, team=p.team, claimed_samples=p.claimed_samples,
                                 granted_samples=p.granted_samples, compute_s=p.compute_s, epochs=p.epochs)
                            for p in totals.peer_leaderboard()],
                teams=[dict(team=t.team, claimed_samples=t.claimed_samples, granted_samples=t.granted_samples,
                            volunteers=t.volunteers) for t in totals.team_leaderboard()]),
            ledger=dict(tree_size=self.ledger.tree_size, root_hash=checkpoint.root_hash if checkpoint else None,
                        latest_checkpoint=checkpoint.model_dump() if checkpoint else None,
                        public_key_fingerprint=self.ledger.key_id),
        )
        with self._snapshot_lock:
            self._snapshot = snapshot

    def _write_status(self) -> None:
        status = dict(run_id=self.recipe.run.id, status="finished" if self.finished else "running",
                      epoch=self.view.epoch, alive_peers=self.view.alive_peers,
                      samples_per_second=self.view.samples_per_second, samples_total=self.samples_total(),
                      mean_training_loss=self.view.mean_loss, last_checkpoint_epoch=self.last_checkpoint_epoch,
                      updated_at=time.time())
        _write_json(self.state_dir / "status.json", status)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum, _frame):
            if self.stop_event.is_set():
                self._forced = True
                raise KeyboardInterrupt
            logger.info("Stopping: saving a final version first (press Ctrl-C again to skip it)")
            self.stop_event.set()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)

    def _close(self) -> None:
        if self.hub is not None:
            self.hub.close(wait=True)
        if self.dashboard is not None:
            self.dashboard.stop()
        if self.ledger is not None:
            self.ledger.close()
        if self.fetcher is not None:
            self.fetcher.shutdown()
        if self.dht is not None:
            self.dht.shutdown()


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
