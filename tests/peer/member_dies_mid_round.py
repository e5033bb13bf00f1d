"""A group member for tests/peer/test_allreduce.py that SIGKILLs all its processes in the middle of a round.

Run as a script in a new session: `python member_dies_mid_round.py FILL NUMEL PARTS ADDRESS...`. It joins the DHT
at ADDRESS, prints READY, and averages a tensor of NUMEL values all equal to FILL with target_group_size=3. Once
it has sent PARTS chunks of that round to one reducer, it kills itself, its DHT and its p2p daemon at once, as
`kill -9` or a power cut would, while its group is averaging. PARTS=0: it sends nothing, and dies once both other
members have started sending it theirs. Dying sooner, in the moment its group forms, is a race when the member leads
the group: a follower that never heard the group formed keeps looking for one, and the other survivor waits for that
follower's chunks until `sender_timeout` (what made this case fail about one run in four). A negative PARTS makes the
round wait for a trigger that never comes: the member dies -PARTS - 1 seconds after its group has formed, as a
volunteer killed between joining a group early and finishing its epoch.
"""

from __future__ import annotations

import asyncio
import sys
import time

import torch
from hivemind.averaging.control import AveragingStage

from peer.allreduce import ChurnSafeAllReduceRunner
from peer.collaboration import SwarmAverager
from swarm.network import create_dht
from swarm.processes import kill_session

PREFIX = "member_loss"  # the survivors' averagers use the same prefix and settings
AVERAGER_OPTIONS = dict(target_group_size=3, min_group_size=2, min_matchmaking_time=3.0, request_timeout=1.0,
                        next_chunk_timeout=60.0, allreduce_timeout=120.0)


def die_after(parts: int) -> None:
    """Make this member's next all-reduce die after `parts` chunks went to one reducer (0: silent, once every
    other member has started sending)."""
    if parts == 0:
        receive = ChurnSafeAllReduceRunner.rpc_aggregate_part

        async def send_nothing(self, peer_index):
            await asyncio.Event().wait()
            yield  # never reached: an async generator, like the one it replaces

        async def hear_from_everyone_then_die(self, stream, context):
            heard_from = self.__dict__.setdefault("heard_from", set())
            heard_from.add(context.remote_id)
            if len(heard_from) == len(self.sender_peer_ids) - 1:  # all the others are in the round
                kill_session()
            async for message in receive(self, stream, context):
                yield message

        ChurnSafeAllReduceRunner._generate_input_for_peer = send_nothing
        ChurnSafeAllReduceRunner.rpc_aggregate_part = hear_from_everyone_then_die
        return
    send_parts = ChurnSafeAllReduceRunner._generate_input_for_peer

    async def send_then_die(self, peer_index):
        sent = 0
        async for message in send_parts(self, peer_index):
            yield message
            sent += 1
            if sent >= parts:
                kill_session()

    ChurnSafeAllReduceRunner._generate_input_for_peer = send_then_die


def main(fill: float, numel: int, parts: int, addresses: list[str]) -> None:
    dht = create_dht(addresses, host="127.0.0.1")
    if parts >= 0:
        die_after(parts)  # before the averager forks its process, which inherits the patched runner
    averager = SwarmAverager([torch.full((numel,), fill)], dht, prefix=PREFIX, start=True, **AVERAGER_OPTIONS)
    print("READY", flush=True)
    if parts < 0:  # die -PARTS - 1 seconds after the group formed, its round never triggered
        control = averager.step(wait=False, require_trigger=True, timeout=120.0)
        while control.stage != AveragingStage.AWAITING_TRIGGER:
            time.sleep(0.01)
        time.sleep(-parts - 1)
        kill_session()
    averager.step(timeout=120.0)
    print("SURVIVED", flush=True)  # the test fails if this is ever printed


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
