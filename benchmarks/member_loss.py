"""What a group member's death mid-all-reduce costs the members that survive it, with and without swarm's fix.

    python benchmarks/member_loss.py [--kills 10] [--numel 30000000] [--seed 1]
    python benchmarks/member_loss.py --quick      # 2 kills per arm, 3M values: ~2 minutes

Three real averagers on loopback (`peer.collaboration.SwarmAverager`), each in its own session with its own DHT
node and p2p daemon, average `--numel` fp32 values round after round. `--kills` times per arm, member 2 is SIGKILLed
with all its processes 0-0.8 s after its all-reduce began (~1 s at 30M values; `--quick`: 0-0.1 s of ~0.15 s),
then restarted.
The survivors' round that was running at the kill is timed from the kill to its end. The timeouts are those the
shipped tiny recipe derives from `averaging_timeout_s: 30` (7.5 s for a member's next chunk, 30 s for the round).

Arms, on the same kill delays (one seeded draw):
- `stock`: hivemind 1.1.12's `AllReduceRunner`, as before peer/allreduce.py.
- `churn-safe`: `ChurnSafeAllReduceRunner` (peer/allreduce.py), what swarm's averagers use.

Writes benchmarks/results/<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import (  # noqa: E402
    RECIPES_DIR,
    add_results_dir_option,
    describe_machine,
    machine,
    parse_benchmark_args,
    timestamp,
    write_results,
)
from swarm.processes import kill_session  # noqa: E402

ARMS = ("stock", "churn-safe")
VICTIM = 2
STALLED_S = 5.0  # a survivor's round that ends this long after the kill waited for the dead member




def round_options() -> dict:
    """The averagers' settings: the timeouts swarm derives from the tiny recipe's collaboration section."""
    from peer.collaboration import next_chunk_timeout_s
    from swarm.recipe import load_recipe

    collaboration = load_recipe(RECIPES_DIR / "tiny-stdlib.yaml").collaboration
    return dict(target_group_size=3, min_group_size=2, min_matchmaking_time=collaboration.matchmaking_time_s,
                request_timeout=1.0, next_chunk_timeout=next_chunk_timeout_s(collaboration),
                allreduce_timeout=collaboration.averaging_timeout_s)


# ---------------------------------------------------------------------------------------------------- the member


def run_member(arm: str, index: int, numel: int, addresses: list[str]) -> None:
    """One averager: average forever, one JSON line per round event on stdout."""
    import torch

    import peer.allreduce
    from hivemind.averaging.allreduce import AllReduceRunner
    from hivemind.averaging.control import AveragingStage
    from peer.collaboration import SwarmAverager
    from swarm.network import create_dht, join_addresses

    if arm == "stock":  # the one change under test: the runner swarm's averagers build for each round
        peer.allreduce.ChurnSafeAllReduceRunner = AllReduceRunner
    dht = create_dht(addresses, host="127.0.0.1")

    def say(event: str, **fields) -> None:
        print(json.dumps({"event": event, "member": index, "t": time.time(), **fields}), flush=True)

    # before the averager forks: a DHT call made while the new averager process makes its first ones hung now
    # and then (3 of ~20 member starts; `swarm join` too reads its addresses before it builds its averagers)
    own_addresses = join_addresses(dht)
    options = round_options()
    averager = SwarmAverager([torch.full((numel,), float(index + 1))], dht, prefix="member_loss", start=True,
                             **options)
    say("ready", addresses=own_addresses)
    while True:
        say("start")
        started = time.monotonic()
        try:
            control = averager.step(wait=False, timeout=options["allreduce_timeout"] + 5)
            while not control.done():  # the orchestrator times its kill from the start of the all-reduce
                if control.stage == AveragingStage.RUNNING_ALLREDUCE:
                    say("allreduce")
                    break
                time.sleep(0.002)
            group = control.result()
            say("done", took_s=time.monotonic() - started, group=len(group) if group else 1)
        except Exception as error:  # a failed round: hivemind raises after its timeouts
            say("fail", took_s=time.monotonic() - started, error=type(error).__name__)
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------- the orchestrator


class Member:
    """A member process and the events it printed."""

    def __init__(self, arm: str, index: int, numel: int, addresses: list[str], log_dir: Path):
        self.index = index
        self.log_path = log_dir / f"{arm}-member{index}.log"
        self.events: queue.Queue = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--member", str(index), "--arm", arm, "--numel", str(numel), *addresses],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=open(self.log_path, "a"), text=True,
            start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.put(event)

    def next_event(self, kinds: set[str], timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None and self.events.empty():
                raise TimeoutError(f"member {self.index} printed none of {sorted(kinds)} in {timeout_s:.0f} s "
                                   f"(exit code {self.process.poll()}; its log is in {self.log_path})")
            try:
                event = self.events.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if event["event"] in kinds:
                return event

    def kill(self) -> None:
        try:
            kill_session(self.process.pid)
        except ProcessLookupError:
            pass
        self.process.wait()


def wait_for_full_round(member: Member, timeout_s: float) -> None:
    """Until `member` finished a round with all three members."""
    deadline = time.monotonic() + timeout_s
    while True:
        event = member.next_event({"done", "fail"}, max(1.0, deadline - time.monotonic()))
        if event["event"] == "done" and event["group"] == 3:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("no round with all three members")


def run_arm(arm: str, numel: int, delays: list[float], round_timeout_s: float, log_dir: Path) -> dict:
    members: list[Member] = []
    kills = []
    try:
        members.append(Member(arm, 0, numel, [], log_dir))
        addresses = members[0].next_event({"ready"}, 120)["addresses"]
        members += [Member(arm, index, numel, addresses, log_dir) for index in (1, 2)]
        wait_for_full_round(members[VICTIM], 180)
        for delay in delays:
            started = members[VICTIM].next_event({"allreduce"}, 120)["t"]
            time.sleep(max(0.0, started + delay - time.time()))
            killed_at = time.time()
            members[VICTIM].kill()
            survivors = []
            for survivor in members[:VICTIM]:
                # the survivor's round that was running at the kill: the first one to end after it
                while True:
                    end = survivor.next_event({"done", "fail"}, round_timeout_s * 3)
                    if end["t"] >= killed_at:
                        break
                survivors.append({"member": survivor.index, "outcome": end["event"], "group": end.get("group"),
                                  "round_s": round(end["took_s"], 2),
                                  "after_kill_s": round(end["t"] - killed_at, 2)})
            kills.append({"delay_into_allreduce_s": round(delay, 3), "survivors": survivors})
            print(f"{arm}: kill {len(kills)} at {delay:.2f} s into an all-reduce: survivors ended their round "
                  + ", ".join(f"{s['after_kill_s']:.1f} s later ({s['outcome']})" for s in survivors), flush=True)
            members[VICTIM] = Member(arm, VICTIM, numel, addresses, log_dir)
            wait_for_full_round(members[VICTIM], 180)
    finally:
        for member in members:
            member.kill()
    return summarise(kills)


def summarise(kills: list[dict]) -> dict:
    waits = [s["after_kill_s"] for kill in kills for s in kill["survivors"]]
    survivors = [s for kill in kills for s in kill["survivors"]]
    return {
        "kills": kills,
        "survivor_rounds": len(waits),
        "median_wait_after_kill_s": round(statistics.median(waits), 2),
        "max_wait_after_kill_s": max(waits),
        "mean_wait_after_kill_s": round(statistics.fmean(waits), 2),
        "rounds_stalled": sum(wait > STALLED_S for wait in waits),
        # the round with the dead member failed; hivemind's step retried and averaged the survivors as a pair
        "rounds_redone_in_pairs": sum(s["outcome"] == "done" and s["group"] == 2 for s in survivors),
        "rounds_failed": sum(s["outcome"] == "fail" for s in survivors),
    }


def markdown(settings: dict, results: dict, info: dict) -> str:
    lines = [f"# member_loss: a member SIGKILLed mid-round ({timestamp()})", "",
             describe_machine(info), "",
             f"3 averagers, {settings['numel']:,} fp32 values each, {settings['kills']} kills per arm at "
             f"{settings['delay_range_s'][0]}-{settings['delay_range_s'][1]} s into the victim's all-reduce; "
             f"next_chunk_timeout {settings['round_options']['next_chunk_timeout']} s, round timeout "
             f"{settings['round_options']['allreduce_timeout']} s.", "",
             "| arm | survivor rounds | stalled (> 5 s) | failed, redone in pairs | failed for good | median wait after the "
             "kill | mean | max |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, row in results["arms"].items():
        lines.append(f"| {arm} | {row['survivor_rounds']} | {row['rounds_stalled']} | {row['rounds_redone_in_pairs']} | "
                     f"{row['rounds_failed']} | "
                     f"{row['median_wait_after_kill_s']} s | {row['mean_wait_after_kill_s']} s | "
                     f"{row['max_wait_after_kill_s']} s |")
    return "\n".join(lines) + "\n"


def plot(settings: dict, results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for offset, (arm, row) in zip((-0.1, 0.1), results["arms"].items()):
        xs = [number + 1 + offset for number, kill in enumerate(row["kills"]) for _ in kill["survivors"]]
        ys = [s["after_kill_s"] for kill in row["kills"] for s in kill["survivors"]]
        axis.scatter(xs, ys, label=arm)
    axis.axhline(settings["round_options"]["allreduce_timeout"], color="grey", linestyle=":", label="round timeout")
    axis.set_xlabel("kill")
    axis.set_ylabel("survivor's round ended, s after the kill")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 kills per arm, 3M values (smoke test).")
    parser.add_argument("--kills", type=int, default=None, help="Kills per arm (10).")
    parser.add_argument("--numel", type=int, default=None, help="fp32 values each member averages (30M).")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seed", type=int, default=1, help="Seeds the kill delays, shared by the arms.")
    parser.add_argument("--name", default="member_loss", help="Results file stem.")
    add_results_dir_option(parser)
    parser.add_argument("--member", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--arm", choices=ARMS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("addresses", nargs="*", help=argparse.SUPPRESS)
    args = parse_benchmark_args(parser)
    if args.member is not None:
        run_member(args.arm, args.member, args.numel, args.addresses)
        return

    if args.kills is not None and args.kills < 1:
        parser.error(f"--kills {args.kills}: at least 1 kill per arm (leave it out for 10)")
    kills = args.kills or (2 if args.quick else 10)
    numel = args.numel or (3_000_000 if args.quick else 30_000_000)
    delay_range_s = (0.0, 0.1) if args.quick else (0.0, 0.8)
    rng = random.Random(args.seed)
    delays = [rng.uniform(*delay_range_s) for _ in range(kills)]
    info = machine()
    log_dir = Path(tempfile.mkdtemp(prefix=f"{args.name}-logs-"))
    print(f"member logs: {log_dir}", flush=True)
    settings = {"kills": kills, "numel": numel, "delay_range_s": list(delay_range_s), "seed": args.seed,
                "delays_s": [round(delay, 3) for delay in delays], "round_options": round_options(),
                "stalled_above_s": STALLED_S}
    round_timeout_s = settings["round_options"]["allreduce_timeout"]
    results = {"arms": {arm: run_arm(arm, numel, delays, round_timeout_s, log_dir) for arm in args.arms}}
    text = markdown(settings, results, info)
    write_results(args.name, settings, results, text, plot=lambda path: plot(settings, results, path),
                  machine_info=info, results_dir=args.results_dir)
    print(text)


if __name__ == "__main__":
    main()
