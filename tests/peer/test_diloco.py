"""DiLoCo mode: the outer step's math, and real hivemind peers on 127.0.0.1 averaging pseudo-gradients."""

from __future__ import annotations

import logging

import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field

import hivemind
import pytest
import torch
from hivemind.compression import CompressionBase, CompressionInfo

from coordinator.state import StateFetcher
from peer.diloco import DiLoCoOptimizer, apply_outer_step, build_diloco_optimizer, make_outer_optimizer
from swarm.compat import make_compression
from swarm.identity import Identity
from swarm.model import build_model
from swarm.network import create_dht, join_addresses
from swarm.optim import build_optimizer_factories, lr_multiplier, parameter_groups, parameter_order
from swarm.recipe import DiLoCoConfig, Recipe, RecipeError, parse_recipe

from peer_killed_after_rounds import KilledPartner  # tests/peer: a script, and its launcher

VOCAB = 259
SEQ_LEN = 32
MICRO_BATCH = 4


# ---------------------------------------------------------------------------------------------------------------
# the outer step, by hand


def test_outer_nesterov_step_matches_a_hand_computation():
    cfg = DiLoCoConfig(outer_lr=0.7, outer_momentum=0.9, nesterov=True)
    theta0 = torch.tensor([1.0, -2.0, 0.5])
    param = torch.nn.Parameter(theta0.clone())
    outer = make_outer_optimizer([param], cfg)
    g1, g2 = torch.tensor([0.1, 0.2, -0.3]), torch.tensor([-0.05, 0.4, 0.0])

    apply_outer_step(outer, [g1.clone()])
    # m1 = g1; theta1 = theta0 - lr * (g1 + mu * m1)
    m1 = g1
    theta1 = theta0 - 0.7 * (g1 + 0.9 * m1)
    assert torch.allclose(param.detach(), theta1, atol=1e-6)

    apply_outer_step(outer, [g2.clone()])
    m2 = 0.9 * m1 + g2
    theta2 = theta1 - 0.7 * (g2 + 0.9 * m2)
    assert torch.allclose(param.detach(), theta2, atol=1e-6)


def test_outer_step_without_momentum_at_lr_one_is_plain_parameter_averaging():
    # pseudo-gradient = start - mean(ends): one outer step with lr 1 lands exactly on the peers' mean
    cfg = DiLoCoConfig(outer_lr=1.0, outer_momentum=0.0, nesterov=False)
    start = torch.tensor([0.0, 1.0])
    ends = [torch.tensor([0.2, 0.6]), torch.tensor([-0.4, 1.2])]
    param = torch.nn.Parameter(start.clone())
    apply_outer_step(make_outer_optimizer([param], cfg), [start - torch.stack(ends).mean(0)])
    assert torch.allclose(param.detach(), torch.stack(ends).mean(0))


def test_diloco_section_validates_and_reports_at_its_key():
    recipe = parse_recipe({"run": {"id": "r"}, "collaboration": {"mode": "diloco", "diloco": {"inner_steps": 5}}})
    assert recipe.collaboration.mode == "diloco" and recipe.collaboration.diloco.inner_steps == 5
    assert parse_recipe({"run": {"id": "r"}}).collaboration.mode == "dedloc"
    with pytest.raises(RecipeError) as error:
        parse_recipe({"run": {"id": "r"}, "collaboration": {"diloco": {
            "inner_steps": 0, "outer_momentum": 1.0, "overlap": True}}})
    paths = {problem.path for problem in error.value.problems}
    assert {"collaboration.diloco.inner_steps", "collaboration.diloco.outer_momentum",
            "collaboration.diloco.overlap"} <= paths
    with pytest.raises(RecipeError) as error:
        parse_recipe({"run": {"id": "r"}, "collaboration": {"diloco": {"outer_momentum": 0.0}}})
    assert [problem.path for problem in error.value.problems] == ["collaboration.diloco.nesterov"]


def test_eight_bit_codec_sends_about_one_byte_per_value():
    codec = make_compression("uint8")
    tensor = torch.randn(2**18)
    serialized = codec.compress(tensor, CompressionInfo.from_tensor(tensor))
    assert 1.0 <= len(serialized.buffer) / tensor.numel() < 1.01  # 1 byte per value plus a 256-entry codebook
    small = torch.randn(1000)  # below the size threshold: fp16, a codebook would cost more than it saves
    assert len(codec.compress(small, CompressionInfo.from_tensor(small)).buffer) == 2 * small.numel() + 8  # + mean, std


# ---------------------------------------------------------------------------------------------------------------
# real peers


def make_recipe(run_id: str, n_embd: int = 16, warmup_steps: int = 0, matchmaking_time_s: float = 1.0,
                **diloco) -> Recipe:
    return parse_recipe({
        "run": {"id": run_id},
        "model": {"architecture": "gpt2", "config": {"n_layer": 1, "n_embd": n_embd, "n_head": 2,
                                                     "n_positions": SEQ_LEN}},
        "data": {"seq_len": SEQ_LEN},
        "optimizer": {"lr": 0.01, "schedule": {"warmup_steps": warmup_steps, "decay": "constant"}},
        "collaboration": {
            "mode": "diloco", "target_batch_size": 64, "micro_batch_size": MICRO_BATCH,
            "matchmaking_time_s": matchmaking_time_s, "averaging_timeout_s": 15.0, "compression": "fp16",
            "diloco": dict(dict(inner_steps=5, average_parameters_every=0), **diloco),
        },
    })


def synthetic_batch(generator: torch.Generator) -> torch.Tensor:
    """A learnable task: count upwards through 16 tokens from a random start (unigram, then bigram, structure)."""
    starts = torch.randint(0, 16, (MICRO_BATCH, 1), generator=generator)
    return (starts + torch.arange(SEQ_LEN)) % 16 + 3


@dataclass
class Peer:
    name: str
    identity: Identity
    dht: hivemind.DHT
    model: torch.nn.Module
    opt: DiLoCoOptimizer
    losses: list[float] = field(default_factory=list)
    step_delay_s: float = 0.0  # a slower machine
    poison_at_step: int | None = None  # this inner step's loss (so its gradient, then the weights) is NaN
    corrupt_outer_at_step: int | None = None  # before this inner step, an outer parameter becomes NaN (bad memory)
    averaged_when_corrupted: int | None = None

    def train(self, until, deadline: float, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        while time.monotonic() < deadline and not until(self):
            if len(self.losses) == self.corrupt_outer_at_step:
                self.corrupt_outer_at_step, self.averaged_when_corrupted = None, self.opt.rounds.averaged
                with torch.no_grad(), self.opt.state_averager.lock_averaged_tensors:
                    self.opt.outer_optimizer.param_groups[0]["params"][0].view(-1)[0] = float("nan")
            batch = synthetic_batch(generator)
            loss = self.model(input_ids=batch, labels=batch).loss
            if len(self.losses) == self.poison_at_step:
                loss = loss * float("nan")
            loss.backward()
            time.sleep(self.step_delay_s)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.losses.append(loss.item())

    def close(self) -> None:
        self.opt.shutdown()
        self.dht.shutdown()


def start_peer(folder, name: str, recipe, initial_peers=(), make_optimizer=build_diloco_optimizer) -> Peer:
    """A peer built like the volunteer builds one (in the main thread: hivemind averagers need it)."""
    identity = Identity.load_or_create(folder / name, name=name)
    dht = create_dht(initial_peers=list(initial_peers), host="127.0.0.1", identity=identity)
    model = build_model(recipe.model, vocab_size=VOCAB)
    opt = make_optimizer(dht, model, recipe, identity, MICRO_BATCH, False)
    return Peer(name, identity, dht, model, opt)


def train_together(peers: list[Peer], until, budget_s: float) -> None:
    """Train every peer in its own thread; a first step each, then wait until they see each other."""
    deadline = time.monotonic() + budget_s
    for index, peer in enumerate(peers):
        peer.train(lambda p: len(p.losses) >= 1, deadline, seed=index)
    while time.monotonic() < deadline and min(p.opt.tracker.global_progress.num_peers for p in peers) < len(peers):
        time.sleep(0.2)
    threads = [threading.Thread(target=peer.train, args=(until, deadline, index), daemon=True)
               for index, peer in enumerate(peers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(budget_s + 30)


def max_difference(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(first, second))


def distance(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    """L2 distance between two parameter lists, taken as one vector."""
    return float(sum(((a - b).double() ** 2).sum() for a, b in zip(first, second)) ** 0.5)


@pytest.fixture(scope="module")
def fp16_swarm(tmp_path_factory):
    """Two peers, fp16 pseudo-gradients, blocking outer step, trained until both averaged three rounds.

    The second peer is slow: it needs longer than a matchmaking window for its 5 inner steps, so it joins each
    round when it sees the first one waiting, with the steps it has done.
    """
    folder = tmp_path_factory.mktemp("diloco")
    recipe = make_recipe("diloco-fp16")
    first = start_peer(folder, "first", recipe)
    second = start_peer(folder, "second", recipe, initial_peers=join_addresses(first.dht))
    second.step_delay_s = 0.4
    initial = [param.detach().clone() for param in first.opt.model_parameters]
    train_together([first, second], until=lambda peer: peer.opt.rounds.averaged >= 3, budget_s=60)
    yield recipe, folder, first, second, initial
    for peer in (second, first):
        peer.close()


@pytest.mark.timeout(180)
def test_two_peers_average_rounds_and_end_each_round_with_identical_parameters(fp16_swarm):
    _, _, first, second, initial = fp16_swarm
    assert first.opt.rounds.averaged >= 3 and second.opt.rounds.averaged >= 3, (first.opt.rounds, second.opt.rounds)
    assert first.opt.local_epoch == second.opt.local_epoch >= 3
    assert first.opt.rounds.last_group_size == second.opt.rounds.last_group_size == 2
    first_outer, second_outer = first.opt.outer_parameters(), second.opt.outer_parameters()
    moved = distance(first_outer, initial)
    assert moved > 0.1, "the outer steps moved the parameters"
    # hivemind hands each peer the average plus its own fp16 rounding of the pseudo-gradient: tiny differences
    assert distance(first_outer, second_outer) < 1e-3 * moved
    # the blocking outer step leaves the model exactly on the outer parameters at the end of a round
    assert max_difference([p.detach() for p in first.opt.model_parameters], first_outer) == 0.0
    # the CPU model lives in shared memory, so the averager processes forked after it hold no stale copies of it;
    # the round-start copy is made after they forked
    assert all(param.is_shared() for peer in (first, second) for param in peer.opt.model_parameters)


@pytest.mark.timeout(180)
def test_the_loss_of_a_learnable_task_goes_down(fp16_swarm):
    recipe, _, first, second, initial = fp16_swarm
    batch = torch.cat([synthetic_batch(torch.Generator().manual_seed(seed)) for seed in range(100, 104)])

    def loss_with(parameters: list[torch.Tensor]) -> float:
        model = build_model(recipe.model, vocab_size=VOCAB).eval()
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in zip(parameter_order(model), parameters):
                named[name].copy_(tensor)
            return model(input_ids=batch, labels=batch).loss.item()

    before = loss_with(initial)
    for peer in (first, second):
        after = loss_with(peer.opt.outer_parameters())
        assert after < before - 1.0, (peer.name, before, after)


@pytest.mark.timeout(180)
def test_a_peer_joining_later_catches_up_loads_the_outer_state_and_serves_it_to_the_coordinator(fp16_swarm):
    recipe, folder, first, second, initial = fp16_swarm
    third = start_peer(folder, "third", recipe, initial_peers=join_addresses(first.dht))
    try:
        deadline = time.monotonic() + 20
        while third.opt.tracker.global_epoch < first.opt.local_epoch and time.monotonic() < deadline:
            time.sleep(0.2)
        donors = [peer.opt.outer_parameters() for peer in (first, second)]

        # a newcomer that trains before loading anything sees it is behind and catches up by itself,
        # keeping its own step on top of the swarm's state
        third.train(lambda peer: len(peer.losses) >= 1, time.monotonic() + 30, seed=7)
        assert third.opt.local_epoch == first.opt.local_epoch
        caught_up = third.opt.outer_parameters()
        assert min(max_difference(caught_up, donor) for donor in donors) == 0.0  # a donor's state, uncompressed
        assert max_difference([p.detach() for p in third.opt.model_parameters], caught_up) > 0.0

        # loading explicitly (what the volunteer does on joining) drops local progress
        third.opt.load_state_from_peers()
        assert third.opt.local_epoch == first.opt.local_epoch
        loaded = third.opt.outer_parameters()
        assert min(max_difference(loaded, donor) for donor in donors) == 0.0
        assert distance(loaded, donors[0]) < 1e-3 * distance(donors[0], initial)
        assert max_difference([p.detach() for p in third.opt.model_parameters], loaded) == 0.0

        # the coordinator downloads the model the same way it does in mode dedloc
        fetcher = StateFetcher(third.dht, recipe.run.id)
        try:
            fresh = build_model(recipe.model, vocab_size=VOCAB)
            assert fetcher.fetch_into(fresh, timeout_s=30) == first.opt.local_epoch
        finally:
            fetcher.shutdown()
        named = dict(fresh.named_parameters())
        fetched = [named[name].detach() for name in parameter_order(fresh)]
        assert min(max_difference(fetched, donor) for donor in donors + [loaded]) == 0.0
    finally:
        third.close()


@pytest.mark.timeout(180)
def test_with_overlapped_rounds_the_state_served_at_the_runs_end_holds_the_last_round(tmp_path):
    """A volunteer stops at the step that closes the run's last round (limits.max_epochs) and serves its state to the
    coordinator. With overlap, that round's outer step waited for a next step that never came: a run that ended at
    epoch 6 published epoch 5 (swarm launch, 2 volunteers)."""
    recipe = make_recipe("diloco-final", overlap_communication=True)
    first = start_peer(tmp_path, "first", recipe)
    second = start_peer(tmp_path, "second", recipe, initial_peers=join_addresses(first.dht))
    last_epoch = 3
    try:
        initial = first.opt.outer_parameters()
        train_together([first, second], until=lambda peer: peer.opt.local_epoch >= last_epoch, budget_s=90)
        assert first.opt.local_epoch == second.opt.local_epoch == last_epoch
        in_flight = [peer.name for peer in (first, second) if peer.opt._in_flight is not None]
        assert in_flight, "the last round averaged with the other peer is still in flight as training stops"

        for peer in (first, second):  # what the volunteer does before it serves its final state
            peer.opt.finish_rounds()
        for peer in (first, second):
            assert peer.opt.state_averager.local_epoch == last_epoch, peer.name
            # the outer step is applied and the model moved onto it (no inner step since the round closed)
            assert max_difference([p.detach() for p in peer.opt.model_parameters], peer.opt.outer_parameters()) == 0.0
        first_outer, second_outer = first.opt.outer_parameters(), second.opt.outer_parameters()
        assert distance(first_outer, second_outer) < 1e-3 * distance(first_outer, initial)  # both took the last step

        fetcher = StateFetcher(first.dht, recipe.run.id)  # the coordinator's download of the final version
        try:
            fresh = build_model(recipe.model, vocab_size=VOCAB)
            assert fetcher.fetch_into(fresh, timeout_s=30) == last_epoch
        finally:
            fetcher.shutdown()
        named = dict(fresh.named_parameters())
        fetched = [named[name].detach() for name in parameter_order(fresh)]
        assert min(max_difference(fetched, outer) for outer in (first_outer, second_outer)) == 0.0
    finally:
        for peer in (second, first):
            peer.close()


@pytest.mark.timeout(120)
def test_catching_up_names_the_epoch_of_the_peer_ahead_before_the_tracker_has_seen_it(tmp_path, caplog):
    """A fresh read of the progress records showed a peer ahead while the tracker, which refreshes every few seconds,
    still said epoch 0: the volunteer logged "Behind the swarm (epoch 0 < 0)"."""
    peer = start_peer(tmp_path, "lone", make_recipe("diloco-behind"))
    try:
        assert peer.opt.tracker.global_epoch == 0
        with caplog.at_level("INFO", logger="peer.diloco"):
            peer.opt._catch_up(2)  # the epoch `_join_round` read in the records (nobody serves a state here)
        assert "Behind the swarm (epoch 0 < 2)" in caplog.text
    finally:
        peer.close()


class WrappedCodec(CompressionBase):
    """A codec that delegates to `inner`; subclasses watch or break `compress` in the averager's process."""

    def __init__(self, inner: CompressionBase):
        self.inner = inner
        self.compression_type = getattr(inner, "compression_type", None)

    def compress(self, tensor, info, allow_inplace=False):
        return self.inner.compress(tensor, info, allow_inplace)

    def extract(self, serialized_tensor):
        return self.inner.extract(serialized_tensor)

    def estimate_compression_ratio(self, info):
        return self.inner.estimate_compression_ratio(info)


class CountingCompression(WrappedCodec):
    """Wraps a codec to count what the averager process actually puts on the wire (shared-memory counters)."""

    def __init__(self, inner: CompressionBase):
        super().__init__(inner)
        self.bytes_sent, self.values_sent = mp.Value("d", 0.0), mp.Value("d", 0.0)

    def compress(self, tensor, info, allow_inplace=False):
        serialized = self.inner.compress(tensor, info, allow_inplace)
        with self.bytes_sent.get_lock():
            self.bytes_sent.value += len(serialized.buffer)
            self.values_sent.value += tensor.numel()
        return serialized


def optimizer_with_codec(make_codec, codecs: list):
    """A `start_peer` optimiser factory whose pseudo-gradients go through `make_codec(recipe)` (kept in `codecs`)."""
    def build(dht, model, recipe, identity, micro_batch_size, client_mode):
        collab = recipe.collaboration
        make_inner, _ = build_optimizer_factories(recipe.optimizer)
        codec = make_codec(recipe)
        codecs.append(codec)
        return DiLoCoOptimizer(
            dht=dht, run_id=recipe.run.id, param_groups=parameter_groups(model, recipe.optimizer.weight_decay),
            parameter_names=parameter_order(model), make_inner_optimizer=make_inner,
            inner_lr_multiplier=lr_multiplier(recipe.optimizer.schedule), diloco=collab.diloco,
            micro_batch_size=micro_batch_size, target_batch_size=collab.target_batch_size,
            matchmaking_time_s=collab.matchmaking_time_s, averaging_timeout_s=collab.averaging_timeout_s,
            load_state_timeout_s=collab.load_state_timeout_s, compression=codec,
            private_key=identity.signing_key, client_mode=client_mode,
        )

    return build


def counting_uint8_optimizer(counters: list):
    return optimizer_with_codec(lambda recipe: CountingCompression(make_compression("uint8")), counters)


@pytest.mark.timeout(300)
def test_eight_bit_pseudo_gradients_cost_about_one_byte_per_value_with_overlapped_rounds(tmp_path):
    # n_embd 256: the big matrices pass the 2**16-value threshold above which make_compression quantises
    recipe = make_recipe("diloco-uint8", n_embd=256, overlap_communication=True, average_parameters_every=2)
    counters = []
    first = start_peer(tmp_path, "first", recipe, make_optimizer=counting_uint8_optimizer(counters))
    second = start_peer(tmp_path, "second", recipe, initial_peers=join_addresses(first.dht),
                        make_optimizer=counting_uint8_optimizer(counters))
    try:
        initial = first.opt.outer_parameters()
        # a round that breaks on a busy machine parts the peers until the repair two rounds later: wait for it
        train_together([first, second], budget_s=150, until=lambda peer: peer.opt.rounds.averaged >= 2 and not any(
            other.opt.repair_pending for other in (first, second)))
        assert first.opt.rounds.averaged >= 2 and second.opt.rounds.averaged >= 2, (first.opt.rounds,
                                                                                    second.opt.rounds)
        for counter in counters:
            assert counter.values_sent.value > 0
            assert 0.95 < counter.bytes_sent.value / counter.values_sent.value < 1.1  # fp16 would be 2, fp32 4
        # each peer gets the average plus its own 8-bit rounding (hivemind returns deltas): ~1% per round, which
        # a random walk would grow; averaging the outer parameters every other round keeps it down
        assert first.opt.state_averager.local_epoch == second.opt.state_averager.local_epoch
        first_outer, second_outer = first.opt.outer_parameters(), second.opt.outer_parameters()
        moved = distance(first_outer, initial)
        assert moved > 0.1
        assert distance(first_outer, second_outer) < 0.03 * moved
    finally:
        for peer in (second, first):
            peer.close()


class BreaksWhenArmed(WrappedCodec):
    """Wraps a codec; once armed (from the test process), its next compress raises in the averager's process.

    That is what a link dropping mid-round looks like to hivemind: the all-reduce stops with part of the data sent.
    """

    def __init__(self, inner: CompressionBase):
        super().__init__(inner)
        self.armed, self.fired = mp.Value("i", 0), mp.Value("i", 0)

    def compress(self, tensor, info, allow_inplace=False):
        with self.armed.get_lock():
            if self.armed.value:
                self.armed.value = 0
                self.fired.value += 1
                raise ConnectionResetError("injected: the link dropped mid-round")
        return super().compress(tensor, info, allow_inplace)


def breakable_optimizer(codecs: list):
    return optimizer_with_codec(
        lambda recipe: BreaksWhenArmed(make_compression(recipe.collaboration.compression)), codecs)


@pytest.mark.slow  # real peers for 15-30 s: the opt-in job (.ci/run) runs it
@pytest.mark.timeout(240)
def test_a_round_broken_midway_is_repaired_by_averaging_the_outer_parameters(tmp_path):
    # no routine parameter averaging: only the repair can bring the peers back together
    recipe = make_recipe("diloco-repair", average_parameters_every=0)
    codecs = []
    first = start_peer(tmp_path, "first", recipe, make_optimizer=breakable_optimizer(codecs))
    second = start_peer(tmp_path, "second", recipe, initial_peers=join_addresses(first.dht),
                        make_optimizer=breakable_optimizer(codecs))
    try:
        initial = first.opt.outer_parameters()
        train_together([first, second], until=lambda peer: peer.opt.rounds.averaged >= 1, budget_s=60)
        assert first.opt.rounds.averaged >= 1 and second.opt.rounds.averaged >= 1
        assert distance(first.opt.outer_parameters(), second.opt.outer_parameters()) < 1e-3 * distance(
            first.opt.outer_parameters(), initial)

        codecs[1].armed.value = 1  # the second peer's link drops in its next round
        broken_at = second.opt.local_epoch
        parted = []

        def until(peer):
            if peer.opt.outer_may_differ and peer.name not in parted:
                parted.append(peer.name)
            # a peer that parted flags it in the next round; the round after that averages the outer parameters
            return peer.opt.local_epoch >= broken_at + 4 and not peer.opt.outer_may_differ

        train_together([first, second], until=until, budget_s=120)
        assert codecs[1].fired.value == 1
        assert parted, "neither peer noticed the broken round"
        assert first.opt.local_epoch == second.opt.local_epoch
        assert first.opt.repair_rounds >= 1 and second.opt.repair_rounds >= 1, (first.opt.repair_rounds,
                                                                                second.opt.repair_rounds)
        first_outer, second_outer = first.opt.outer_parameters(), second.opt.outer_parameters()
        # fp16 parameter averaging leaves ~1e-3 relative differences; a broken round leaves a whole round's worth
        assert distance(first_outer, second_outer) < 1e-2 * distance(first_outer, initial)
    finally:
        for peer in (second, first):
            peer.close()


@pytest.mark.timeout(180)
def test_a_round_forms_once_both_peers_joined_not_at_the_end_of_its_matchmaking_window(tmp_path):
    """An 8 s window, as a recipe for internet links would set it, and rounds of 5 fast inner steps: a round must
    hold about its inner steps, not inner steps plus a window's worth of them (hivemind alone waits the window out)."""
    window_s = 8.0
    recipe = make_recipe("diloco-full-group", matchmaking_time_s=window_s)
    first = start_peer(tmp_path, "first", recipe)
    second = start_peer(tmp_path, "second", recipe, initial_peers=join_addresses(first.dht))
    epoch_began: dict[int, float] = {}

    def until(peer):
        epoch_began.setdefault(peer.opt.local_epoch, time.monotonic())
        return peer.opt.rounds.averaged >= 3

    try:
        train_together([first, second], until=until, budget_s=120)
        assert first.opt.rounds.averaged >= 3 and second.opt.rounds.averaged >= 3, (first.opt.rounds,
                                                                                    second.opt.rounds)
        assert first.opt.rounds.last_group_size == second.opt.rounds.last_group_size == 2
        # rounds 1 and 2 (after the first, which may start before the peers know of each other) took under one
        # window together; waiting each window out takes at least two
        assert epoch_began[3] - epoch_began[1] < window_s, epoch_began
    finally:
        for peer in (second, first):
            peer.close()


@pytest.mark.timeout(180)
def test_a_peer_whose_micro_steps_outlast_the_window_still_joins_every_round(tmp_path):
    """A peer sees another waiting only between its micro-steps: two CPU volunteers on one busy machine, micro-steps
    of ~5 s against a 2 s window, took turns (one alone, the other behind and loading its state), 2 rounds of 11
    averaged. The window stretches to the slowest peer's micro-steps, here 2.5 s against a 1 s window."""
    recipe = make_recipe("diloco-slow-peer", matchmaking_time_s=1.0)
    first = start_peer(tmp_path, "first", recipe)
    second = start_peer(tmp_path, "second", recipe, initial_peers=join_addresses(first.dht))
    second.step_delay_s = 2.5
    try:
        train_together([first, second], until=lambda peer: peer.opt.local_epoch >= 3, budget_s=110)
        for peer in (first, second):
            rounds = peer.opt.rounds
            assert peer.opt.local_epoch >= 3, (peer.name, peer.opt.local_epoch, rounds)
            # the first round may close before the peers know of each other's speed
            assert rounds.group_sizes[2] >= 2 and rounds.solo <= 1, (peer.name, rounds)
    finally:
        for peer in (second, first):
            peer.close()


@pytest.mark.timeout(120)
def test_param_groups_show_the_inner_learning_rate_the_schedule_sets(tmp_path):
    """Callers read the learning rate as on hivemind.Optimizer (benchmarks/convergence.py records it); a warm-up over
    4 rounds starts at a quarter of the peak and rises within the round as the inner steps go by."""
    peer = start_peer(tmp_path, "lone", make_recipe("diloco-lr", warmup_steps=4))
    try:
        rates = [peer.opt.param_groups[0]["lr"]]
        peer.train(lambda p: len(p.losses) >= 3, time.monotonic() + 60, seed=0)
        rates.append(peer.opt.param_groups[0]["lr"])
    finally:
        peer.close()
    # schedule(0) before any step; schedule(2/5) at the third inner step of round 0 (5 inner steps per round)
    assert rates == pytest.approx([0.01 * 1 / 4, 0.01 * (2 / 5 + 1) / 4])


@pytest.mark.slow  # real peers for 15-30 s: the opt-in job (.ci/run) runs it
@pytest.mark.timeout(150)
def test_a_peer_whose_partner_was_killed_keeps_making_outer_steps_alone(tmp_path):
    """Two DiLoCo peers average; one is SIGKILLed with its DHT and p2p daemon, its progress record left in the DHT
    for a minute. hivemind kept the survivor's next round looking for a group until matchmaking plus averaging
    timeout, and the one after too: inner steps went on, but no outer step for a minute (`swarm join`, tiny recipe
    in mode diloco). Nobody else looks for the round's group a window past due: the survivor closes it alone."""
    recipe = make_recipe("diloco-killed")
    survivor = start_peer(tmp_path, "survivor", recipe)
    partner = KilledPartner(tmp_path, recipe, rounds=2, addresses=join_addresses(survivor.dht))
    stop = threading.Event()
    outer_steps: list[tuple[float, int]] = []  # (when, the survivor's epoch) at each epoch change

    def until(peer) -> bool:
        if not outer_steps or outer_steps[-1][1] != peer.opt.local_epoch:
            outer_steps.append((time.monotonic(), peer.opt.local_epoch))
        return stop.is_set()

    thread = threading.Thread(target=survivor.train, args=(until, time.monotonic() + 120, 7), daemon=True)
    try:
        thread.start()
        killed_at = partner.wait_until_killed(timeout_s=100)
        deadline = killed_at + 40
        while time.monotonic() < deadline and survivor.opt.local_epoch < outer_steps_at(outer_steps, killed_at) + 6:
            time.sleep(0.05)
        stop.set()
        thread.join(timeout=30)
    finally:
        stop.set()
        partner.close()
        survivor.close()
    # the partner dies as soon as its second round is done: the survivor may still be waiting for the partner's
    # part of that round then (seen once, on a loaded machine), and counts it solo
    assert survivor.opt.rounds.averaged >= 1 and survivor.opt.rounds.group_sizes[2] >= 1, survivor.opt.rounds
    epoch_at_kill = outer_steps_at(outer_steps, killed_at)
    after = [(when - killed_at, epoch) for when, epoch in outer_steps if when >= killed_at]
    assert after and after[-1][1] >= epoch_at_kill + 6, (epoch_at_kill, after)
    # rounds of 5 inner steps; the round called off: its 1 s window, one more and a read of the group key
    gaps = [later - earlier for (earlier, _), (later, _) in zip([(killed_at, epoch_at_kill)] + after, after)]
    assert max(gaps) < 8.0, after  # hivemind alone: 16 s (matchmaking plus averaging timeout), twice


def outer_steps_at(outer_steps: list[tuple[float, int]], moment: float) -> int:
    """The epoch the peer was in at `moment`, from its (when, epoch) changes."""
    return max((epoch for when, epoch in outer_steps if when <= moment), default=0)


@pytest.mark.timeout(180)
def test_a_peer_whose_weights_go_nan_in_its_inner_steps_sends_nothing_and_restarts_from_the_outer_ones(tmp_path,
                                                                                                       caplog):
    """Its NaN pseudo-gradient made the whole group's round NaN, which every member discarded: the partner lost the
    round's work, and the broken peer carried on from NaN weights."""
    recipe = make_recipe("diloco-nan")
    first = start_peer(tmp_path, "first", recipe)
    second = start_peer(tmp_path, "second", recipe, initial_peers=join_addresses(first.dht))
    first.poison_at_step = 12  # within its third round of 5 inner steps
    try:
        with caplog.at_level(logging.WARNING):
            train_together([first, second], lambda p: len(first.opt.unsent_epochs) and p.opt.rounds.averaged >= 4
                           and first.opt.local_epoch >= 5, budget_s=120)
        assert not any("averaged to non-finite values" in record.getMessage() for record in caplog.records)
        for peer in (first, second):
            assert all(torch.isfinite(param).all() for param in peer.opt.model_parameters), peer.name
            assert all(torch.isfinite(param).all() for param in peer.opt.outer_parameters()), peer.name
        assert first.opt.rounds.averaged >= 4 and second.opt.rounds.averaged >= 4
        assert len(first.opt.unsent_epochs) == 1 and second.opt.unsent_epochs == set()  # the poisoned round only
        assert any("sends nothing to the round" in record.getMessage() for record in caplog.records)
    finally:
        for peer in (first, second):
            peer.close()


def finite(tensors) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in tensors)


@pytest.mark.timeout(120)
def test_a_peer_whose_outer_parameters_go_nan_spreads_nothing_and_reloads_them_from_its_partner(tmp_path, caplog):
    """Memory corruption turned an outer parameter NaN (the swarm's agreed model, which no gradient touches). The
    round that averages the outer parameters spread it to the partner, and neither peer had finite weights again."""
    recipe = make_recipe("diloco-nan-outer", average_parameters_every=1)
    first = start_peer(tmp_path, "first", recipe)
    second = start_peer(tmp_path, "second", recipe, initial_peers=join_addresses(first.dht))
    first.corrupt_outer_at_step = 12  # within its third round of 5 inner steps
    partner_went_nan = threading.Event()

    def recovered(peer: Peer) -> bool:
        if not finite(second.opt.outer_parameters()):
            partner_went_nan.set()
        corrupted = first.averaged_when_corrupted
        return (corrupted is not None and all(p.opt.rounds.averaged >= corrupted + 3 for p in (first, second))
                and all(finite(p.opt.outer_parameters()) and finite(p.opt.model_parameters) for p in (first, second)))

    try:
        with caplog.at_level(logging.WARNING):
            train_together([first, second], recovered, budget_s=40)
        assert first.averaged_when_corrupted is not None, "the corruption ran"
        assert not partner_went_nan.is_set(), "the partner's outer parameters went NaN"
        for peer in (first, second):
            assert finite(peer.opt.model_parameters) and finite(peer.opt.outer_parameters()), peer.name
            assert peer.opt.rounds.averaged >= first.averaged_when_corrupted + 3, (peer.name, peer.opt.rounds)
        reloads = [record.getMessage() for record in caplog.records
                   if "outer parameters hold NaN" in record.getMessage()]
        assert len(reloads) == 1, reloads
    finally:
        for peer in (first, second):
            peer.close()
