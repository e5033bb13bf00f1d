"""hivemind.Optimizer as swarm uses it: built from the recipe, counting who each averaging round reached.

`SwarmOptimizer.rounds` is what the volunteer reports and what tells a peer it is training alone:

>>> opt = build_swarm_optimizer(dht, model, recipe, identity, micro_batch_size=16)   # doctest: +SKIP
>>> opt.step(); opt.rounds.last_group_size                                             # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing as mp
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import hivemind
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.control import AveragingStage, StepControl
from hivemind.compression import CompressionBase, NoCompression, RoleAdaptiveCompression
from hivemind.optim.grad_averager import GradientAverager
from hivemind.optim.progress_tracker import ProgressTracker
from hivemind.optim.state_averager import TrainingStateAverager
from hivemind.utils import get_dht_time

from peer.allreduce import ChurnSafeAllReduce
from swarm.compat import make_compression
from swarm.hardware import background_torch_on_one_thread
from swarm.identity import Identity
from swarm.optim import all_finite, build_optimizer_factories, parameter_groups
from swarm.processes import share_with_forked_processes, trim_heap
from swarm.recipe import CollaborationConfig, Recipe

logger = logging.getLogger(__name__)

# hivemind's tracker stores this peer's progress in the DHT after every micro-step: 10-20 stores per second from a
# fast GPU peer. Other peers extrapolate progress from samples_per_second between reports, so twice a second is
# plenty; epoch changes and resets are still reported at once (SwarmProgressTracker).
PROGRESS_REPORT_PERIOD_S = 0.5
# how long a leaving peer waits for the withdrawal of its progress record to reach the other peers
WITHDRAW_TIMEOUT_S = 5.0
# How often a peer waiting for its epoch's averaging round checks whether the swarm went on without it
ROUND_POLL_S = 1.0
EXPECTED_SIZE_POLL_S = 0.1  # how often an averager's process applies `ClosesFullGroups.expect_group_size`


@dataclass
class RoundStats:
    """Outcome of this peer's gradient-averaging rounds (one per swarm epoch it took part in)."""

    averaged: int = 0  # rounds whose group held two or more peers
    solo: int = 0  # epochs stepped with local gradients only (no group, or a failed round)
    consecutive_solo: int = 0
    last_group_size: int = 0
    # averaged rounds that went on without part of the data: a peer's chunks missed next_chunk_timeout, so hivemind
    # averaged those parts over fewer peers ("Reducer: received 55% of input tensors" in its log)
    partial: int = 0
    last_received_fraction: float = 1.0  # of the data this peer should have reduced and received, in the last round
    group_sizes: Counter = field(default_factory=Counter)  # rounds by the size of the group they reached

    def record(self, group_size: int, received_fraction: float = 1.0) -> None:
        """Count one round by the size of the group it reached (1: this peer alone, or the round failed)."""
        self.last_group_size = group_size
        self.group_sizes[group_size] += 1
        if group_size >= 2:
            self.averaged += 1
            self.consecutive_solo = 0
            self.last_received_fraction = received_fraction
            if received_fraction < 1.0:
                self.partial += 1
        else:
            self.solo += 1
            self.consecutive_solo += 1


class _TrackerCannotGoOn(Exception):
    """The DHT or torch's shared-memory manager is gone under the progress tracker: its thread ends."""


class SwarmProgressTracker(ProgressTracker):
    """hivemind's ProgressTracker with its DHT stores rate-limited to one per `report_period_s`.

    `report_local_progress` still updates the local and global progress at once (hivemind's epoch logic reads them
    in the training thread); only the background store is coalesced. An epoch change, a reset to zero samples, or
    reaching the target batch is stored at once, so other peers see the epoch end without delay.
    """

    def __init__(self, *args, report_period_s: float = PROGRESS_REPORT_PERIOD_S, **kwargs):
        self.report_period_s = report_period_s
        self._report_now = threading.Event()
        self.peers_seen: frozenset[bytes] = frozenset()  # peer ids in the progress records of the last read
        # the global epoch at which this peer last had samples to report: it stores its progress while that is at
        # most one epoch behind (hivemind's rule to leave out auxiliary and stalled peers)
        self._active_epoch = -math.inf
        # subkey -> the `time` of the last record of a peer presumed gone (see presume_gone): left out while unchanged
        self._gone: dict[bytes, float] = {}
        self.last_records: dict = {}  # the progress records of the last read, as stored (subkey -> entry)
        super().__init__(*args, **kwargs)  # starts the reporter thread: the fields above must exist first

    def run(self):
        try:
            super().run()
        except _TrackerCannotGoOn as stopped:  # no thread traceback: the volunteer reports its processes' end
            error = stopped.args[0]
            # kept for the life of the process: freeing what the failed request half-made (a shared tensor) asks the
            # dead shared-memory manager to take it back, and torch aborts the process when it cannot (SIGABRT)
            self._stopped_by = stopped
            if self.shutdown_triggered.is_set() or not self.dht.is_alive():
                logger.debug(f"Progress tracker stops: the DHT is gone ({error!r})")
            else:
                logger.warning(f"This peer's progress can no longer be stored ({error}): the others will not count "
                               "it; restart `swarm join` if it keeps training")
            self.shutdown_complete.set()

    def report_local_progress(self, local_epoch: int, samples_accumulated: int, update_global_samples: bool = True):
        epoch_changed = local_epoch != self.local_progress.epoch
        # a peer that starts (or resumes) training is stored at once: until then other peers do not count it in the
        # groups they form (DiLoCoOptimizer closes a group once every peer it knows of has joined)
        starts_reporting = samples_accumulated > 0 and self._active_epoch < self.global_epoch - 1
        super().report_local_progress(local_epoch, samples_accumulated, update_global_samples)
        if samples_accumulated > 0:
            # noted here, not when the reporter wakes: hivemind looks only at the progress it is about to store, and
            # a peer whose epochs end faster than a report period is seen at zero samples every time. It then
            # stopped storing its progress, and the coordinator never saw the run's last epoch (it waited forever)
            self._active_epoch = max(self._active_epoch, self.global_epoch)
        if (epoch_changed or starts_reporting or samples_accumulated <= 0
                or samples_accumulated >= self.target_batch_size
                or self.global_progress.samples_accumulated >= self.target_batch_size):
            self._report_now.set()

    async def _progress_reporter(self):
        """Store this peer's progress: when told to, but at most once per report_period_s unless it is urgent."""
        loop = asyncio.get_event_loop()
        last_report_time, store_task = -math.inf, None
        try:
            while not self.shutdown_triggered.is_set():
                # records expire after metadata_expiration: refresh them half way even without progress
                refresh_in = max(0.0, last_report_time - get_dht_time() + self.metadata_expiration / 2)
                await loop.run_in_executor(None, self.should_report_progress.wait, refresh_in)
                hold_for = last_report_time + self.report_period_s - get_dht_time()
                if hold_for > 0 and not self._report_now.is_set() and not self.shutdown_triggered.is_set():
                    await loop.run_in_executor(None, self._report_now.wait, hold_for)  # coalesce micro-steps
                self.should_report_progress.clear()
                self._report_now.clear()

                local_progress = self.local_progress
                last_report_time = get_dht_time()
                if local_progress.samples_accumulated > 0:
                    self._active_epoch = max(self._active_epoch, self.global_epoch)
                if self._active_epoch >= self.global_epoch - 1:  # as hivemind: only a peer that is in sync reports
                    try:
                        stored = self.dht.store(key=self.training_progress_key, subkey=self._local_public_key,
                                                value=local_progress.dict(),
                                                expiration_time=last_report_time + self.metadata_expiration,
                                                return_future=True)
                    except (RuntimeError, OSError) as error:
                        # a signal to all of this peer's processes (systemd's default stop) killed the DHT and torch's
                        # shared-memory manager too ("Broken pipe"): the volunteer sees it and leaves. The whole
                        # tracker stops here, the progress fetcher included: its next request would ask the dead
                        # manager for shared memory again, and torch aborts the process (SIGABRT) when that fails
                        raise _TrackerCannotGoOn(error) from None
                    store_task = asyncio.create_task(asyncio.wait_for(stored, timeout=self.metadata_expiration))
        finally:
            if store_task is not None:
                store_task.cancel()

    def presume_gone(self, records: dict, before_epoch: int) -> int:
        """Leave out of the swarm's progress the other peers whose records (a fresh read of the progress key) are at
        `before_epoch` or earlier, until they store a new record; returns how many.

        For a round that found nobody else looking for a group: those peers are not averaging, and a peer killed
        without a word (`kill -9`, a power cut) keeps its record for `metadata_expiration` (a minute). Until then its
        partner expected it in every round and counted its samples and speed: in a swarm of two, the survivor waited
        the whole averaging timeout, twice. A peer that is alive stores a new record within a report period while it
        trains (half an expiration period when idle), and is counted again from then on.
        """
        gone = 0
        for subkey, entry in records.items():
            record = entry.value
            if subkey == self._local_public_key or not isinstance(record, dict):
                continue
            if isinstance(record.get("epoch"), int) and record["epoch"] <= before_epoch and "time" in record:
                self._gone[subkey] = record["time"]
                gone += 1
        if gone:  # re-read the records at once, without them
            self.global_progress.next_fetch_time = get_dht_time()
            self.global_state_updated.set()
        return gone

    def _parse_swarm_progress_data(self, metadata):
        self.last_records = metadata if isinstance(metadata, dict) else {}
        if isinstance(metadata, dict) and self._gone:
            # a record that changed belongs to a peer that is back; one that expired needs no entry any more
            self._gone = {subkey: recorded for subkey, recorded in self._gone.items()
                          if subkey in metadata and isinstance(metadata[subkey].value, dict)
                          and metadata[subkey].value.get("time") == recorded}
            metadata = {subkey: entry for subkey, entry in metadata.items() if subkey not in self._gone}
        if isinstance(metadata, dict):
            self.peers_seen = frozenset(
                entry.value["peer_id"] for entry in metadata.values()
                if isinstance(entry.value, dict) and isinstance(entry.value.get("peer_id"), bytes))
        else:
            self.peers_seen = frozenset()
        return super()._parse_swarm_progress_data(metadata)

    def shutdown(self, timeout: float | None = None):
        """Stop reporting and withdraw this peer's progress record, waiting (at most WITHDRAW_TIMEOUT_S) until the
        withdrawal is stored on the other peers.

        hivemind sends the withdrawal without waiting, and the peer's DHT stops right after: on a loaded machine it
        stopped first, the record stayed in the DHT for a minute, and the peers left behind counted this one as alive
        (the DeDLOC groups waited for it; a peer training alone took it for a split swarm and reconnected).
        """
        self._report_now.set()
        self.shutdown_triggered.set()
        self.should_report_progress.set()
        self.global_state_updated.set()
        self.shutdown_complete.wait(timeout)
        withdrawal = self.dht.store(self.training_progress_key, subkey=self._local_public_key, value=None,
                                    expiration_time=get_dht_time() + self.metadata_expiration, return_future=True)
        try:
            withdrawal.result(timeout=WITHDRAW_TIMEOUT_S)
        except Exception as error:  # a timeout, or a DHT that already stopped: the record expires on its own
            logger.debug(f"Withdrawing this peer's progress record failed: {error!r}")


class HivemindWireNames:
    """Mixin for a subclass of a hivemind averager: speak the RPC names of the hivemind class it extends.

    hivemind names each RPC after the averager's class, so a subclass would speak a protocol that plain hivemind peers
    (and the coordinator's state downloader) do not know.
    """

    @classmethod
    def _get_handle_name(cls, namespace, method_name):
        wire_class = next(base for base in cls.__mro__ if base.__module__.startswith("hivemind."))
        return wire_class._get_handle_name(namespace, method_name)


# A round in these stages has no group yet: no other peer waits on this one's part
NO_GROUP_YET = (AveragingStage.IDLE, AveragingStage.LOOKING_FOR_GROUP)


def looking_past_due(control: StepControl | None, grace_s: float = 0.0) -> bool:
    """Whether a round was told to run but still has no group `grace_s` after its all-reduce was due."""
    if control is None or control.done() or not control.triggered:
        return False
    if control.stage not in NO_GROUP_YET:
        return False
    return get_dht_time() >= control.scheduled_time + grace_s


def call_off_if_looking(control: StepControl | None, grace_s: float = 0.0) -> bool:
    """Cancel a round that is `looking_past_due`; True if it was called off.

    Until a group has formed no other peer waits on this one, so cancelling costs nobody anything, and a round that
    missed its group's matchmaking window will rarely find another: waiting for it only holds up this peer's training.
    """
    if not looking_past_due(control, grace_s):
        return False
    control.cancel()
    return True


def call_off_if_no_group(control: StepControl | None) -> bool:
    """Cancel a round that has no group yet, whatever its schedule; True if it was called off.

    For a round whose outcome this peer will not use (it is about to load the swarm's state). A group that forms in
    the very moment of the cancel is left by this peer; with `ChurnSafeAllReduce` its members average without it.
    """
    if control is None or control.done() or control.stage not in NO_GROUP_YET:
        return False
    control.cancel()
    return True


class AllreduceOutcome(HivemindWireNames):
    """Mixin for a hivemind averager: tells the training process how much of the data each all-reduce combined.

    hivemind drops a peer's remaining chunks from a round when they miss `next_chunk_timeout` and only logs it
    ("Reducer: received X% of input tensors", "Averaging: received X% results") in the averager's process. Here the
    averager's process writes the fraction into shared memory before it completes the round's future.
    """

    def __init__(self, *args, **kwargs):
        # [rounds finished, fraction of input parts this peer reduced, fraction of averaged results it received]
        self._allreduce_outcome = torch.zeros(3, dtype=torch.float64).share_memory_()
        super().__init__(*args, **kwargs)  # starts the averager's process, which inherits the shared tensor

    @property
    def last_received_fraction(self) -> float:
        """Of the last finished all-reduce: min(fraction of inputs reduced here, fraction of results received)."""
        return float(min(self._allreduce_outcome[1], self._allreduce_outcome[2]))

    async def _run_allreduce_inplace_(self, tensors, group_info, group_id=None, **kwargs):
        group_id = group_info.group_id if group_id is None else group_id
        try:
            await super()._run_allreduce_inplace_(tensors, group_info, group_id=group_id, **kwargs)
        finally:
            registered = self._running_groups.get(group_id)
            if registered is not None and registered.done() and not registered.cancelled():
                self._record_outcome(registered.result())

    def _record_outcome(self, runner) -> None:
        reducer, container = runner.tensor_part_reducer, runner.tensor_part_container
        expected = reducer.num_parts * reducer.num_senders
        reduced = sum(reducer.num_parts_received) / expected if expected else 1.0
        returned = 1.0 - container.failed_size / container.total_size if container.total_size else 1.0
        self._allreduce_outcome[1] = min(1.0, reduced)
        self._allreduce_outcome[2] = returned
        self._allreduce_outcome[0] += 1


class SharesParentTensorsBeforeFork(DecentralizedAverager):
    """An averager that moves the training process's tensors it knows of into shared memory before it forks.

    hivemind forks each averager's process from the training process once the model, its gradients and the optimiser
    state exist. The training process rewrites those on every step, and each rewritten page left the child a stale
    private copy (see `swarm.processes.share_with_forked_processes`). Subclasses name the tensors.
    """

    def _parent_tensors(self):
        return ()

    def run_in_background(self, *args, **kwargs) -> None:
        share_with_forked_processes(self._parent_tensors())
        trim_heap()
        super().run_in_background(*args, **kwargs)


class BackgroundTorchOnOneThread(DecentralizedAverager):
    """An averager whose work on hivemind's background threads of the training process uses one CPU thread.

    hivemind serves the state to newcomers from a thread of the training process, and a TrainingStateAverager runs
    the optimizer step and its state rounds on an executor thread. With torch's default thread count each of them
    made a second OpenMP team, which slowed the training thread's own parallel work by 6-17% on a CPU peer
    (`swarm.hardware.background_torch_on_one_thread` says why).
    """

    def get_current_state(self):
        background_torch_on_one_thread()
        return super().get_current_state()

    def _do(self, *args, **kwargs):  # TrainingStateAverager's step, on its executor thread (other averagers have none)
        background_torch_on_one_thread()
        return super()._do(*args, **kwargs)


class ClosesFullGroups(DecentralizedAverager):
    """An averager whose rounds form as soon as the peers it expects have joined, not at the end of the window.

    hivemind fixes `target_group_size` when the averager's process starts; left at None, every group waits out its
    matchmaking window even when all peers joined in its first tenth. `expect_group_size` changes it in the
    averager's process for the rounds that follow and the one looking for a group now; a leader then closes its
    group when it is that large, and turns later joiners away (so expect too many rather than too few: too many only
    waits out the window, as before). The size goes through shared memory, which the averager's process reads every
    `EXPECTED_SIZE_POLL_S`, so any thread may set it: hivemind's pipe to the process is not thread-safe, and
    TrainingStateAverager starts some rounds on its executor thread while the training thread sets the size.
    """

    def __init__(self, *args, **kwargs):
        # -1: not set (hivemind's own target_group_size), 0: none (wait out the window), else the size; shared with
        # the averager's process, which the parent's __init__ forks
        self._expected_size = mp.RawValue("i", -1)
        self._follows_expected_size = False  # in the averager's process: the task that applies it runs
        super().__init__(*args, **kwargs)

    def expect_group_size(self, size: int | None) -> None:
        """Close groups at `size` members from now on (None or below 2: at the end of the matchmaking window)."""
        self._expected_size.value = size if size is not None and size >= 2 else 0

    async def _step(self, *, step, future_for_init):
        if not self._follows_expected_size:  # the averager's process, in its event loop: from its first round on
            self._follows_expected_size = True
            hivemind_size = self._matchmaking.target_group_size  # read before the first apply can change it
            self._apply_expected_size(hivemind_size)
            asyncio.create_task(self._follow_expected_size(hivemind_size))
        await super()._step(step=step, future_for_init=future_for_init)

    def _apply_expected_size(self, hivemind_size: int | None) -> None:
        expected = self._expected_size.value
        self._matchmaking.target_group_size = hivemind_size if expected < 0 else (expected or None)

    async def _follow_expected_size(self, hivemind_size: int | None) -> None:
        while True:
            await asyncio.sleep(EXPECTED_SIZE_POLL_S)
            self._apply_expected_size(hivemind_size)


class SwarmGradientAverager(AllreduceOutcome, ChurnSafeAllReduce, ClosesFullGroups, BackgroundTorchOnOneThread,
                            SharesParentTensorsBeforeFork, GradientAverager):
    """hivemind's GradientAverager, reporting how much of each round's data arrived (see `AllreduceOutcome`), its rounds
    kept going when a member dies mid-round (`ChurnSafeAllReduce`), formed once all expected peers joined
    (`ClosesFullGroups`)."""

    withheld_rounds = 0  # epochs whose local gradient was not finite, sent with weight 0

    def _parent_tensors(self):
        yield from self.parameters
        yield from (param.grad for param in self.parameters)  # with reuse_grad_buffers, the accumulators
        yield from self._local_accumulators or ()

    @torch.no_grad()
    def load_accumulators_into_averager_(self):
        """Load this epoch's mean gradient for the round; one that is not finite is sent as zeros with weight 0.

        An all-reduce averages whatever each member sends: one member's NaN makes the whole group's average NaN (the
        optimiser then skips that epoch's step on every member, `swarm.optim.skip_non_finite_steps`). With weight 0
        the others average as if this peer had sat the round out.
        """
        super().load_accumulators_into_averager_()
        with self.get_tensors() as averaged:
            if all_finite(list(averaged)):
                return
            for tensor in averaged:
                tensor.zero_()
        self.local_samples_accumulated = 0  # the round's weight (GradientAverager.step reads it next)
        self.withheld_rounds += 1
        logger.warning("This peer's gradient this epoch holds NaN or infinite values (its backward overflowed, or its "
                       "hardware is faulty): it sends none to the round, so the other peers are not harmed")

    def load_state_from_peers(self, wait: bool = True, timeout: float | None = None):
        """Download nothing: hivemind.Optimizer.load_state_from_peers calls this after loading the training state,
        and the averager's default fetches a peer's averaged-gradient buffers (4 bytes per parameter, a quarter of
        what a joining peer downloaded) and returns them to a caller that discards them."""
        return None


class SwarmAverager(AllreduceOutcome, ChurnSafeAllReduce, ClosesFullGroups, BackgroundTorchOnOneThread,
                    SharesParentTensorsBeforeFork):
    """hivemind's DecentralizedAverager, reporting how much of each round's data arrived (see `AllreduceOutcome`), its
    rounds kept going when a member dies mid-round (`ChurnSafeAllReduce`), formed once all expected peers joined
    (`ClosesFullGroups`)."""


class WithholdsNonFiniteState(DecentralizedAverager):
    """An averager of a training state (parameters, optimiser statistics) that never sends or serves NaN or inf.

    A non-finite gradient never reaches a round (`SwarmGradientAverager`), but memory corruption or a faulty kernel can
    turn the parameters themselves NaN. An all-reduce adds up every member's values: with two tiny peers averaging
    their state every epoch, the partner's weights were NaN one epoch after its peer's, and both stayed NaN for good.
    Here the averager's process checks what it is about to send (fp32 sums, once per round, off its event loop); if a
    value is not finite, it sends zeros in place of each such tensor, with weight 0. The others average as if this
    peer had sat the round out, and it receives their average; `withheld_state_rounds` counts such rounds, so that the
    training process reloads the whole state from the swarm. A peer asking for this peer's state meanwhile gets
    nothing, and downloads it from the next peer.
    """

    def __init__(self, *args, **kwargs):
        self._withheld_state_rounds = mp.RawValue("i", 0)  # written by the averager's process, which __init__ forks
        super().__init__(*args, **kwargs)

    @property
    def withheld_state_rounds(self) -> int:
        """State rounds this peer joined with weight 0, its state not being finite (from any thread or process)."""
        return self._withheld_state_rounds.value

    async def _run_allreduce_inplace_(self, tensors, group_info, group_id=None, **kwargs):
        tensors = list(tensors)
        finite = await asyncio.get_event_loop().run_in_executor(None, all_finite, tensors)
        if not finite:
            with torch.no_grad():
                for tensor in tensors:
                    if not all_finite([tensor]):
                        tensor.zero_()
            kwargs["weight"] = 0.0
            self._withheld_state_rounds.value += 1
            logger.debug("This peer's state holds NaN or infinite values: it joins the round with zeros and weight 0")
        await super()._run_allreduce_inplace_(tensors, group_info, group_id=group_id, **kwargs)

    def get_current_state(self):
        state = super().get_current_state()
        if all_finite([tensor.detach() for tensor in state[1]]):
            return state
        logger.debug("A peer asked for this peer's state, which holds NaN or infinite values: it gets none")
        return None, (), None  # hivemind then streams nothing, and the downloader tries its next peer


class _RemembersLastRound(DecentralizedAverager):
    """Placed between TrainingStateAverager and DecentralizedAverager in `SwarmStateAverager`'s MRO: every averaging
    round TrainingStateAverager starts (pre-scheduled, or in its background executor) passes through here."""

    last_round: StepControl | None = None

    def step(self, *args, **kwargs):
        control = super().step(*args, **kwargs)
        if isinstance(control, StepControl):
            self.last_round = control
        return control


class SwarmStateAverager(HivemindWireNames, WithholdsNonFiniteState, ChurnSafeAllReduce, ClosesFullGroups,
                         BackgroundTorchOnOneThread, TrainingStateAverager, _RemembersLastRound,
                         SharesParentTensorsBeforeFork):
    """hivemind's TrainingStateAverager whose next step does not queue behind a parameter round that found no group.

    hivemind averages the state in the background, but on a single-thread executor: the next epoch's optimizer step
    waits until that round ends. A peer that missed the others' state round (it reached the epoch a few seconds late,
    or its group member was killed) kept looking for a group until `averaging_timeout` while its training stood still
    (18 s and more in benchmarks/churn.py). The next step that would wait for such a round calls it off once it is a
    matchmaking window past due (`call_off_if_looking`), when the step begins or while it waits; a round whose
    all-reduce already runs is still waited for.
    """

    def _parent_tensors(self):
        yield from self.main_parameters  # the model's own parameters unless the optimiser is offloaded
        for state in self.optimizer.state.values():
            yield from (value for value in state.values() if isinstance(value, torch.Tensor))

    def step(self, *args, **kwargs):
        # only the steps that would wait for the background round (hivemind also calls step after every micro-step,
        # to apply finished updates; a straggler may still join the round then)
        will_wait = any(kwargs.get(name) for name in ("optimizer_step", "zero_grad", "averaging_round",
                                                       "wait_for_delayed_updates"))
        pending = self.last_round
        if not will_wait or pending is None or pending.done() or self._call_off_if_hopeless(pending):
            return super().step(*args, **kwargs)
        stop = threading.Event()  # the round may become hopeless while this step waits for it: watch it meanwhile
        threading.Thread(target=self._call_off_once_hopeless, args=(pending, stop), name="swarm-state-round-watch",
                         daemon=True).start()
        try:
            return super().step(*args, **kwargs)
        finally:
            stop.set()

    def _call_off_if_hopeless(self, control: StepControl) -> bool:
        if call_off_if_looking(control, grace_s=self.matchmaking_kwargs["min_matchmaking_time"]):
            logger.debug("Called off a state-averaging round that found no group in its matchmaking window")
            return True
        return False

    def _call_off_once_hopeless(self, control: StepControl, stop: threading.Event) -> None:
        """While a step waits for `control`, call it off as soon as it is a matchmaking window past due.

        The step that ends the next epoch often came before that: a volunteer restarted in benchmarks/churn.py ended
        its next epoch 5 s after its state round began, checked the round once (still within its grace), and then
        stood still for 28 s until the round gave up at `averaging_timeout`.
        """
        while not control.done() and not stop.wait(ROUND_POLL_S / 4):
            if self._call_off_if_hopeless(control):
                return


class SwarmOptimizer(hivemind.Optimizer):
    """hivemind.Optimizer that records every gradient-averaging round and keeps a lone peer's step cheap.

    hivemind logs "Averaged gradients with N peers" only at its verbose level; the count is what a
    volunteer needs to know whether it is really collaborating, so it is kept here and published.
    With the optimiser on the model's own parameters (`offload_optimizer=False`) and `reuse_grad_buffers=True`, a
    peer alone averages its accumulated gradients in place instead of copying them to the averager's host buffers
    and back (a round trip over PCIe on a GPU).
    """

    def __init__(self, *args, progress_report_period_s: float = PROGRESS_REPORT_PERIOD_S,
                 close_groups_early: bool = True, **kwargs):
        self._progress_report_period_s = progress_report_period_s
        self.close_groups_early = close_groups_early
        self._local_gradients_loaded = self._local_gradients_used = False
        self._peers_expected_from: frozenset | None = None  # the tracker's peer set the rounds expect (or None)
        super().__init__(*args, **kwargs)
        self.rounds = RoundStats()
        # epochs whose gradient this peer did not give the swarm (not finite: sent with weight 0, or alone, its step
        # skipped), so whose samples it does not claim
        self.unsent_epochs: set[int] = set()
        self.state_reloads = 0  # times this peer reloaded the swarm's state because its own was not finite
        self._withheld_state_seen = 0  # the state averager's withheld_state_rounds at the last check
        self._state_not_finite = False  # said so, and not finite again since

    def step(self, *args, **kwargs):
        epoch = self.local_epoch
        withheld = getattr(self.grad_averager, "withheld_rounds", 0)
        skipped = getattr(self.state_averager.optimizer, "skipped_steps", 0)
        result = super().step(*args, **kwargs)
        if self.local_epoch != epoch:
            if (getattr(self.grad_averager, "withheld_rounds", 0) != withheld
                    or (getattr(self.state_averager.optimizer, "skipped_steps", 0) != skipped
                        and self.rounds.last_group_size <= 1)):
                self.unsent_epochs.add(epoch)
            self._reload_state_if_not_finite()
        return result

    def _reload_state_if_not_finite(self) -> None:
        """Once per epoch: a peer whose parameters went NaN or infinite reloads the swarm's state from its peers.

        Its gradients are checked (`SwarmGradientAverager`, `swarm.optim.skip_non_finite_steps`), so what turns the
        parameters themselves NaN is memory corruption or a faulty kernel. Such a peer computed only NaN gradients
        from then on, which it withheld, and never recovered. The state averager keeps its state out of the rounds
        (`WithholdsNonFiniteState`); a round it had to withhold triggers the reload too, as only part of the state
        may be averaged. One host sync per epoch: fp32 sums of the parameters (`swarm.optim.all_finite`).
        """
        withheld = getattr(self.state_averager, "withheld_state_rounds", 0)
        if withheld == self._withheld_state_seen and all_finite(list(self.state_averager.main_parameters)):
            self._state_not_finite = False
            return
        self._withheld_state_seen = withheld
        if not self._state_not_finite:
            self._state_not_finite = True
            logger.warning(f"Epoch {self.local_epoch}: this peer's parameters hold NaN or infinite values (not from "
                           "its gradients, which are checked: memory corruption or a faulty kernel). They are kept "
                           "out of the swarm's averaging, and the peer reloads the swarm's state from its peers; if "
                           "this happens again, check this machine's memory and GPU")
        self.load_state_from_peers()
        self.state_reloads += 1
        # hivemind lets the state round in flight end before it downloads: the download replaced what it withheld
        self._withheld_state_seen = getattr(self.state_averager, "withheld_state_rounds", 0)
        if all_finite(list(self.state_averager.main_parameters)):
            self._state_not_finite = False
            logger.info(f"Reloaded the swarm's state: training on from epoch {self.local_epoch}")
        else:
            logger.info("No peer served a state to reload yet: this peer tries again at the end of its next epoch")

    def _make_progress_tracker(self, target_batch_size: int, **kwargs) -> ProgressTracker:
        return SwarmProgressTracker(dht=self.dht, prefix=self.run_id, target_batch_size=target_batch_size,
                                    client_mode=self.client_mode, status_loglevel=self.status_loglevel, start=True,
                                    report_period_s=self._progress_report_period_s, **kwargs)

    @property
    def _steps_on_model_gradients(self) -> bool:
        """The optimiser steps the model's own parameters, right after the epoch's averaging (if any)."""
        return not self.offload_optimizer and self.use_gradient_averaging and not self.delay_grad_averaging

    def _make_state_averager(self, **kwargs) -> TrainingStateAverager:
        # hivemind's own settings for its state averager, in a subclass that calls off hopeless background rounds
        return SwarmStateAverager(
            dht=self.dht, prefix=f"{self.run_id}_state_averager", min_matchmaking_time=self.matchmaking_time,
            allreduce_timeout=self.allreduce_timeout, shutdown_timeout=self.shutdown_timeout,
            offload_optimizer=self.offload_optimizer, custom_gradients=self.offload_optimizer,
            status_loglevel=self.status_loglevel, next_chunk_timeout=self.next_chunk_timeout,
            client_mode=self.client_mode, auxiliary=self.auxiliary, start=True, **kwargs)

    def _average_gradients_and_load_into_optimizer(self, maybe_step_control):
        self._local_gradients_used = False
        if maybe_step_control is not None:
            self._wait_for_round(maybe_step_control)
        super()._average_gradients_and_load_into_optimizer(maybe_step_control)  # the round is over: no wait here
        group_size, received_fraction = 1, 1.0
        if maybe_step_control is not None and not self._local_gradients_used:
            group_size = len(maybe_step_control.result(0))  # hivemind loaded the averaged gradients: it is done
            if isinstance(self.grad_averager, SwarmGradientAverager):
                received_fraction = self.grad_averager.last_received_fraction
        self.rounds.record(group_size, received_fraction)
        if group_size >= 2 and received_fraction < 1.0:
            logger.warning(f"Averaged gradients with {group_size} peers, but only {received_fraction:.0%} of the data "
                           "arrived in time (next_chunk_timeout): a member left mid-round, or its CPU or link is too "
                           "slow for this round")

    def _maybe_schedule_gradient_averaging(self) -> None:
        # hivemind pre-schedules a round (matchmaking through the DHT) before every epoch, even when its tracker
        # sees no other peer, and then cancels it at the epoch's end. Alone on 2 CPU cores that matchmaking kept
        # the averager and DHT processes at ~0.5-0.65 cores and cut the peer's throughput by a third
        # (benchmarks/overhead.py). With no one to average with, hivemind skips the round anyway: skip the search.
        if self.tracker.global_progress.num_peers <= 1:
            return
        self._expect_everyone()
        super()._maybe_schedule_gradient_averaging()

    def _expect_everyone(self) -> None:
        """Let the next rounds form once every peer in the progress records has joined, not at the window's end.

        A pre-scheduled gradient round otherwise assembles only when its window is over, and its all-reduce started
        0.4-1.4 s after the global batch was full (benchmarks/README.md); a round begun at the epoch's end waited a
        whole window. Runs in the training thread, which starts the rounds; costs nothing until the records change.
        """
        seen = self.tracker.peers_seen
        if seen is self._peers_expected_from or not self.close_groups_early:
            return
        self._peers_expected_from = seen
        peers = len(seen | {self.dht.peer_id.to_bytes()})
        for averager in (self.grad_averager, self.state_averager):
            if isinstance(averager, ClosesFullGroups):
                averager.expect_group_size(peers)

    def _wait_for_round(self, control: StepControl) -> None:
        """Wait for this epoch's round at most averaging_timeout in all, and not at all once it is hopeless.

        hivemind waits up to averaging_timeout whatever happens meanwhile. In benchmarks/churn.py a peer whose round
        found no group stood still for 25-28 s while the other peers averaged without it and went epochs ahead. Once
        a peer reports a later epoch and this round is still looking for a group a matchmaking window after it was
        due, it is called off: this peer steps on its own gradient and catches up at its next step. A round neither
        over nor called off by the deadline is cancelled, so that hivemind does not wait a second time (an earlier
        version left it running, and a peer whose group member had died stood still for 55 s with a 30 s timeout).
        """
        deadline = time.monotonic() + self.averaging_timeout
        while not control.done() and time.monotonic() < deadline:
            if looking_past_due(control, self.matchmaking_time):
                hopeless = self._why_round_is_hopeless(deadline)
                if hopeless and call_off_if_looking(control, self.matchmaking_time):
                    logger.debug(f"Called off this epoch's round: {hopeless}")
                    break
            try:
                control.result(timeout=min(ROUND_POLL_S, max(0.0, deadline - time.monotonic())))
            except BaseException:  # this slice timed out, or the round failed: hivemind reads the outcome
                pass
        if not control.done():
            control.cancel()
        if control.cancelled() and self.scheduled_grads is control:
            self.scheduled_grads = None  # hivemind's shutdown would cancel it again, and a second cancel raises

    def _why_round_is_hopeless(self, deadline: float) -> str | None:
        """Why this epoch's round (still looking for a group) will find none, or None while it may.

        Read from the DHT: hivemind's tracker does not refresh the swarm's progress while this peer is inside its
        epoch step. Either a peer already reports a later epoch (the others averaged without this one), or no other
        peer is looking for a group: a peer that looks re-declares itself under the round's group key at least every
        matchmaking window, so a window past due there is nobody left to form one with. The peers at this epoch
        that are not looking are then left out of the swarm's progress until they store a new record
        (`SwarmProgressTracker.presume_gone`): in a swarm of two whose other peer was killed, the survivor waited
        the averaging timeout for it in every round until its record expired, a minute.
        """
        records = self._read_dht(self.tracker.training_progress_key, deadline)
        epochs = [entry.value.get("epoch") for entry in (records or {}).values() if isinstance(entry.value, dict)]
        if any(isinstance(epoch, int) and epoch > self.local_epoch for epoch in epochs):
            return "the swarm averaged without this peer"
        # the round's group key: hivemind.Optimizer gives its averagers no group bits, and GroupKeyManager never adds
        # bits to an empty key
        declared = self._read_dht(f"{self.grad_averager.prefix}.0b", deadline)
        if declared is None:
            return None  # the read failed: no evidence either way
        own, now = self.dht.peer_id.to_bytes(), get_dht_time()
        if any(subkey != own and entry.value is True and entry.expiration_time > now
               for subkey, entry in declared.items()):
            return None
        gone = self.tracker.presume_gone(records or {}, before_epoch=self.local_epoch)
        return f"no other peer is looking for a group ({gone} peer(s) left out until they report again)"

    def _read_dht(self, key: str, deadline: float) -> dict | None:
        """The subkeys stored under `key` ({} if none), or None if the read failed or timed out."""
        try:
            found = self.dht.get(key, latest=True, return_future=True).result(
                timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        except BaseException:
            return None
        if found is None:
            return {}
        return found.value if isinstance(found.value, dict) else {}

    def _tag_along_with_zero_weight(self, control: StepControl):
        """hivemind joins a pending round with zero weight before loading the state, and waits up to averaging_timeout.

        That is right once a group has formed (its members wait for this peer's part), but a peer that fell behind
        usually holds a round that is still looking for a group nobody else will join: in benchmarks/churn.py it
        stood still for the whole 30 s timeout before it could load the swarm's state. Such a round is called off.
        """
        if not call_off_if_no_group(control):
            super()._tag_along_with_zero_weight(control)

    def load_state_from_peers(self, **kwargs):
        """Download the swarm's state without first sitting out a background state round that has no group.

        hivemind waits for the state averager's background round (up to averaging_timeout) before it downloads,
        though the download replaces whatever that round would bring. A peer that reached a state-averaging epoch
        just after the others had averaged looked for a group alone, then found itself out of sync and stood still
        for 25 s before loading the state (benchmarks/churn.py). Such a round is called off; a round whose group has
        formed is still finished, as its members wait for this peer's part.
        """
        call_off_if_no_group(self.state_averager.last_round)
        return super().load_state_from_peers(**kwargs)

    def _begin_averaging_gradients(self, grad_scaler) -> bool:
        self._local_gradients_loaded = False
        began = super()._begin_averaging_gradients(grad_scaler)
        if began:
            return True
        if self._steps_on_model_gradients:
            # No round. hivemind would now only copy the accumulated gradients into the averager's host buffers,
            # which an offloaded optimiser reads; this one reads the model's .grad, which then still held the last
            # micro-batch's gradients. Returning True sends the epoch through
            # _average_gradients_and_load_into_optimizer(None): local gradients into .grad, and the round counted.
            return True
        self.rounds.record(1)  # hivemind skipped the round: it saw no other peer
        return began

    def _load_local_gradients_into_optimizer(self):
        self._local_gradients_used = True
        if self._local_gradients_loaded:  # hivemind may come here twice in an epoch; the first time did it
            self.grad_averager.notify_used_averaged_gradients()
            return
        averager = self.grad_averager
        accumulated = averager.local_times_accumulated
        if self._steps_on_model_gradients and averager.reuse_grad_buffers and accumulated > 0:
            # .grad holds the sum over this epoch's micro-steps and is what the optimiser reads: make it their mean
            # in place rather than through the averager's host buffers (a round trip over PCIe on a GPU)
            with torch.no_grad():
                grads = [param.grad for param in averager.parameters if param.grad is not None]
                torch._foreach_mul_(grads, 1.0 / accumulated)
            averager.notify_used_averaged_gradients()
        elif accumulated == 0 and averager.local_samples_accumulated == 0 and averager._new_averaged_grads:
            # A round began and failed. Starting it moved this epoch's mean gradient into the averager's buffers and
            # zeroed the accumulators; hivemind would now reload those zeros and step on a zero gradient, throwing
            # the epoch's compute away. The buffers hold this peer's gradient, or for the parts whose all-reduce
            # finished before the failure, the group's average: both are estimates of the same gradient.
            self._load_averaged_gradients_into_optimizer_()
        else:  # hivemind's path
            super()._load_local_gradients_into_optimizer()
        self._local_gradients_loaded = True


def state_averaging_compression(collab: CollaborationConfig) -> CompressionBase:
    """Wire format of the periodic state averaging: parameters as the recipe says, optimiser statistics exactly.

    hivemind averages by adding a decoded delta (average - own value) to each peer's tensor. Adam's exp_avg_sq holds
    values down to 1e-12 and below, under fp16's smallest step (6e-8) and far under what 8-bit keeps: a rounded delta
    left some entries at zero or negative, and sqrt(negative) turned every parameter into NaN within an epoch (4 tiny
    peers in benchmarks/convergence.py, fp16, averaging every 5 epochs). The statistics therefore travel in fp32:
    every `average_state_every` epochs, not every step.
    """
    return RoleAdaptiveCompression(parameter=make_compression(collab.compression), optimizer=NoCompression(),
                                   default=NoCompression())


def next_chunk_timeout_s(collab: CollaborationConfig) -> float:
    """How long an all-reduce waits for a peer's next chunk before averaging that part without it.

    hivemind defaults it to matchmaking_time (2 s in tiny-stdlib): on a busy CPU, peers' chunks missed it and rounds
    went ahead with 51-61% of the data. A quarter of averaging_timeout_s leaves the round room to finish: the
    reducers' own deadline is twice this, i.e. half of averaging_timeout_s.
    """
    return max(collab.matchmaking_time_s, collab.averaging_timeout_s / 4)


# Whether a CPU peer offloads its optimiser (hivemind's default) or steps the model's parameters in place. Measured
# with benchmarks/overhead.py, arms swarm (in place) and swarm-offload, tiny model on 2 CPU cores: see
# benchmarks/README.md. In place saves a copy of the gradients and of the parameters per epoch.
CPU_OFFLOAD_OPTIMIZER = False


def default_offload_optimizer(model: torch.nn.Module) -> bool:
    """Offload the optimiser to host memory only for a model on the CPU, and only if that is measured faster there.

    On a GPU, hivemind's default offload runs AdamW on the CPU over a host copy of every parameter at every epoch and
    copies the gradients down and the parameters back up; on the device the step is one fused kernel.
    """
    return next(model.parameters()).device.type == "cpu" and CPU_OFFLOAD_OPTIMIZER


def offloads_optimizer(model: torch.nn.Module, collab: CollaborationConfig) -> bool:
    """Whether a DeDLOC peer's optimiser runs on its own host copy of the parameters: delayed updates need one."""
    return collab.delay_updates or default_offload_optimizer(model)


def shared_memory_needed(model: torch.nn.Module, recipe: Recipe) -> int:
    """Bytes of /dev/shm the optimiser of `build_swarm_optimizer` takes for this model (within a few percent).

    hivemind hands tensors to its averager processes through shared memory: DeDLOC's averaged gradients and the state
    averager's copy of the parameters (and of Adam's moments when the recipe averages them); DiLoCo's outer
    parameters, momentum and pseudo-gradient buffer. A model on the CPU, its gradients and its optimiser state join
    them (`SharesParentTensorsBeforeFork`). Measured on the tiny recipe: 34.0 (25.6 with `delay_updates`) and 16.9
    bytes per parameter.
    """
    params = [param for param in model.parameters()]
    values = sum(param.numel() for param in params)
    on_cpu = bool(params) and params[0].device.type == "cpu"
    collab = recipe.collaboration
    if collab.mode == "diloco":
        per_value = 12 + (4 if on_cpu else 0)
    elif offloads_optimizer(model, collab):
        # an offloaded optimiser's own fp32 parameters, gradients (the averaged ones) and Adam moments, plus a CPU
        # model's parameters and gradients: 25.6 measured with delay_updates on the tiny recipe
        per_value = 16 + (8 if on_cpu else 0)
    else:
        per_value = 8 + (8 if collab.average_optimizer_state else 0) + (16 if on_cpu else 0)
    return values * per_value + len(params) * 4 * 4096  # each tensor is its own file, rounded up to pages


def build_swarm_optimizer(
    dht: hivemind.DHT,
    model: torch.nn.Module,
    recipe: Recipe,
    identity: Identity,
    micro_batch_size: int,
    client_mode: bool = False,
    reuse_grad_buffers: bool = False,
    offload_optimizer: bool | None = None,
    progress_report_period_s: float = PROGRESS_REPORT_PERIOD_S,
) -> SwarmOptimizer:
    """The collaborative optimiser of one volunteer, configured from the recipe's optimizer and collaboration.

    `reuse_grad_buffers=True` (what the volunteer uses) lets hivemind accumulate micro-batches in the parameters' own
    .grad instead of copying them into separate accumulators after every micro-step; the training loop must then
    never call zero_grad (hivemind raises) because hivemind zeroes the buffers after each epoch.
    `offload_optimizer=None` picks `default_offload_optimizer(model)`: on the model's device for a GPU.
    """
    if recipe.collaboration.mode == "diloco":
        from peer.diloco import build_diloco_optimizer  # here, not at the top: peer.diloco imports this module

        return build_diloco_optimizer(dht, model, recipe, identity, micro_batch_size, client_mode)
    collab = recipe.collaboration
    make_optimizer, make_scheduler = build_optimizer_factories(recipe.optimizer)
    compression = make_compression(collab.compression)
    average_statistics = ("exp_avg", "exp_avg_sq") if collab.average_optimizer_state else ()
    if offload_optimizer is None:
        offload_optimizer = offloads_optimizer(model, collab)
    elif collab.delay_updates and not offload_optimizer:
        raise ValueError("collaboration.delay_updates steps an offloaded optimiser: offload_optimizer must be True")
    # hivemind warns (and can deadlock in rare cases) when a request may outlive the matchmaking window
    request_timeout_s = min(3.0, collab.matchmaking_time_s / 2)
    return SwarmOptimizer(
        dht=dht,
        run_id=recipe.run.id,
        params=parameter_groups(model, recipe.optimizer.weight_decay),
        optimizer=make_optimizer,  # fused AdamW when the parameters it gets are CUDA tensors (swarm.optim)
        scheduler=make_scheduler,
        target_batch_size=collab.target_batch_size,
        batch_size_per_step=micro_batch_size,
        matchmaking_time=collab.matchmaking_time_s,
        averaging_timeout=collab.averaging_timeout_s,
        next_chunk_timeout=next_chunk_timeout_s(collab),
        load_state_timeout=collab.load_state_timeout_s,
        grad_compression=compression,
        grad_averager_factory=partial(SwarmGradientAverager, request_timeout=request_timeout_s),
        averager_opts=dict(request_timeout=request_timeout_s),
        state_averaging_compression=state_averaging_compression(collab),
        average_state_every=collab.average_state_every,
        average_opt_statistics=average_statistics,
        # hivemind 1.1.12 inverts its client_mode default (optimizer.py ~l.205): always pass it explicitly
        client_mode=client_mode,
        reuse_grad_buffers=reuse_grad_buffers,
        offload_optimizer=offload_optimizer,
        delay_grad_averaging=collab.delay_updates,
        delay_optimizer_step=collab.delay_updates,
        tracker_opts=dict(private_key=identity.signing_key, min_refresh_period=0.5, max_refresh_period=5.0),
        progress_report_period_s=progress_report_period_s,
        close_groups_early=collab.close_groups_early,
        verbose=False,
    )
