"""hivemind's all-reduce, kept going when a group member dies mid-round.

A volunteer can vanish at any moment: a closed laptop, a killed process. In hivemind 1.1.12 a member that died during
an all-reduce stalled the members that survived. Three `DecentralizedAverager` processes on loopback averaged 30M
floats (rounds of ~1.4 s), and one was SIGKILLed with its DHT and p2p daemon 0.1-1.4 s into a round. In 7 of 10
kills the two survivors stood still for 16-30 s (`reducer_timeout`, then `allreduce_timeout`), and one of them
usually lost the round. A member that died once its group had formed, before it sent anything, held the others for
`next_chunk_timeout` every time.

Each survivor reduces a shard of the tensors. It completes a chunk of its shard once every sender's copy of that
chunk has arrived. hivemind stops waiting for a sender only when that sender's incoming stream breaks or misses
`sender_timeout`, and neither is sure to happen:

- The handler that serves a dead member's stream can be blocked sending the averaged chunk back, so it never reads
  the broken stream. Or the member died before it opened a stream at all. The shard then waits for the dead member's
  next chunk until `sender_timeout`, or the round's timeout. The survivor's own stream to the dead member has already
  failed by then (connection reset, broken pipe, failed dial, or an early end with no connection left to the
  member). `ChurnSafeAllReduceRunner` takes that failure as notice that the member is gone and drops it as a sender
  at once.
- Every sender's handler awaits the same future for the current chunk. hivemind cancels the handler of a member
  whose stream broke, and a task cancelled while it awaits a future cancels that future too. The next sender to
  complete the chunk then hits `InvalidStateError`, and the shard never completes (seen once in the 10 kills).
  `ChurnSafeTensorPartReducer` makes its callers wait on a shield.

With both, the same 10 kills cost the survivors nothing: every round finished in 0.8-1.6 s with all the data the
dead member had sent, and without the rest. `swarm join` logs such a round as partial ("a member left mid-round").

A member can also leave a group alive: its round is called off in the moment the group forms. It then answers the
others' streams with `BAD_GROUP_ID` (`ChurnSafeAllReduce`), and they drop it as a sender at once. In hivemind 1.1.12
they waited for its chunks until `next_chunk_timeout` (7.5 s in benchmarks/churn.py, 15 s in the test).

>>> class MyAverager(ChurnSafeAllReduce, DecentralizedAverager): ...   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.allreduce import AllReduceRunner, AveragingMode
from hivemind.averaging.control import AveragingStage, StepControl
from hivemind.averaging.partition import AllreduceException, TensorPartReducer
from hivemind.p2p import P2PContext, P2PDaemonError, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import get_dht_time
from hivemind.utils.asyncio import achain, anext, as_aiter, azip

logger = logging.getLogger(__name__)

# The stages of a round before it registers its group for the all-reduce
_BEFORE_REGISTRATION = (AveragingStage.IDLE, AveragingStage.LOOKING_FOR_GROUP, AveragingStage.AWAITING_TRIGGER)


def _retrieve_outcome(task: asyncio.Future) -> None:
    """Mark a shielded accumulation's error as seen: its caller may be gone, and asyncio would log it as lost."""
    if not task.cancelled():
        task.exception()


class ChurnSafeTensorPartReducer(TensorPartReducer):
    """A `TensorPartReducer` whose shared part future survives a caller that is cancelled while waiting on it."""

    async def accumulate_part(self, sender_index: int, part_index: int, tensor_part: torch.Tensor,
                              weight: float = 1.0) -> torch.Tensor:
        accumulating = asyncio.ensure_future(
            super().accumulate_part(sender_index, part_index, tensor_part, weight=weight))
        accumulating.add_done_callback(_retrieve_outcome)
        return await asyncio.shield(accumulating)


def _left_the_group(peer_id: PeerID, error: Exception) -> bool:
    """Whether `error` is the member's answer that it does not know this round's group: it left the group as the group
    formed (its round was called off at that moment), so it will never send its chunks either. hivemind 1.1.12 turns
    that answer into an `AllreduceException` naming the code; waiting for the member's chunks then cost its group
    `next_chunk_timeout`. A swarm peer answers so only once no round of its own can register the group; a stock
    hivemind peer may answer so for a group it is about to register, and its data is then dropped here too: a smaller
    round, not a stall."""
    bad_group = averaging_pb2.MessageCode.Name(averaging_pb2.BAD_GROUP_ID)
    return isinstance(error, AllreduceException) and str(error) == f"{peer_id} sent {bad_group}"


class ChurnSafeAllReduceRunner(AllReduceRunner):
    """hivemind's `AllReduceRunner` with a `ChurnSafeTensorPartReducer`. A member is also dropped as a sender as soon
    as this peer's stream to it fails in a way that says the member is gone (`_member_gone`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stock = self.tensor_part_reducer
        stock.finished.set()  # never used: without this its __del__ would warn that it received 0% of its inputs
        self.tensor_part_reducer = ChurnSafeTensorPartReducer(stock.part_shapes, stock.num_senders)

    async def _communicate_with_peer(self, peer_id: PeerID):
        try:
            await super()._communicate_with_peer(peer_id)
        except Exception as error:
            if peer_id in self.sender_peer_ids and peer_id != self.peer_id and (
                    _left_the_group(peer_id, error) or await self._member_gone(peer_id, error)):
                logger.debug(f"Dropping {peer_id}'s data from this round: its stream failed with {error!r}")
                await self._ban_sender(peer_id)
            raise

    async def _member_gone(self, peer_id: PeerID, error: Exception) -> bool:
        """Whether `error` on this peer's stream to `peer_id` means the member is gone, not merely slow.

        The local p2p daemon resets the stream once the member's connection dies (ConnectionResetError,
        BrokenPipeError), and fails to open one to a member that is no longer there (P2PDaemonError: all dials
        failed). A stream that simply ended early (a member that died after it had received all of this peer's
        chunks) is told apart from a member that chose to drop this peer by the connection: a live member still
        has one.
        """
        if isinstance(error, (ConnectionError, P2PDaemonError)):
            return True
        if isinstance(error, asyncio.TimeoutError):  # a slow member: hivemind's timeouts decide
            return False
        try:
            connected = {info.peer_id for info in await self._p2p.list_peers()}
        except Exception:  # the daemon did not answer: assume the member is there, as hivemind does
            return False
        return peer_id not in connected


class ChurnSafeAllReduce(DecentralizedAverager):
    """Mixin for a hivemind averager: its rounds run on `ChurnSafeAllReduceRunner`.

    Replaces `DecentralizedAverager._run_allreduce_inplace_` (hivemind 1.1.12), the one place that builds the runner.
    Only this peer's side changes: it averages with stock hivemind peers on the same wire protocol.
    """

    async def rpc_aggregate_part(self, stream: AsyncIterator[averaging_pb2.AveragingData],
                                 context: P2PContext) -> AsyncIterator[averaging_pb2.AveragingData]:
        """A member's stream of chunks for this round's runner. hivemind's handler awaits the group's runner future
        itself, and a member that died while waiting took that future with it: the round failed here with "Unable to
        run All-Reduce: invalid state" when this peer registered its runner.

        A stream for a group this peer has not registered waits while a round of this peer can still register one
        (it is looking for a group, or has one and awaits its trigger: the group may have formed before this peer
        heard of it), at most `sender_timeout`, and is then turned away with `BAD_GROUP_ID`. hivemind waited for the
        next registration of any group, without a bound: a group that this peer's round left as it formed (called off
        at that very moment) never registers, and its members stood still until this peer's next round formed a
        group, 15 s in a churn run. hivemind also turned a stream away at once when an earlier round's registration
        had woken it. The members take the answer as notice that this peer is out of the round (`_left_the_group`)
        and finish it without its data.
        """
        first = await anext(stream)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._unknown_group_wait_s
        while first.group_id not in self._running_groups and self._a_round_may_register_a_group():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if self._pending_groups_registered.is_set():  # woken by another group: check again shortly
                await asyncio.sleep(min(remaining, 0.05))
                continue
            try:  # set when a group registers or unregisters, and when a round ends (`_step`)
                await asyncio.wait_for(self._pending_groups_registered.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                break
        registered = self._running_groups.get(first.group_id)
        if registered is None:
            yield averaging_pb2.AveragingData(code=averaging_pb2.BAD_GROUP_ID)
            return
        runner = await asyncio.shield(registered)
        async for message in runner.rpc_aggregate_part(achain(as_aiter(first), stream), context):
            yield message

    def __init__(self, *args, **kwargs):
        self._rounds_in_flight: set[StepControl] = set()  # filled in the averager's process (`_step`)
        super().__init__(*args, **kwargs)

    async def _step(self, *, step: StepControl, future_for_init):
        """hivemind's round, whose errors reach the training process through `step` only.

        hivemind runs each round as a task that nobody awaits, and re-raises from it what it has set on `step`: asyncio
        then printed "Task exception was never retrieved" with a traceback at every round that ended in an error not
        on hivemind's list (an all-reduce past `allreduce_timeout`). A round called off while its all-reduce ran (the
        training process read the stage just before the group formed, or gave up waiting at its timeout) finishes
        anyway, and hivemind's `step.set_result` on the cancelled future raised `InvalidStateError` the same way. The
        training process has the error, or called the round off: only what `step` does not hold goes on here.
        """
        self._rounds_in_flight.add(step)
        try:
            await super()._step(step=step, future_for_init=future_for_init)
        except Exception as error:
            if not step.done():
                raise
            logger.debug(f"Averaging round ended with {error!r} ({'called off' if step.cancelled() else 'reported'})")
        finally:
            self._rounds_in_flight.discard(step)
            # A round that ended without registering its group (called off as the group formed) never will: wake the
            # members' streams waiting for it in `rpc_aggregate_part`, which then turn them away at once. hivemind
            # wakes them only when a group registers or unregisters.
            self._pending_groups_registered.set()

    def _a_round_may_register_a_group(self) -> bool:
        """Whether a round of this peer is still looking for a group, or has one that it has not registered yet."""
        return any(not step.done() and step.stage in _BEFORE_REGISTRATION for step in self._rounds_in_flight)

    @property
    def _unknown_group_wait_s(self) -> float:
        """How long a member's stream for an unregistered group waits: as long as a sender's silence is tolerated."""
        return self.allreduce_kwargs.get("sender_timeout") or self.matchmaking_kwargs["min_matchmaking_time"]

    async def _run_allreduce_inplace_(self, tensors, group_info, group_id=None, **kwargs):
        group_id = group_info.group_id if group_id is None else group_id
        runner = ChurnSafeAllReduceRunner(p2p=self._p2p, servicer_type=type(self), prefix=self.prefix,
                                          tensors=tensors, group_id=group_id, ordered_peer_ids=group_info.peer_ids,
                                          **kwargs)
        registered = self._running_groups.get(group_id)
        if registered is None:
            raise RuntimeError(f"all-reduce group {group_id!r} was not registered before its runner was built")
        registered.set_result(runner)  # the averager's rpc_aggregate_part hands members' streams to this runner

        if runner.modes[group_info.peer_ids.index(self.peer_id)] == AveragingMode.AUX:
            async for _ in runner:
                raise ValueError("an auxiliary peer received averaged tensors")
            return
        async for tensor, delta in azip(as_aiter(*tensors), runner):
            tensor.add_(delta, alpha=self._averaging_alpha)
            self.last_updated = get_dht_time()
            self._state_updated.set()
