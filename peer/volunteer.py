"""The volunteer daemon behind `swarm join`.

It fetches the run's recipe from the swarm, builds the same model and data as every other peer, loads the
current state from peers, then trains DeDLOC-style with hivemind.Optimizer: accumulate micro-batches toward the
swarm-wide target batch, average gradients with whoever is there, step. It publishes signed metrics, notices
when it is training alone while others are not, and on Ctrl-C/SIGTERM finishes the epoch in progress so the
samples it already computed reach the swarm, then leaves.

>>> settings = VolunteerSettings(initial_peers=["/ip4/127.0.0.1/tcp/31337/p2p/12D3KooW..."], name="ada")
>>> Volunteer(settings).run()   # doctest: +SKIP

Tuning from the logs:
- "training alone for N rounds while the swarm has M other peers": the DHT view split; the peer reconnects by
  itself. If it keeps happening, check that this machine is reachable (or use --client-mode behind NAT).
- "averaged with 1 peer(s)" most epochs while others are up: raise collaboration.matchmaking_time_s.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NoReturn

import hivemind
import torch
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time

import swarm
from swarm import records
from swarm.compat import make_compression
from swarm.data import build_data, check_identity, with_local_data
from swarm.errors import SwarmError, UsageError
from swarm.hardware import TrainingForward, background_torch_on_one_thread, pick_hardware, pick_micro_batch_size
from swarm.identity import Identity
from swarm.model import build_model, count_parameters, with_local_model
from swarm.network import JOIN_PORT_FIX, create_dht, parse_initial_peers, recontact
from swarm.processes import (keeping_ctrl_c, shared_memory_advice, shared_memory_problem,
                             start_shared_memory_manager)
from swarm.recipe import Recipe, recipe_changes, recipe_from_json, training_changes
from swarm.tokenizer import build_tokenizer
from peer.collaboration import SwarmOptimizer, build_swarm_optimizer, shared_memory_needed
from peer.contributions import ContributionLog
from peer.diloco import DiLoCoOptimizer
from peer.progress import ProgressView
from peer.schedule import Departure, departure
from peer.settings import JOINED_AT_ENV, VolunteerSettings, check_local_settings, make_local_folders

logger = logging.getLogger("swarm.peer")

METRICS_PERIOD_S = 5.0
SOLO_ROUNDS_BEFORE_RECONNECT = 3
MIN_REPORT_GAP_S = 2.5  # an epoch's end brings the next report forward, to no sooner than this after the last
DHT_GET_TIMEOUT_S = 15.0  # the reporting thread's reads of the DHT give up after this
HAND_OVER_S = 60.0  # how long the last peer training waits, as it leaves, for the coordinator to save its state
RECONTACT_PERIOD_S = 30.0  # how often a peer alone with an empty-looking swarm dials its initial peers again
ANOTHER_RUN_GRACE_S = 10.0  # how long a swarm that serves other runs gets to show the one asked for
CHILDREN_EXIT_S = 30.0  # how long hivemind's processes get to exit before `swarm join` runs again (join_again)
# The stats file's counters of the earlier --hours windows of this `swarm join`, as JSON: join_again puts the stats last
# written there as the process runs itself again, and the next window's volunteer counts on from them. Not a setting,
# like peer.settings.JOINED_AT_ENV.
STATS_SO_FAR_ENV = "_SWARM_STATS_SO_FAR"
# the stats file's counters that add up over windows (the others are the last window's: epoch, loss, speed, ...)
WINDOW_TOTALS = ("samples", "micro_steps", "compute_s", "sync_s", "non_finite_losses", "wall_s", "reconnects",
                 "averaged_rounds", "solo_rounds", "partial_rounds", "repair_rounds")
_carried_stats: dict = {}  # the stats this process last wrote, which join_again hands on in STATS_SO_FAR_ENV


@dataclass
class LocalStats:
    """This process's own counters, written to `stats_file` at exit and published as metrics."""

    samples: int = 0
    micro_steps: int = 0
    compute_s: float = 0.0
    loss_ema: float | None = None
    started_at: float = field(default_factory=time.time)
    reconnects: int = 0
    loaded_state_epoch: int | None = None
    first_sample_s: float | None = None  # seconds from start to the end of the first contributed micro-step
    # Time in optimizer.step() calls that ended an epoch or loaded the swarm's state (averaging rounds, the state
    # download; the optimiser step itself is a small part): not computing. The longest such wait, after the first
    # sample, is how long this volunteer's device stood still at once.
    sync_s: float = 0.0
    longest_pause_s: float = 0.0
    non_finite_losses: int = 0  # micro-steps whose loss was NaN or infinite: the model this peer holds diverged


def _capped_micro_batch_size(micro_batch_size: int, requested: int | None, target_batch_size: int) -> int:
    """A micro-batch never exceeds the swarm's target batch: the epoch would end inside it."""
    if micro_batch_size <= target_batch_size:
        return micro_batch_size
    if requested is not None:  # the owner asked for it: say why they get less (a picked size is lowered silently)
        logger.info(f"--micro-batch-size {requested} is larger than the run's whole batch (collaboration."
                    f"target_batch_size, {target_batch_size} samples per epoch): using {target_batch_size}")
    return target_batch_size


def _version_metadata(folder: Path) -> dict:
    """The swarm.json of a published version (epoch, recipe); empty if it has none or it cannot be read."""
    try:
        metadata = json.loads((folder / "swarm.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


class Volunteer:
    """One volunteer process: `run()` returns when the run is over, the owner's limit is reached, or on a signal."""

    def __init__(self, settings: VolunteerSettings):
        self.settings = settings
        self.stats = LocalStats()
        self._stop_requested = threading.Event()
        self._force_stop = threading.Event()
        self._reporter_stop = threading.Event()
        self._epoch_closed = threading.Event()  # wakes the reporter to publish the claim of an epoch just closed
        self._resync_requested = threading.Event()
        self._training_over = threading.Event()  # set once the loop has stopped: no reconnects or re-syncs after it
        self._closed = threading.Event()  # run() has left the swarm
        self._closing = False
        # until hivemind is up, Ctrl-C leaves at once (there is no epoch to finish), except while hivemind starts:
        # interrupted there, it leaves threads and processes that keep the interpreter from exiting
        self._starting = True
        self._hivemind_starting = False
        self._said_hivemind_died = False
        self._last_recontact = time.monotonic()  # the first re-contact of a lone peer comes a period after the start
        self._said_cut_off = False
        self._addresses: list[str] = []
        self._departure: Departure | None = None  # when the owner's limits (--hours, --max-runtime) end training
        self._signal_name: str | None = None  # the last SIGINT/SIGTERM received
        self.interrupted = False  # a signal stopped this peer before it trained: `swarm join` exits 130
        self._back_at_s: float | None = None
        self.dht: hivemind.DHT | None = None
        self.optimizer: SwarmOptimizer | None = None
        self.view: ProgressView | None = None
        # losses stay on the device until something displays or reports them: .item() per micro-step is a host sync
        self._pending_losses: collections.deque = collections.deque(maxlen=100_000)
        self._loss_lock = threading.Lock()
        self._earlier_windows = _stats_so_far()  # the stats file's counters of earlier --hours windows, if any

    # ---------------------------------------------------------------- the whole life of a volunteer
    def run(self) -> LocalStats:
        s = self.settings
        self._departure = departure(s.training_hours, s.max_runtime_s, s.joined_at_s, time.time())
        try:
            start_shared_memory_manager()  # before hivemind's first shared tensor: a SIGTERM to all must spare it
            self._install_signal_handlers()  # start-up (data, model, the state download) can take minutes
            with keeping_ctrl_c():  # hivemind's averagers would drop it while they start
                self._setup()
            threading.Thread(target=self._watch_hivemind_processes, name="swarm-process-watch", daemon=True).start()
            self._starting = False
            self._sync_with_swarm()
            self._train()
            self._hand_over_state()
        finally:
            self._close()
        return self.stats

    @property
    def comes_back_at_s(self) -> float | None:
        """When the next --hours window opens, if training stopped at the end of one (not for a signal, nor for the
        run's end): `swarm join` then waits for it and joins again (`join_again`)."""
        return None if self._force_stop.is_set() or self._training_over.is_set() else self._back_at_s

    def _hivemind_processes(self) -> dict[str, multiprocessing.Process]:
        """hivemind's child processes this peer cannot train in the swarm without: the DHT node and the averagers."""
        found = {"DHT": self.dht}
        for name in ("grad_averager", "state_averager", "averager"):
            averager = getattr(self.optimizer, name, None)
            if isinstance(averager, multiprocessing.Process):
                found[name.replace("_", " ")] = averager
        return found

    def _watch_hivemind_processes(self, period_s: float = 1.0, grace_s: float = 5.0) -> None:
        """Leave at once when a hivemind child process dies: this peer can no longer reach the swarm.

        The training thread then blocks forever in hivemind (its progress tracker waits on the dead DHT without a
        timeout). Seen with SIGTERM sent to all the peer's processes, as systemd does by default (KillMode=
        control-group): the children died at once while this process began to finish its epoch,
        and it never exited. The OOM killer picking a child does the same. What this peer did is kept: the signed
        records of its epochs are on disk and published at its next `swarm join`.
        """
        while not self._closed.wait(period_s):
            dead = self._dead_hivemind_processes()
            if not dead:
                continue
            if self._closing:  # leaving: hivemind stops its processes itself; just never hang on a dead one
                if not self._closed.wait(30.0):
                    self._leave_now()
                return
            self._say_hivemind_died(dead)
            self._force_stop.set()
            if not self._closed.wait(grace_s):  # else the training loop got out by itself
                self._leave_now()
            return

    def _dead_hivemind_processes(self) -> dict[str, int]:
        """Name -> exit code of the hivemind child processes that have exited."""
        return {name: process.exitcode for name, process in self._hivemind_processes().items()
                if process.exitcode is not None}

    def _say_hivemind_died(self, dead: dict[str, int]) -> None:
        if self._said_hivemind_died:
            return
        self._said_hivemind_died = True
        codes = ", ".join(f"{name} (exit code {code})" for name, code in dead.items())
        cause = (" with this one (a signal sent to all of this peer's processes: run `swarm join` as a service with "
                 "KillMode=mixed, see configs/systemd/)" if self._signal_name is not None else "")
        logger.error(f"hivemind's processes stopped{cause}: {codes}. This peer cannot reach the swarm any more and "
                     f"leaves now; the records of its {self.stats.samples} samples are kept on disk and published at "
                     "its next `swarm join`")

    def _leave_now(self) -> None:
        """Exit the process at once (hivemind's threads wait on its dead processes), keeping what is on disk up to
        date: the contribution records and the stats file (given at most a few seconds)."""
        def save() -> None:
            self.contributions.close_all()
            self._write_stats()
            if self.view is not None:
                self.view.close()
            logger.info(f"Left the swarm after {self.stats.samples} samples in {self.stats.micro_steps} micro-steps")

        saver = threading.Thread(target=save, name="swarm-last-save", daemon=True)
        saver.start()
        saver.join(timeout=5.0)
        logging.shutdown()
        os._exit(0 if self._was_ending_anyway() else 1)

    def _was_ending_anyway(self) -> bool:
        """Whether this process was to end for good when hivemind's processes died, so that their death is no failure:
        a signal asked it to leave (systemd's default stop sends it to them too), or its --max-runtime is used up.
        At an --hours window's end it was to wait for the next window: it exits 1 then, as in the middle of training,
        so that a service with Restart=on-failure starts it again (and it waits for the window)."""
        return self._signal_name is not None or (self._stop_requested.is_set() and self._back_at_s is None)

    def _check_local_settings(self) -> None:
        """Settings that need no swarm, checked before connecting (`swarm join` checks the first ones before it
        even imports torch): a mistake is reported at once, not after the connection or as a crash mid-training."""
        check_local_settings(self.settings)
        self.hardware = pick_hardware(self.settings.device, self.settings.threads)  # checks --device and --threads
        make_local_folders(self.settings)

    def _setup(self) -> None:
        s = self.settings
        initial_peers = parse_initial_peers(s.initial_peers)
        if not initial_peers:
            raise UsageError("--initial-peers is required: pass the address printed by `swarm launch`")
        self._check_local_settings()
        self.identity = Identity.load_or_create(s.identity_dir, name=s.name, team=s.team)
        self.initial_peers = initial_peers
        logger.info(f"Joining the swarm through {initial_peers[0]} as {self.identity.name!r}"
                    + (f" (team {self.identity.team})" if self.identity.team else ""))
        self.dht = create_dht(initial_peers, host=s.host, port=s.port, identity=self.identity,
                              client_mode=s.client_mode, announce_host=s.announce_host,
                              startup_timeout_s=s.connect_timeout_s, port_fix=JOIN_PORT_FIX)
        self.announcement = self._fetch_announcement()
        self.recipe: Recipe = recipe_from_json(self.announcement.recipe_json, source="the recipe published by the coordinator")
        make_compression(self.recipe.collaboration.compression)  # blockwise8 without bitsandbytes: said before the data
        self._announced_recipe = json.loads(self.recipe.to_json())  # as published, before this machine's folders
        self.recipe = self.recipe.model_copy(update={"data": with_local_data(self.recipe.data, s.data_dir)})
        self.recipe = with_local_model(self.recipe, s.model_dir, s.tokenizer_dir)
        self.dht.add_validators(records.schema_validators(self.recipe.run.id))
        self._public_key = RSASignatureValidator(self.identity.signing_key).local_public_key
        logger.info(f"Run {self.recipe.run.id!r}: {self.recipe.run.description or 'no description'}")

        self._addresses = [str(a) for a in self.dht.get_visible_maddrs()][:8] if not s.client_mode else []
        self.tokenizer = build_tokenizer(self.recipe.tokenizer)
        self.peer_id = self.dht.peer_id
        self.data = build_data(self.recipe.data, self.tokenizer, peer_id=self.peer_id.to_bytes(), cache_dir=s.cache_dir)
        check_identity(self.announcement.data_digest, self.announcement.data_description, self.data.identity)
        logger.info(f"Data: {self.data.identity.description} (identity {self.data.identity.digest[:12]}, matches the swarm)")

        self.model = build_model(self.recipe.model, self.tokenizer.vocab_size, self.tokenizer.eos_id,
                                 self.tokenizer.pad_id, seq_len=self.recipe.data.seq_len).to(self.hardware.device)
        self.model.train()
        self._checkpoint_epoch = self._start_epoch = 0
        if self._swarm_is_training():  # this peer loads the others' state (_sync_with_swarm), not a version
            if s.from_checkpoint:
                logger.info(f"Peers are training: starting from their current state, not from --from-checkpoint "
                            f"{s.from_checkpoint} (it is used only when nobody is training)")
        else:
            self._checkpoint_epoch = self._maybe_start_from_checkpoint()
            self._start_epoch = self._first_uncredited_epoch(self._checkpoint_epoch)
        self.micro_batch_size = s.micro_batch_size or (
            self.recipe.collaboration.micro_batch_size if isinstance(self.recipe.collaboration.micro_batch_size, int)
            else pick_micro_batch_size(self.model, self.hardware, self.recipe.data.seq_len,
                                       self.recipe.collaboration.max_micro_batch_size, self.tokenizer.vocab_size))
        self.micro_batch_size = _capped_micro_batch_size(self.micro_batch_size, s.micro_batch_size,
                                                         self.recipe.collaboration.target_batch_size)
        logger.info(f"Model: {count_parameters(self.model) / 1e6:.2f}M parameters on {self.hardware.description}, "
                    f"{self.hardware.precision}, micro-batch {self.micro_batch_size} x {self.recipe.data.seq_len} tokens")
        self.forward = TrainingForward(self.model, self.hardware, s.compile)
        if self.forward.compiled:
            logger.info("Compiling the model with torch.compile (the first micro-step takes a minute or so; "
                        "--compile off skips it)")
        # reuse_grad_buffers: micro-batches accumulate in .grad itself, which hivemind zeroes after each epoch (no
        # zero_grad here: hivemind raises); the optimiser stays on the model's device on a GPU (collaboration.py)
        needed = shared_memory_needed(self.model, self.recipe)
        problem = shared_memory_problem(needed)
        if problem is not None:
            raise SwarmError(problem)
        try:
            with self._hivemind_starts():
                self.optimizer = build_swarm_optimizer(self.dht, self.model, self.recipe, self.identity,
                                                       self.micro_batch_size, client_mode=s.client_mode,
                                                       reuse_grad_buffers=True)
        except RuntimeError as error:  # the estimate fell a little short, or something else filled /dev/shm
            if "shared memory" not in str(error):
                raise
            raise SwarmError(f"Shared memory ran out while starting hivemind's averagers ({error}); "
                             + shared_memory_advice(needed)) from None
        if self._start_epoch and isinstance(self.optimizer, DiLoCoOptimizer):
            self.optimizer.start_at_epoch(self._start_epoch)
        elif self._start_epoch:
            self.optimizer.state_averager.local_epoch = self._start_epoch
            self.optimizer.state_averager._update_scheduler()  # the LR schedule resumes at the start epoch
            self.optimizer.tracker.report_local_progress(self._start_epoch, 0)
        self.contributions = ContributionLog(self.identity.folder / "runs" / self.recipe.run.id, self.identity)
        self.view = ProgressView.create(s.display, self.recipe, self.identity.name)
        self._reporter = threading.Thread(target=self._report_periodically, name="swarm-reporter", daemon=True)

    def _swarm_is_training(self) -> bool:
        """Whether any peer reported training progress recently (a departed peer's record is None or stale)."""
        found = self.dht.get(f"{self.recipe.run.id}_progress", latest=True)
        if found is None or not isinstance(found.value, dict):
            return False
        now = get_dht_time()
        recent = [item.value for item in found.value.values()
                  if item.expiration_time > now and isinstance(item.value, dict)]
        return any(now - float(value.get("time", 0.0)) < 3 * METRICS_PERIOD_S for value in recent)

    def _maybe_start_from_checkpoint(self) -> int:
        """Nobody is training: start from a published version (loaded before hivemind copies the weights)."""
        source = self.settings.from_checkpoint or self.announcement.latest_version
        if not source:
            return 0
        path, _, revision = source.partition("@") if not Path(source).exists() else (source, "", "")
        if not Path(path).exists() and path.count("/") != 1:
            logger.info(f"The published version {source} is not reachable from here; starting from the recipe's weights")
            return 0
        epoch = self.announcement.latest_version_epoch or 0
        metadata = _version_metadata(Path(path))
        version_run = ((metadata.get("recipe") or {}).get("run") or {}).get("id")
        if version_run is not None and version_run != self.recipe.run.id:
            # its epoch would become this run's: the schedule, the limits and the ledger would jump to it
            mismatch = f"{source} is a version of run {version_run!r}, not of this run {self.recipe.run.id!r}"
            if self.settings.from_checkpoint:
                raise UsageError(f"--from-checkpoint {mismatch}: give one of this run's versions (a new run starts "
                                 "from another run's model with model.pretrained in its recipe)")
            logger.warning(f"The published version {mismatch}; starting from the recipe's weights")
            return 0
        epoch = int(metadata.get("epoch", epoch))
        try:
            import transformers

            loaded = transformers.AutoModelForCausalLM.from_pretrained(path, revision=revision or None)
            self.model.load_state_dict(loaded.state_dict())
        except Exception as error:
            if self.settings.from_checkpoint:
                raise UsageError(f"--from-checkpoint {source}: cannot load it ({error})") from None
            logger.warning(f"Could not load the published version {source} ({error}); starting from the recipe's weights")
            return 0
        logger.info(f"Nobody is training: starting from the published version of epoch {epoch} ({source})")
        return epoch

    def _first_uncredited_epoch(self, epoch: int) -> int:
        """The epoch to start at when nobody is training: `epoch`, unless the ledger credits it already.

        A coordinator stopped after crediting epochs past its newest version, while everyone left: the model of
        those epochs is lost, and their numbers are taken in the ledger, so work redone under them would go
        uncredited. The run goes on at the first epoch the ledger has not credited.
        """
        credited = self.announcement.ledger_epoch
        if credited < epoch:
            return epoch
        logger.info(f"The ledger credits epochs up to {credited} already, past the version this peer starts from: "
                    f"starting at epoch {credited + 1}, so that this peer's work is credited")
        return credited + 1

    def _fetch_announcement(self) -> records.RunAnnouncement:
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while True:
            runs = records.read_announcements(self.dht.get(records.RUNS_KEY, latest=True))
            if self.settings.run_id is not None and self.settings.run_id in runs:
                return runs[self.settings.run_id]
            if self.settings.run_id is None and len(runs) == 1:
                return next(iter(runs.values()))
            if self.settings.run_id is None and len(runs) > 1:
                raise UsageError(f"this swarm serves several runs ({', '.join(sorted(runs))}): pick one with --run-id")
            if runs:
                # the swarm answers and serves other runs: a few seconds for an announcement still spreading through
                # the DHT, not the whole connection timeout (a mistyped --run-id waited a minute)
                deadline = min(deadline, time.monotonic() + ANOTHER_RUN_GRACE_S)
            if time.monotonic() > deadline:
                wanted = f"run {self.settings.run_id!r}" if self.settings.run_id else "any run"
                seen = f" (it serves: {', '.join(sorted(runs))})" if runs else ""
                if runs and self.settings.run_id is not None:
                    raise UsageError(f"--run-id {self.settings.run_id}: this swarm serves {', '.join(sorted(runs))}, "
                                     "not that run: pick one of those, or leave --run-id out")
                raise SwarmError(f"connected, but found no announcement of {wanted} in the swarm{seen}. "
                                 "Check that `swarm launch` is running and that the address is the one it printed.")
            time.sleep(1.0)

    def _sync_with_swarm(self) -> None:
        """Start from the swarm's current state rather than from scratch (if anyone has trained yet)."""
        tracker = self.optimizer.tracker
        deadline = time.monotonic() + 10.0
        while not tracker.fetched_global_progress_this_epoch.is_set() and time.monotonic() < deadline:
            time.sleep(0.2)
        progress = tracker.global_progress
        over = self._stop_reason()
        if over is not None and over.startswith("the run"):
            # nothing left to train: downloading a state to train from would only delay the exit, by up to
            # load_state_timeout_s when its peers cannot serve it (seen: 5 minutes of retries after a run had ended)
            logger.info(f"The swarm is at epoch {progress.epoch}: {over} before this peer joined; nothing to train")
            return
        if progress.epoch <= self.optimizer.local_epoch:
            pretrained = self.recipe.model.pretrained
            initial = f"the pretrained weights of {pretrained}" if pretrained else "the recipe's initial weights"
            start = (f"the published version of epoch {self._checkpoint_epoch}" if self._checkpoint_epoch
                     else initial + ("" if self._start_epoch else " (as every peer at epoch 0)"))
            at = f" at epoch {self._start_epoch}" if self._start_epoch != self._checkpoint_epoch else ""
            logger.info(f"No peer is ahead of this one: starting from {start}{at}")
            return
        logger.info(f"Loading the current state from peers (swarm epoch {progress.epoch}, {progress.num_peers} peer(s))")
        # a download can fail part-way (a donor busy averaging, a chunk late on a slow link): hivemind then returns
        # as if it had succeeded, so retry until this peer reaches the swarm's epoch or load_state_timeout_s is spent
        deadline = time.monotonic() + self.recipe.collaboration.load_state_timeout_s
        for attempt in itertools.count(1):
            if self._load_state_with_watchdog(max(1.0, deadline - time.monotonic())):
                self.stats.loaded_state_epoch = self.optimizer.local_epoch
                logger.info(f"Loaded the swarm's state at epoch {self.optimizer.local_epoch}")
                return
            over = self._stop_reason()
            if time.monotonic() >= deadline - 1.0 or self._stop_requested.is_set() or over is not None:
                break
            pause_s = min(2.0 * 2 ** (attempt - 1), 16.0)  # each try costs the donors a transfer, and logs an error
            logger.warning(f"Loading the swarm's state (attempt {attempt}) left this peer at epoch "
                           f"{self.optimizer.local_epoch}, the swarm is at {tracker.global_epoch}: trying again in "
                           f"{pause_s:.0f} s")
            self._stop_requested.wait(pause_s)
        if self._stop_requested.is_set():
            return
        if over is not None:
            logger.info(f"Not loading the swarm's state: {over}")
            return
        logger.warning(f"Could not load the swarm's state within {self.recipe.collaboration.load_state_timeout_s:.0f} s "
                       "(collaboration.load_state_timeout_s): training from this peer's own weights; the next epoch "
                       "check tries again")

    def _load_state_with_watchdog(self, timeout_s: float | None = None) -> bool:
        """hivemind's loader retries forever and returns None either way: bound it and check the epoch moved."""
        timeout_s = self.recipe.collaboration.load_state_timeout_s if timeout_s is None else timeout_s
        before = self.optimizer.local_epoch
        done = threading.Event()

        def load():
            try:
                self.optimizer.load_state_from_peers()
            except Exception as error:  # keep training from our own state; the next sync check retries
                logger.warning(f"Loading state from peers failed: {error!r}")
            finally:
                done.set()

        threading.Thread(target=load, name="load-state", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not done.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            if self._stop_requested.is_set():  # Ctrl-C while the state downloads: the owner need not wait for it
                return False
            if time.monotonic() < deadline:
                continue
            logger.warning(f"No peer sent its state within {timeout_s:.0f} s (collaboration.load_state_timeout_s); "
                           "training on from the current weights")
            return False
        global_epoch = self.optimizer.tracker.global_epoch
        return self.optimizer.local_epoch >= max(before + (global_epoch > before), global_epoch - 1)

    # ---------------------------------------------------------------- the training loop
    def _train(self) -> None:
        finishing_epoch = None
        self._reporter.start()
        while not self._force_stop.is_set():
            if self._stop_requested.is_set() and finishing_epoch is None:
                finishing_epoch = self.optimizer.local_epoch
                self._finish_deadline = time.monotonic() + self._finish_budget_s()
                if self.stats.micro_steps == 0:
                    # Ctrl-C while the swarm's state loads is still the start-up (as the README says): exit code 130
                    self.interrupted = self._signal_name is not None
                    logger.info(f"Stopping{f' ({self._signal_name})' if self.interrupted else ''} before training "
                                "began: leaving now")
                    break
                logger.info("Stopping: finishing the current epoch so this peer's samples reach the swarm "
                            "(press Ctrl-C again to leave at once)")
            if finishing_epoch is not None and (self.optimizer.local_epoch > finishing_epoch
                                                or time.monotonic() > self._finish_deadline
                                                or self.optimizer.tracker.local_progress.samples_accumulated == 0):
                break
            reason = self._stop_reason()
            if reason and reason.startswith("the run"):
                logger.info(f"Stopping: {reason}")
                if self.stats.micro_steps > 0:  # a peer that never trained has no state of the run's to serve
                    self._serve_final_state()
                break
            if reason and not self._stop_requested.is_set():  # the owner's limit: leave as after Ctrl-C, the epoch
                logger.info(f"Stopping: {reason}")  # in progress finished first (the other peers' round needs it)
                self._back_at_s = self._departure.back_at_s
                self._stop_requested.set()
                continue
            if self._resync_requested.is_set():
                self._resync_requested.clear()
                loading = time.perf_counter()
                self._load_state_with_watchdog()
                self._count_pause(time.perf_counter() - loading, "loading the swarm's state")
            self._train_micro_step()

    def _train_micro_step(self) -> None:
        started = time.perf_counter()
        epoch = self.optimizer.local_epoch
        batch = self.data.next_batch(epoch, self.micro_batch_size).to(self.hardware.device, non_blocking=True)
        loss = self.forward(batch)
        loss.backward()
        stepping = time.perf_counter()
        self.optimizer.step()  # no zero_grad: with reuse_grad_buffers hivemind clears the gradients each epoch
        self._pending_losses.append(loss.detach())
        ended = time.perf_counter()
        elapsed = ended - started
        if self.optimizer.local_epoch != epoch:  # the step that ends an epoch waits for the swarm
            elapsed = stepping - started
            self._count_pause(ended - stepping, "the epoch's averaging")
        self.stats.compute_s += elapsed
        self.stats.samples += batch.shape[0]
        self.stats.micro_steps += 1
        if self.stats.first_sample_s is None:
            self.stats.first_sample_s = time.time() - self.stats.started_at
            logger.info(f"First samples contributed {self.stats.first_sample_s:.1f} s after start")
            self._write_stats()
        self.contributions.add(epoch, batch.shape[0], elapsed)
        if self.optimizer.local_epoch != epoch:
            self._drop_unsent_epochs()
            self.contributions.close_epochs_before(self.optimizer.local_epoch)
            self._epoch_closed.set()
        if self.view is not None:
            self.view.on_step(self._snapshot)  # a callable: built only when the view actually refreshes

    def _count_pause(self, seconds: float, cause: str) -> None:
        """Training stood still for `seconds` waiting on the swarm: account for it, and say so when it was long."""
        self.stats.sync_s += seconds
        if self.stats.first_sample_s is None:
            return  # joining: the first samples' delay is measured on its own
        self.stats.longest_pause_s = max(self.stats.longest_pause_s, seconds)
        timeout = self.recipe.collaboration.averaging_timeout_s
        if seconds > timeout:
            logger.info(f"Training waited {seconds:.0f} s for {cause}, longer than collaboration.averaging_timeout_s "
                        f"({timeout:g} s): peers or links were slow or gone")

    def _hand_over_state(self) -> None:
        """The last peer training leaves (Ctrl-C, --max-runtime): the swarm's progress since the newest version lives
        only in its state, and the next volunteer would start from that older version, its epochs credited but
        their training lost. Serve the state until the coordinator has saved it as a version, for a while."""
        if self._force_stop.is_set() or self.stats.micro_steps == 0 or self._training_over.is_set():
            return  # the run's end serves its final state already
        try:
            announcement = self._current_announcement()
            alone = self._other_live_peers() == 0
        except Exception as error:
            logger.debug(f"Could not tell whether other peers train: {error!r}")
            return
        epoch = self.optimizer.local_epoch
        newest = announcement.latest_version_epoch if announcement is not None else None
        if not alone or announcement is None or announcement.status != "running" or (newest or -1) >= epoch:
            return
        logger.info(f"No other peer is training: waiting up to {HAND_OVER_S:.0f} s for the coordinator to save this "
                    f"peer's state (epoch {epoch}) as a version, so the next volunteer starts from it (press Ctrl-C "
                    "again to leave at once)")
        deadline = time.monotonic() + HAND_OVER_S
        leaving = records.LeavingRecord(peer_id=self.peer_id.to_base58(), epoch=epoch, time=float(get_dht_time()))
        while time.monotonic() < deadline and not self._force_stop.is_set():
            try:
                self.dht.store(records.leaving_key(self.recipe.run.id), subkey=self._public_key,
                               value=leaving.copy(update=dict(time=float(get_dht_time()))).dict(),
                               expiration_time=get_dht_time() + 2 * HAND_OVER_S, return_future=True)
                announcement = self._current_announcement()
            except Exception as error:
                logger.debug(f"Handing over the state: {error!r}")
                announcement = None
            newest = announcement.latest_version_epoch if announcement is not None else None
            if newest is not None and newest >= epoch:
                logger.info(f"The coordinator saved this peer's state as the version of epoch {newest}")
                return
            self._force_stop.wait(3.0)
        if not self._force_stop.is_set():
            logger.info("The coordinator did not save this peer's state in time: the next volunteer starts from the "
                        "newest published version")

    def _serve_final_state(self, timeout_s: float = 120.0) -> None:
        """Stay reachable until the coordinator has fetched the final version (it downloads it from peers)."""
        finish_rounds = getattr(self.optimizer, "finish_rounds", None)  # DiLoCo: an overlapped round's step is pending
        if finish_rounds is not None:
            finish_rounds()
        logger.info("Waiting for the coordinator to save the final version (serving this peer's state)")
        self._training_over.set()
        deadline = time.monotonic() + timeout_s
        self.contributions.close_all()
        try:  # now, not at the next periodic report: the coordinator's final credit pass waits only a few seconds
            self._publish_contributions()
        except Exception as error:
            logger.debug(f"Publishing the last contributions failed: {error!r}")
        said_stopped = False
        while time.monotonic() < deadline and not self._stop_requested.is_set():
            announcement = self._current_announcement()
            if announcement is not None and announcement.status == "finished":
                logger.info("The coordinator saved the final version")
                return
            if announcement is not None and announcement.status == "stopped" and not said_stopped:
                said_stopped = True
                logger.info(f"The coordinator is stopped: this peer keeps serving its state for "
                            f"{deadline - time.monotonic():.0f} s more, in case `swarm launch` is started again to "
                            "save the final version (Ctrl-C leaves now)")
            time.sleep(2.0)

    def _finish_budget_s(self) -> float:
        collab = self.recipe.collaboration
        budget = collab.matchmaking_time_s + collab.averaging_timeout_s + 30.0
        if collab.mode == "diloco":  # the round in progress needs its remaining inner steps too
            per_step_s = self.stats.compute_s / max(1, self.stats.micro_steps)
            budget += collab.diloco.inner_steps * per_step_s
        return budget

    def _stop_reason(self) -> str | None:
        limits, epoch = self.recipe.limits, self.optimizer.tracker.global_epoch
        end_epoch = self.announcement.end_epoch
        if end_epoch is not None and max(epoch, self.optimizer.local_epoch) >= end_epoch:
            return f"the run was ended by its organiser at epoch {end_epoch}"
        if limits.max_epochs is not None and max(epoch, self.optimizer.local_epoch) >= limits.max_epochs:
            return f"the run reached limits.max_epochs ({limits.max_epochs})"
        if limits.max_samples is not None and epoch * self.recipe.collaboration.target_batch_size >= limits.max_samples:
            return f"the run reached limits.max_samples ({limits.max_samples})"
        if limits.max_wall_time_s is not None and time.time() - self.announcement.started_at >= limits.max_wall_time_s:
            return f"the run reached limits.max_wall_time_s ({limits.max_wall_time_s:.0f} s)"
        if self._departure is not None and time.time() >= self._departure.at_s:  # --max-runtime, --hours
            return self._departure.reason
        return None

    def _drop_unsent_epochs(self) -> None:
        """Work whose gradient never reached the swarm (it was not finite) is not claimed: it added nothing."""
        unsent = getattr(self.optimizer, "unsent_epochs", None)
        while unsent:
            epoch = unsent.pop()
            samples = self.contributions.drop(epoch)
            if samples:
                logger.warning(f"Epoch {epoch}: this peer's gradient was not finite, so it gave the swarm nothing; its "
                               f"{samples} samples are not claimed")

    # ---------------------------------------------------------------- reporting and health
    def _update_loss_ema(self) -> float | None:
        """Fold the losses computed since the last call into the EMA: one host sync for all of them."""
        with self._loss_lock:
            pending = []
            while self._pending_losses:
                pending.append(self._pending_losses.popleft())
            if pending:
                for value in torch.stack(pending).float().tolist():
                    if math.isfinite(value):
                        ema = self.stats.loss_ema
                        self.stats.loss_ema = value if ema is None else 0.9 * ema + 0.1 * value
                        continue
                    self.stats.non_finite_losses += 1
                    if self.stats.non_finite_losses == 1:
                        logger.warning(f"The training loss is {value}: the model this peer holds has diverged. If every "
                                       "peer shows this, tell the run's organiser (the coordinator will not publish "
                                       "a diverged model); if only this one does, restart it to reload the swarm's state")
            return self.stats.loss_ema

    def _snapshot(self) -> dict:
        opt, progress = self.optimizer, self.optimizer.tracker.global_progress
        self._update_loss_ema()
        elapsed = max(1e-9, time.time() - self.stats.started_at)
        group_sizes = dict(opt.rounds.group_sizes)  # a copy: the training thread may record a round meanwhile
        return dict(
            epoch=opt.local_epoch,
            swarm_samples=progress.samples_accumulated,
            target_batch_size=progress.target_batch_size,
            peers=progress.num_peers,
            local_samples_per_s=opt.tracker.performance_ema.samples_per_second,
            samples=self.stats.samples,
            loss=self.stats.loss_ema,
            averaged_rounds=opt.rounds.averaged,
            solo_rounds=opt.rounds.solo,
            partial_rounds=opt.rounds.partial,  # averaged, but without part of the data (next_chunk_timeout)
            repair_rounds=getattr(opt, "repair_rounds", 0),  # DiLoCo: outer parameters re-averaged after a broken round
            last_group_size=opt.rounds.last_group_size,
            # rounds by the size of the group they reached: groups smaller than the swarm mean its rounds split
            group_sizes={str(size): count for size, count in sorted(group_sizes.items())},
            compute_utilisation=self.stats.compute_s / elapsed,
        )

    def _report_periodically(self) -> None:
        """Background thread: DHT reads and writes can take seconds on real links; the training loop never waits."""
        background_torch_on_one_thread()  # its loss reads must not start a second OpenMP team (swarm.hardware)
        last_report = time.monotonic()
        while not self._reporter_stop.is_set():
            closed = self._epoch_closed.wait(max(0.0, last_report + METRICS_PERIOD_S - time.monotonic()))
            if self._reporter_stop.is_set():
                break
            if closed:  # its claim goes out now, not up to a period later (a machine paused meanwhile lost it)...
                self._epoch_closed.clear()
                # ...but not more often than this: epochs of a fraction of a second made a storm of DHT requests
                if self._reporter_stop.wait(max(0.0, last_report + MIN_REPORT_GAP_S - time.monotonic())):
                    break
            last_report = time.monotonic()
            try:
                self._report()
                self._check_not_alone()
            except Exception as error:
                logger.debug(f"Reporting failed: {error!r}")

    def _report(self) -> None:
        snapshot = self._snapshot()
        metrics = records.PeerMetrics(
            peer_id=self.peer_id.to_base58(), name=self.identity.name, team=self.identity.team,
            epoch=snapshot["epoch"], samples_total=self.stats.samples,
            samples_per_second=float(snapshot["local_samples_per_s"]),
            loss=None if self.stats.loss_ema is None else float(self.stats.loss_ema),
            averaged_rounds=snapshot["averaged_rounds"], solo_rounds=snapshot["solo_rounds"],
            last_group_size=snapshot["last_group_size"], device=self.hardware.description[:64],
            version=swarm.__version__, time=float(get_dht_time()), client_mode=self.settings.client_mode,
            addresses=self._addresses)
        # the owner's display and stats first: the DHT calls below can wait on an unresponsive node (a coordinator
        # stopped with SIGSTOP froze this peer's progress lines for as long, while it trained on)
        if self.view is not None:
            self.view.on_report(snapshot)
        self._write_stats()
        self.dht.store(records.metrics_key(self.recipe.run.id), subkey=self._public_key, value=metrics.dict(),
                       expiration_time=get_dht_time() + records.METRICS_TTL_S, return_future=True)
        self._publish_contributions()

    def _publish_contributions(self) -> None:
        """Re-publish every closed epoch the coordinator's ledger has not committed yet."""
        announcement = self._current_announcement()
        if announcement is not None:
            self.announcement = announcement
            self._follow_recipe_changes(announcement)
        self._say_missed_credit(self.contributions.missed(self.announcement.ledger_epoch))
        pending = self.contributions.unpublished(self.announcement.ledger_epoch)
        record = records.ContributionRecord(peer_id=self.peer_id.to_base58(), name=self.identity.name,
                                            team=self.identity.team, version=swarm.__version__,
                                            epochs=pending, time=float(get_dht_time()))
        self.dht.store(records.contributions_key(self.recipe.run.id), subkey=self._public_key, value=record.dict(),
                       expiration_time=get_dht_time() + records.CONTRIBUTIONS_TTL_S, return_future=True)

    def _follow_recipe_changes(self, announcement: records.RunAnnouncement) -> None:
        """An organiser who relaunches the coordinator with new limits (to train on past them), checkpoint or credit
        settings: this peer follows them (it stopped at the old limit while the coordinator expected more). A change
        to the training is refused at launch while volunteers train; should one appear, it is said, not followed."""
        try:
            published = json.loads(recipe_from_json(announcement.recipe_json).to_json())
        except Exception as error:  # the coordinator's own recipe: validated at launch; never a reason to stop here
            logger.debug(f"Could not read the announced recipe: {error!r}")
            return
        changes = recipe_changes(self._announced_recipe, published)
        if not changes:
            return
        self._announced_recipe = published
        if training_changes(changes):
            logger.warning(f"The run's coordinator now publishes a recipe that changes the training "
                           f"({', '.join(training_changes(changes))}): this peer keeps the one it joined with; "
                           "leave and join again to take it")
            return
        new = recipe_from_json(announcement.recipe_json)
        self.recipe = self.recipe.model_copy(update=dict(
            limits=new.limits, checkpoint=new.checkpoint, credit=new.credit,
            run=self.recipe.run.model_copy(update=dict(description=new.run.description))))
        logger.info(f"The organiser changed {', '.join(changes)}: this peer follows")

    def _say_missed_credit(self, missed: list) -> None:
        if not missed:
            return
        epochs = (f"epoch {missed[0].epoch}" if len(missed) == 1
                  else f"epochs {', '.join(str(work.epoch) for work in missed)}")
        logger.warning(f"This peer's work in {epochs} ({sum(work.samples for work in missed)} samples) reached the "
                       f"swarm only after the coordinator had credited {'it' if len(missed) == 1 else 'them'}: this "
                       "machine was paused or cut off as the epoch ended, so that work is not credited")

    def _dht_get(self, key: str, timeout_s: float = DHT_GET_TIMEOUT_S):
        """`dht.get(key, latest=True)`, or None after `timeout_s`: a node that stopped answering (a coordinator
        stopped with SIGSTOP) held the reporting thread for as long as it was stopped."""
        future = self.dht.get(key, latest=True, return_future=True)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            logger.debug(f"The DHT did not answer for {key} within {timeout_s:.0f} s")
            return None

    def _current_announcement(self) -> records.RunAnnouncement | None:
        return records.read_announcements(self._dht_get(records.RUNS_KEY)).get(self.recipe.run.id)

    def _other_live_peers(self) -> int:
        """Peers of this run that published metrics recently and have not left, as seen through the DHT."""
        found = self._dht_get(records.metrics_key(self.recipe.run.id))
        progress = self._dht_get(f"{self.recipe.run.id}_progress")
        live = records.live_peers(found, progress, get_dht_time(), max_age_s=3 * METRICS_PERIOD_S)
        return len([peer for peer in live if peer != self.peer_id.to_base58()])

    def _check_not_alone(self) -> None:
        """hivemind swarms started at the same moment have been seen to split and train apart silently."""
        rounds = self.optimizer.rounds
        solo = rounds.consecutive_solo  # read once: the training thread resets it when a round averages
        if solo < SOLO_ROUNDS_BEFORE_RECONNECT or self._training_over.is_set():
            return
        others = self._other_live_peers()
        if others == 0:
            self._recontact_when_cut_off()
            return
        logger.warning(f"Training alone for {solo} rounds while the swarm has {others} other "
                       "peer(s): reconnecting to the initial peers and re-syncing the state")
        self.stats.reconnects += 1
        rounds.consecutive_solo = 0
        try:
            self.dht.run_coroutine(partial(recontact, addresses=self.initial_peers))
        except Exception as error:
            logger.warning(f"Reconnecting failed ({error!r}); will retry after the next rounds")
            return
        if self.optimizer.tracker.global_epoch > self.optimizer.local_epoch:
            self._resync_requested.set()  # the training thread loads the state between micro-steps

    def _recontact_when_cut_off(self) -> None:
        """Alone, and the DHT shows no other peer: the swarm may have emptied, or this peer's link was down long
        enough for its DHT node to forget every other node, which it never finds again by itself (seen after a
        one-minute cut: the peer trained alone for good, with no word). Dial the initial peers now and then; once
        they answer, the DHT shows the others, and the check above re-syncs with them."""
        now = time.monotonic()
        if now - self._last_recontact < RECONTACT_PERIOD_S:
            return
        self._last_recontact = now
        try:
            answered = self.dht.run_coroutine(partial(recontact, addresses=self.initial_peers))
        except Exception as error:
            logger.debug(f"Re-contacting the initial peers failed: {error!r}")
            answered = 0
        if answered == 0 and not self._said_cut_off:
            self._said_cut_off = True
            logger.warning(f"Training alone, and none of the initial peers answers: this machine's network may be "
                           f"down, or the swarm has no one else now. Trying them again every {RECONTACT_PERIOD_S:.0f} "
                           "s meanwhile")
        elif answered and self._said_cut_off:
            self._said_cut_off = False
            logger.info(f"{answered} initial peer(s) answer again: looking for the swarm's other peers")

    def _write_stats(self) -> None:
        if not self.settings.stats_file:
            return
        snapshot = self._snapshot() if self.optimizer is not None else {}
        data = dict(snapshot, peer_id=self.peer_id.to_base58(), name=self.identity.name, team=self.identity.team,
                    micro_steps=self.stats.micro_steps, compute_s=self.stats.compute_s, sync_s=self.stats.sync_s,
                    longest_pause_s=self.stats.longest_pause_s,
                    non_finite_losses=self.stats.non_finite_losses,
                    wall_s=time.time() - self.stats.started_at, reconnects=self.stats.reconnects,
                    loaded_state_epoch=self.stats.loaded_state_epoch, first_sample_s=self.stats.first_sample_s,
                    micro_batch_size=self.micro_batch_size,
                    device=self.hardware.description, run_id=self.recipe.run.id)
        data = self._with_earlier_windows(data)
        _carried_stats.update(data)  # for the next --hours window, if `swarm join` runs again (join_again)
        path = Path(self.settings.stats_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)

    def _with_earlier_windows(self, data: dict) -> dict:
        """This window's stats with the counters of the earlier --hours windows of this `swarm join` added in.

        The process runs itself again between windows (`join_again`), and its counters started from zero each time.
        Only for the same peer in the same run: an organiser may start a new run at the same address meanwhile.
        `wall_s` and `compute_utilisation` then count the time spent in the windows, not the waits between them.
        """
        earlier = self._earlier_windows
        if not earlier or earlier.get("peer_id") != data["peer_id"] or earlier.get("run_id") != data["run_id"]:
            return dict(data, windows=1)
        totals = dict(data, windows=int(earlier.get("windows", 1)) + 1)
        for key in WINDOW_TOTALS:
            if isinstance(earlier.get(key), (int, float)) and isinstance(data.get(key), (int, float)):
                totals[key] = data[key] + earlier[key]
        totals["longest_pause_s"] = max(data["longest_pause_s"], earlier.get("longest_pause_s") or 0.0)
        if isinstance(earlier.get("group_sizes"), dict) and "group_sizes" in data:
            group_sizes = collections.Counter(data["group_sizes"])
            group_sizes.update(earlier["group_sizes"])
            totals["group_sizes"] = dict(sorted(group_sizes.items(), key=lambda item: int(item[0])))
        if "compute_utilisation" in data:
            totals["compute_utilisation"] = totals["compute_s"] / max(1e-9, totals["wall_s"])
        return totals

    # ---------------------------------------------------------------- leaving
    @contextlib.contextmanager
    def _hivemind_starts(self) -> Iterator[None]:
        """A Ctrl-C during start-up waits for the end of this block: hivemind interrupted while it builds its optimizer
        leaves threads and processes behind that keep the interpreter from exiting."""
        self._hivemind_starting = True
        try:
            yield
        finally:
            self._hivemind_starting = False
        if self._stop_requested.is_set():
            raise KeyboardInterrupt

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum, _frame):
            self._signal_name = signal.Signals(signum).name
            if self._starting:
                name = signal.Signals(signum).name
                if self._stop_requested.is_set():
                    logger.info(f"{name} again: leaving at once")
                    logging.shutdown()
                    os._exit(130)  # hivemind's processes die with this one (swarm.processes)
                self._stop_requested.set()
                if self._hivemind_starting:
                    logger.info(f"Stopping ({name}) during start-up: leaving as soon as hivemind has started, in a "
                                "few seconds (press Ctrl-C again to leave at once)")
                    return
                logger.info(f"Stopping ({name}) during start-up: nothing is trained yet, so this peer leaves now")
                raise KeyboardInterrupt
            if self._stop_requested.is_set():
                self._force_stop.set()
                raise KeyboardInterrupt
            self._stop_requested.set()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)

    def _close(self) -> None:
        dead = self._dead_hivemind_processes() if self.optimizer is not None else {}
        self._closing = True  # the averagers and the DHT shut down now: the process watch must not take it for death
        self._reporter_stop.set()
        self._epoch_closed.set()
        if dead:  # hivemind's calls and its threads would wait on the dead processes forever
            self._say_hivemind_died(dead)
            self._leave_now()
        if self.optimizer is not None:
            try:
                self.contributions.close_all()
                self._write_stats()
                self._report()
            except Exception as error:
                logger.debug(f"Final report failed: {error!r}")
        if self.view is not None:
            self.view.close()
        if self.optimizer is not None:
            self.optimizer.shutdown()
        if self.dht is not None:
            self.dht.shutdown()
        if self.optimizer is not None:
            logger.info(f"Left the swarm after {self.stats.samples} samples in {self.stats.micro_steps} micro-steps; "
                        f"averaged {self.optimizer.rounds.averaged} rounds with other peers")
        self._closed.set()


def join_again(joined_at_s: float) -> NoReturn:
    """Run this `swarm join` again, in this process, after an --hours window ended: like a fresh start, it waits for
    the next window, then joins the swarm anew and loads its latest state.

    Not a new Volunteer in the same interpreter: torch would keep its memory while it waits, on a GPU its CUDA
    context too (hundreds of MB of the owner's GPU memory, all day), and hivemind keeps threads and state per process
    that a second DHT and optimizer would find. A process that replaces itself keeps its id, so a terminal's Ctrl-C,
    `kill PID` and a service manager reach it as before; only the --max-runtime start and the --stats-file counters
    are carried over.
    """
    _end_child_processes()
    os.environ[JOINED_AT_ENV] = repr(joined_at_s)
    if _carried_stats:
        os.environ[STATS_SO_FAR_ENV] = json.dumps(_carried_stats)
    for handler in logging.getLogger("swarm").handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _stats_so_far() -> dict:
    """The counters the previous --hours window's volunteer left in STATS_SO_FAR_ENV ({} in a fresh `swarm join`)."""
    try:
        earlier = json.loads(os.environ.get(STATS_SO_FAR_ENV, "{}"))
    except ValueError:
        return {}
    return earlier if isinstance(earlier, dict) else {}


def _end_child_processes() -> None:
    """Before this process runs `swarm join` again: hivemind's processes end (one left over would hold this peer's
    identity and port when it joins again), and so does torch's shared-memory manager, which lives as long as a process
    holds its socket: libshm opens it inheritable, and each re-run kept one more manager (about 100 MB each)."""
    deadline = time.monotonic() + CHILDREN_EXIT_S
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    for child in multiprocessing.active_children():
        logger.warning(f"hivemind's process {child.name} (pid {child.pid}) did not exit within {CHILDREN_EXIT_S:.0f} "
                       "s of leaving: stopping it")
        child.kill()
        child.join(5.0)
    for fd in _inheritable_sockets():
        os.close(fd)
    deadline = time.monotonic() + 10.0
    for pid in _child_process_ids():  # the manager, which exits a few seconds after its last client has gone
        while not _has_exited(pid):
            if time.monotonic() > deadline:
                logger.debug(f"Child process {pid} still runs as `swarm join` starts again")
                break
            time.sleep(0.1)


def _has_exited(pid: int) -> bool:
    """Whether a child process has exited (it is reaped then)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


def _inheritable_sockets() -> list[int]:
    found = []
    with contextlib.suppress(OSError):  # no /proc (macOS): nothing to close
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            with contextlib.suppress(OSError):
                if fd > 2 and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") and os.get_inheritable(fd):
                    found.append(fd)
    return found


def _child_process_ids() -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(pid) for pid in (task / "children").read_text().split()]
    return found
