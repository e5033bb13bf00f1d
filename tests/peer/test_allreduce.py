"""A group member dies mid-all-reduce: the survivors finish the round without it (peer/allreduce.py).

The member runs in its own session (tests/peer/member_dies_mid_round.py) and SIGKILLs all of it, DHT and p2p
daemon included, after sending part of its data. The survivors are real hivemind averagers in this process.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.control import AveragingStage, StepControl
from hivemind.averaging.partition import TensorPartReducer
from hivemind.proto import averaging_pb2
from hivemind.utils import get_dht_time
from hivemind.utils.mpfuture import MPFuture

from peer.allreduce import ChurnSafeTensorPartReducer
from peer.collaboration import SwarmAverager
from swarm.network import create_dht, join_addresses
from swarm.processes import kill_session

REPO = Path(__file__).resolve().parents[2]
MEMBER = Path(__file__).with_name("member_dies_mid_round.py")
sys.path.insert(0, str(MEMBER.parent))
from member_dies_mid_round import AVERAGER_OPTIONS, PREFIX  # noqa: E402  (one definition for both sides)


def _one_sender_cancelled_while_it_waits(reducer_class) -> tuple[torch.Tensor, torch.Tensor]:
    """Three senders of one part: the second is cancelled while it waits for the third, as hivemind cancels the
    handler of a member whose stream broke. Returns what the first and the third sender get back."""

    async def scenario():
        reducer = reducer_class([torch.Size([4])], 3)
        first = asyncio.create_task(reducer.accumulate_part(0, 0, torch.full((4,), 1.0)))
        dying = asyncio.create_task(reducer.accumulate_part(1, 0, torch.full((4,), 2.0)))
        await asyncio.sleep(0.01)  # both have added their data and wait for the third sender
        dying.cancel()
        await asyncio.sleep(0.01)
        third = await reducer.accumulate_part(2, 0, torch.full((4,), 3.0))
        return await first, third

    return asyncio.run(scenario())


def test_a_sender_cancelled_while_it_waits_leaves_the_part_to_the_others():
    first, third = _one_sender_cancelled_while_it_waits(ChurnSafeTensorPartReducer)
    assert torch.equal(first, torch.full((4,), 2.0))  # (1 + 2 + 3) / 3: the cancelled sender's data was in already
    assert torch.equal(third, torch.full((4,), 2.0))
    # hivemind 1.1.12's reducer: the cancelled waiter cancelled the part's shared future, and completing it fails.
    # If this stops raising, hivemind has fixed it and ChurnSafeTensorPartReducer can go.
    with pytest.raises(asyncio.InvalidStateError):
        _one_sender_cancelled_while_it_waits(TensorPartReducer)


def _handler_cancelled_while_the_runner_is_built(averager) -> None:
    """A member's stream reaches this peer's `rpc_aggregate_part` before this peer has built its runner for the
    group, and the member dies: hivemind cancels the handler. Then this peer registers its runner."""
    group_id = b"group"

    async def scenario():
        averager._pending_groups_registered = asyncio.Event()  # made by the averager's process when it starts
        averager._pending_groups_registered.set()
        registered = averager._running_groups[group_id] = asyncio.get_running_loop().create_future()

        async def member_stream():
            yield averaging_pb2.AveragingData(group_id=group_id)
            await asyncio.sleep(3600)  # the member never sends its next chunk

        async def serve():
            async for _ in averager.rpc_aggregate_part(member_stream(), None):
                pass

        handler = asyncio.create_task(serve())
        await asyncio.sleep(0.01)  # the handler waits for this peer's runner
        handler.cancel()
        await asyncio.sleep(0.01)
        registered.set_result("this peer's runner")

    asyncio.run(scenario())


def test_a_member_handler_cancelled_before_the_runner_exists_does_not_fail_the_round(tmp_path):
    dht = create_dht([], host="127.0.0.1")
    try:
        averager = SwarmAverager([torch.zeros(4)], dht, prefix="early_member", start=False, **AVERAGER_OPTIONS)
        _handler_cancelled_while_the_runner_is_built(averager)
        # hivemind 1.1.12's handler awaited the shared future itself: registering the runner then failed the round
        stock = DecentralizedAverager([torch.zeros(4)], dht, prefix="early_member_stock", start=False,
                                      **AVERAGER_OPTIONS)
        with pytest.raises(asyncio.InvalidStateError):
            _handler_cancelled_while_the_runner_is_built(stock)
    finally:
        dht.shutdown()


def _round_in_stage(stage: AveragingStage) -> StepControl:
    """A round of this peer as the averager's process sees it, in `stage`."""
    control = StepControl(scheduled_time=get_dht_time(), deadline=float("inf"), allow_retries=True, weight=1.0,
                          data_for_gather=b"")
    control.attach(MPFuture(), MPFuture())  # its trigger and cancel, as the averager's process makes them
    control.stage = stage
    return control


def _answer_to_a_stream_for_an_unknown_group(averager, within_s: float, stage: AveragingStage | None,
                                             woken: bool = False) -> int | None:
    """A member's stream arrives for a group this peer does not know (one its previous round left as the group
    formed) while a round of this peer is in `stage` (None: no round). The registration event is clear, as a round
    leaves it when it starts looking for a group, or set by an earlier round (`woken`). The code of the first answer,
    or None if there was none within `within_s`."""
    async def scenario():
        averager._pending_groups_registered = asyncio.Event()
        if woken:
            averager._pending_groups_registered.set()
        if stage is not None:
            averager._rounds_in_flight = {_round_in_stage(stage)}  # no-op on a stock averager

        async def member_stream():
            yield averaging_pb2.AveragingData(group_id=b"left-as-it-formed")
            await asyncio.sleep(3600)

        async def first_answer():
            async for message in averager.rpc_aggregate_part(member_stream(), None):
                return message.code

        try:
            return await asyncio.wait_for(first_answer(), timeout=within_s)
        except asyncio.TimeoutError:
            return None

    return asyncio.run(scenario())


def test_a_stream_for_a_group_this_peer_left_is_turned_away_within_the_sender_timeout():
    dht = create_dht([], host="127.0.0.1")
    options = dict(AVERAGER_OPTIONS, next_chunk_timeout=1.0)
    looking = AveragingStage.LOOKING_FOR_GROUP
    try:
        averager = SwarmAverager([torch.zeros(4)], dht, prefix="left_group", start=False, **options)
        started = time.monotonic()
        assert _answer_to_a_stream_for_an_unknown_group(averager, 10, looking) == averaging_pb2.BAD_GROUP_ID
        assert 0.9 < time.monotonic() - started < 3.0  # the group could still form while this peer looks: 1 s
        # hivemind 1.1.12 keeps the member waiting until this peer's next round registers a group (15 s in a churn run)
        stock = DecentralizedAverager([torch.zeros(4)], dht, prefix="left_group_stock", start=False, **options)
        assert _answer_to_a_stream_for_an_unknown_group(stock, 5, looking) is None
    finally:
        dht.shutdown()


def test_a_stream_waits_for_a_group_only_while_a_round_of_this_peer_may_still_register_it():
    dht = create_dht([], host="127.0.0.1")
    options = dict(AVERAGER_OPTIONS, next_chunk_timeout=30.0)
    try:
        averager = SwarmAverager([torch.zeros(4)], dht, prefix="may_register", start=False, **options)
        started = time.monotonic()
        for stage in (None, AveragingStage.RUNNING_ALLREDUCE, AveragingStage.FINISHED):  # no round could register it
            assert _answer_to_a_stream_for_an_unknown_group(averager, 5, stage) == averaging_pb2.BAD_GROUP_ID
        assert time.monotonic() - started < 1.0
        # a round whose group formed and awaits its trigger registers the group later: its members' streams wait,
        # even when an earlier round's registration woke them (hivemind 1.1.12 turned them away at once)
        assert _answer_to_a_stream_for_an_unknown_group(
            averager, 1, AveragingStage.AWAITING_TRIGGER, woken=True) is None
        stock = DecentralizedAverager([torch.zeros(4)], dht, prefix="may_register_stock", start=False, **options)
        assert _answer_to_a_stream_for_an_unknown_group(
            stock, 1, AveragingStage.AWAITING_TRIGGER, woken=True) == averaging_pb2.BAD_GROUP_ID
    finally:
        dht.shutdown()


def _wait_for_line(process: subprocess.Popen, expected: str, timeout_s: float) -> None:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if lines.get(timeout=0.5).strip() == expected:
                return
        except queue.Empty:
            if process.poll() is not None:
                break
    raise AssertionError(f"the member never printed {expected} (exit code {process.poll()})")


def _tear_down(member: subprocess.Popen | None, averagers: list, nodes: list) -> None:
    if member is not None and member.poll() is None:
        kill_session(member.pid)
    for averager in averagers:
        averager.shutdown()
    for node in nodes:
        node.shutdown()


@pytest.mark.parametrize("parts_before_death", [0, 3], ids=["as-the-round-starts", "mid-transfer"])
def test_survivors_finish_a_round_whose_member_was_killed_mid_round(tmp_path, parts_before_death):
    numel = 3 * 2**20  # 4 MB for each of the 3 reducers: 8 chunks of hivemind's 512 KB from each member
    fills = (1.0, 2.0)  # the survivors'; the member's is 6.0
    two_way, three_way = sum(fills) / 2, (sum(fills) + 6.0) / 3
    nodes, averagers, member = [], [], None
    try:
        nodes.append(create_dht([], host="127.0.0.1"))
        nodes.append(create_dht(join_addresses(nodes[0]), host="127.0.0.1"))
        member = subprocess.Popen(
            [sys.executable, str(MEMBER), "6.0", str(numel), str(parts_before_death), *join_addresses(nodes[0])], cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
            stderr=open(tmp_path / "member.log", "w"), text=True, start_new_session=True)
        _wait_for_line(member, "READY", timeout_s=120)
        averagers = [SwarmAverager([torch.full((numel,), fill)], dht, prefix=PREFIX, start=True, **AVERAGER_OPTIONS)
                     for fill, dht in zip(fills, nodes)]
        started = time.monotonic()
        controls = [averager.step(wait=False, timeout=AVERAGER_OPTIONS["allreduce_timeout"]) for averager in averagers]
        groups = [control.result(timeout=180) for control in controls]
        took_s = time.monotonic() - started

        assert member.wait(timeout=30) == -signal.SIGKILL, (tmp_path / "member.log").read_text()[-2000:]
        assert [len(group) for group in groups] == [3, 3]  # the member was in the group when it died
        # hivemind 1.1.12 waited for the dead member until next_chunk_timeout (60 s here) or the round's timeout
        assert took_s < 30, f"the survivors waited {took_s:.0f} s for a dead member"
        results = []
        for averager, fill in zip(averagers, fills):
            with averager.get_tensors() as (tensor,):
                results.append(tensor.clone())
            # averaged by a survivor with or without the member's data, or kept where the member was the reducer
            assert set(results[-1].unique().tolist()) <= {fill, two_way, three_way}
            assert averager.last_received_fraction < 1.0  # reported as a partial round
        agree = results[0] == results[1]
        assert agree.float().mean() > 0.6  # the two survivors' shards, two thirds of the tensor
        assert set(results[0][agree].unique().tolist()) <= {two_way, three_way}
    finally:
        _tear_down(member, averagers, nodes)


@pytest.mark.parametrize("member_dies_after_s", [0, 2], ids=["before-the-others-trigger", "after-they-did"])
def test_survivors_finish_a_round_whose_member_died_while_its_group_awaited_its_trigger(tmp_path, member_dies_after_s):
    """Groups that form as soon as every expected peer joined (`ClosesFullGroups`) wait longer for their members'
    triggers, the ends of their epochs: a volunteer killed in that time leaves a group whose round it never started.
    The survivors trigger once the member is dead, or before it dies (their streams to it wait for its trigger)."""
    numel = 3 * 2**20
    fills = (1.0, 2.0)
    options = dict(AVERAGER_OPTIONS, next_chunk_timeout=15.0, allreduce_timeout=60.0)
    nodes, averagers, member = [], [], None
    try:
        nodes.append(create_dht([], host="127.0.0.1"))
        nodes.append(create_dht(join_addresses(nodes[0]), host="127.0.0.1"))
        member = subprocess.Popen(
            [sys.executable, str(MEMBER), "6.0", str(numel), str(-1 - round(member_dies_after_s)),
             *join_addresses(nodes[0])], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
            stderr=open(tmp_path / "member.log", "w"), text=True, start_new_session=True)
        _wait_for_line(member, "READY", timeout_s=120)
        averagers = [SwarmAverager([torch.full((numel,), fill)], dht, prefix=PREFIX, start=True, **options)
                     for fill, dht in zip(fills, nodes)]
        controls = [averager.step(wait=False, require_trigger=True, timeout=options["allreduce_timeout"])
                    for averager in averagers]
        deadline = time.monotonic() + 60
        while any(control.stage != AveragingStage.AWAITING_TRIGGER for control in controls):
            assert time.monotonic() < deadline, [control.stage for control in controls]
            time.sleep(0.01)
        if member_dies_after_s == 0:
            assert member.wait(timeout=30) == -signal.SIGKILL, (tmp_path / "member.log").read_text()[-2000:]
        started = time.monotonic()
        for control in controls:
            control.allow_allreduce()
        groups = [control.result(timeout=90) for control in controls]
        took_s = time.monotonic() - started

        assert member.wait(timeout=30) == -signal.SIGKILL, (tmp_path / "member.log").read_text()[-2000:]
        assert [len(group) for group in groups] == [3, 3]
        # the survivors' streams to the member fail once its p2p daemon is gone: no waiting out next_chunk_timeout
        assert took_s < member_dies_after_s + 5, f"the survivors waited {took_s:.1f} s for a dead member"
        results = []
        for averager, fill in zip(averagers, fills):
            with averager.get_tensors() as (tensor,):
                results.append(tensor.clone())
            assert set(results[-1].unique().tolist()) <= {fill, sum(fills) / 2}  # the member sent nothing
        agree = results[0] == results[1]
        assert agree.float().mean() > 0.6
        assert set(results[0][agree].unique().tolist()) == {sum(fills) / 2}
    finally:
        _tear_down(member, averagers, nodes)


class _LeavesAsItsGroupForms(SwarmAverager):
    """A real averager whose round is called off in the moment its matchmaking returns a group: the race of a peer
    that decides the swarm went on without it just as its group forms (seen in benchmarks/churn.py). The round's
    future is cancelled here, in the averager's process, at the one moment that loses the race; the training
    process hears of it and runs the rest of `StepControl.cancel`, as when it cancels the round itself."""

    async def _step(self, *, step, future_for_init):
        look_for_group = self._matchmaking.look_for_group

        async def look_then_call_off(control):
            group = await look_for_group(control)
            if group is not None:
                MPFuture.cancel(control)
            return group

        self._matchmaking.look_for_group = look_then_call_off
        await super()._step(step=step, future_for_init=future_for_init)


def test_a_group_whose_member_called_its_round_off_as_the_group_formed_averages_without_it():
    fills = (1.0, 2.0)  # the members that stay; the one that leaves has 6.0
    numel, options = 3 * 2**20, dict(AVERAGER_OPTIONS, next_chunk_timeout=15.0, allreduce_timeout=60.0)
    nodes, averagers = [], []
    try:
        nodes.append(create_dht([], host="127.0.0.1"))
        nodes.extend(create_dht(join_addresses(nodes[0]), host="127.0.0.1") for _ in range(2))
        averagers = [averager_class([torch.full((numel,), fill)], dht, prefix="leaves_as_formed", start=True, **options)
                     for averager_class, fill, dht in zip((_LeavesAsItsGroupForms, SwarmAverager, SwarmAverager),
                                                          (6.0, *fills), nodes)]
        started = time.monotonic()
        controls = [averager.step(wait=False, timeout=options["allreduce_timeout"]) for averager in averagers]
        groups = [control.result(timeout=120) for control in controls[1:]]
        took_s = time.monotonic() - started  # the group forms at once: all 3 of target_group_size are there

        assert controls[0].cancelled()
        assert [len(group) for group in groups] == [3, 3]  # the leaver was in the group as it formed
        # hivemind 1.1.12 waited for the member's chunks until next_chunk_timeout (15 s here)
        assert took_s < 6, f"the group waited {took_s:.1f} s for a member that had left"
        results = []
        for averager, fill in zip(averagers[1:], fills):
            with averager.get_tensors() as (tensor,):
                results.append(tensor.clone())
            assert set(results[-1].unique().tolist()) <= {fill, sum(fills) / 2}  # never the leaver's data
        agree = results[0] == results[1]
        assert agree.float().mean() > 0.6  # the two shards the stayers reduced were averaged between them
        assert set(results[0][agree].unique().tolist()) == {sum(fills) / 2}
    finally:
        for averager in averagers:
            averager.shutdown()
        for node in nodes:
            node.shutdown()


class _CalledOffAsItsAllreduceEnds(SwarmAverager):
    """A real averager whose round is called off as its all-reduce returns, before hivemind sets the round's result:
    the training process gave up on the round while it ran (at its timeout, or it read the stage just before the group
    formed and called off a round it took for one still looking). The round's future is cancelled here, in the
    averager's process, at that moment. Counts, in shared memory, the rounds that ended and the errors that ended
    them: hivemind runs each round as a task that nobody awaits, so asyncio prints such an error as "Task exception was
    never retrieved" (seen in a DiLoCo volunteer's log, with InvalidStateError)."""

    def __init__(self, *args, **kwargs):
        self.rounds_ended, self.errors_escaped = mp.Value("i", 0), mp.Value("i", 0)
        super().__init__(*args, **kwargs)

    async def _step(self, *, step, future_for_init):
        aggregate = self._aggregate_with_group

        async def aggregate_then_call_off(*args, **kwargs):
            outcome = await aggregate(*args, **kwargs)
            MPFuture.cancel(step)
            return outcome

        self._aggregate_with_group = aggregate_then_call_off
        try:
            await super()._step(step=step, future_for_init=future_for_init)
        except BaseException:
            self.errors_escaped.value += 1
            raise
        finally:
            self.rounds_ended.value += 1


def test_a_round_called_off_while_its_allreduce_runs_ends_without_an_unretrieved_error():
    options = dict(AVERAGER_OPTIONS, target_group_size=2, next_chunk_timeout=15.0, allreduce_timeout=30.0)
    nodes, averagers = [], []
    try:
        nodes.append(create_dht([], host="127.0.0.1"))
        nodes.append(create_dht(join_addresses(nodes[0]), host="127.0.0.1"))
        averagers = [averager_class([torch.full((4,), fill)], dht, prefix="called_off_mid_round", start=True, **options)
                     for averager_class, fill, dht in zip((_CalledOffAsItsAllreduceEnds, SwarmAverager), (1.0, 3.0),
                                                          nodes)]
        controls = [averager.step(wait=False, timeout=options["allreduce_timeout"]) for averager in averagers]
        assert len(controls[1].result(timeout=60)) == 2  # the other member's round is not affected
        deadline = time.monotonic() + 10
        while (averagers[0].rounds_ended.value == 0 or not controls[0].done()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert averagers[0].rounds_ended.value == 1
        assert controls[0].cancelled()  # the training process sees the round as called off, as it asked
        # hivemind 1.1.12 set the result on the cancelled future, and the InvalidStateError ended the round's task
        assert averagers[0].errors_escaped.value == 0
    finally:
        for averager in averagers:
            averager.shutdown()
        for node in nodes:
            node.shutdown()
