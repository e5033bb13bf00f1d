"""SwarmOptimizer with real hivemind peers on loopback: whom each averaging round reached, and what it did to weights.

As in hivemind's own tests/test_optimizer.py, the peers live in one process: one DHT node each, the second
bootstrapped from the first, the optimisers built in the main thread (hivemind's averagers install signal
handlers) and driven from one thread each.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from peer.collaboration import RoundStats, SwarmOptimizer, build_swarm_optimizer
from swarm.identity import Identity
from swarm.network import create_dht, join_addresses
from swarm.recipe import Recipe

MICRO_BATCH = 4


def small_recipe(run_id: str, target_batch_size: int = 32) -> Recipe:
    return Recipe(
        run={"id": run_id},
        optimizer={"lr": 0.01},
        collaboration={"target_batch_size": target_batch_size, "micro_batch_size": MICRO_BATCH,
                       "matchmaking_time_s": 1.0, "averaging_timeout_s": 10, "compression": "none"},
    )


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Two DHT nodes on loopback, each with its own identity: (dht, identity) pairs."""
    identities = [Identity.load_or_create(tmp_path_factory.mktemp(f"peer{index}") / "id") for index in range(2)]
    nodes = []
    try:
        nodes.append(create_dht([], host="127.0.0.1", identity=identities[0]))
        nodes.append(create_dht(join_addresses(nodes[0]), host="127.0.0.1", identity=identities[1]))
        yield list(zip(nodes, identities))
    finally:
        for node in nodes:
            node.shutdown()


def regression_batch(generator: torch.Generator, true_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.randn(MICRO_BATCH, true_weight.shape[1], generator=generator)
    return inputs, inputs @ true_weight.T


class Trainer(threading.Thread):
    """Runs micro-steps of a regression loss through one peer's optimiser until told to stop."""

    def __init__(self, optimizer: SwarmOptimizer, model: torch.nn.Module, seed: int, true_weight: torch.Tensor,
                 stop: threading.Event, wait_for_peers: int = 1, deadline_s: float = 40.0):
        super().__init__(daemon=True)
        self.optimizer, self.model, self.true_weight, self.stop = optimizer, model, true_weight, stop
        self.generator = torch.Generator().manual_seed(seed)
        self.wait_for_peers, self.deadline = wait_for_peers, time.monotonic() + deadline_s
        self.error: BaseException | None = None
        self.losses: list[float] = []

    def run(self) -> None:
        try:
            first = True
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                inputs, targets = regression_batch(self.generator, self.true_weight)
                loss = torch.nn.functional.mse_loss(self.model(inputs), targets)
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad()
                self.losses.append(loss.item())
                if first:
                    # peers publish progress only once they have samples: wait until each sees the other, as
                    # volunteers that join a running swarm do, instead of racing through epochs alone
                    first = False
                    while (self.optimizer.tracker.global_progress.num_peers < self.wait_for_peers
                           and time.monotonic() < self.deadline):
                        time.sleep(0.1)
                time.sleep(0.05)
        except BaseException as error:  # reported by the test
            self.error = error


def shut_down(optimizers) -> None:
    for optimizer in optimizers:
        optimizer.shutdown()


@pytest.mark.timeout(120)
def test_two_peers_average_their_rounds_and_end_with_the_same_weights(two_nodes):
    recipe = small_recipe("collab-two")
    true_weight = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    models = []
    for seed in (100, 101):  # different initial weights: only averaging can bring them together
        torch.manual_seed(seed)
        models.append(torch.nn.Linear(8, 2))
    initial_gap = (models[0].weight - models[1].weight).abs().max().item()
    optimizers = [build_swarm_optimizer(dht, model, recipe, identity, micro_batch_size=MICRO_BATCH)
                  for (dht, identity), model in zip(two_nodes, models)]
    stop = threading.Event()
    trainers = [Trainer(optimizer, model, seed, true_weight, stop, wait_for_peers=2)
                for seed, (optimizer, model) in enumerate(zip(optimizers, models))]
    try:
        for trainer in trainers:
            trainer.start()
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not all(opt.rounds.averaged >= 2 for opt in optimizers):
            time.sleep(0.2)
        stop.set()
        for trainer in trainers:
            trainer.join(timeout=30)
    finally:
        stop.set()
        shut_down(optimizers)

    for trainer in trainers:
        assert trainer.error is None, repr(trainer.error)
        assert not trainer.is_alive()
    rounds = [opt.rounds for opt in optimizers]
    assert all(r.averaged >= 1 for r in rounds), rounds
    assert all(r.last_group_size == 2 and r.consecutive_solo == 0 for r in rounds), rounds
    assert all(opt.local_epoch >= 1 for opt in optimizers)
    weight_gap = (models[0].weight - models[1].weight).abs().max().item()
    bias_gap = (models[0].bias - models[1].bias).abs().max().item()
    assert weight_gap < 0.1 * initial_gap and bias_gap < 0.1 * initial_gap, (initial_gap, weight_gap, bias_gap)


@pytest.mark.timeout(90)
def test_a_peer_alone_counts_its_rounds_as_solo(two_nodes):
    (dht, identity), _ = two_nodes
    model = torch.nn.Linear(8, 2)
    before = model.weight.detach().clone()
    optimizer = build_swarm_optimizer(dht, model, small_recipe("collab-alone", target_batch_size=8), identity,
                                      micro_batch_size=MICRO_BATCH)
    stop = threading.Event()
    trainer = Trainer(optimizer, model, seed=0, true_weight=torch.ones(2, 8), stop=stop)
    try:
        trainer.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and optimizer.rounds.solo < 2:
            time.sleep(0.1)
        stop.set()
        trainer.join(timeout=30)
    finally:
        stop.set()
        shut_down([optimizer])

    assert trainer.error is None, repr(trainer.error)
    rounds = optimizer.rounds
    assert rounds.solo >= 2 and rounds.averaged == 0, rounds
    assert rounds.consecutive_solo == rounds.solo and rounds.last_group_size == 1, rounds
    assert optimizer.local_epoch >= 2
    assert not torch.equal(model.weight.detach(), before), "solo epochs still apply the local gradients"


def test_round_stats_start_at_zero():
    assert RoundStats() == RoundStats(averaged=0, solo=0, consecutive_solo=0, last_group_size=0)
