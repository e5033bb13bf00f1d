"""The coordinator behind `swarm launch`: first DHT node of a run, recipe publisher, monitor and checkpointer.

Training never depends on it: peers average among themselves. It announces the run (recipe + data identity)
so volunteers can join with nothing but its address, follows the swarm's progress, publishes model versions
every `checkpoint.every_epochs` epochs and writes `status.json` (and, at the end, `summary.json`).

Launched again with the same folders, it goes on from the newest published version: it announces it (a volunteer who
finds nobody training starts from it) and takes its epoch as the swarm's; a run that already reached its limits says
so and exits. Published versions are never replaced. Stopping the coordinator (Ctrl-C, SIGTERM) ends its watch, not
the run: its status is "stopped", and "finished" only once the run reached its limits. If its DHT process dies (the
log says "The coordinator's DHT process ... has exited"), it saves the ledger and exits with code 1: launch it again.

>>> coordinator = Coordinator(load_recipe("recipes/tiny-stdlib.yaml"), CoordinatorSettings(port=31337))
>>> coordinator.run()   # doctest: +SKIP  (prints the `swarm join` command, returns when the run is over)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import types
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import hivemind
from hivemind.optim.progress_tracker import LocalTrainingProgress
from hivemind.p2p import PeerID
from hivemind.utils import get_dht_time

import swarm
from swarm import records
from swarm.data import build_data, data_copy_note
from swarm.errors import SwarmError, UsageError
from swarm.evaluation import validation_loss
from swarm.identity import Identity
from swarm.ledger import Ledger, key_fingerprint, load_or_create_signing_key
from swarm.model import build_model, count_parameters, organiser_folders
from swarm.network import create_dht, join_addresses, recontact
from swarm.processes import (keeping_ctrl_c, share_with_forked_processes,
                             start_shared_memory_manager)
from swarm.recipe import Recipe, recipe_changes, training_changes
from swarm.tokenizer import build_tokenizer
from coordinator.accounting import Accounting
from coordinator.checkpoint import (VersionExistsError, VersionInfo, latest_version, published_epoch, save_version,
                                   version_name)
from coordinator.dashboard import DashboardServer
from coordinator.hub import HubPublisher
from coordinator.settings import CoordinatorSettings, check_folder, check_launch_flags, dashboard_error
from coordinator.state import StateFetcher

logger = logging.getLogger("swarm.coordinator")

ANNOUNCE_PERIOD_S = 20.0
MONITOR_PERIOD_S = 2.0
FINAL_STATE_TIMEOUT_S = 90.0
FINAL_LAST_EPOCH_WAIT_S = 30.0  # how long the final fetch asks again for a state of the run's last epoch
# every DHT request has a deadline: hivemind's own calls wait forever, and on a DHT process that has died (a SIGTERM
# to all the coordinator's processes, the OOM killer) they never return. A get of the run's keys takes well under a
# second on a LAN; a dead process is noticed within DHT_POLL_S.
DHT_CALL_TIMEOUT_S = 20.0
DHT_POLL_S = 0.5
# how long to wait for a peer's last claims before the final credit pass: peers publish every 5 s
LAST_CLAIMS_WAIT_S = 6.0
# an epoch is granted once peers had time to publish it: 12 s after a later epoch was seen to begin. Not "N epochs
# later": peers publish every METRICS_PERIOD_S (5 s), and a fast swarm (1 s epochs) finalized epochs before their
# claims arrived, leaving whole epochs uncredited.
FINALIZE_LAG_S = 12.0
# An epoch whose progress showed samples of a peer that has not sent its claim yet is held up to this long after it
# ended: a volunteer killed as the epoch closed (before its claim went out) restarts with the claim in its log, and
# start-up alone took about 25 s in a long run with churn. An organiser's ledger lags by at most this much.
CLAIM_GRACE_S = 60.0
MAX_REMEMBERED_PEERS = 16
HISTORY_FILE = "history.json"  # in the state folder: the dashboard's curves, across restarts
SHORT_EPOCH_WINDOW_S = 60.0  # the epoch length that goes with it is measured over this long
SHORT_EPOCH_MIN_ROUNDS = 12  # rounds the alive peers report between two looks at how many ran alone
RECIPE_CHECK_READS = 10  # reads of the peers' metrics, 2 s apart, before a recipe that changes the training is let go
# (a relaunched coordinator's DHT node found the volunteers' records only ~13 s after it started)
HUB_PENDING_FILE = "hub_pending.json"  # in the state folder: versions not uploaded to the Hub yet, for the next launch
HISTORY_SAVE_PERIOD_S = 10.0
MAX_HISTORY_ROWS = 2000  # per-epoch rows the dashboard's curves keep (thinned_history)
MAX_PEERS_LEAVING_AT_ONCE = 4  # the coordinator looks for leaving peers only when this few are alive
RECONTACT_AFTER_S = 30.0  # with no live peer for this long, the coordinator dials the peers it saw last...
RECONTACT_PERIOD_S = 30.0  # ...and again at this period, until one reports
PEER_ALIVE_S = 3 * 5.0  # a peer whose metrics are fresher than this is alive (peers publish every 5 s)

# how the coordinator's watch ended
FINISHED = "finished"  # the run reached its limits (now, or before this launch)
STOPPED = "stopped"  # Ctrl-C or SIGTERM: volunteers may train on, a restarted coordinator follows them again
DHT_LOST = "dht-lost"  # the DHT process died under the coordinator: it can no longer follow the swarm


class DHTLostError(SwarmError):
    """The coordinator's DHT process has exited: nothing more can be read from or told to the swarm."""


@dataclass
class SwarmView:
    """What the monitor knows of the run, rebuilt from the DHT every few seconds."""

    epoch: int = 0
    samples_accumulated: int = 0
    alive_peers: int = 0
    samples_per_second: float = 0.0
    peers: dict = field(default_factory=dict)  # peer_id -> latest PeerMetrics (kept after the peer leaves)
    # the peers counted in alive_peers: live progress record and fresh metrics. A volunteer that leaves withdraws its
    # record at once, so the peers table and swarm_peer_alive follow it, not 15-30 s later (its metrics' age)
    alive_ids: frozenset = frozenset()

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
        collaboration = recipe.collaboration
        # the largest micro-batch an honest peer may use: the recipe's, or the most `auto` picks
        micro_batch = max(collaboration.max_micro_batch_size,
                          collaboration.micro_batch_size if isinstance(collaboration.micro_batch_size, int) else 0)
        self.accounting = Accounting(run_id=recipe.run.id, credit=recipe.credit,
                                     target_batch_size=collaboration.target_batch_size,
                                     matchmaking_time_s=collaboration.matchmaking_time_s,
                                     max_micro_batch_size=min(micro_batch, collaboration.target_batch_size))
        self.epoch_history: list[dict] = []
        self.dashboard: DashboardServer | None = None
        self.hub: HubPublisher | None = None
        self._snapshot: dict = {}
        self._snapshot_lock = threading.Lock()
        self.last_checkpoint_epoch = -1
        self.initial_val_loss: float | None = None
        self.final_val_loss: float | None = None
        self.diverged_at_epoch: int | None = None  # the swarm's state had a non-finite validation loss here
        self.outcome: str | None = None  # FINISHED, STOPPED or DHT_LOST once the watch is over
        self.stop_reason = ""
        self.dht_lost: DHTLostError | None = None
        self._forced = False
        self._said_short_epochs = False
        self._said_older_state = -1  # the version's epoch for which an older state was last turned away (logged once)
        self._training_changed: list[str] = []  # keys of the recipe that change the training since the last launch
        self._rounds_seen: dict[str, tuple[int, int]] = {}  # peer id -> (averaged, solo) rounds at the last look
        self._stop_signal: str | None = None
        # the organiser ends the run early (SIGUSR1): the peers finish the epoch in progress, which becomes the last
        self._end_requested = False
        self.end_epoch: int | None = None  # the run's end: the one set while the run ends, then the one reached
        self.end_set_at_epoch: int | None = None  # the end the organiser set (volunteers may finish one more epoch)
        self._ended: dict = {}  # once the run ended there: its final version and credit, for run.json
        self._remembered_addresses: list[str] = []  # peers' addresses from the state folder (run.json)
        self._blind_since: float | None = None  # when the view last had no live peer (monotonic)
        self._last_recontact = 0.0
        self._said_last_leaving = False
        self._hold_credit_until = 0.0  # no epoch is credited before this time (unix seconds): claims are on their way
        self._history_saved_at = 0.0
        self._samples_at_launch = 0  # the ledger's claimed samples when this coordinator opened it
        self._samples_seen = 0  # samples the peers reported since (restarted peers' counts added, not subtracted)
        self._samples_floor = 0  # the run's total as the previous launch last showed it (status.json)
        self._samples_high = 0  # the largest total shown: it never falls
        # per peer, what its earlier processes (before a restart) reported: samples, averaged and solo rounds
        self._earlier: dict[str, tuple[int, int, int]] = {}

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> dict:
        """Watch the run until it reaches its limits or the coordinator is stopped; returns the summary.

        Raises `SwarmError` if the coordinator's DHT process died under it (after saving what it could)."""
        try:
            start_shared_memory_manager()  # before hivemind's first shared tensor: a SIGTERM to all must spare it
            with keeping_ctrl_c():  # until its handlers are installed, Ctrl-C raises KeyboardInterrupt: a stop at once
                self._setup()
            self._install_signal_handlers()
            over = self._limit_reached()
            if over is not None:
                self._say_already_over(over)
                summary = self._finish(FINISHED, already_over=True)
            else:
                self._print_join_command()
                summary = self._finish(self._monitor_until_done())
            if self.outcome == DHT_LOST:
                raise SwarmError(str(self.dht_lost))
            return summary
        finally:
            self._close()

    def _setup(self) -> None:
        recipe, s = self.recipe, self.settings
        # everything the user gave is checked before anything is written or started
        self._follow_the_runs_folders()
        self._check_settings()
        remembered = self._load_run_state()
        self._remembered_addresses = list(remembered)
        self.hub = HubPublisher.from_config(recipe.checkpoint, ledger_dir=self.ledger_dir,
                                            pending_file=self.state_dir / HUB_PENDING_FILE)
        if self.hub is not None:
            # a missing token or repo, or a repo that holds another run's versions, fails now, before the data are
            # prepared (minutes for a large dataset); a Hub outage does not: versions are saved locally first, and the
            # repo is checked before the first upload. Without a token no request is made.
            self.hub.check_at_launch(run_id=recipe.run.id, recipe_fingerprint=recipe.fingerprint)
        self.tokenizer = build_tokenizer(recipe.tokenizer)
        self.data = build_data(recipe.data, self.tokenizer, peer_id=b"coordinator", cache_dir=s.cache_dir)
        self.val_batches = self.data.validation_batches(batch_size=16)
        self.model = build_model(recipe.model, self.tokenizer.vocab_size, self.tokenizer.eos_id, self.tokenizer.pad_id,
                                 seq_len=recipe.data.seq_len)
        # hivemind forks the DHT and state-downloader processes below; every fetched checkpoint rewrites the model,
        # which left each of them a stale private copy of it (swarm.processes.share_with_forked_processes)
        share_with_forked_processes(self.model.parameters())
        self.initial_val_loss = validation_loss(self.model, self.val_batches)
        origin = f" from {recipe.model.pretrained}" if recipe.model.pretrained else ""
        logger.info(f"Run {recipe.run.id!r}: {count_parameters(self.model) / 1e6:.2f}M-parameter "
                    f"{self.model.config.model_type}{origin}, data {self.data.identity.description}, "
                    f"initial validation loss {self.initial_val_loss:.4f}")
        self._resume_from_published_version()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.identity = Identity.load_or_create(self.state_dir / "identity", name="coordinator", team="")
        self.dht = create_dht(list(s.initial_peers) + remembered, host=s.host, port=s.port, identity=self.identity,
                              record_validators=records.schema_validators(recipe.run.id), announce_host=s.announce_host,
                              require_bootstrap=bool(s.initial_peers) and not remembered)
        self.peer_id = self.dht.peer_id.to_base58()  # asked once: hivemind caches it, and a dead DHT cannot answer
        self._join_existing_run()
        self._check_recipe_change()
        self.fetcher = StateFetcher(self.dht, recipe.run.id)
        # only now: hivemind forks its DHT and averager processes, which would inherit the ledger's locked file
        # and keep it locked after a SIGKILL of this process, blocking the restarted coordinator
        self._open_ledger()
        if self.hub is not None:
            self.hub.publish_pending()  # what the last launch could not upload (it stopped, or was killed, first)
        self._announce()
        self._save_run_state()
        self._update_snapshot()
        if s.dashboard_port is not None:  # after hivemind forked its processes: they must not inherit the socket
            self._start_dashboard()

    def _check_settings(self) -> None:
        """Ports in range and every path usable, each problem named with its flag and the fix (exit code 2); the
        flags alone were checked before the recipe (`check_launch_flags`), the folders the recipe names are here."""
        s = self.settings
        check_launch_flags(s)
        check_folder(self.state_dir, "--state-dir" if s.state_dir else f"the state folder {self.state_dir} "
                                     "(--state-dir)")
        check_folder(self.checkpoint_dir, "--checkpoint-dir" if s.checkpoint_dir else
                     f"the checkpoint folder {self.checkpoint_dir} (checkpoint.dir in the recipe, or "
                     "--checkpoint-dir)")
        check_folder(self.ledger_dir, "--ledger-dir" if s.ledger_dir else
                     f"the ledger folder {self.ledger_dir} (next to the checkpoints, or --ledger-dir)")

    def _start_dashboard(self) -> None:
        s = self.settings
        try:
            self.dashboard = DashboardServer(self.snapshot, host=s.dashboard_host, port=s.dashboard_port).start()
        except OSError as error:  # taken since the check in _setup
            raise dashboard_error(s.dashboard_host, s.dashboard_port, error.__cause__ or error) from None

    def _resume_from_published_version(self) -> None:
        """A run that already published versions goes on from the newest: announced as the latest version (so a
        volunteer who finds nobody training starts from it), its epoch the swarm's, its weights this model's."""
        newest = latest_version(self.checkpoint_dir)
        if newest is None:
            return
        epoch = published_epoch(newest)
        # an older or damaged swarm.json names no run: loading it below says what is wrong, if anything
        run_id = ((self._newest_version_recipe() or {}).get("run") or {}).get("id")
        if isinstance(run_id, str) and run_id != self.recipe.run.id:
            # a shared checkpoint.dir without {run_id}, or a reused --checkpoint-dir: this run would have trained on
            # from the other run's weights (or ended at once, at its epoch) and written its versions in among them
            raise UsageError(f"the checkpoint folder {self.checkpoint_dir} holds versions of run {run_id!r}, not of "
                             f"{self.recipe.run.id!r} (newest: {newest.name}): give this run its own folder (the "
                             "default checkpoint.dir runs/{run_id}/checkpoints, or --checkpoint-dir)")
        try:
            import transformers

            loaded = transformers.AutoModelForCausalLM.from_pretrained(newest)
            self.model.load_state_dict(loaded.state_dict())
            metadata = json.loads((newest / "swarm.json").read_text(encoding="utf-8"))
        except Exception as error:  # a version of another model (the recipe changed), or damaged files
            # load_state_dict says "Error(s) in loading state_dict for X:" first, and the mismatch on the next lines
            lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
            problem = " ".join(lines[:2])[:300] if lines else repr(error)
            raise UsageError(f"the newest published version {newest} does not load into this recipe's model "
                             f"({problem[:300]}): launch the run with the recipe it was published with, or give this "
                             "recipe its own run.id or checkpoint folder (--checkpoint-dir)") from None
        val_loss = metadata.get("val_loss") if isinstance(metadata, dict) else None
        self.last_checkpoint_epoch = epoch
        self.view.epoch = max(self.view.epoch, epoch)
        self.final_val_loss = val_loss if isinstance(val_loss, (int, float)) else None
        pointer = self.checkpoint_dir / "latest"
        try:
            stale = pointer.read_text(encoding="utf-8").strip() != newest.name
        except (OSError, UnicodeDecodeError):
            stale = True
        if stale:  # the coordinator was killed between writing the version and its pointer
            tmp = self.checkpoint_dir / ".latest.tmp"
            tmp.write_text(newest.name + "\n")
            os.replace(tmp, pointer)
        logger.info(f"Resuming from the newest published version, epoch {epoch} ({newest}): volunteers who find "
                    "nobody training start from it")

    def _say_already_over(self, reason: str) -> None:
        self.stop_reason = f"{reason}, reached before this launch"
        version = (f"its newest version is epoch {self.last_checkpoint_epoch} in {self.checkpoint_dir}"
                   if self.last_checkpoint_epoch >= 0 else "it published no version")
        if self.end_epoch is not None and self.end_epoch != self.end_set_at_epoch:
            version = f"it ended at epoch {self.end_epoch}; {version}"
        how = (f"delete ended_at_epoch from {self.state_dir / 'run.json'}" if self.end_epoch is not None
               else "raise the limit in the recipe")
        logger.info(f"Run {self.recipe.run.id!r} already reached {reason} before this launch ({version}): nothing "
                    f"more to train. To train on, {how} and launch it again.")

    def _join_existing_run(self) -> None:
        """A second coordinator of a running run: same recipe required, and the run's clock is the first one's."""
        found = self._dht_call("the run announcements", lambda: self.dht.get(records.RUNS_KEY, latest=True,
                                                                             return_future=True))
        own = records.announcement_subkey(self.recipe.run.id, self.peer_id)
        if found is not None and isinstance(found.value, dict):
            # this coordinator's own announcement from before a restart (peers keep it) is not another coordinator
            found = types.SimpleNamespace(value={key: item for key, item in found.value.items() if key != own})
        existing = records.read_announcements(found).get(self.recipe.run.id)
        if existing is None:
            return
        if existing.recipe_fingerprint != self.recipe.fingerprint:
            raise SwarmError(f"run {self.recipe.run.id!r} is already served with another recipe (fingerprint "
                             f"{existing.recipe_fingerprint}, yours {self.recipe.fingerprint}): use the same recipe "
                             "file to add a coordinator, or another run.id for a new run")
        self.started_at = min(self.started_at, existing.started_at)
        logger.info(f"Serving run {self.recipe.run.id!r} alongside coordinator {existing.coordinator_peer_id}")

    def _newest_version_recipe(self) -> dict | None:
        """The recipe in the newest version's swarm.json, or None (no version, or not readable)."""
        newest = latest_version(self.checkpoint_dir)
        try:
            recipe = json.loads((newest / "swarm.json").read_text(encoding="utf-8"))["recipe"] if newest else None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            return None
        return recipe if isinstance(recipe, dict) else None

    def _check_recipe_change(self) -> None:
        """A relaunch whose recipe changes the training (not only limits, checkpoints, credit) while volunteers train:
        they run the earlier recipe, and a volunteer joining now would take the new one and average with them (a
        newcomer tester's lr change: two learning rates in one swarm, and versions labelled with the new one)."""
        if not self._training_changed:
            return
        logger.info(f"Looking for volunteers that train with the earlier recipe (up to {2 * RECIPE_CHECK_READS} s)")
        training = 0
        for attempt in range(RECIPE_CHECK_READS):  # a DHT node just started may not reach the peers' records at once
            metrics = records.parse_metrics(self._dht_call("the peers' metrics", lambda: self.dht.get(
                records.metrics_key(self.recipe.run.id), latest=True, return_future=True)))
            now = get_dht_time()
            training = sum(now - row.time < PEER_ALIVE_S for row in metrics.values())
            if training or attempt == RECIPE_CHECK_READS - 1:
                break
            time.sleep(2.0)
        if training == 0:
            return
        raise UsageError(f"{training} volunteer(s) are training run {self.recipe.run.id!r} with the "
                         f"recipe it was launched with, and this one changes the training "
                         f"({', '.join(self._training_changed)}): volunteers joining now would take it and average "
                         "with them. Launch with the run's recipe (only run.description, limits, checkpoint and "
                         "credit may change while it runs), or give this recipe a new run.id")

    def _open_ledger(self) -> None:
        key = load_or_create_signing_key(self.state_dir / "ledger_signing_key.pem")
        self.ledger = Ledger.open(self.ledger_dir, key, run_id=self.recipe.run.id)
        last = self.ledger.last_epoch
        self.accounting.committed_epoch = -1 if last is None else last
        self._samples_at_launch = sum(peer.claimed_samples for peer in self.ledger.totals.peers.values())
        self._samples_floor = _previous_samples_total(self.state_dir / "status.json")
        logger.info(f"Ledger at {self.ledger_dir}: {self.ledger.tree_size} entries"
                    + (f", credited up to epoch {last}" if last is not None else "")
                    + f"; its key's fingerprint, which auditors pin with `swarm ledger verify --public-key`, is "
                      f"{key_fingerprint(key.public_key())}")
        if last is not None and 0 <= self.last_checkpoint_epoch < last:
            logger.info(f"The ledger credits epochs up to {last}, past the newest version (epoch "
                        f"{self.last_checkpoint_epoch}): if nobody is training now, volunteers start from that "
                        f"version at epoch {last + 1}, the first one not credited yet")

    def _follow_the_runs_folders(self) -> None:
        """A relaunch with the run's --state-dir uses the checkpoint and ledger folders the run has used so far.

        checkpoint.dir is relative to the working folder (runs/<run id>/checkpoints by default): launched again from
        another folder, the coordinator opened an empty ledger there with the run's own signing key, and started
        the run over at epoch 0, which forked its credit. A folder given explicitly that differs is refused.
        """
        try:
            state = json.loads((self.state_dir / "run.json").read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return  # no state yet, or a damaged one that _load_run_state names
        folders = state.get("folders") if isinstance(state, dict) else None
        if not isinstance(folders, dict):
            return  # written before the folders were recorded
        for attribute, flag, what in (("checkpoint_dir", "--checkpoint-dir", "published versions"),
                                      ("ledger_dir", "--ledger-dir", "ledger")):
            recorded, current = folders.get(attribute), getattr(self, attribute)
            if not isinstance(recorded, str) or Path(recorded) == current.resolve():
                continue
            if getattr(self.settings, attribute):
                raise UsageError(
                    f"{flag} {current}: the run of the state folder {self.state_dir} keeps its {what} in {recorded}, "
                    f"and a second {what} folder would fork the run: pass {flag} {recorded}, or leave {flag} out (a "
                    "new run needs a new --state-dir)")
            if not Path(recorded).exists():
                logger.warning(f"The run's {what} folder {recorded} (recorded in {self.state_dir / 'run.json'}) is "
                               f"gone; using {current.resolve()}")
                continue
            logger.info(f"The run keeps its {what} in {recorded} (recorded in {self.state_dir / 'run.json'}), "
                        f"not in {current.resolve()}: following it there")
            setattr(self, attribute, Path(recorded))

    def _load_run_state(self) -> list[str]:
        """After a restart: keep the run's start time, and re-join through the peers seen last time."""
        path = self.state_dir / "run.json"
        if not path.exists():
            return []
        fix = ("restore it from a backup, or delete it to start the run's clock anew (the identity, ledger and "
               "published versions stay as they are)")
        try:
            state = json.loads(path.read_bytes().decode("utf-8"))
        except OSError as error:
            raise UsageError(f"cannot read {path} ({error.strerror}): {fix}") from None
        except (UnicodeDecodeError, ValueError) as error:
            raise UsageError(f"{path} is not the run state this coordinator writes (not UTF-8 JSON: {error}): "
                             f"{fix}") from None
        started_at = state.get("started_at") if isinstance(state, dict) else None
        addresses = state.get("peer_addresses", []) if isinstance(state, dict) else None
        if (not isinstance(started_at, (int, float)) or isinstance(started_at, bool) or not math.isfinite(started_at)
                or not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses)):
            raise UsageError(f"{path} is not the run state this coordinator writes (expected an object with a "
                             f"started_at time and a peer_addresses list): {fix}")
        addresses = [a for a in addresses if "/p2p/" in a][:MAX_REMEMBERED_PEERS]
        self._load_history()  # the dashboard's curves are the run's, whatever changed in its recipe
        if state.get("fingerprint") != self.recipe.fingerprint:
            earlier = state.get("recipe") or self._newest_version_recipe()  # run.json has it since 2026-12
            changes = (recipe_changes(earlier, json.loads(self.recipe.to_json())) if isinstance(earlier, dict)
                       else None)
            if changes is None:
                logger.warning(f"{path} belongs to another version of the recipe; starting the run clock anew")
                return addresses
            self._training_changed = training_changes(changes)
            if self._training_changed:
                # volunteers training now run the earlier recipe: checked once the DHT is up (_check_recipe_change)
                logger.warning(f"The recipe changes the training since the last launch "
                               f"({', '.join(self._training_changed)}): starting the run clock anew")
                return addresses
            logger.info(f"The recipe changed since the last launch in {', '.join(changes)}: the run goes on with "
                        "them (its clock, curves and end state kept; volunteers take the new values)")
        self.started_at = float(started_at)
        ended_at = state.get("ended_at_epoch")
        if ended_at is not None:
            # ended_at_epoch is where the run ended (or, while it ends, the end set); end_set_at_epoch, the end the
            # organiser set, is only there as the record of it: a run.json without ended_at_epoch trains on
            for key in ("ended_at_epoch", "end_set_at_epoch"):
                value = state.get(key, ended_at)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise UsageError(f"{path}: {key} is {value!r}, not an epoch number: delete ended_at_epoch and "
                                     f"end_set_at_epoch to train the run on, or restore the file from a backup")
            self.end_epoch = ended_at
            self.end_set_at_epoch = state.get("end_set_at_epoch", ended_at)  # written before it was recorded: the same
            self._ended = {key: state[key] for key in ("final_version_epoch", "credited_up_to_epoch") if key in state}
        logger.info(f"Resuming run {self.recipe.run.id!r} started {time.time() - self.started_at:.0f} s ago; "
                    f"re-joining through {len(addresses)} remembered peer address(es)")
        return addresses

    def _save_history(self, now: bool = False) -> None:
        """The dashboard's loss and throughput curves, kept in the state folder (at most every few seconds): a
        restarted coordinator (an upgrade, a crash, systemd) showed them from its own start only."""
        if not now and time.monotonic() - self._history_saved_at < HISTORY_SAVE_PERIOD_S:
            return
        self._history_saved_at = time.monotonic()
        try:
            _write_json(self.state_dir / HISTORY_FILE, self.epoch_history)
        except OSError as error:
            logger.debug(f"Could not save the dashboard's history: {error!r}")

    def _load_history(self) -> None:
        try:
            rows = json.loads((self.state_dir / HISTORY_FILE).read_bytes())
        except (OSError, ValueError):
            return  # none yet, or unreadable: the curves start now
        if isinstance(rows, list):
            self.epoch_history = [row for row in rows if isinstance(row, dict) and isinstance(row.get("epoch"), int)
                                  and isinstance(row.get("time"), (int, float))]
            self.epoch_history = thinned_history(self.epoch_history)

    def _save_run_state(self) -> None:
        addresses = []
        for row in sorted(self.view.peers.values(), key=lambda m: -m.time):
            addresses += [a for a in row.addresses if "/p2p/" in a][:2]
        # a launch writes run.json before it has seen any peer (and an ended run sees none): keep the addresses it
        # re-joined through, or a coordinator stopped again before the swarm reported had none the next time
        addresses = list(dict.fromkeys(addresses + self._remembered_addresses))
        folders = dict(checkpoint_dir=str(self.checkpoint_dir.resolve()), ledger_dir=str(self.ledger_dir.resolve()))
        state = dict(started_at=self.started_at, fingerprint=self.recipe.fingerprint,
                     peer_addresses=addresses[:MAX_REMEMBERED_PEERS], folders=folders,
                     recipe=json.loads(self.recipe.to_json()))  # what the next launch's recipe is compared with
        if self.end_epoch is not None:
            state.update(ended_at_epoch=self.end_epoch, end_set_at_epoch=self.end_set_at_epoch, **self._ended)
        _write_json(self.state_dir / "run.json", state)

    def _print_join_command(self) -> None:
        addresses = join_addresses(self.dht)
        self.join_command = f"swarm join --initial-peers {addresses[0]}"
        lines = [f"Swarm for run {self.recipe.run.id!r} is up. Volunteers join with:", ""]
        lines += [f"    {self.join_command}", ""]
        for note in volunteer_notes(self.recipe):
            lines += [note, ""]
        if self.dashboard is not None:
            lines += [f"Dashboard: {self.dashboard.url} (Prometheus metrics at {self.dashboard.url}metrics)", ""]
        lines += [f"To end the run before its limits, run `kill -USR1 {os.getpid()}`: the volunteers finish the epoch "
                  "in progress, then the final version is saved and every epoch credited.", ""]
        if len(addresses) > 1:
            lines += ["Other addresses of this coordinator (use one another machine can reach):"]
            lines += [f"    {address}" for address in addresses[1:]]
        if all("/127.0.0.1/" in a or "/ip6/::1/" in a for a in addresses):
            if self.settings.announce_host:
                lines += [f"(--announce-host {self.settings.announce_host} is a loopback address, which other "
                          "machines cannot dial: give this machine's public IP address or host name.)"]
            else:
                lines += ["(Only a loopback address is visible: other machines need --host 0.0.0.0 and "
                          "--announce-host <this machine's public IP>.)"]
        print("\n".join(lines), flush=True)

    def _latest_version_ref(self) -> str | None:
        if self.last_checkpoint_epoch < 0:
            return None
        if self.hub is not None:
            return f"{self.recipe.checkpoint.hub_repo_id}@{version_name(self.last_checkpoint_epoch)}"
        return str((self.checkpoint_dir / version_name(self.last_checkpoint_epoch)).resolve())

    def _announce(self, status: str = "running", final_epoch: int | None = None) -> None:
        announcement = records.RunAnnouncement(
            run_id=self.recipe.run.id, recipe_json=self.recipe.to_json(), recipe_fingerprint=self.recipe.fingerprint,
            data_digest=self.data.identity.digest, data_description=self.data.identity.description,
            swarm_version=swarm.__version__, coordinator_peer_id=self.peer_id,
            started_at=self.started_at, status=status, final_epoch=final_epoch, end_epoch=self.end_epoch,
            ledger_epoch=self.accounting.committed_epoch, latest_version=self._latest_version_ref(),
            latest_version_epoch=self.last_checkpoint_epoch if self.last_checkpoint_epoch >= 0 else None)
        subkey = records.announcement_subkey(self.recipe.run.id, self.peer_id)
        self._dht_call("the run announcement", lambda: self.dht.store(
            records.RUNS_KEY, subkey=subkey, value=announcement.to_bytes(),
            expiration_time=get_dht_time() + records.ANNOUNCEMENT_TTL_S, return_future=True))
        self._announced_ledger_epoch = self.accounting.committed_epoch
        self._last_announce = time.monotonic()

    # ---------------------------------------------------------------- the DHT, with deadlines
    def _dht_call(self, what: str, request: Callable[[], Any], timeout_s: float = DHT_CALL_TIMEOUT_S) -> Any:
        """Send one DHT request (`request` returns hivemind's future) and wait at most `timeout_s` for its answer.

        Returns None if the DHT did not answer in time or failed (logged in one line); raises DHTLostError as soon
        as the DHT process is gone, rather than waiting forever as hivemind's blocking calls do."""
        self._check_dht()
        future = request()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return future.result(timeout=max(0.0, min(DHT_POLL_S, deadline - time.monotonic())))
            except TimeoutError:
                pass
            except Exception as error:
                logger.warning(f"The DHT failed to answer {what}: {error!r}")
                return None
            self._check_dht()
            if time.monotonic() >= deadline:
                future.cancel()
                logger.warning(f"The DHT did not answer {what} within {timeout_s:.0f} s; going on without it")
                return None

    def _check_dht(self) -> None:
        if self.dht_lost is not None:
            raise self.dht_lost
        if self.dht is not None and not self.dht.is_alive():
            how = _exit_description(self.dht.exitcode)
            self.dht_lost = DHTLostError(
                f"The coordinator's DHT process (pid {self.dht.pid}) has exited ({how}), so it can no longer follow "
                "the swarm. Training goes on without it: restart `swarm launch` with the same --state-dir to follow "
                "the run again; it credits the epochs it missed.")
            raise self.dht_lost

    # ---------------------------------------------------------------- monitoring
    def _monitor_until_done(self) -> str:
        """Follow the swarm until a limit is reached (FINISHED), a signal arrives (STOPPED) or the DHT dies."""
        last_logged_epoch = -1
        try:
            while not self.stop_event.is_set():
                if time.monotonic() - self._last_announce > ANNOUNCE_PERIOD_S:
                    self._announce()
                self._refresh_view()
                self._recontact_if_blind()
                if self.view.epoch != last_logged_epoch:
                    last_logged_epoch = self.view.epoch
                    self._log_progress()
                    self._save_run_state()
                    self._save_history()
                self._credit(self._finalizable_epoch())
                self._update_snapshot()
                if self._end_requested and self.end_epoch is None:
                    self._set_end_epoch()
                reached = self._limit_reached()
                if reached is not None:  # before a due checkpoint: the final version is published once, by _finish
                    logger.info(f"{'Run ended' if self.end_epoch is not None else 'Run limit reached'}: {reached}")
                    self.stop_reason = reached
                    return FINISHED
                if self._checkpoint_due():
                    # not an older state than the epoch it is due at: a peer behind the swarm (in DiLoCo, one whose
                    # round found no group) served epoch 7 for the version due at 8, a permanent off-schedule version
                    self._publish_checkpoint(min_epoch=self._due_version_epoch())
                elif self._last_peers_leaving():
                    self._publish_checkpoint()
                self._write_status()
                self.stop_event.wait(MONITOR_PERIOD_S)
        except DHTLostError:
            # a SIGTERM to all the processes (systemd's default stop) reaches this process's handler too
            if self.stop_event.wait(1.0):
                return STOPPED
            return DHT_LOST
        return STOPPED

    def _recontact_if_blind(self) -> None:
        """No peer has reported for a while: every volunteer left, or this machine's link was down long enough for
        the DHT node to forget every other node, which it never finds again by itself (seen after a one-minute cut:
        the coordinator stayed blind, with no credit and no versions, while the swarm trained on). Dial the peers it
        saw last now and then; once one answers, the DHT shows the swarm again."""
        now = time.monotonic()
        if self._peers_alive():
            if self._blind_since is not None and now - self._blind_since > RECONTACT_AFTER_S:
                if self._last_recontact != 0.0:  # after "No peer has reported ...", not when the first ones join
                    logger.info("Peers report again")
                # the claims of the epochs that passed meanwhile come back with them: give them time to arrive
                self._hold_credit_until = time.time() + FINALIZE_LAG_S
                self._last_recontact = 0.0  # a later outage is said again
            self._blind_since = None
            return
        if self._blind_since is None:
            self._blind_since = now
        if now - self._blind_since < RECONTACT_AFTER_S or now - self._last_recontact < RECONTACT_PERIOD_S:
            return
        addresses = []
        for row in sorted(self.view.peers.values(), key=lambda m: -m.time):
            addresses += [a for a in row.addresses if "/p2p/" in a][:2]
        addresses = list(dict.fromkeys(addresses + self._remembered_addresses + list(self.settings.initial_peers)))
        if not addresses:
            return
        if self._last_recontact == 0.0:
            logger.info(f"No peer has reported for {now - self._blind_since:.0f} s: dialling the {len(addresses)} "
                        f"address(es) seen last every {RECONTACT_PERIOD_S:.0f} s (if this machine's network dropped, "
                        "the DHT forgot the swarm)")
        self._last_recontact = now
        answered = self._dht_call("the re-contacted peers", lambda: self.dht.run_coroutine(
            partial(recontact, addresses=addresses[:MAX_REMEMBERED_PEERS]), return_future=True), timeout_s=30.0)
        logger.debug(f"Re-contacted peers: {answered or 0} of {len(addresses)} answered")

    def _refresh_view(self) -> None:
        run_id = self.recipe.run.id
        now = get_dht_time()
        # metrics first: a peer's metrics (every 5 s) tell that it died long before its progress record expires
        metrics = records.parse_metrics(self._dht_call("the peers' metrics", lambda: self.dht.get(
            records.metrics_key(run_id), latest=True, return_future=True)))
        for peer_id, row in metrics.items():
            known = self.view.peers.get(peer_id)
            if known is None or row.time >= known.time:
                self._count_new_samples(known, row)
                self.view.peers[peer_id] = row
            if now - row.time < PEER_ALIVE_S:
                self.accounting.observe_peer(peer_id)
        progress = self._dht_call("the training progress", lambda: self.dht.get(f"{run_id}_progress", latest=True,
                                                                                 return_future=True))
        alive, epochs, samples, rate, alive_ids = 0, [0], 0, 0.0, set()
        if progress is not None and isinstance(progress.value, dict):
            for item in progress.value.values():
                try:
                    peer = LocalTrainingProgress.parse_obj(item.value)
                except Exception:
                    continue
                if item.expiration_time < now:
                    continue
                peer_id = PeerID(peer.peer_id).to_base58()
                if peer.samples_accumulated > 0:  # alive or not: a killed peer's claim may come back with it
                    self.accounting.observe_contributor(peer.epoch, peer_id)
                row = self.view.peers.get(peer_id)
                # a peer killed without a word keeps its progress record for a minute (hivemind's expiration): not
                # alive once its metrics are stale, as the peers table says, and its rate is not the swarm's
                last_heard = row.time if row is not None else peer.time  # no metrics yet: its progress report's
                if now - last_heard >= PEER_ALIVE_S:
                    continue
                self.accounting.observe_peer(peer_id)
                alive += 1
                alive_ids.add(peer_id)
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
        self.view.alive_ids = frozenset(alive_ids)
        if alive:
            self.accounting.observe_epoch(self.view.epoch, samples, rate)
        contributions = self._dht_call("the peers' claims", lambda: self.dht.get(
            records.contributions_key(run_id), latest=True, return_future=True))
        for record in records.parse_contributions(contributions):
            self.accounting.add_claims(record)
        if self.view.epoch != previous_epoch or not self.epoch_history:
            self.epoch_history.append(dict(epoch=self.view.epoch, time=time.time(), samples_per_second=rate,
                                           alive_peers=alive, mean_loss=self.view.mean_loss, val_loss=None))
            self.epoch_history = thinned_history(self.epoch_history)
            self._check_epoch_length()

    def _check_epoch_length(self) -> None:
        """Say once if peers train apart because epochs are too short: a group forms only among peers that reach an
        epoch's end within a matchmaking window of each other, and each sees the others' progress only every second
        or so. A newcomer's recipe with 0.1 s epochs trained two volunteers as separate models, with no warning.
        Judged on what the peers report (most of their rounds since the last look alone, while 2+ trained), not on
        the epoch length alone: peers that meet as soon as all joined average 1.4 s epochs against a 2 s window."""
        collab = self.recipe.collaboration
        if self._said_short_epochs or collab.mode != "dedloc":
            return
        now = get_dht_time()
        alive = [row for row in self.view.peers.values() if now - row.time < PEER_ALIVE_S]
        if len(alive) < 2:
            return
        averaged = solo = 0
        for row in alive:
            before = self._rounds_seen.setdefault(row.peer_id, (row.averaged_rounds, row.solo_rounds))
            if row.averaged_rounds < before[0] or row.solo_rounds < before[1]:  # a new process counts from 0
                self._rounds_seen[row.peer_id] = (row.averaged_rounds, row.solo_rounds)
                continue
            averaged, solo = averaged + row.averaged_rounds - before[0], solo + row.solo_rounds - before[1]
        if averaged + solo < SHORT_EPOCH_MIN_ROUNDS:
            return
        self._rounds_seen = {row.peer_id: (row.averaged_rounds, row.solo_rounds) for row in alive}  # the next look
        recent = [row for row in self.epoch_history  # while someone trained: not the wait for the first volunteer
                  if row["time"] >= time.time() - SHORT_EPOCH_WINDOW_S and row.get("alive_peers", 0) > 0]
        if solo <= averaged or len(recent) < 2 or recent[-1]["epoch"] == recent[0]["epoch"]:
            return
        epoch_s = (recent[-1]["time"] - recent[0]["time"]) / (recent[-1]["epoch"] - recent[0]["epoch"])
        if epoch_s >= collab.matchmaking_time_s:
            return  # rounds alone with long epochs: a network or matchmaking problem (README, Troubleshooting)
        self._said_short_epochs = True
        goal_s = max(10.0, 4 * collab.matchmaking_time_s)
        # peers that train apart each advance the epoch: the swarm's own rate counts all of them
        rate = max(self.view.samples_per_second, collab.target_batch_size / max(epoch_s, 1e-3))
        suggested = max(collab.target_batch_size * 2, int(math.ceil(rate * goal_s / 64.0)) * 64)
        logger.warning(f"{solo} of the last {solo + averaged} rounds of {len(alive)} peers ran alone: epochs last "
                       f"{epoch_s:.1f} s, less than collaboration.matchmaking_time_s ({collab.matchmaking_time_s:g} "
                       "s), too short for peers to keep in step, so the swarm trains separate models. Raise "
                       f"collaboration.target_batch_size (now {collab.target_batch_size}) to about {suggested}, an "
                       f"epoch of ~{goal_s:.0f} s at the swarm's {rate:.0f} samples/s")

    def _peers_alive(self) -> bool:
        """Whether any peer reported recently (training progress, or metrics while it serves its final state)."""
        now = get_dht_time()
        return self.view.alive_peers > 0 or any(now - row.time < PEER_ALIVE_S for row in self.view.peers.values())

    def _finalizable_epoch(self) -> int:
        """The newest epoch whose claims have had time to arrive: every epoch before one that began FINALIZE_LAG_S ago.

        Epochs the coordinator never watched (it was down, or they passed between two looks) count from the first
        later epoch it did see; -1 while nothing is old enough.
        """
        now = time.time()
        if now < self._hold_credit_until:
            return self.accounting.committed_epoch
        windows = self.accounting.windows
        settled = [epoch for epoch, window in windows.items() if now - window.first_seen >= FINALIZE_LAG_S]
        up_to = min(max(settled, default=0) - 1, self.view.epoch - 1)
        for epoch in range(self.accounting.committed_epoch + 1, up_to + 1):
            waiting = self.accounting.unclaimed(epoch)
            ended = min((window.first_seen for later, window in windows.items() if later > epoch), default=now)
            if waiting and now - ended < CLAIM_GRACE_S:
                logger.debug(f"Holding the credit of epoch {epoch} until {len(waiting)} peer(s) that trained in it "
                             f"send their claim (at most {CLAIM_GRACE_S:.0f} s after it ended)")
                return epoch - 1
        return up_to

    def _credit(self, up_to_epoch: int, announce: bool = True) -> None:
        """Grant and commit every epoch up to `up_to_epoch` into the ledger, then tell peers how far it goes."""
        for epoch, entries in self.accounting.finalize(up_to_epoch):
            checkpoint = self.ledger.commit_epoch(entries)
            granted = sum(entry.granted_samples for entry in entries)
            logger.debug(f"Credited epoch {epoch}: {granted} samples to {len(entries)} peer(s); "
                         f"ledger root {checkpoint.root_hash[:12]} over {checkpoint.tree_size} entries")
        if announce and self.accounting.committed_epoch != self._announced_ledger_epoch:
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

    def _due_version_epoch(self) -> int:
        """The epoch the due version is for: the last multiple of checkpoint.every_epochs the swarm reached."""
        every = self.recipe.checkpoint.every_epochs
        return self.view.epoch // every * every

    def _set_end_epoch(self) -> None:
        """The organiser's request to end the run: the epoch in progress is the last one (now, if nobody trains)."""
        self.end_epoch = self.view.epoch + 1 if self._peers_alive() else self.view.epoch
        self.end_set_at_epoch = self.end_epoch
        self._save_run_state()
        self._announce()
        if self.end_epoch > self.view.epoch:
            logger.info(f"Ending the run: the volunteers finish epoch {self.view.epoch}, then the final version is "
                        "saved and every epoch credited (press Ctrl-C to stop the coordinator at once instead)")

    def _last_peers_leaving(self) -> bool:
        """Every peer still training is leaving and waits for its state to be saved (records.LeavingRecord): the
        swarm's progress since the newest version would otherwise leave with it."""
        now = get_dht_time()
        alive = [row for row in self.view.peers.values() if now - row.time < PEER_ALIVE_S]
        if not alive or len(alive) > MAX_PEERS_LEAVING_AT_ONCE:  # a swarm that large does not end with them
            self._said_last_leaving = False
            return False
        if max(row.epoch for row in alive) <= self.last_checkpoint_epoch:
            return False  # nothing a newest version lacks: no need to ask the DHT who is leaving
        leaving = records.parse_leaving(self._dht_call("the leaving peers", lambda: self.dht.get(
            records.leaving_key(self.recipe.run.id), latest=True, return_future=True)), now)
        if not all(row.peer_id in leaving for row in alive):
            self._said_last_leaving = False
            return False
        epoch = max(leaving[row.peer_id].epoch for row in alive)  # theirs: a newcomer's progress is not in their state
        if epoch <= self.last_checkpoint_epoch:
            return False
        if not self._said_last_leaving:
            self._said_last_leaving = True
            logger.info(f"The last peer training is leaving: saving its state (epoch {epoch}) as a version")
        return True

    def _limit_reached(self) -> str | None:
        limits = self.recipe.limits
        if self.end_epoch is not None and (self.view.epoch >= self.end_epoch or not self._peers_alive()):
            return f"the end the organiser set at epoch {self.end_set_at_epoch}"
        if limits.max_epochs is not None and self.view.epoch >= limits.max_epochs:
            return f"limits.max_epochs = {limits.max_epochs}"
        if limits.max_samples is not None and self.view.epoch * self.recipe.collaboration.target_batch_size >= limits.max_samples:
            return f"limits.max_samples = {limits.max_samples}"
        if limits.max_wall_time_s is not None and time.time() - self.started_at >= limits.max_wall_time_s:
            return f"limits.max_wall_time_s = {limits.max_wall_time_s:.0f}"
        return None

    # ---------------------------------------------------------------- checkpoints
    def _publish_checkpoint(self, timeout_s: float = 60.0, min_epoch: int | None = None) -> Path | None:
        """Fetch the swarm's state and publish it as a version; returns its folder (an existing one if that epoch
        was published already: a version is never replaced), or None if no good state arrived (or only one older
        than `min_epoch`)."""
        if not self.fetcher.is_alive():
            logger.warning("The state-downloader process has exited: no version can be fetched from the peers")
            return None
        epoch = self.fetcher.fetch_into(self.model, timeout_s=timeout_s)
        if epoch is None:
            logger.warning("No peer sent its state for the checkpoint; trying again shortly")
            return None
        if min_epoch is not None and epoch < min_epoch:
            if self._said_older_state != min_epoch:  # asked again every few seconds: said once
                self._said_older_state = min_epoch
                logger.info(f"A peer sent its state of epoch {epoch}, older than the epoch {min_epoch} this version is "
                            "due at (its last round may still be finishing): asking again")
            return None
        existing = self.checkpoint_dir / version_name(epoch)
        if existing.exists():  # a restarted coordinator, or the final fetch of an epoch just published
            return self._kept_version(existing, epoch)
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
        try:
            path = save_version(self.checkpoint_dir, self.model, self.tokenizer, self.recipe, info,
                                ledger_head=self.ledger.latest_checkpoint, ledger_public_key=self.ledger.public_key_pem)
        except VersionExistsError:
            return self._kept_version(existing, epoch)
        if self.hub is not None:
            self.hub.publish_async(path, epoch)  # uploads in the background; failures are logged and retried
        self.last_checkpoint_epoch = max(self.last_checkpoint_epoch, epoch)
        self.final_val_loss = val_loss
        for row in reversed(self.epoch_history):
            if row["epoch"] <= epoch:
                row["val_loss"] = val_loss
                break
        loss = "n/a" if val_loss is None else f"{val_loss:.4f}"
        logger.info(f"Published version epoch {epoch} (validation loss {loss}) to {path}")
        self._announce()
        return path

    def _kept_version(self, path: Path, epoch: int) -> Path:
        logger.info(f"Version epoch {epoch} is already published ({path}); keeping it as it is")
        if epoch > self.last_checkpoint_epoch:
            self.last_checkpoint_epoch = epoch
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

    def _count_new_samples(self, known: records.PeerMetrics | None, row: records.PeerMetrics) -> None:
        """A peer's `samples_total` counts from its process's start: one that restarted reports fewer, and its new
        count is all new work. Summing the rows made the run's total fall at every restart (a counter that went
        down, which Prometheus read as a burst of work) and forget whatever was trained before this launch."""
        if known is None:  # first seen by this launch: its work so far is in the ledger's claims if it has any there
            credited = self.ledger is not None and row.peer_id in self.ledger.totals.peers
            self._samples_seen += 0 if credited else row.samples_total
            return
        grown = row.samples_total - known.samples_total
        self._samples_seen += grown if grown >= 0 else row.samples_total
        if grown < 0:  # a new process: what the old one reported stays the peer's
            samples, averaged, solo = self._earlier.get(row.peer_id, (0, 0, 0))
            self._earlier[row.peer_id] = (samples + known.samples_total, averaged + known.averaged_rounds,
                                          solo + known.solo_rounds)

    def samples_total(self) -> int:
        """Samples the swarm trained, as the dashboard, /metrics (a counter) and the summary show it: never less than
        before, in this launch or the previous one.

        The largest of: the ledger's claims as of this launch plus what peers reported since; the samples the ledger
        has granted by now, which catches up with what was trained while this coordinator was down (no peer's report
        brings that back); and what the previous launch last showed (status.json). A relaunch lowered the total
        (60,720 to 59,984 in a long run), which Prometheus reads as a counter reset, and it ended 3% below the
        ledger's."""
        granted = sum(peer.granted_samples for peer in self.ledger.totals.peers.values()) if self.ledger else 0
        self._samples_high = max(self._samples_high, self._samples_floor,
                                 self._samples_at_launch + self._samples_seen, granted)
        return self._samples_high

    def _run_counts(self, row: records.PeerMetrics) -> tuple[int, int, int]:
        """A peer's samples, averaged and solo rounds over all its processes this coordinator saw (its metrics row
        counts from its process's start)."""
        samples, averaged, solo = self._earlier.get(row.peer_id, (0, 0, 0))
        return samples + row.samples_total, averaged + row.averaged_rounds, solo + row.solo_rounds

    # ---------------------------------------------------------------- the end
    def _finish(self, outcome: str, already_over: bool = False) -> dict:
        """Settle the credit, publish the final version from the peers (they wait for it), then tell peers how the
        run ended and write the summary. Every DHT step is bounded; with the DHT gone, only the local steps run."""
        self.outcome = outcome
        if outcome == STOPPED:
            self.stop_reason = f"stopped by {self._stop_signal or 'a signal'}"
        elif outcome == DHT_LOST:
            self.stop_reason = "the DHT process exited"
        try:
            self._check_dht()
            if outcome == FINISHED and not already_over and self._peers_alive() and not self._forced:
                time.sleep(LAST_CLAIMS_WAIT_S)  # peers publish every 5 s: let their last closed epochs arrive
            self._refresh_view()
        except DHTLostError:
            if outcome != DHT_LOST:  # else the error that ends the process says it
                logger.warning(f"{self.dht_lost} Saving the ledger and status without it.")
        # credit first, so that the final version's model card and ledger head carry it. A run that goes on
        # (stopped coordinator) is credited only as far as claims had time to arrive; a restart credits the rest.
        self._credit(self.view.epoch + 1 if outcome == FINISHED else self._finalizable_epoch(), announce=False)
        path = None
        try:
            if self.dht_lost is None and not self._forced:
                path = self._final_version()
            if self.dht_lost is None:
                self._announce(status="finished" if outcome == FINISHED else "stopped",
                               final_epoch=self.last_checkpoint_epoch if outcome == FINISHED else None)
        except DHTLostError:
            logger.warning(f"{self.dht_lost} The final version and announcement are skipped.")
        if path is not None and self.settings.final_model_dir:
            _copy_version_files(path, Path(self.settings.final_model_dir))
        if outcome == FINISHED and self.end_epoch is not None and not already_over:
            self._record_the_end()
        self._update_snapshot()
        self._save_history(now=True)
        summary = self.summary()
        summary_file = Path(self.settings.summary_file) if self.settings.summary_file else None
        if summary_file is not None and not (already_over and summary_file.exists()):  # keep the run's own summary
            _write_json(summary_file, summary)
        self._write_status()
        final_loss = summary["final_val_loss"]
        losses = (f"validation loss {summary['initial_val_loss']:.4f} -> "
                  f"{'n/a' if final_loss is None else f'{final_loss:.4f}'}")
        if outcome == FINISHED:
            logger.info(f"Run over ({self.stop_reason}): {summary['epochs']} epochs, {summary['samples_total']} "
                        f"samples seen by this coordinator, {losses}")
        elif outcome == STOPPED:
            logger.info(f"Coordinator stopped ({self.stop_reason}) at swarm epoch {self.view.epoch}; the run is not "
                        f"over: volunteers train on without it. Restart `swarm launch` with the same --state-dir to "
                        f"follow it again (no credit is lost meanwhile). {losses}")
        return summary

    def _record_the_end(self) -> None:
        """The organiser ended the run: run.json keeps the epoch it really ended at, its final version and credit,
        next to the end that was set. Volunteers learn of the end from the announcement, every few seconds: with short
        epochs they finish one more, and the final version is of that one (or of an earlier one, if they all left)."""
        ended = max(self.view.epoch, self.last_checkpoint_epoch, 0)
        self._ended = dict(final_version_epoch=self.last_checkpoint_epoch if self.last_checkpoint_epoch >= 0 else None,
                           credited_up_to_epoch=self.accounting.committed_epoch
                           if self.accounting.committed_epoch >= 0 else None)
        if ended != self.end_set_at_epoch:
            logger.info(f"The run ended at epoch {ended}, not at the end set at epoch {self.end_set_at_epoch}: "
                        + ("the volunteers finished the epoch they were in when they learned of it"
                           if ended > (self.end_set_at_epoch or 0) else "every volunteer left before it"))
        self.end_epoch = ended
        try:
            self._save_run_state()
        except OSError as error:
            logger.warning(f"Could not record the run's end in {self.state_dir / 'run.json'}: {error}")

    def _final_version(self) -> Path | None:
        """The peers' final state as a version (an existing version if that epoch is published already)."""
        newest = (f"the newest published version (epoch {self.last_checkpoint_epoch}) stands"
                  if self.last_checkpoint_epoch >= 0 else "no version was published")
        if not self._peers_alive():
            logger.info(f"No peer is alive to send its state: {newest}")
            return None
        deadline = time.monotonic() + FINAL_STATE_TIMEOUT_S
        # at the run's limit the peers stop at its last epoch: a state from before it (a DiLoCo peer still applying
        # its last overlapped round) is waited past for a while, then taken rather than nothing
        last_epoch = self.view.epoch if self.outcome == FINISHED else None
        wait_for_last_until = time.monotonic() + FINAL_LAST_EPOCH_WAIT_S
        while not self._forced:
            path = self._publish_checkpoint(timeout_s=max(5.0, min(30.0, deadline - time.monotonic())),
                                            min_epoch=last_epoch if time.monotonic() < wait_for_last_until else None)
            if path is not None:
                return path
            if self.diverged_at_epoch is not None:
                return None  # the peers' final state is not finite: nothing to wait for
            if time.monotonic() >= deadline:
                break
            time.sleep(3.0)  # peers may still be finishing their last epoch
            self._refresh_view()
            if not self._peers_alive():
                logger.info(f"No peer is alive anymore to send its state: {newest}")
                return None
        logger.warning(f"Could not fetch the final state from any peer: {newest}")
        return None

    def summary(self) -> dict:
        peers = self.view.peers.values()
        return dict(
            run_id=self.recipe.run.id,
            status=self._status(),
            stop_reason=self.stop_reason,
            peers=len(self.view.peers),
            epochs=max(self.view.epoch, self.last_checkpoint_epoch, 0),
            samples_total=self.samples_total(),
            wall_s=round(time.time() - self.started_at, 2),
            initial_val_loss=self.initial_val_loss,
            final_val_loss=self.final_val_loss,
            diverged_at_epoch=self.diverged_at_epoch,
            # every such round had >= 2 peers; counted by the peer that took part in most of them (over its restarts)
            averaged_rounds=max((self._run_counts(row)[1] for row in peers), default=0),
            solo_rounds=max((self._run_counts(row)[2] for row in peers), default=0),
            final_checkpoint_epoch=self.last_checkpoint_epoch if self.last_checkpoint_epoch >= 0 else None,
            granted_samples=sum(p.granted_samples for p in self.ledger.totals.peers.values()),
            claimed_samples=sum(p.claimed_samples for p in self.ledger.totals.peers.values()),
            ledger_dir=str(self.ledger_dir),
            ledger_root=self.ledger.root_hash if self.ledger.tree_size else None,
            checkpoint_dir=str(self.checkpoint_dir),
            # what each trained in the run: its ledger claims, or what its processes reported if that is more (the
            # ledger lags by an epoch or two); its metrics row alone counts from its last restart
            volunteers=[dict(peer_id=row.peer_id, name=row.name, team=row.team,
                             samples=max(self._run_counts(row)[0], self._ledger_claimed(row.peer_id)),
                             averaged_rounds=self._run_counts(row)[1], device=row.device) for row in peers],
        )

    def _ledger_claimed(self, peer_id: str) -> int:
        totals = self.ledger.totals.peers.get(peer_id) if self.ledger is not None else None
        return totals.claimed_samples if totals is not None else 0

    # ---------------------------------------------------------------- dashboard
    def snapshot(self) -> dict:
        """The dashboard's view of the run (built by the monitor loop; cheap and thread-safe to call)."""
        with self._snapshot_lock:
            return self._snapshot

    def _update_snapshot(self) -> None:
        totals = self.ledger.totals
        checkpoint = self.ledger.latest_checkpoint
        snapshot = dict(
            status=dict(run_id=self.recipe.run.id, description=self.recipe.run.description,
                        status=self._status(), stop_reason=self.stop_reason, epoch=self.view.epoch,
                        alive_peers=self.view.alive_peers, samples_per_second=self.view.samples_per_second,
                        samples_total=self.samples_total(), mean_training_loss=self.view.mean_loss,
                        last_val_loss=self.final_val_loss if self.final_val_loss is not None else self.initial_val_loss,
                        last_checkpoint_epoch=self.last_checkpoint_epoch, started_at=self.started_at,
                        updated_at=time.time(), join_command=getattr(self, "join_command", "")),
            peers=[dict(peer_id=m.peer_id, name=m.name, team=m.team, epoch=m.epoch, samples_total=m.samples_total,
                        samples_per_second=m.samples_per_second, loss=m.loss, averaged_rounds=m.averaged_rounds,
                        last_group_size=m.last_group_size, device=m.device, last_seen=m.time,
                        alive=m.peer_id in self.view.alive_ids)
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

    def _status(self) -> str:
        """"running"; "finished" once the run reached its limits; "stopped" when the coordinator stopped first."""
        return "running" if self.outcome is None else "finished" if self.outcome == FINISHED else "stopped"

    def _write_status(self) -> None:
        status = dict(run_id=self.recipe.run.id, status=self._status(), stop_reason=self.stop_reason,
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
            self._stop_signal = signal.Signals(signum).name
            logger.info(f"Stopping ({self._stop_signal}): saving a final version first if a peer is alive (press "
                        "Ctrl-C again to skip it)")
            self.stop_event.set()

        def end_run(signum, _frame):
            if not self._end_requested:
                self._end_requested = True
                logger.info(f"{signal.Signals(signum).name}: ending the run after the epoch in progress")

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGUSR1, end_run)

    def _close(self) -> None:
        if self.hub is not None:
            self.hub.close(wait=True)
        if self.dashboard is not None:
            self.dashboard.stop()
        if self.ledger is not None:
            self.ledger.close()
        if self.fetcher is not None:
            self.fetcher.shutdown()
        if self.dht is not None and self.dht.is_alive():
            self.dht.shutdown()


def volunteer_notes(recipe: Recipe) -> list[str]:
    """What a volunteer of this run must bring beyond `swarm join`, said at launch: copies of the organiser's own
    data, model and tokenizer folders (with the flag that takes each). bitsandbytes, which blockwise8 needs on every
    volunteer (CPU ones too), is one of swarm's dependencies; a volunteer without a working one is told at start."""
    notes = [note for note in [data_copy_note(recipe.data)] if note]
    model_folder, tokenizer_folder = organiser_folders(recipe)
    if model_folder:
        notes.append(f"The model starts from the folder {model_folder}: a volunteer on another machine needs a "
                     "copy of it, passed with --model-dir <the copy>.")
    if tokenizer_folder and tokenizer_folder != model_folder:
        notes.append(f"The tokenizer is the folder {tokenizer_folder}: a volunteer on another machine needs a copy of "
                     "it, passed with --tokenizer-dir <the copy>.")
    return notes


def thinned_history(rows: list[dict], keep: int = MAX_HISTORY_ROWS) -> list[dict]:
    """The dashboard's per-epoch rows within `keep`: the older half loses every other row, as often as needed, and
    rows with a validation loss (one per version) stay. The run's whole curve stays, coarser where it is older; it
    used to keep only the last 2,000 epochs (2.5 hours of a fast run)."""
    while len(rows) > keep:
        half = len(rows) // 2
        older = [row for index, row in enumerate(rows[:half]) if index % 2 == 0 or row.get("val_loss") is not None]
        if len(older) == half:  # nothing left to thin there (every row has a validation loss): the newest stay
            return rows[-keep:]
        rows = older + rows[half:]
    return rows


def _previous_samples_total(path: Path) -> int:
    """The run's sample total the previous launch last wrote to status.json; 0 if there is none to read."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("samples_total")
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _write_json(path: Path, data: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _copy_version_files(version: Path, target: Path) -> None:
    """The files of a published version (model, config, tokenizer, card; not its ledger head) into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for item in version.iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)


def _exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"
