"""DiLoCo on hivemind: many local steps, then one outer Nesterov step on the swarm-averaged pseudo-gradient.

DiLoCo (Douillard et al. 2023) trades DeDLOC's all-reduce per global batch for one all-reduce every
`inner_steps` local steps: each peer trains its own copy with the inner optimiser (the recipe's `optimizer`),
then the peers average the *pseudo-gradient* (the round's start parameters minus the current ones) and every
peer applies the same outer step (SGD with Nesterov momentum, lr 0.7) to the round's start parameters. The
paper reached data-parallel quality with 500x less communication. hivemind's butterfly all-reduce sends (and
receives) 2(n-1)/n of the pseudo-gradient per peer and round, in the recipe's `compression` wire format: with
`uint8`, one byte per value.

`DiLoCoOptimizer` has the surface the volunteer loop uses (`step`, `zero_grad`, `local_epoch`, `tracker`,
`rounds`, `load_state_from_peers`, `finish_rounds`, `shutdown`); one swarm epoch is one outer round:

>>> opt = build_diloco_optimizer(dht, model, recipe, identity, micro_batch_size=16)    # doctest: +SKIP
>>> loss = model(input_ids=batch, labels=batch).loss; loss.backward()                  # doctest: +SKIP
>>> opt.step(); opt.zero_grad(set_to_none=True)                                        # doctest: +SKIP
>>> opt.local_epoch, opt.rounds.averaged                                               # doctest: +SKIP

How a round forms (hivemind 1.1.12 matches groups by key and time only, so the epoch goes into the key):

- A peer that has taken `inner_steps` steps declares itself for averaging under the key of its epoch and goes
  on training. Every other peer polls that key, and once someone at its epoch is waiting it joins too, with
  the steps it has done: nobody idles while the group forms, and slower peers contribute smaller (fewer-step)
  pseudo-gradients, weighted by their step counts. The group forms as soon as every peer this one knows of has
  joined (the progress records, plus the peers declared under the key), and at the latest one matchmaking window
  after the *first* peer is ready (hivemind alone always waits out the window: rounds then grew by window / step
  time, e.g. from 20 to 30 micro-steps).
- When the group is assembled, each member captures its pseudo-gradient at its next `step()` and the
  all-reduce runs (compressed as the recipe says). Without `overlap_communication` the peer waits for it and
  then applies the outer step; with it, training goes on and the result is applied when it arrives, on top of
  the local progress made meanwhile (the all-reduce time is hidden; the update lags by those steps, at most a
  round). At the run's end `finish_rounds` applies the last one before the final state is served.
- A peer that finds itself behind the swarm (it missed a round's group, or joined without loading) downloads the
  current outer state and keeps its own progress as a delta on top of it; a peer alone in the swarm (checked
  against a fresh read of the progress records) applies its own pseudo-gradient.
- Every `average_parameters_every` rounds the outer parameters and momentum are averaged too (fp16). hivemind
  returns each peer the average *plus its own quantisation error*, so with lossy compression the peers' outer
  parameters drift apart slowly (a random walk); late joiners also miss the round in flight. This pulls them
  together.
- A round that breaks midway (a link drops, chunks miss `next_chunk_timeout`) leaves each member a different mix
  of averaged and local values, and a peer that found no group while others trained applied its own step: such a
  peer sets `outer_may_differ` and says so in its next round's gathered data; every member of that group then
  averages the outer parameters and momentum in the round after (`repair_rounds` counts them).

The state served to newcomers and to the coordinator is the outer state (parameters in
`swarm.optim.parameter_order`, then the momentum) under `{run_id}_state_averager`, as in mode dedloc.

Tuning from the logs and `rounds`:
- `rounds.solo` growing while other peers are up: raise `collaboration.matchmaking_time_s` (10-15 s online);
  a slow peer must see the first peer's declaration within that window. If it grows only as peers join, groups
  that filled with the peers already known turned the newcomer away: `collaboration.close_groups_early: false`.
- "Behind the swarm ... loading its state" often: this peer's rounds take far longer than the others'; it
  still contributes its progress, one round late. Lower its micro-batch or give it a faster link.
- Rounds that wait on the all-reduce (`overlap_communication: false` and a slow link): turn overlap on, or use
  8-bit compression, or raise `inner_steps` (communication time / compute time falls as 1/inner_steps).
- `compression: uint8` (hivemind's uniform codec: a +-3 sigma range per part, bucket means as the codebook)
  rounds a pseudo-gradient with a heavy tail (embedding rows of the tokens a round saw) coarsely: on a small
  GPT-2 the peers' outer parameters drifted apart by ~1% of a round's movement per round, against ~0.03% with
  fp16, until `average_parameters_every` pulled them together. Prefer fp16 unless the link is the bottleneck;
  `blockwise8` (absmax per block, needs bitsandbytes) has no such clipping.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import hivemind
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.control import AveragingStage, StepControl
from hivemind.compression import CompressionBase, CompressionInfo, NoCompression, ScaledFloat16Compression, TensorRole
from hivemind.optim.state_averager import TrainingStateAverager, load_optimizer_state
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from peer import collaboration  # the module, not RoundStats: collaboration.py may import this file first
from peer.allreduce import ChurnSafeAllReduce
from swarm.compat import make_compression
from swarm.identity import Identity
from swarm.optim import all_finite, build_optimizer_factories, lr_multiplier, parameter_groups, parameter_order
from swarm.processes import share_with_forked_processes
from swarm.recipe import DiLoCoConfig, Recipe

logger = logging.getLogger(__name__)

EPOCH_KEY_BITS = 16  # the epoch (mod 2**16) is part of the averaging group key: only peers of one round match
TINY_WEIGHT = 1e-6  # a member with no steps this round still joins (to receive the average) but adds nothing


def make_outer_optimizer(params, cfg: DiLoCoConfig) -> torch.optim.SGD:
    """The outer optimiser of DiLoCo: SGD with (Nesterov) momentum, applied once per round."""
    nesterov = cfg.nesterov and cfg.outer_momentum > 0  # torch refuses Nesterov without momentum
    return torch.optim.SGD(params, lr=cfg.outer_lr, momentum=cfg.outer_momentum, nesterov=nesterov)


@torch.no_grad()
def apply_outer_step(outer_optimizer: torch.optim.Optimizer, pseudo_gradients: Sequence[torch.Tensor]) -> None:
    """Move the outer (start-of-round) parameters by one outer step along the averaged pseudo-gradients.

    The pseudo-gradient plays the role of the gradient: with Nesterov momentum mu and learning rate lr,
    m <- mu * m + g and theta <- theta - lr * (g + mu * m).
    """
    params = [param for group in outer_optimizer.param_groups for param in group["params"]]
    if len(params) != len(pseudo_gradients):
        raise ValueError(f"{len(pseudo_gradients)} pseudo-gradients for {len(params)} outer parameters")
    for param, pseudo_gradient in zip(params, pseudo_gradients):
        if param.grad is not pseudo_gradient:
            param.grad = pseudo_gradient
    outer_optimizer.step()


class _OuterStateAverager(collaboration.WithholdsNonFiniteState, collaboration.AllreduceOutcome, ChurnSafeAllReduce,
                          collaboration.ClosesFullGroups, collaboration.BackgroundTorchOnOneThread,
                          TrainingStateAverager, collaboration.SharesParentTensorsBeforeFork):
    """The outer parameters and momentum: served to newcomers, averaged on some rounds (see `AllreduceOutcome`); never
    sent nor served while not finite (`WithholdsNonFiniteState`)."""


def epoch_group_bits(epoch: int) -> str:
    """The averaging group-key suffix of a round: peers at different epochs never land in one group."""
    return format(epoch % 2**EPOCH_KEY_BITS, f"0{EPOCH_KEY_BITS}b")


@dataclass
class _Round:
    """A closed round whose pseudo-gradient is captured; its all-reduce may still be running."""

    epoch: int
    control: StepControl | None  # None: nobody to average with, the local pseudo-gradient is the result
    parameters_round: StepControl | None  # averaging of the outer parameters themselves, on some rounds
    started: float
    sent_nothing: bool = False  # this peer's pseudo-gradient was not finite: it sent zeros, and restarts from outer


class DiLoCoOptimizer:
    """Local inner steps on the model, an outer Nesterov step on the swarm-averaged pseudo-gradient per round.

    Components (each a hivemind part, configured from the recipe by `build_diloco_optimizer`):
    - `inner_optimizer`: the recipe's optimiser over the model's own parameters, stepped on every micro-batch;
    - `tracker`: hivemind's ProgressTracker under the run id, as in mode dedloc (epochs, samples, peers);
    - `state_averager`: a TrainingStateAverager holding the outer parameters (CPU, fp32) and the outer SGD;
      it serves them to newcomers and to the coordinator, and averages them every `average_parameters_every`;
    - `averager`: a DecentralizedAverager for the pseudo-gradients, compressed as the recipe says.

    Memory: three fp32 copies of the parameters on the CPU (outer parameters, round start, averaging buffer)
    plus the outer momentum; nothing extra on the accelerator.

    >>> opt = DiLoCoOptimizer(dht=dht, run_id="tiny", param_groups=parameter_groups(model, 0.01),     # doctest: +SKIP
    ...                       parameter_names=parameter_order(model), make_inner_optimizer=make_adamw,
    ...                       inner_lr_multiplier=lambda epoch: 1.0, diloco=DiLoCoConfig(inner_steps=100),
    ...                       micro_batch_size=16, target_batch_size=3200, matchmaking_time_s=5.0,
    ...                       averaging_timeout_s=60.0, load_state_timeout_s=300.0)
    >>> for batch in batches:                                                                        # doctest: +SKIP
    ...     model(input_ids=batch, labels=batch).loss.backward(); opt.step(); opt.zero_grad()
    >>> opt.rounds                       # RoundStats(averaged=..., solo=..., last_group_size=...)    # doctest: +SKIP
    >>> opt.shutdown()                                                                               # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        dht: hivemind.DHT,
        run_id: str,
        param_groups: Sequence[dict],
        parameter_names: Sequence[str],
        make_inner_optimizer: Callable[[Sequence[dict]], torch.optim.Optimizer],
        inner_lr_multiplier: Callable[[float], float],
        diloco: DiLoCoConfig,
        micro_batch_size: int,
        target_batch_size: int,
        matchmaking_time_s: float,
        averaging_timeout_s: float,
        load_state_timeout_s: float,
        compression: CompressionBase = NoCompression(),
        parameters_compression: CompressionBase = ScaledFloat16Compression(),
        private_key: RSAPrivateKey | None = None,
        client_mode: bool = False,
        close_groups_early: bool = True,
        peer_micro_batch_bound: int | None = None,
    ):
        self.dht, self.run_id, self.diloco = dht, run_id, diloco
        self.client_mode, self.micro_batch_size = client_mode, micro_batch_size
        # the largest micro-batch another peer may use (the recipe's, or the most `auto` picks): sizes its step time
        self.peer_micro_batch_bound = max(micro_batch_size, peer_micro_batch_bound or 0)
        self.close_groups_early = close_groups_early
        self._own_id = dht.peer_id.to_bytes()  # this peer's key in the progress records and the group keys
        self.matchmaking_time_s, self.averaging_timeout_s = matchmaking_time_s, averaging_timeout_s
        self.load_state_timeout_s = load_state_timeout_s
        self.rounds = collaboration.RoundStats()
        self.unsent_epochs: set[int] = set()  # rounds whose pseudo-gradient was not finite (samples not claimed)
        self.state_reloads = 0  # times this peer reloaded the swarm's state because its outer state was not finite
        self._withheld_state_seen = 0  # the state averager's withheld_state_rounds at the last check
        self._outer_not_finite = False  # said so, and not finite again since
        self._outer_reload_due = False  # the outer state is not finite: reload it at the end of this step
        # hivemind warns (and can deadlock in rare cases) when a request may outlive the matchmaking window
        request_timeout_s = min(3.0, matchmaking_time_s / 2)

        self.model_parameters = [param for group in param_groups for param in group["params"]]
        # hivemind forks two averager processes below: on a CPU peer, parameters in shared memory are not left behind
        # in them as stale copies once training rewrites them (swarm.processes.share_with_forked_processes)
        share_with_forked_processes(self.model_parameters)
        self.inner_optimizer = make_inner_optimizer([dict(group) for group in param_groups])
        self._inner_base_lrs = [group["lr"] for group in self.inner_optimizer.param_groups]
        self._inner_lr_multiplier = inner_lr_multiplier
        self._schedule_inner_lr(0.0)  # the schedule's first value from the start, as hivemind's scheduler sets it

        # DHT stores of this peer's progress rate-limited, as in mode dedloc (one per inner step otherwise)
        self.tracker = collaboration.SwarmProgressTracker(
            dht=dht, prefix=run_id, target_batch_size=target_batch_size, client_mode=client_mode,
            private_key=private_key, min_refresh_period=0.5, max_refresh_period=5.0, start=True,
        )
        self.state_averager = _OuterStateAverager(
            dht=dht,
            prefix=f"{run_id}_state_averager",  # where the coordinator and newcomers download the model
            optimizer=lambda outer_groups: make_outer_optimizer(outer_groups, diloco),
            params=[dict(group, weight_decay=0.0) for group in param_groups],
            parameter_names=tuple(parameter_names),
            offload_optimizer=True,  # the outer parameters live on the CPU, apart from the model
            custom_gradients=True,  # their "gradients" are the averaged pseudo-gradients, set below
            compression=parameters_compression,
            # the momentum too: after a broken round the members' momenta differ, and would part them again
            average_opt_statistics=("momentum_buffer",) if diloco.outer_momentum > 0 else (),
            min_matchmaking_time=matchmaking_time_s,
            request_timeout=request_timeout_s,
            allreduce_timeout=averaging_timeout_s,
            # hivemind's default chunk timeout is the request timeout: too short to start streaming a large state
            next_chunk_timeout=max(matchmaking_time_s, 10.0),
            client_mode=client_mode,
            start=True,
        )
        self.outer_optimizer = self.state_averager.optimizer
        self._outer = [param for group in self.outer_optimizer.param_groups for param in group["params"]]
        self.averager = collaboration.SwarmAverager(
            averaged_tensors=[torch.zeros_like(param) for param in self._outer],
            dht=dht,
            prefix=f"{run_id}_diloco_averager",
            start=True,
            compression=compression,
            tensor_infos=[CompressionInfo.from_tensor(param, key=name, role=TensorRole.GRADIENT)
                          for param, name in zip(self._outer, parameter_names)],
            min_matchmaking_time=matchmaking_time_s,
            request_timeout=request_timeout_s,
            allreduce_timeout=averaging_timeout_s,
            # a member captures its pseudo-gradient at its next step() after the group forms: give slow steps time
            next_chunk_timeout=averaging_timeout_s,
            allow_state_sharing=False,
            client_mode=client_mode,
        )
        # after the averager forked, so that its process holds no copy of it
        self._round_start = [param.detach().clone() for param in self._outer]
        with self.averager.get_tensors() as buffers:
            self._buffers = list(buffers)  # shared memory, written only while no all-reduce runs on them
        for param, buffer in zip(self._outer, self._buffers):
            param.grad = buffer  # the outer step reads the averaged pseudo-gradient in place

        self._epoch = 0
        self._steps_in_round = self._samples_in_round = 0
        self._forming: StepControl | None = None  # our pseudo-gradient round, still matchmaking
        self._forming_parameters: StepControl | None = None
        self._in_flight: _Round | None = None
        self._poll = None  # (epoch, future) of a pending DHT read of that epoch's group key
        self._progress_read = None  # (epoch, future) of a pending DHT read of the progress records
        self._poll_epoch, self._next_poll_s, self._next_catch_up_s = -1, 0.0, 0.0
        self._someone_waiting = False
        self._waiting_peers: set[bytes] = set()  # peers seen declared for this epoch's group (DHT subkeys)
        self._poll_issued_at = self._waiting_read_at = -math.inf  # DHT times: the last read began, the one seen
        # a round that failed (or lost part of its data) midway leaves each member a different mix of averaged and
        # local values, so the members' outer parameters part; the next group hears of it and averages them
        self.outer_may_differ = False
        self._repair_epoch = -1  # the round in which the last group agreed to average the outer parameters
        self.repair_rounds = 0  # rounds that averaged the outer parameters because a member had parted
        self._poll_period_s = max(0.2, min(1.0, matchmaking_time_s / 3))
        self._round_window_s = matchmaking_time_s  # this round's, stretched for slow peers (_matchmaking_window_s)

    # ---------------------------------------------------------------- the surface the volunteer uses
    @property
    def local_epoch(self) -> int:
        """Outer rounds this peer has closed (the swarm epoch it trains in)."""
        return self._epoch

    def step(self) -> None:
        """One inner step on the current micro-batch gradients, then whatever the round needs next.

        The gradients are consumed: step() clears them, so a loop that never calls zero_grad works too.
        """
        self._inner_step()
        self.inner_optimizer.zero_grad(set_to_none=True)
        self._steps_in_round += 1
        self._samples_in_round += self.micro_batch_size
        self.tracker.report_local_progress(self._epoch, self._samples_in_round)

        if self._in_flight is not None and self._round_arrived(self._in_flight):
            self._finish_round()
        if self._forming is not None:
            stage = self._forming.stage
            if self._forming.done() or stage == AveragingStage.AWAITING_TRIGGER:
                self._close_round()
            elif stage == AveragingStage.LOOKING_FOR_GROUP and self.tracker.global_epoch > self._epoch:
                self._close_round()  # this epoch's group closed without us: others have moved on
            elif stage == AveragingStage.LOOKING_FOR_GROUP and self._nobody_else_looking(self._forming):
                gone = self.tracker.presume_gone(self.tracker.last_records, before_epoch=self._epoch)
                logger.debug(f"Round {self._epoch}: nobody else looked for a group a window past due; "
                             f"{gone} silent peer(s) left out until they report again")
                self._close_round(others_gone=True)
            else:
                self._expect_everyone()  # a peer the tracker has just heard of joins this group too
        elif self.tracker.global_epoch > self._epoch + 1:
            self._catch_up()  # far behind (e.g. the machine slept): this round can average with nobody
        elif self._steps_in_round >= self.diloco.inner_steps or (
                self.tracker.global_progress.num_peers >= 2 and self._another_peer_is_waiting()):
            self._join_round()
        if self._outer_reload_due:
            self._reload_outer_state()

    @property
    def repair_pending(self) -> bool:
        """This peer's outer parameters may differ from its group's, or its next round averages them to repair that."""
        return self.outer_may_differ or self._repair_epoch >= self._epoch

    @property
    def param_groups(self) -> list[dict]:
        """The inner optimiser's parameter groups, `lr` as the schedule sets it: what `hivemind.Optimizer` exposes."""
        return self.inner_optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner_optimizer.zero_grad(set_to_none=set_to_none)

    def start_at_epoch(self, epoch: int) -> None:
        """Go on from a published version of `epoch` (nobody trains to load the state from), before the first step.

        The model's parameters, and so the outer ones, are the version's already. A volunteer that started a quiet
        DiLoCo run from its newest version stayed at epoch 0: it retried loading the swarm's epoch until its timeout,
        or trained rounds 0 onwards again, which the ledger had credited already (hivemind's optimiser keeps its epoch
        in the state averager, where the volunteer set it)."""
        self.state_averager.local_epoch = epoch
        if not self.client_mode:
            self.state_averager.state_sharing_priority = epoch
        self._advance_epoch(epoch)
        self._schedule_inner_lr(epoch)

    def load_state_from_peers(self) -> None:
        """Start over from the swarm's outer state (parameters, momentum, epoch); local progress is dropped.

        Like hivemind's, this returns nothing either way: compare `local_epoch` before and after.
        """
        self._settle_rounds()
        if self._download_outer_state():
            self._reset_model_to_outer(keep_local_progress=False)
            self._steps_in_round = self._samples_in_round = 0

    def finish_rounds(self) -> None:
        """Apply every round this peer has closed, and close the one whose group already formed: call it before this
        peer's state is served as the run's final version.

        With `overlap_communication` a round's outer step comes at a later `step()`, once its all-reduce has arrived,
        and at the run's end no step comes: the state served to the coordinator lacked the last round (a run that
        ended at epoch 6 published epoch 5). A round whose group formed but whose pseudo-gradient this peer has not
        sent yet (the swarm reached its end first) is closed with the steps taken, as its group waits for them.
        Waits at most `averaging_timeout_s` for each round. The round's averaging of the outer parameters is waited for
        only if its group has formed by the time the pseudo-gradients arrive (the two groups form together): one still
        looking then has no partner left, and waiting out its timeout would keep the older state served meanwhile.
        """
        if self._forming is not None and self._group_formed(self._forming):
            self._close_round()
        if self._in_flight is not None:
            self._finish_round(wait=True, last=True)
        self._settle_rounds()

    def outer_parameters(self) -> list[torch.Tensor]:
        """Copies of the outer parameters (the swarm's agreed model), in `swarm.optim.parameter_order`."""
        with self.state_averager.lock_averaged_tensors:
            return [param.detach().clone() for param in self._outer]

    def shutdown(self) -> None:
        """Leave: finish what other peers wait on (a triggered all-reduce), then stop the hivemind parts."""
        self.tracker.shutdown(self.matchmaking_time_s)
        try:
            self._settle_rounds()
            for pending in (self._poll, self._progress_read):  # a DHT read outliving the DHT logs an error
                if pending is not None:
                    pending[1].result(timeout=self.matchmaking_time_s)
        except Exception as error:
            logger.debug(f"Leaving the round machinery: {error!r}")
        finally:
            self.averager.shutdown()
            self.state_averager.shutdown()

    # ---------------------------------------------------------------- inner steps
    def _inner_step(self) -> None:
        # the schedule counts swarm epochs (outer rounds), read at the fraction of the round done so far
        self._schedule_inner_lr(
            self._epoch + min(self._steps_in_round, self.diloco.inner_steps) / self.diloco.inner_steps)
        self.inner_optimizer.step()

    def _schedule_inner_lr(self, progress: float) -> None:
        multiplier = self._inner_lr_multiplier(progress)
        for group, base_lr in zip(self.inner_optimizer.param_groups, self._inner_base_lrs):
            group["lr"] = base_lr * multiplier

    # ---------------------------------------------------------------- forming a round
    def _another_peer_is_waiting(self) -> bool:
        """Whether another peer is looking for its group for this epoch (read from the DHT, never blocking)."""
        if self._poll_epoch != self._epoch:
            self._someone_waiting, self._waiting_peers, self._poll_epoch = False, set(), self._epoch
            self._waiting_read_at = -math.inf
        if self._poll is not None and self._poll[1].done():
            (poll_epoch, poll), self._poll = self._poll, None
            try:
                found = poll.result()
            except Exception as error:  # a DHT hiccup: the next poll tries again
                logger.debug(f"Reading the round's group key failed: {error!r}")
                found = None
            if found is not None and isinstance(found.value, dict) and poll_epoch == self._epoch:
                own, now = self._own_id, get_dht_time()
                self._waiting_peers = {subkey for subkey, entry in found.value.items()
                                       if subkey != own and entry.value is True and entry.expiration_time > now}
                self._someone_waiting = bool(self._waiting_peers)
                self._waiting_read_at = self._poll_issued_at  # when the read that saw them began
        if self._poll is None and time.monotonic() >= self._next_poll_s:
            self._poll = (self._epoch, self.dht.get(self._group_key(self._epoch), latest=True, return_future=True))
            self._poll_issued_at = get_dht_time()
            self._next_poll_s = time.monotonic() + self._poll_period_s
        return self._someone_waiting

    def _nobody_else_looking(self, control: StepControl) -> bool:
        """Whether this round, a matchmaking window past due, has nobody to form a group with.

        A peer that looks for a group re-declares itself under the round's group key at least every matchmaking
        window, and one that trains sees this peer waiting there and joins within a poll period. So when a read of
        the key issued a window after the round was due shows no other peer looking, the others are gone (killed
        without a word, their records not yet expired) or in a group of their own. hivemind would keep the round
        looking until its timeout: in a swarm of two whose other peer was killed, the survivor made no outer step
        for a minute. Never blocks: the key is read in the background.
        """
        due = control.scheduled_time + self._round_window_s
        if get_dht_time() < due:
            return False
        self._another_peer_is_waiting()  # collects a finished read, starts the next
        return self._waiting_read_at >= due and not self._waiting_peers

    def _peers_in_progress_records(self) -> tuple[int | None, bool] | None:
        """(the newest epoch of a peer ahead of us or None, someone is at our epoch) from a fresh read; None until the
        read is done."""
        if self._progress_read is None or self._progress_read[0] != self._epoch:
            future = self.dht.get(self.tracker.training_progress_key, latest=True, return_future=True)
            self._progress_read = (self._epoch, future)
            return None
        if not self._progress_read[1].done():
            return None
        _, future = self._progress_read
        self._progress_read = None
        try:
            found = future.result()
        except Exception as error:
            logger.debug(f"Reading the progress records failed: {error!r}")
            return None, False
        own, now, epochs = self._own_id, get_dht_time(), []
        if found is not None and isinstance(found.value, dict):
            for entry in found.value.values():
                record = entry.value
                if isinstance(record, dict) and record.get("peer_id") != own and entry.expiration_time > now:
                    if isinstance(record.get("epoch"), int):
                        epochs.append(record["epoch"])
        ahead = max((epoch for epoch in epochs if epoch > self._epoch), default=None)
        return ahead, any(epoch == self._epoch for epoch in epochs)

    def _expect_everyone(self) -> None:
        """Let this round's group form once every peer this one knows of has joined, not at the window's end.

        Known: the peers in the tracker's last read of the progress records (a peer is stored there from its first
        step), the peers seen declared for this epoch's group, and this one. Peers that left count until their
        records expire (a minute); the group then waits out its window, as it would without this.
        """
        if self.close_groups_early:
            peers = len(self.tracker.peers_seen | self._waiting_peers | {self._own_id})
            # the outer parameters' rounds meet the same peers (each call is one write to shared memory)
            for averager in (self.averager, self.state_averager):
                averager.expect_group_size(peers)

    def _matchmaking_window_s(self) -> float:
        """The recipe's matchmaking window, stretched to two micro-steps of the slowest peer in the progress records.

        Another peer sees this one waiting only between its micro-steps, so a window shorter than its micro-step ends
        before it can join: two CPU volunteers of the tiny recipe on one busy machine (micro-steps of ~5 s against a
        2 s window) took turns, each going alone and the other then loading its state, and averaged 2 rounds in 11.
        A peer's micro-step is taken as the largest micro-batch a peer may use over its samples per second; the
        group still closes as soon as every known peer joined. At most the averaging timeout.
        """
        slowest_step_s = 0.0
        for entry in self.tracker.last_records.values():
            record = getattr(entry, "value", None)
            if not isinstance(record, dict) or record.get("peer_id") == self._own_id:
                continue
            rate = record.get("samples_per_second")
            if isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0:
                slowest_step_s = max(slowest_step_s, self.peer_micro_batch_bound / rate)
        return min(max(self.matchmaking_time_s, 2 * slowest_step_s + self._poll_period_s),
                   max(self.matchmaking_time_s, self.averaging_timeout_s))

    def _group_key(self, epoch: int) -> str:
        return f"{self.averager.prefix}.0b{epoch_group_bits(epoch)}"

    def _join_round(self) -> None:
        """Look for this epoch's group while training goes on; the pseudo-gradient is captured once it forms."""
        if self._in_flight is not None:
            with self.tracker.pause_updates():
                self._finish_round(wait=True)  # the averaging buffers hold one round at a time
        if self.tracker.global_epoch > self._epoch:
            self._catch_up()
            return
        if self.tracker.global_progress.num_peers < 2 and not self._someone_waiting:
            # the tracker refreshes every few seconds and only lists peers that have trained: before training
            # alone (which would set this peer's outer parameters apart), read the progress records afresh
            others = self._peers_in_progress_records()
            if others is None:
                return  # the read is under way: train on, decide at a later step
            epoch_ahead, someone_alongside = others
            if epoch_ahead is not None:
                self._catch_up(epoch_ahead)  # the tracker may not have seen that peer's epoch yet
                return
            if not someone_alongside:
                self._close_round()
                return
        self._round_window_s = self._matchmaking_window_s()
        scheduled_time = get_dht_time() + self._round_window_s
        timeout = self._round_window_s + self.averaging_timeout_s
        self.averager.set_group_bits(epoch_group_bits(self._epoch))
        self._expect_everyone()
        # no retries: a round is one epoch's group, which is gone once its all-reduce failed; retrying would only
        # keep this peer looking (and a blocking round waiting) until the deadline
        self._forming = self.averager.step(gather=dict(epoch=self._epoch, outer_may_differ=self.outer_may_differ),
                                           scheduled_time=scheduled_time, timeout=timeout, require_trigger=True,
                                           allow_retries=False, wait=False)
        every = self.diloco.average_parameters_every
        routine = bool(every) and (self._epoch + 1) % every == 0
        repair = self._repair_epoch == self._epoch
        if repair or routine:
            # every member of the last group read the same gathered flags and picked this epoch, so they meet here
            self.repair_rounds += int(not routine)
            self.state_averager.set_group_bits(epoch_group_bits(self._epoch))
            # the outer parameters are not touched until the round is applied, so this may run at once
            self._forming_parameters = self.state_averager.schedule_step(
                scheduled_time=scheduled_time, timeout=timeout, gather=dict(epoch=self._epoch))
            self._forming_parameters.allow_allreduce()

    def _close_round(self, others_gone: bool = False) -> None:
        """Capture the pseudo-gradient, start its all-reduce (if a group formed) and move to the next epoch.

        `others_gone`: nobody else looked for this round's group, so no other peer's outer parameters moved on.
        """
        control, self._forming = self._forming, None
        parameters_round, self._forming_parameters = self._forming_parameters, None
        if control is not None and not self._group_formed(control):
            self._settle(control)
            logger.debug(f"No group for round {self._epoch} (swarm epoch {self.tracker.global_epoch})")
            if self.tracker.global_epoch > self._epoch:
                self._settle(parameters_round)
                self._catch_up()
                return
            control = None
        if control is None and self.tracker.global_progress.num_peers >= 2 and not others_gone:
            self._parted(f"round {self._epoch} found no group while other peers train")
        logger.debug(f"Round {self._epoch}: capturing the pseudo-gradient of {self._steps_in_round} inner steps "
                     f"({'group formed' if control is not None else 'alone'})")
        self._capture_pseudo_gradient()
        sent_nothing = not self._pseudo_gradient_is_finite()
        if control is not None:
            control.weight = TINY_WEIGHT if sent_nothing else (float(self._steps_in_round) or TINY_WEIGHT)
            control.allow_allreduce()
        self._in_flight = _Round(self._epoch, control, parameters_round, time.perf_counter(), sent_nothing)
        self._advance_epoch(self._epoch + 1)
        if control is None or not self.diloco.overlap_communication:
            with self.tracker.pause_updates():  # waiting is not compute: keep it out of samples_per_second
                self._finish_round(wait=True)

    @staticmethod
    def _group_formed(control: StepControl) -> bool:
        # hivemind also awaits the trigger when matchmaking gave up at the deadline, so the stage alone says little
        return (not control.done() and control.stage == AveragingStage.AWAITING_TRIGGER
                and get_dht_time() < control.deadline)

    @torch.no_grad()
    def _pseudo_gradient_is_finite(self) -> bool:
        """A round whose inner steps went non-finite (an fp16 overflow, a faulty GPU) sends zeros that weigh nothing:
        one NaN member made its whole group's round NaN, which every member then discarded. This peer restarts from
        the outer parameters once the round is applied, and does not claim the round's samples."""
        with self.averager.get_tensors():
            if all_finite(self._buffers):
                return True
            for buffer in self._buffers:
                buffer.zero_()
        self.unsent_epochs.add(self._epoch)
        logger.warning(f"Round {self._epoch}: this peer's weights went NaN or infinite in its inner steps (an "
                       "overflow, or faulty hardware): it sends nothing to the round and restarts from the swarm's "
                       "outer parameters")
        return False

    @torch.no_grad()
    def _capture_pseudo_gradient(self) -> None:
        """buffers <- round start - model; the model's current parameters become the next round's start."""
        with self.averager.get_tensors():
            for start, param, buffer in zip(self._round_start, self.model_parameters, self._buffers):
                current = param.detach().to("cpu", torch.float32)
                torch.sub(start, current, out=buffer)
                start.copy_(current)

    def _advance_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._steps_in_round = self._samples_in_round = 0
        self._someone_waiting = False
        with self.tracker.pause_updates():
            self.tracker.update_epoch(epoch)

    # ---------------------------------------------------------------- applying a round
    @staticmethod
    def _round_arrived(closed: _Round) -> bool:
        return all(control is None or control.done() for control in (closed.control, closed.parameters_round))

    def _finish_round(self, wait: bool = False, last: bool = False) -> None:
        """Apply a closed round: outer step on the (averaged) pseudo-gradient, then move the model onto it.

        `last`: no round follows (the run is over), so a parameters round still looking for its group is called off.
        """
        closed, self._in_flight = self._in_flight, None
        group_size, broke = 1, None
        if closed.control is not None:
            try:
                gathered = closed.control.result(timeout=self.averaging_timeout_s if wait else 0)
                group_size = len(gathered)
                if group_size >= 2 and self.averager.last_received_fraction < 1.0:
                    broke = (f"round {closed.epoch} averaged only {self.averager.last_received_fraction:.0%} of its "
                             "data in time")
                if any(isinstance(info, dict) and info.get("outer_may_differ") for info in gathered.values()):
                    self._repair_epoch = closed.epoch + 1
            except BaseException as error:  # the buffers hold the local (or a partly averaged) pseudo-gradient
                if not closed.control.done():
                    closed.control.cancel()
                broke = f"averaging round {closed.epoch} failed ({error!r})"
        # the members of this round's group average their outer parameters too: wait for that group to form
        self._settle(closed.parameters_round, call_off_if_looking=group_size < 2 or last)
        self._check_parameters_round(closed.parameters_round, had_group=group_size >= 2)
        if broke is not None:  # after the parameters round: this round's own outer step parts the members again
            self._parted(broke)
        with self.averager.get_tensors():
            usable = all(bool(torch.isfinite(buffer).all()) for buffer in self._buffers)
            if usable:
                with self.state_averager.lock_averaged_tensors:
                    apply_outer_step(self.outer_optimizer, self._buffers)
        if not usable:  # a broken (or hostile) peer must not poison the outer parameters
            logger.warning(f"Round {closed.epoch} averaged to non-finite values: discarded it, restarting the "
                           "round from the outer parameters")
        self.state_averager.local_epoch = max(self.state_averager.local_epoch, closed.epoch + 1)
        if not self.client_mode:
            self.state_averager.state_sharing_priority = self.state_averager.local_epoch
        self._check_outer_state(closed.epoch)
        self._reset_model_to_outer(keep_local_progress=usable and not closed.sent_nothing)
        if closed.sent_nothing:  # Adam's moments went non-finite with the weights: they start afresh
            self.inner_optimizer.state.clear()
        self.rounds.record(group_size)
        logger.debug(f"Round {closed.epoch}: group of {group_size}, applied after "
                     f"{time.perf_counter() - closed.started:.2f} s")

    def _outer_state_is_finite(self) -> bool:
        """The outer parameters and momentum hold only finite values, and no round had to withhold them since the last
        check. fp32 sums on the CPU, once per round."""
        withheld = self.state_averager.withheld_state_rounds
        if withheld != self._withheld_state_seen:
            self._withheld_state_seen = withheld
            return False
        momenta = [state["momentum_buffer"] for state in self.outer_optimizer.state.values()
                   if isinstance(state.get("momentum_buffer"), torch.Tensor)]
        with self.state_averager.lock_averaged_tensors:
            return all_finite(self._outer + momenta)

    def _check_outer_state(self, epoch: int) -> None:
        """Once per round: a peer whose outer parameters (or momentum) went NaN or infinite reloads them from its
        peers at the end of this step (`_reload_outer_state`), and its model restarts from them.

        No gradient touches the outer state, so memory corruption or a faulty kernel put the NaN there. The model
        then restarted from NaN after every round, every pseudo-gradient was NaN (and sent as nothing), and the
        peer never recovered. The averager keeps such a state out of the rounds (`WithholdsNonFiniteState`): a round
        it had to withhold triggers the reload too, as the parameters round may have replaced only part of it. A
        model that went NaN over finite outer parameters only restarts from them (`_pseudo_gradient_is_finite`).
        """
        if self._outer_state_is_finite():
            self._outer_not_finite = False
            return
        self._outer_reload_due = True
        if not self._outer_not_finite:
            self._outer_not_finite = True
            logger.warning(f"Round {epoch}: this peer's outer parameters hold NaN or infinite values (no gradient "
                           "touches them: memory corruption or a faulty kernel). They are kept out of the swarm's "
                           "averaging, and the peer reloads the swarm's state from its peers; if this happens again, "
                           "check this machine's memory and GPU")

    def _reload_outer_state(self) -> None:
        """Replace a non-finite outer state by the swarm's (`_check_outer_state`), even one a round older than this
        peer's; the model restarts from it, without this round's local progress. Outside the tracker's pause, which
        the download takes."""
        self._outer_reload_due = False
        self._settle_rounds()
        if not self._download_outer_state(accept_older=True):
            logger.info("No peer served a state to reload yet: this peer tries again at the end of its next round")
            return
        self.state_reloads += 1
        self._reset_model_to_outer(keep_local_progress=False)
        self._steps_in_round = self._samples_in_round = 0
        self.inner_optimizer.state.clear()
        if self._outer_state_is_finite():
            self._outer_not_finite = False
            logger.info(f"Reloaded the swarm's state: training on from epoch {self._epoch}")

    @torch.no_grad()
    def _relink_averaged_statistics(self) -> None:
        """Loading an optimiser state replaces its tensors: put the values back into the ones the averager shares."""
        keys = self.state_averager.opt_keys_for_averaging
        with self.state_averager.get_tensors() as averaged:
            shared = iter(averaged[len(self._outer):])
            for key in keys:
                for param in self._outer:
                    target, state = next(shared), self.outer_optimizer.state[param]
                    if state[key] is not target:
                        target.copy_(state[key])
                        state[key] = target

    def _parted(self, why: str) -> None:
        """This peer's outer parameters may no longer match its group's: ask the next group to average them."""
        logger.info(f"The {why}: this peer's outer parameters may differ from its group's; the next round's group "
                    "will average them")
        self.outer_may_differ = True

    def _check_parameters_round(self, control: StepControl | None, had_group: bool) -> None:
        """A finished averaging of the outer parameters puts the members back together (or apart, if it broke)."""
        if control is None or not control.done() or control.cancelled():
            return  # called off while looking for a group: the outer parameters were not touched
        try:
            group_size = len(control.result())
        except BaseException as error:
            if had_group:  # hivemind does not say whether it broke before or after touching the parameters
                self._parted(f"averaging of the outer parameters failed ({error!r})")
            return
        if group_size >= 2:
            if self.state_averager.last_received_fraction < 1.0:
                self._parted("averaging of the outer parameters lost part of its data")
            else:
                self.outer_may_differ = False

    @torch.no_grad()
    def _reset_model_to_outer(self, keep_local_progress: bool) -> None:
        """model <- outer parameters (+ the progress made since the round start); round start <- outer."""
        moved = keep_local_progress and self._steps_in_round > 0
        with self.state_averager.lock_averaged_tensors:
            for outer, start, param in zip(self._outer, self._round_start, self.model_parameters):
                if moved:  # overlap: keep the steps taken since the capture, rebased onto the new outer point
                    param.add_((outer - start).to(param.device, param.dtype))
                else:
                    param.copy_(outer.to(param.device, param.dtype))
                start.copy_(outer)

    def _settle(self, control: StepControl | None, call_off_if_looking: bool = True) -> None:
        """Wait for a background averaging round (or call it off while it is still only looking for a group)."""
        if control is None or control.done():
            return
        if call_off_if_looking and control.stage == AveragingStage.LOOKING_FOR_GROUP:
            control.cancel()
            return
        if not control.triggered:  # others expect our tensors: join with no weight so they do not time out
            control.weight = 0.0
            control.allow_allreduce()
        try:
            control.result(timeout=self.averaging_timeout_s)
        except BaseException as error:
            logger.debug(f"Background averaging ended with {error!r}")

    def _settle_rounds(self) -> None:
        if self._in_flight is not None:
            self._finish_round(wait=True)
        forming, self._forming = self._forming, None
        forming_parameters, self._forming_parameters = self._forming_parameters, None
        self._settle(forming)
        self._settle(forming_parameters)

    # ---------------------------------------------------------------- catching up with the swarm
    def _catch_up(self, swarm_epoch: int = 0) -> None:
        """Behind the swarm: take its outer state, keep this peer's unaveraged progress on top of it.

        `swarm_epoch`: the epoch of a peer ahead, seen in a fresh read of the progress records (the tracker's
        `global_epoch` lags that read by up to its refresh period).
        """
        if time.monotonic() < self._next_catch_up_s:
            return
        self._settle_rounds()
        swarm_epoch = max(swarm_epoch, self.tracker.global_epoch)
        logger.info(f"Behind the swarm (epoch {self._epoch} < {swarm_epoch}): loading its state, "
                    "keeping this peer's progress since the last round on top")
        if self._download_outer_state():
            self._reset_model_to_outer(keep_local_progress=True)
        else:
            self._next_catch_up_s = time.monotonic() + self.averaging_timeout_s
            self.rounds.record(1)

    def _download_outer_state(self, accept_older: bool = False) -> bool:
        """Load the newest outer state a peer serves; True on success. The epoch follows the swarm's.

        `accept_older`: also a state older than this peer's (whose own state is lost: it is not finite)."""
        try:
            loaded = DecentralizedAverager.load_state_from_peers(self.state_averager, timeout=self.load_state_timeout_s)
        except Exception as error:
            logger.warning(f"Downloading the swarm's state failed: {error!r}")
            return False
        if loaded is None:
            return False
        metadata, tensors = loaded
        epoch = metadata.get("epoch") if isinstance(metadata, dict) else None
        shapes_fit = len(tensors) >= len(self._outer) and all(
            tensor.shape == param.shape for tensor, param in zip(tensors, self._outer))
        if not isinstance(epoch, int) or not shapes_fit:
            logger.warning("A peer sent a state that does not fit this recipe's model; ignoring it")
            return False
        if epoch < self.state_averager.local_epoch and not accept_older:
            logger.info(f"The newest state peers serve is older (epoch {epoch}) than this peer's; keeping ours")
            return False
        with torch.no_grad(), self.state_averager.lock_averaged_tensors:
            try:
                load_optimizer_state(self.outer_optimizer, metadata["optimizer_metadata"], tensors[len(self._outer):])
            except Exception as error:
                logger.warning(f"A peer sent an outer optimiser state that does not fit: {error!r}")
                return False
            for param, tensor in zip(self._outer, tensors):
                param.copy_(tensor)
        self._relink_averaged_statistics()
        if self.tracker.global_epoch == epoch + 1:
            # the donor had a round in flight, which this state lacks (`average_parameters_every` repairs that)
            epoch += 1
        self.state_averager.local_epoch = epoch
        if not self.client_mode:
            self.state_averager.state_sharing_priority = epoch
        self.outer_may_differ = False  # a donor's state, as the swarm has it
        steps, samples = self._steps_in_round, self._samples_in_round
        self._advance_epoch(epoch)
        self._steps_in_round, self._samples_in_round = steps, samples
        return True


def build_diloco_optimizer(
    dht: hivemind.DHT,
    model: torch.nn.Module,
    recipe: Recipe,
    identity: Identity,
    micro_batch_size: int,
    client_mode: bool = False,
    reuse_grad_buffers: bool = False,
) -> DiLoCoOptimizer:
    """The DiLoCo optimiser of one volunteer, configured from the recipe's optimizer and collaboration.

    Same arguments as `peer.collaboration.build_swarm_optimizer`. `reuse_grad_buffers` changes nothing here: every
    micro-batch is an inner step and `step()` clears the gradients, with or without a zero_grad call after it.
    """
    collab = recipe.collaboration
    # no check per inner step (a host sync each): the round's pseudo-gradient is checked (`_close_round`)
    make_inner_optimizer, _ = build_optimizer_factories(recipe.optimizer, skip_non_finite=False)
    return DiLoCoOptimizer(
        dht=dht,
        run_id=recipe.run.id,
        param_groups=parameter_groups(model, recipe.optimizer.weight_decay),
        parameter_names=parameter_order(model),
        make_inner_optimizer=make_inner_optimizer,
        inner_lr_multiplier=lr_multiplier(recipe.optimizer.schedule),
        diloco=collab.diloco,
        micro_batch_size=micro_batch_size,
        target_batch_size=collab.target_batch_size,
        matchmaking_time_s=collab.matchmaking_time_s,
        averaging_timeout_s=collab.averaging_timeout_s,
        load_state_timeout_s=collab.load_state_timeout_s,
        compression=make_compression(collab.compression),
        # outer parameters drift by less than 8-bit resolution: averaging them needs fp16 (or better)
        parameters_compression=make_compression("none" if collab.compression == "none" else "fp16"),
        private_key=identity.signing_key,
        client_mode=client_mode,
        close_groups_early=collab.close_groups_early,
        peer_micro_batch_bound=(collab.micro_batch_size if isinstance(collab.micro_batch_size, int)
                                else collab.max_micro_batch_size),
    )
