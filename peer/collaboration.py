"""hivemind.Optimizer as swarm uses it: built from the recipe, counting who each averaging round reached.

`SwarmOptimizer.rounds` is what the volunteer reports and what tells a peer it is training alone:

>>> opt = build_swarm_optimizer(dht, model, recipe, identity, micro_batch_size=16)   # doctest: +SKIP
>>> opt.step(); opt.rounds.last_group_size                                             # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from functools import partial

import hivemind
import torch
from hivemind.optim.grad_averager import GradientAverager

from swarm.compat import make_compression
from swarm.identity import Identity
from swarm.optim import build_optimizer_factories, parameter_groups
from swarm.recipe import Recipe

logger = logging.getLogger(__name__)


@dataclass
class RoundStats:
    """Outcome of this peer's gradient-averaging rounds (one per swarm epoch it took part in)."""

    averaged: int = 0  # rounds whose group held two or more peers
    solo: int = 0  # epochs stepped with local gradients only (no group, or a failed round)
    consecutive_solo: int = 0
    last_group_size: int = 0

    def record(self, group_size: int) -> None:
        """Count one round by the size of the group it reached (1: this peer alone, or the round failed)."""
        self.last_group_size = group_size
        if group_size >= 2:
            self.averaged += 1
            self.consecutive_solo = 0
        else:
            self.solo += 1
            self.consecutive_solo += 1


class SwarmOptimizer(hivemind.Optimizer):
    """hivemind.Optimizer that records the group size of every gradient-averaging round.

    hivemind logs "Averaged gradients with N peers" only at its verbose level; the count is what a
    volunteer needs to know whether it is really collaborating, so it is kept here and published.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rounds = RoundStats()

    def _average_gradients_and_load_into_optimizer(self, maybe_step_control):
        group_size = 1
        if maybe_step_control is not None:
            try:
                group_size = len(maybe_step_control.result(self.averaging_timeout))
            except BaseException:  # the parent handles and logs the failure; we only count it
                group_size = 1
        super()._average_gradients_and_load_into_optimizer(maybe_step_control)
        self.rounds.record(group_size)

    def _maybe_schedule_gradient_averaging(self) -> None:
        # hivemind pre-schedules a round (matchmaking through the DHT) before every epoch, even when its tracker
        # sees no other peer, and then cancels it at the epoch's end. Alone on 2 CPU cores that matchmaking kept
        # the averager and DHT processes at ~0.5-0.65 cores and cut the peer's throughput by a third
        # (benchmarks/overhead.py). With no one to average with, hivemind skips the round anyway: skip the search.
        if self.tracker.global_progress.num_peers <= 1:
            return
        super()._maybe_schedule_gradient_averaging()

    def _begin_averaging_gradients(self, grad_scaler) -> bool:
        began = super()._begin_averaging_gradients(grad_scaler)
        if not began and not self.delay_grad_averaging:
            self.rounds.record(1)  # hivemind skipped the round: it saw no other peer
        return began



def build_swarm_optimizer(
    dht: hivemind.DHT,
    model: torch.nn.Module,
    recipe: Recipe,
    identity: Identity,
    micro_batch_size: int,
    client_mode: bool = False,
    reuse_grad_buffers: bool = False,
) -> SwarmOptimizer:
    """The collaborative optimiser of one volunteer, configured from the recipe's optimizer and collaboration.

    `reuse_grad_buffers=True` lets hivemind accumulate micro-batches in the parameters' own .grad instead of copying
    them into separate accumulators after every micro-step; the training loop must then never call zero_grad
    (hivemind raises) because hivemind zeroes the buffers after each epoch. benchmarks/overhead.py, arm swarm-reuse.
    """
    if recipe.collaboration.mode == "diloco":
        from peer.diloco import build_diloco_optimizer  # here, not at the top: peer.diloco imports this module

        return build_diloco_optimizer(dht, model, recipe, identity, micro_batch_size, client_mode)
    collab = recipe.collaboration
    make_optimizer, make_scheduler = build_optimizer_factories(recipe.optimizer)
    compression = make_compression(collab.compression)
    average_statistics = ("exp_avg", "exp_avg_sq") if collab.average_optimizer_state else ()
    # hivemind warns (and can deadlock in rare cases) when a request may outlive the matchmaking window
    request_timeout_s = min(3.0, collab.matchmaking_time_s / 2)
    return SwarmOptimizer(
        dht=dht,
        run_id=recipe.run.id,
        params=parameter_groups(model, recipe.optimizer.weight_decay),
        optimizer=make_optimizer,
        scheduler=make_scheduler,
        target_batch_size=collab.target_batch_size,
        batch_size_per_step=micro_batch_size,
        matchmaking_time=collab.matchmaking_time_s,
        averaging_timeout=collab.averaging_timeout_s,
        load_state_timeout=collab.load_state_timeout_s,
        grad_compression=compression,
        grad_averager_factory=partial(GradientAverager, request_timeout=request_timeout_s),
        averager_opts=dict(request_timeout=request_timeout_s),
        state_averaging_compression=compression,
        average_state_every=collab.average_state_every,
        average_opt_statistics=average_statistics,
        # hivemind 1.1.12 inverts its client_mode default (optimizer.py ~l.205): always pass it explicitly
        client_mode=client_mode,
        reuse_grad_buffers=reuse_grad_buffers,
        tracker_opts=dict(private_key=identity.signing_key, min_refresh_period=0.5, max_refresh_period=5.0),
        verbose=False,
    )
