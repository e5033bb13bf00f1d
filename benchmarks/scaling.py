"""Scaling of a swarm (DeDLOC or DiLoCo) with 1-16 peers, compute simulated, averaging real, on loopback or shaped links.

    python benchmarks/scaling.py                 # tiny model, fp16 and uint8, 1-8 peers, loopback: about 9 minutes
    python benchmarks/scaling.py --quick         # 2 peers, fp16, short windows: under a minute
    python benchmarks/scaling.py --model gpt2-small --peers 1 2 --compression fp16 --step-time-s 1.0
    sudo python benchmarks/scaling.py --link 100mbit-25ms --mode diloco --inner-steps 50 --peers 4 \
        --compression uint8 fp16 --name scaling-diloco-100mbit-25ms    # each peer in a network namespace

On 2 cores, eight real peers would fight over the cores and measure the machine, not the swarm. So each peer
(its own process, with its own DHT node, joined through one bootstrap node) replaces its forward/backward by a
sleep of the measured time of one real micro-step (calibrated once on this machine, or `--step-time-s`), then
hands hivemind gradients of the model's true shapes (random values) and runs exactly the volunteer's
`opt.step()` and `opt.zero_grad()` on the real optimiser from `build_swarm_optimizer` (`--mode dedloc`: the
SwarmOptimizer; `--mode diloco`: the DiLoCoOptimizer with `--inner-steps` H, whose inner AdamW step really runs
and counts as compute, the sleep shortened by its time). Matchmaking, compression, the butterfly all-reduce, the
optimiser steps and state averaging all really happen.

Links: `--link loopback` runs every peer in this network namespace. `--link 1gbit-5ms|100mbit-25ms|20mbit-50ms`
(rate, one-way delay) puts each peer on its own host of a `benchmarks.netlab.NetLab`: a network namespace whose
veth is shaped by tc tbf at the rate both ways, every peer-to-peer byte through a relay that delays it by the
one-way delay in each direction (RTT = 2 x delay; the kernel has no netem), the bootstrap node in the lab's hub.
Needs root, `ip` and `tc`; see benchmarks/netlab.py for the conventions.

Row fields: peers, link, mode, inner_steps (DiLoCo), compression, samples_per_s (whole swarm, in a common window
after a warm-up), utilisation (time computing / wall time per peer, averaged: time in opt.step() waiting on
matchmaking or the network is not computing), mean_group_size (who really averaged together; 1 means peers
trained alone), sync_s_median (DeDLOC: the opt.step() that ends an epoch; DiLoCo: the longest wait in opt.step()
within a round, i.e. the all-reduce), bytes_sent_per_peer_per_sync (computed: serialized size of the gradients
under the codec x 2(n-1)/n for hivemind's butterfly all-reduce), measured_bytes_sent_per_peer_per_sync and
measured_bytes_received_per_peer_per_sync (shaped links: the peer's veth counters, every byte on the wire;
loopback: the bytes its libp2p daemon sent on its TCP sockets, from tcp_info via `ss`; divided by the swarm
epochs in the window, so DHT traffic, state averaging and protocol overhead are included),
measured_bytes_sent_per_parameter_per_sync (that / parameters) and measured_payload_bytes_per_parameter (also /
2(n-1)/n: the wire format's bytes per value), wall_s_per_micro_step, time_to_target_s (when
benchmarks/results/convergence.json from real training has a row of the same mode and peers, and inner steps for
DiLoCo: its micro-steps per peer to the target loss x this row's wall_s_per_micro_step, with
time_to_target_source and time_to_target_vs_1_peer; else null), simulated (true).
Writes benchmarks/results/<--name>.{json,md,png} (default `scaling`).

The numbers on paper (a model of throughput for 100 and 1,000 volunteers on consumer links) come from
`predict()` below and are written to the same JSON; benchmarks/README.md explains them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_results_dir_option,
    parse_benchmark_args,
    RECIPES_DIR,
    describe_machine,
    load_average,
    machine,
    timestamp,
    write_results,
)

MODELS = {
    # model: recipe whose model and collaboration sections are used, vocabulary (None: the recipe's tokenizer)
    "tiny": ("tiny-stdlib.yaml", None),
    "gpt2-small": ("gpt2-small-fineweb.yaml", 50257),
}
# Named links: (rate in Mbit/s, one-way delay in ms). Emulating them needs network namespaces, tc and a delaying
# relay (the kernel here has no netem); see `--link` and benchmarks/README.md.
LINKS = {"loopback": None, "1gbit-5ms": (1000, 5), "100mbit-25ms": (100, 25), "20mbit-50ms": (20, 50)}
LINK_EMULATION = (
    "benchmarks/netlab.py: each peer in its own network namespace, its veth shaped by tc tbf at the rate both ways "
    "(uplink and downlink), no IP forwarding in the hub, every peer-to-peer byte through a user-space relay that "
    "delays each chunk by the one-way delay in each direction (RTT = 2 x delay; this kernel has no netem); the "
    "bootstrap DHT node sits in the hub, shaped by each peer's link but not delayed; bytes from the veth counters")
# A GPU volunteer's micro-step for gpt2-small (16 x 1024 tokens) cannot be measured on this CPU machine: the default
# assumes ~16k tokens/s, a consumer GPU (the ANCHORS paper numbers use the same 1 s).
ASSUMED_GPT2_SMALL_STEP_S = 1.0
# Fixed cost of one sync in the projections (s): matchmaking not hidden behind compute, round trips, optimiser step.
PROJECTION_OVERHEAD_S = 5.0


def load_bench_recipe(model: str, compression: str, target_batch_size: int | None, matchmaking_time_s: float | None,
                      mode: str = "dedloc", inner_steps: int | None = None, overlap: bool = False,
                      average_state_every: int | None = None, wait_out_windows: bool = False):
    from swarm.recipe import load_recipe

    recipe = load_recipe(RECIPES_DIR / MODELS[model][0])
    update = {"compression": compression, "micro_batch_size": "auto", "mode": mode,
              "close_groups_early": not wait_out_windows}
    if target_batch_size is not None:
        update["target_batch_size"] = target_batch_size
    if matchmaking_time_s is not None:
        update["matchmaking_time_s"] = matchmaking_time_s
        update["averaging_timeout_s"] = max(recipe.collaboration.averaging_timeout_s, 4 * matchmaking_time_s)
    if mode == "dedloc":
        update["delay_updates"] = overlap
        if average_state_every is not None:
            update["average_state_every"] = average_state_every
    if mode == "diloco":
        diloco = {"overlap_communication": overlap}
        if inner_steps is not None:
            diloco["inner_steps"] = inner_steps
        update["diloco"] = recipe.collaboration.diloco.model_copy(update=diloco)
    return recipe.model_copy(update={"collaboration": recipe.collaboration.model_copy(update=update)})


def bench_recipe(args: argparse.Namespace, compression: str, peers: int | None = None):
    """The recipe a row runs: in DiLoCo mode the target batch is what `peers` peers process per round."""
    target = args.target_batch_size
    if args.mode == "diloco" and target is None and peers:
        target = peers * args.inner_steps * args.micro_batch_size
    return load_bench_recipe(args.model, compression, target, args.matchmaking_time_s, args.mode, args.inner_steps,
                             args.overlap, args.average_state_every, args.wait_out_windows)


def build_bench_model(model: str, recipe):
    from swarm.model import build_model
    from swarm.tokenizer import build_tokenizer

    vocab_size = MODELS[model][1]
    if vocab_size is None:
        tokenizer = build_tokenizer(recipe.tokenizer)
        return build_model(recipe.model, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
    return build_model(recipe.model, vocab_size, vocab_size - 1, None)


class ShapesOnly:
    """Stands in for the model in a simulated peer: its parameters by name and shape, without the code.

    Building the transformers model costs a peer ~10-20 s of CPU on a loaded 2-core machine, for nothing: the
    optimiser only needs the parameters (`parameter_groups` reads their names and dimensions).
    """

    def __new__(cls, shapes: dict[str, list[int]]):
        import torch

        module = torch.nn.Module()
        module.weights = torch.nn.ParameterDict(
            {name.replace(".", "__"): torch.nn.Parameter(torch.zeros(shape)) for name, shape in shapes.items()})
        return module


def parameter_shapes(model) -> dict[str, list[int]]:
    return {name: list(parameter.shape) for name, parameter in model.named_parameters()}


# ------------------------------------------------------------------------------------------------- calibration
def calibrate_step_time(micro_batch_size: int, seconds: float = 6.0) -> float:
    """Fastest wall time of one real forward/backward of the tiny model on this machine (all cores).

    The fastest, not the median: on a shared machine the others' load inflates most steps (an oversubscribed
    2-thread step took 3.9 s instead of 0.2 s here), and the simulated peer stands for a volunteer's own machine.
    """
    from swarm.data import build_data
    from swarm.tokenizer import build_tokenizer

    recipe = load_bench_recipe("tiny", "fp16", None, None)
    tokenizer = build_tokenizer(recipe.tokenizer)
    data = build_data(recipe.data, tokenizer, peer_id=b"scaling-calibration")
    model = build_bench_model("tiny", recipe)
    model.train()
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 8 or time.perf_counter() < deadline:
        batch = data.next_batch(0, micro_batch_size)
        started = time.perf_counter()
        model(input_ids=batch, labels=batch).loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return min(times[2:])


# ------------------------------------------------------------------------------------------------- one peer
def run_peer(args: argparse.Namespace) -> dict:
    """Worker: one simulated volunteer. Joins, waits for the common start, trains, reports what it measured."""
    import torch

    from peer.collaboration import build_swarm_optimizer
    from swarm import records
    from swarm.identity import Identity
    from swarm.network import create_dht

    torch.set_num_threads(1)  # compute is simulated; hivemind's own tensor work shares the 2 cores with 7 others
    recipe = load_bench_recipe(args.model, args.compression[0], args.target_batch_size, args.matchmaking_time_s,
                               args.mode, args.inner_steps, args.overlap, args.average_state_every,
                               args.wait_out_windows)
    folder = Path(args.work_dir) / f"peer-{args.peer_index}"
    identity = Identity.load_or_create(folder / "identity", name=f"scaling-peer-{args.peer_index}")
    # in a network lab: listen on the host's own address at a fixed port, announce the relay that others dial;
    # before the model exists, as in the volunteer (hivemind forks the DHT's process here)
    dht = create_dht([args.initial_peer], host=args.host or "127.0.0.1", port=args.port or 0, identity=identity,
                     announce_host=args.announce_host)
    dht.add_validators(records.schema_validators(recipe.run.id))  # as the volunteer does, before the optimiser's
    model = ShapesOnly(json.loads(Path(args.shapes_file).read_text()))
    generator = torch.Generator().manual_seed(1000 + args.peer_index)
    # random gradients of the true shapes, made once: the values do not change the cost of the path
    gradients = [torch.randn(p.shape, generator=generator) * 1e-3 for p in model.parameters()]
    optimizer = build_swarm_optimizer(dht, model, recipe, identity, args.micro_batch_size)
    parameters = list(model.parameters())
    inner_s = [0.0]  # DiLoCo: the inner optimiser step is the peer's own training work, i.e. compute
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None and args.simulate_inner_step:
        # the inner AdamW step is part of the simulated compute (on a GPU it is a few ms); a plain update keeps
        # the parameters moving so that the round averages a real, non-zero pseudo-gradient of the true size
        def inner_step(*_args, **_kwargs):
            with torch.no_grad():
                torch._foreach_add_(parameters, gradients, alpha=-0.1)
    elif inner is not None:
        inner_step = inner.step
    if inner is not None:

        def timed_inner_step(*step_args, **step_kwargs):
            began = time.perf_counter()
            try:
                return inner_step(*step_args, **step_kwargs)
            finally:
                inner_s[0] += time.perf_counter() - began

        inner.step = timed_inner_step
    (folder / "ready").write_text(str(os.getpid()))
    go_file = Path(args.work_dir) / "go"
    while not go_file.exists():
        time.sleep(0.05)
    start_at = float(go_file.read_text())
    while time.time() < start_at:
        time.sleep(0.01)

    # wall times: compute began, compute ended, step ended; and the compute done inside step() (DiLoCo's inner step)
    micro_steps: list[tuple[float, float, float, float]] = []
    epochs: list[dict] = []
    deadline = start_at + args.warmup_s + args.seconds
    longest_wait_s = 0.0  # the longest non-compute step() since the last epoch: the round's all-reduce wait
    last_inner_s = 0.0
    try:
        while time.time() < deadline:
            compute_began = time.time()
            # the forward/backward this peer's hardware would do (its optimiser step included, which DiLoCo's
            # inner step really runs below)
            time.sleep(max(0.0, args.step_time_s - last_inner_s))
            compute_ended = time.time()
            for parameter, gradient in zip(parameters, gradients):
                parameter.grad = gradient
            epoch = optimizer.local_epoch
            inner_before = inner_s[0]
            step_started = time.perf_counter()
            optimizer.step()
            step_s = time.perf_counter() - step_started
            optimizer.zero_grad(set_to_none=True)
            last_inner_s = inner_s[0] - inner_before
            micro_steps.append((compute_began, compute_ended, time.time(), last_inner_s))
            longest_wait_s = max(longest_wait_s, step_s - last_inner_s)
            if optimizer.local_epoch != epoch:
                sync_s = step_s if args.mode == "dedloc" else longest_wait_s
                epochs.append({"time": time.time(), "epoch": optimizer.local_epoch, "sync_s": sync_s,
                               "group_size": optimizer.rounds.last_group_size})
                longest_wait_s = 0.0
        # written before the shutdown, which can take seconds: the orchestrator reads it as soon as it appears
        args.result_file.write_text(json.dumps({
            "peer_index": args.peer_index, "start_at": start_at, "micro_steps": micro_steps, "epochs": epochs,
            "averaged_rounds": optimizer.rounds.averaged, "solo_rounds": optimizer.rounds.solo}))
    finally:
        optimizer.shutdown()
        dht.shutdown()


# ------------------------------------------------------------------------------------------------- one row
def run_row(args: argparse.Namespace, peers: int, compression: str, step_time_s: float, work_root: Path) -> dict:
    """Start `peers` simulated volunteers around one bootstrap DHT node, measure a common window.

    On `--link loopback` everything runs in this network namespace; on a named link each peer runs on its own host
    of a `benchmarks.netlab.NetLab` (shaped veth, delaying relay) and the bootstrap node in the lab's hub.
    """
    from contextlib import ExitStack

    work_dir = Path(tempfile.mkdtemp(prefix=f"n{peers}-{args.mode}-{compression}-", dir=work_root))
    processes = []
    with ExitStack() as stack:
        lab = None
        if args.link != "loopback":
            from benchmarks.netlab import Link, NetLab

            lab = stack.enter_context(NetLab(hosts=peers, link=Link.parse(args.link)))
            initial_peer = _start_lab_bootstrap(lab, work_dir, args.startup_timeout_s)
        else:
            from swarm.network import create_dht

            bootstrap = create_dht([], host="127.0.0.1", port=0)
            stack.callback(bootstrap.shutdown)
            initial_peer = str(bootstrap.get_visible_maddrs()[0])
        stack.callback(_stop, processes)  # runs before the lab closes or the bootstrap shuts down
        launched = time.time()
        for index in range(peers):
            argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--peer-index", str(index),
                    "--initial-peer", initial_peer, "--work-dir", str(work_dir), "--model", args.model,
                    "--shapes-file", str(args.shapes_file), "--mode", args.mode,
                    "--compression", compression, "--step-time-s", str(step_time_s),
                    "--micro-batch-size", str(args.micro_batch_size), "--seconds", str(args.seconds),
                    "--warmup-s", str(args.warmup_s), "--result-file", str(work_dir / f"result-{index}.json")]
            if args.mode == "diloco":
                argv += ["--inner-steps", str(args.inner_steps)]
                argv += ["--simulate-inner-step"] if args.simulate_inner_step else []
            argv += ["--overlap"] if args.overlap else []
            target = bench_recipe(args, compression, peers).collaboration.target_batch_size
            argv += ["--target-batch-size", str(target)]
            if args.matchmaking_time_s:
                argv += ["--matchmaking-time-s", str(args.matchmaking_time_s)]
            if args.average_state_every:
                argv += ["--average-state-every", str(args.average_state_every)]
            argv += ["--wait-out-windows"] if args.wait_out_windows else []
            log = open(work_dir / f"peer-{index}.log", "w")
            if lab is None:
                processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=work_dir))
            else:
                argv += ["--host", lab.host_ip(index), "--port", str(LAB_PEER_PORT),
                         "--announce-host", lab.dial_address(index, LAB_PEER_PORT)]
                processes.append(lab.popen(index, argv, stdout=log, stderr=subprocess.STDOUT, cwd=work_dir))
        deadline = time.time() + args.startup_timeout_s
        while not all((work_dir / f"peer-{i}" / "ready").exists() for i in range(peers)):
            if time.time() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"peers did not start: see {work_dir}/peer-*.log\n" + _log_tail(work_dir))
            time.sleep(0.2)
        startup_s = time.time() - launched
        start_at = time.time() + 1.0
        (work_dir / "go.tmp").write_text(repr(start_at))
        (work_dir / "go.tmp").replace(work_dir / "go")  # atomic: a peer polling for it never reads it half-written
        window = (start_at + args.warmup_s, start_at + args.warmup_s + args.seconds)
        time.sleep(max(0.0, window[0] - time.time()))
        cpu_before = _cpu_seconds_by_role(processes)
        if lab is None:
            sent, received = _watch_bytes_sent(processes, window[1]), None
        else:  # every byte on each peer's link, from its veth counters
            before = [lab.bytes(i) for i in range(peers)]
            time.sleep(max(0.0, window[1] - time.time()))
            after = [lab.bytes(i) for i in range(peers)]
            sent = {i: after[i]["sent"] - before[i]["sent"] for i in range(peers)}
            received = {i: after[i]["received"] - before[i]["received"] for i in range(peers)}
        cpu_after = _cpu_seconds_by_role(processes)
        # cores busy on average over the window, summed over all peers (this machine has os.cpu_count() of them)
        cpu_cores = {role: round((cpu_after[role] - cpu_before[role]) / (window[1] - window[0]), 3)
                     for role in cpu_after}
        result_files = [work_dir / f"result-{i}.json" for i in range(peers)]
        deadline = time.time() + args.seconds + 120
        while not all(f.exists() for f in result_files):
            # a peer that wrote its result may still fail in hivemind's shutdown: only a peer without one failed
            crashed = [i for i, p in enumerate(processes) if p.poll() not in (None, 0) and not result_files[i].exists()]
            if time.time() > deadline or crashed:
                raise RuntimeError(f"peers did not finish: see {work_dir}/peer-*.log\n" + _log_tail(work_dir))
            time.sleep(0.2)
        time.sleep(0.2)  # let the last writer close its file
        results = [json.loads(f.read_text()) for f in result_files]
    incomplete = _incomplete_allreduces(work_dir, peers)
    recipe = bench_recipe(args, compression, peers)
    row = summarise_row(args, peers, compression, step_time_s, recipe, results, window, sent, received)
    row.update(incomplete, startup_s=round(startup_s, 1), cpu_cores_in_window=cpu_cores,
               cpu_cores_per_peer=round(sum(cpu_cores.values()) / peers, 3))
    return row


LAB_PEER_PORT = 31337  # every peer listens on this port on its own lab host; its relay in the hub uses it too
LAB_BOOTSTRAP_PORT = 31000


def _start_lab_bootstrap(lab, work_dir: Path, timeout_s: float) -> str:
    """A bootstrap DHT node in the lab's hub (unshaped, undelayed); returns its address."""
    address_file = work_dir / "bootstrap-address"
    log = open(work_dir / "bootstrap.log", "w")
    process = lab.popen_hub([sys.executable, str(Path(__file__).resolve()), "--bootstrap", "--host", lab.service_ip,
                             "--port", str(LAB_BOOTSTRAP_PORT), "--result-file", str(address_file)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=work_dir)
    deadline = time.time() + timeout_s
    while not address_file.exists() or not address_file.read_text().strip():
        if time.time() > deadline or process.poll() is not None:
            raise RuntimeError(f"the lab's bootstrap node did not start: see {work_dir}/bootstrap.log")
        time.sleep(0.1)
    return address_file.read_text().strip()


def run_bootstrap(args: argparse.Namespace) -> None:
    """Worker: the lab's bootstrap node; writes its address, then serves until terminated."""
    import signal

    from swarm.network import create_dht

    dht = create_dht([], host=args.host, port=args.port)
    address = next(str(a) for a in dht.get_visible_maddrs() if args.host in str(a))
    args.result_file.write_text(address)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(1)
    finally:
        dht.shutdown()


def _stop(processes: list[subprocess.Popen], grace_s: float = 15.0) -> None:
    """Give the peers `grace_s` to shut hivemind down, then kill what is left of each peer's process tree."""
    import psutil

    deadline = time.time() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        if process.poll() is None:
            try:
                tree = psutil.Process(process.pid).children(recursive=True)
            except psutil.Error:
                tree = []
            for member in [*tree, process]:
                try:
                    member.kill()
                except (psutil.Error, ProcessLookupError):
                    pass
            process.wait()


_PARTIAL = re.compile(r"(Reducer: received|Averaging: received) ([\d.]+)% of")


def _incomplete_allreduces(work_dir: Path, peers: int) -> dict:
    """What hivemind only logs as a warning: all-reduces that went on without part of the data.

    When a peer's chunks do not arrive within `next_chunk_timeout` (hivemind.Optimizer sets it to matchmaking_time),
    the reducer averages what it has and says "Reducer: received 51.2% of input tensors"; the round still counts
    as averaged. Counted over the whole run of every peer (warm-up included).
    """
    fractions, failed = [], 0
    for index in range(peers):
        log = work_dir / f"peer-{index}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        fractions += [float(match.group(2)) / 100 for match in _PARTIAL.finditer(text)]
        failed += text.count("Averaging step failed") + text.count("Averaging gradients failed")
    return {"incomplete_allreduce_warnings": len(fractions),
            "incomplete_allreduce_mean_fraction_received": round(statistics.fmean(fractions), 3) if fractions else None,
            "failed_averaging_steps": failed}


def _log_tail(work_dir: Path) -> str:
    return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-8:])
                     for log in sorted(work_dir.glob("peer-*.log")))


_SS_PROCESS = re.compile(r'users:\(\("p2pd",pid=(\d+)')
_SS_BYTES_SENT = re.compile(r"bytes_sent:(\d+)")
_SS_ADDRESSES = re.compile(r"^\S+\s+\d+\s+\d+\s+(\S+)\s+(\S+)")


def _bytes_sent_by_peer(processes: list[subprocess.Popen]) -> dict[int, dict[str, int]]:
    """{peer index: {socket: bytes sent so far}} for the TCP sockets of each peer's libp2p daemon (p2pd)."""
    import psutil

    daemon_of = {}
    for index, process in enumerate(processes):
        try:
            for child in psutil.Process(process.pid).children(recursive=True):
                if child.name() == "p2pd":
                    daemon_of[child.pid] = index
        except psutil.Error:
            pass
    try:
        output = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    sent: dict[int, dict[str, int]] = {}
    lines = output.splitlines()
    for line, info in zip(lines, lines[1:]):
        owner, addresses = _SS_PROCESS.search(line), _SS_ADDRESSES.match(line)
        count = _SS_BYTES_SENT.search(info)
        if owner and addresses and count and int(owner.group(1)) in daemon_of:
            sent.setdefault(daemon_of[int(owner.group(1))], {})[" ".join(addresses.groups())] = int(count.group(1))
    return sent


def _watch_bytes_sent(processes: list[subprocess.Popen], until: float, period_s: float = 0.5) -> dict[int, int] | None:
    """Bytes each peer's daemon sent from now until `until`, from tcp_info snapshots every `period_s`.

    A socket opened during the window counts from zero; one closed during it keeps its last snapshot (so at most
    `period_s` of its traffic is missed).
    """
    first = _bytes_sent_by_peer(processes)
    latest: dict[int, dict[str, int]] = {peer: dict(sockets) for peer, sockets in first.items()}
    while time.time() < until:
        time.sleep(min(period_s, max(0.0, until - time.time())))
        for peer, sockets in _bytes_sent_by_peer(processes).items():
            latest.setdefault(peer, {}).update(sockets)
    if not latest:
        return None
    return {peer: sum(value - first.get(peer, {}).get(socket, 0) for socket, value in sockets.items())
            for peer, sockets in latest.items()}


def _cpu_seconds_by_role(processes: list[subprocess.Popen]) -> dict[str, float]:
    """CPU seconds so far of every peer's process tree, by role: the training process (the simulated volunteer's
    loop, its progress tracker and DHT client threads), hivemind's child processes (the DHT node and the averagers)
    and the p2p daemons. A process that exits in between is not counted after its last snapshot."""
    import psutil

    totals = {"training": 0.0, "hivemind_processes": 0.0, "p2pd": 0.0}
    for process in processes:
        try:
            root = psutil.Process(process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for member in tree:
            try:
                times, name, cmdline = member.cpu_times(), member.name(), member.cmdline()
                parent = member.parent()
                forked = parent is not None and "--worker" in parent.cmdline()  # hivemind forks the worker
            except psutil.Error:
                continue
            if "p2pd" in name:
                role = "p2pd"
            elif "--worker" not in cmdline:
                continue  # a launcher such as `ip netns exec`, or torch's shared-memory manager
            else:
                role = "hivemind_processes" if forked else "training"
            totals[role] += times.user + times.system
    return totals


def computed_bytes_per_sync(model, compression: str) -> dict[str, int]:
    """Serialized bytes of one full set of gradients under the codec (each distinct shape serialized once)."""
    import torch
    from hivemind.compression import CompressionInfo

    from swarm.compat import make_compression

    codec = make_compression(compression)
    by_shape: dict[tuple, int] = {}
    total = 0
    for parameter in model.parameters():
        shape = tuple(parameter.shape)
        if shape not in by_shape:
            sample = torch.randn(shape)
            by_shape[shape] = codec.compress(sample, CompressionInfo.from_tensor(sample)).ByteSize()
        total += by_shape[shape]
    return {"payload_bytes": total, "parameters": sum(p.numel() for p in model.parameters())}


def summarise_row(args, peers, compression, step_time_s, recipe, results, window, sent, received=None) -> dict:
    collab = recipe.collaboration
    begin, end = window
    length = end - begin
    samples = 0.0
    utilisations = []
    micro_steps_per_peer = []
    for result in results:
        done = sum(1 for step in result["micro_steps"] if begin < step[2] <= end)
        micro_steps_per_peer.append(done)
        samples += done * args.micro_batch_size
        # the part of each simulated forward/backward that falls inside the window, plus the compute done inside
        # step() (DiLoCo's inner optimiser step); time in step() waiting on the network is not compute
        busy = sum(max(0.0, min(step[1], end) - max(step[0], begin)) for step in result["micro_steps"])
        busy += sum(step[3] for step in result["micro_steps"] if len(step) > 3 and begin < step[2] <= end)
        utilisations.append(min(1.0, busy / length))
    epochs = [e for r in results for e in r["epochs"] if begin < e["time"] <= end]
    swarm_epochs = len({e["epoch"] for e in epochs})
    group_sizes = [e["group_size"] for e in epochs]
    sync_times = [e["sync_s"] for e in epochs]
    payload = args.payload[compression]
    factor = 2 * (peers - 1) / peers
    measured = measured_received = None
    if sent is not None and swarm_epochs:
        measured = round(statistics.fmean(sent.get(i, 0) for i in range(peers)) / swarm_epochs)
    if received is not None and swarm_epochs:
        measured_received = round(statistics.fmean(received.get(i, 0) for i in range(peers)) / swarm_epochs)
    ideal = peers * args.micro_batch_size / step_time_s
    samples_per_s = samples / length
    parameters = args.parameters
    wall_s_per_micro_step = (length / statistics.fmean(micro_steps_per_peer)
                             if micro_steps_per_peer and statistics.fmean(micro_steps_per_peer) else None)
    return {
        "peers": peers,
        "link": args.link,
        "mode": args.mode,
        "inner_steps": collab.diloco.inner_steps if args.mode == "diloco" else None,
        "overlap_communication": (collab.diloco.overlap_communication if args.mode == "diloco"
                                  else collab.delay_updates),
        "compression": compression,
        "samples_per_s": round(samples_per_s, 2),
        "ideal_samples_per_s": round(ideal, 2),
        "speedup_vs_1_peer_ideal": round(samples_per_s / (args.micro_batch_size / step_time_s), 3),
        "utilisation": round(statistics.fmean(utilisations), 4),
        "epochs_in_window": swarm_epochs,
        # over each peer's whole run (warm-up included): rounds averaged with others, and rounds taken alone
        "averaged_rounds_per_peer": round(statistics.fmean(r.get("averaged_rounds", 0) for r in results), 2),
        "solo_rounds_per_peer": round(statistics.fmean(r.get("solo_rounds", 0) for r in results), 2),
        "mean_group_size": round(statistics.fmean(group_sizes), 2) if group_sizes else None,
        "sync_s_median": round(statistics.median(sync_times), 3) if sync_times else None,
        "bytes_sent_per_peer_per_sync": round(payload * factor),
        "bytes_sent_per_peer_per_sync_is": "computed: serialized gradient bytes under the codec x 2(n-1)/n",
        "measured_bytes_sent_per_peer_per_sync": measured,
        "measured_bytes_received_per_peer_per_sync": measured_received,
        "measured_bytes_source": ("veth counters of each peer's link (every byte on the wire)" if received is not None
                                  else "tcp_info of the peer's libp2p daemon sockets, via ss"),
        "measured_bytes_sent_per_parameter_per_sync": round(measured / parameters, 3) if measured else None,
        # the butterfly all-reduce sends 2(n-1)/n of the payload: per parameter of the payload itself
        "measured_payload_bytes_per_parameter": (round(measured / (parameters * factor), 3)
                                                 if measured and factor else None),
        "wall_s_per_micro_step": round(wall_s_per_micro_step, 4) if wall_s_per_micro_step else None,
        "micro_batch_size": args.micro_batch_size,
        "target_batch_size": collab.target_batch_size,
        "matchmaking_time_s": collab.matchmaking_time_s,
        "close_groups_early": collab.close_groups_early,
        "average_state_every": collab.average_state_every,
        "time_to_target_s": None,
        "simulated": True,
    }


def _same_dedloc_settings(entry: dict, row: dict) -> bool:
    """A convergence row trained with this scaling row's global batch and delayed updates (or without either)."""
    return (entry.get("target_batch_size") == row.get("target_batch_size")
            and bool(entry.get("delay_updates")) == bool(row.get("overlap_communication")))


def add_time_to_target(rows: list[dict], convergence_file: Path) -> None:
    """Fill `time_to_target_s` from real training (benchmarks/convergence.py) where it has a matching row.

    convergence.json counts per-peer micro-steps until the swarm's validation loss first reached the single peer's
    target; times this row's wall seconds per micro-step per peer, it is the time this simulated swarm would take.
    Only training at this row's micro-batch counts (files from before the setting existed ran at 16).
    """
    try:
        document = json.loads(convergence_file.read_text())
        measured = document["results"]["rows"]
        trained_micro_batch = document.get("settings", {}).get("micro_batch_size", 16)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    for row in rows:
        if "error" in row or not row.get("wall_s_per_micro_step"):
            continue
        if row.get("micro_batch_size", 16) != trained_micro_batch:
            continue
        for entry in measured:
            if (entry.get("mode") == row["mode"] and entry.get("peers") == row["peers"]
                    and (row["mode"] != "diloco" or entry.get("inner_steps") == row.get("inner_steps"))
                    and (row["mode"] != "dedloc" or _same_dedloc_settings(entry, row))
                    and entry.get("micro_steps_to_target") is not None):
                row["time_to_target_s"] = round(entry["micro_steps_to_target"] * row["wall_s_per_micro_step"], 1)
                row["time_to_target_source"] = (
                    f"{convergence_file.name}: {entry['micro_steps_to_target']} micro-steps per peer to validation "
                    f"loss {entry.get('target_loss')} (real training, {entry.get('compression')}) x this row's "
                    f"{row['wall_s_per_micro_step']} wall s per micro-step")
                break
    for row in rows:
        alone = next((r for r in rows if r["peers"] == 1 and r["mode"] == row["mode"] and r["link"] == row["link"]
                      and r.get("inner_steps") == row.get("inner_steps") and r.get("time_to_target_s")), None)
        if row.get("time_to_target_s") and alone:
            row["time_to_target_vs_1_peer"] = round(row["time_to_target_s"] / alone["time_to_target_s"], 3)


# ------------------------------------------------------------------------------------------------- on paper
def predict(peers: int, step_time_s: float, micro_batch_size: int, samples_per_epoch: int, payload_bytes: float,
            link_bits_per_s: float, overhead_s: float, inner_steps: int = 1) -> dict:
    """Swarm throughput of synchronous data-parallel averaging, on paper.

    An epoch is `samples_per_epoch` samples computed by `peers` peers of `micro_batch_size / step_time_s`
    samples/s each (at least one micro-step each), then one all-reduce: each peer sends 2(n-1)/n of the payload
    over its uplink at `link_bits_per_s` plus a fixed `overhead_s` (matchmaking that did not overlap compute, round
    trips, the optimiser step). With DiLoCo, `inner_steps` local optimiser steps happen between two all-reduces:
    the compute per sync is multiplied by H, the bytes per sync are not.
    """
    micro_steps = max(1, math.ceil(samples_per_epoch / (peers * micro_batch_size)))
    compute_s = micro_steps * step_time_s * inner_steps
    transfer_s = payload_bytes * 8 * 2 * (peers - 1) / peers / link_bits_per_s if peers > 1 else 0.0
    sync_s = (overhead_s + transfer_s) if peers > 1 else overhead_s
    samples = micro_steps * micro_batch_size * peers * inner_steps
    return {
        "peers": peers,
        "compute_s_per_sync": round(compute_s, 3),
        "sync_s": round(sync_s, 3),
        "samples_per_s": round(samples / (compute_s + sync_s), 2),
        "utilisation": round(compute_s / (compute_s + sync_s), 4),
    }


def paper_model(args, rows: list[dict], step_time_s: float) -> dict:
    """Check the model on the measured rows (fitted overhead from 2 peers), then extrapolate."""
    recipe = load_bench_recipe(args.model, "fp16", args.target_batch_size, args.matchmaking_time_s,
                               average_state_every=args.average_state_every)
    target = recipe.collaboration.target_batch_size
    check = []
    # the check fits DeDLOC rounds on loopback (the lead extends it to links and DiLoCo)
    for compression in sorted({row["compression"] for row in rows if row["mode"] == "dedloc"
                               and row["link"] == "loopback"}):
        mine = {row["peers"]: row for row in rows if row["compression"] == compression and "error" not in row}
        alone = mine.get(1)
        pair = mine.get(2)
        if not pair or not pair["sync_s_median"]:
            continue
        # loopback moves the tiny payload in milliseconds: the 2-peer row's sync time is the fixed overhead
        overhead_alone = alone["sync_s_median"] if alone and alone["sync_s_median"] else 0.0
        overhead = pair["sync_s_median"]
        for peers, row in sorted(mine.items()):
            predicted = predict(peers, step_time_s, args.micro_batch_size, target, args.payload[compression],
                                link_bits_per_s=3e9, overhead_s=overhead if peers > 1 else overhead_alone)
            check.append({"compression": compression, "peers": peers, "measured_samples_per_s": row["samples_per_s"],
                          "predicted_samples_per_s": predicted["samples_per_s"],
                          "error": round(predicted["samples_per_s"] / row["samples_per_s"] - 1, 3)
                          if row["samples_per_s"] else None})
    # extrapolation: GPT-2 small on consumer links, each peer computing 1 s per micro-step of 16 x 1024 tokens
    parameters = 124_439_808
    payload = {"fp16": parameters * 2, "uint8": parameters * 1}
    modes = {
        # mode: (samples per epoch as a function of the swarm size, inner steps between two all-reduces)
        "dedloc, recipe batch 512": (lambda n: 512, 1),
        "dedloc, 32 micro-steps per peer": (lambda n: 32 * 16 * n, 1),
        "diloco H=100": (lambda n: 16 * n, 100),
        "diloco H=500": (lambda n: 16 * n, 500),
    }
    projections = []
    for link_mbps in (20, 100):
        for compression in ("fp16", "uint8"):
            for mode, (samples_per_epoch, inner_steps) in modes.items():
                for peers in (8, 100, 1000):
                    projection = predict(peers, ASSUMED_GPT2_SMALL_STEP_S, 16, samples_per_epoch(peers),
                                         payload[compression], link_mbps * 1e6, overhead_s=PROJECTION_OVERHEAD_S,
                                         inner_steps=inner_steps)
                    projection.update(model="gpt2-small", link_mbps=link_mbps, compression=compression, mode=mode)
                    projections.append(projection)
    return {"check_against_measured": check, "projections": projections,
            "projection_assumptions": {
                "model": "gpt2-small", "parameters": parameters, "step_time_s": ASSUMED_GPT2_SMALL_STEP_S,
                "micro_batch_size": 16, "seq_len": 1024, "overhead_s": PROJECTION_OVERHEAD_S,
                "payload_bytes": payload,
                "note": "uplink-bound butterfly all-reduce (each peer sends 2(n-1)/n of the payload); one group of "
                        "all peers; a DiLoCo inner step is one micro-step; no stragglers, churn, or state averaging; "
                        "the fixed overhead (matchmaking not hidden behind compute, round trips) is a guess"}}


# ------------------------------------------------------------------------------------------------- the run
def run_benchmark(args: argparse.Namespace) -> dict:
    if args.link != "loopback":
        from benchmarks.netlab import NetLabUnavailable, check_requirements

        try:
            check_requirements()
        except NetLabUnavailable as error:
            print(f"--link {args.link}: {error}. Use --link loopback on this machine.", file=sys.stderr)
            raise SystemExit(2) from None
    info = machine()
    step_time_s = args.step_time_s
    calibrated = False
    if step_time_s is None:
        if args.model == "tiny":
            step_time_s = round(calibrate_step_time(args.micro_batch_size, seconds=3.0 if args.quick else 6.0), 4)
            calibrated = True
        else:
            step_time_s = ASSUMED_GPT2_SMALL_STEP_S
    print(f"step time {step_time_s:.3f} s per micro-step ({'calibrated' if calibrated else 'given'})", flush=True)
    recipe = load_bench_recipe(args.model, "fp16", args.target_batch_size, args.matchmaking_time_s,
                               average_state_every=args.average_state_every)
    model = build_bench_model(args.model, recipe)
    sizes = {c: computed_bytes_per_sync(model, c) for c in args.compression}
    args.payload = {c: s["payload_bytes"] for c, s in sizes.items()}
    parameters = args.parameters = sum(p.numel() for p in model.parameters())
    rows = []
    with tempfile.TemporaryDirectory(prefix="swarm-scaling-") as temporary_root:
        work_root = temporary_root
        if args.keep_work_dir:  # the peers' logs stay there for a post-mortem
            args.keep_work_dir.mkdir(parents=True, exist_ok=True)
            work_root = tempfile.mkdtemp(prefix="swarm-scaling-", dir=args.keep_work_dir)
            print(f"peer logs: {work_root}", flush=True)
        args.shapes_file = Path(work_root) / "shapes.json"
        args.shapes_file.write_text(json.dumps(parameter_shapes(model)))
        del model
        for compression in args.compression:
            for peers in args.peers:
                try:
                    row = run_row(args, peers, compression, step_time_s, Path(work_root))
                except RuntimeError as error:  # keep the other rows; the failed one says why
                    print(f"{peers} peer(s) {compression}: failed: {error}", flush=True)
                    rows.append({"peers": peers, "link": args.link, "mode": args.mode, "compression": compression,
                                 "error": str(error).splitlines()[0], "simulated": True})
                    continue
                rows.append(row)
                print(json.dumps(row), flush=True)
                print(f"{peers} peer(s) {compression:5s}: {row['samples_per_s']:8.1f} samples/s, utilisation "
                      f"{row['utilisation']:.2f}, group {row['mean_group_size']}, sync {row['sync_s_median']} s, "
                      f"{row['epochs_in_window']} epochs", flush=True)
    settings = {
        "model": args.model,
        "parameters": parameters,
        "recipe": MODELS[args.model][0],
        "peers": args.peers,
        "compression": args.compression,
        "link": args.link,
        "link_emulation": LINK_EMULATION if args.link != "loopback" else None,
        "mode": args.mode,
        "inner_steps": args.inner_steps if args.mode == "diloco" else None,
        "overlap_communication": args.overlap,
        "inner_step": ("simulated (inside step_time_s)" if args.simulate_inner_step else "real AdamW on this CPU")
        if args.mode == "diloco" else None,
        "step_time_s": step_time_s,
        "step_time_source": "calibrated: fastest real forward/backward on this machine" if calibrated else (
            "given with --step-time-s" if args.step_time_s else "assumed (a consumer GPU); not measured here"),
        "micro_batch_size": args.micro_batch_size,
        # DiLoCo: per row, what its peers process per round (peers x inner steps x micro-batch)
        "target_batch_size": recipe.collaboration.target_batch_size if args.mode == "dedloc" else None,
        "matchmaking_time_s": recipe.collaboration.matchmaking_time_s,
        "close_groups_early": not args.wait_out_windows,
        "average_state_every": recipe.collaboration.average_state_every,
        "warmup_s": args.warmup_s,
        "seconds_per_row": args.seconds,
        "gradient_payload_bytes": args.payload,
        "quick": args.quick,
        "date": timestamp(),
        "command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]),
    }
    info["load_average_at_end"] = load_average()
    add_time_to_target(rows, args.convergence_file or args.results_dir / "convergence.json")
    results = {"rows": rows, "model_on_paper": paper_model(args, rows, step_time_s)}
    return write_results(args.name, settings, results, markdown(settings, results, info),
                         plot=lambda path: plot(settings, rows, path), machine_info=info,
                         results_dir=args.results_dir)


def markdown(settings: dict, results: dict, info: dict) -> str:
    rows = results["rows"]
    if settings.get("mode") == "diloco":
        rounds = (f"DiLoCo, {settings['inner_steps']} inner steps per round (target batch = peers x inner steps x "
                  "micro-batch)")
    else:
        rounds = f"DeDLOC, target batch {settings['target_batch_size']}"
    link = settings["link"]
    lines = [
        f"# Swarm scaling, {', '.join(map(str, settings['peers']))} peers on {link} "
        "(simulated compute, real hivemind averaging)",
        "",
        f"{settings['model']} ({settings['parameters'] / 1e6:.2f}M parameters, recipe {settings['recipe']}); each "
        f"peer sleeps {settings['step_time_s']:.3f} s per micro-step of {settings['micro_batch_size']} samples "
        f"({settings['step_time_source']}); {rounds}, matchmaking "
        f"{settings['matchmaking_time_s']} s (groups form "
        f"{'once every known peer joined' if settings.get('close_groups_early', True) else 'at its end'}), "
        f"state averaging every {settings['average_state_every']} epochs; "
        f"{settings['seconds_per_row']} s measured per row after {settings['warmup_s']} s of warm-up. "
        f"{describe_machine(info)}. `{settings['command'].strip()}`, {settings['date']}.",
        "",
    ]
    if settings.get("link_emulation"):
        lines += [f"Link {link}: {settings['link_emulation']}.", ""]
    lines += [
        "| peers | link | mode | compression | samples/s | ideal | utilisation | mean group | sync s | "
        "bytes/peer/sync (computed) | bytes/peer/sync (measured) | bytes/parameter/sync (measured) | "
        "incomplete all-reduces | time to target | CPU cores per peer | simulated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mode = row["mode"] + (f" H={row['inner_steps']}" if row.get("inner_steps") else "") + (
            " overlap" if row.get("overlap_communication") else "")
        if "error" in row:
            lines.append(f"| {row['peers']} | {row['link']} | {mode} | {row['compression']} | failed: "
                         f"{row['error']} |" + " |" * 12)
            continue
        measured = f"{row['measured_bytes_sent_per_peer_per_sync']:,}" if row[
            "measured_bytes_sent_per_peer_per_sync"] is not None else "n/a"
        per_parameter = row.get("measured_bytes_sent_per_parameter_per_sync")
        if per_parameter is not None:
            per_parameter = f"{per_parameter:.2f} (payload {row['measured_payload_bytes_per_parameter']:.2f})" \
                if row.get("measured_payload_bytes_per_parameter") is not None else f"{per_parameter:.2f}"
        lines.append(
            f"| {row['peers']} | {row['link']} | {mode} | {row['compression']} | {row['samples_per_s']:.1f} | "
            f"{row['ideal_samples_per_s']:.1f} | {row['utilisation']:.2f} | {row['mean_group_size']} | "
            f"{row['sync_s_median']} | {row['bytes_sent_per_peer_per_sync']:,} | {measured} | "
            f"{per_parameter if per_parameter is not None else 'n/a'} | {_incomplete_cell(row)} | "
            f"{row['time_to_target_s'] if row['time_to_target_s'] is not None else 'n/a'} | "
            f"{row['cpu_cores_per_peer'] if row.get('cpu_cores_per_peer') is not None else 'n/a'} | "
            f"{'yes' if row['simulated'] else 'no'} |")
    lines += ["", "Bytes per parameter: measured bytes a peer sent per sync / parameters; in brackets, divided by "
              "2(n-1)/n too (the share of the payload a butterfly all-reduce sends), i.e. the wire format's bytes "
              "per value plus protocol, DHT and state-averaging traffic. Sync s: DeDLOC, the opt.step() that ends an "
              "epoch; DiLoCo, the longest wait in opt.step() in the round (the all-reduce). CPU cores per peer: "
              "CPU time of each peer's whole process tree (training process, hivemind's DHT and averager processes, "
              "p2p daemon) in the window / window / peers; with simulated compute it is the framework's own work."]
    check = results["model_on_paper"]["check_against_measured"]
    if check:
        lines += ["", "Model on paper vs measured (overhead fitted on the 2-peer row):", "",
                  "| compression | peers | measured samples/s | predicted | error |", "|---|---|---|---|---|"]
        for item in check:
            error = f"{item['error']:+.0%}" if item["error"] is not None else "n/a"
            lines.append(f"| {item['compression']} | {item['peers']} | {item['measured_samples_per_s']:.1f} | "
                         f"{item['predicted_samples_per_s']:.1f} | {error} |")
    return "\n".join(lines) + "\n"


def _incomplete_cell(row: dict) -> str:
    if not row.get("incomplete_allreduce_warnings"):
        return "0"
    return (f"{row['incomplete_allreduce_warnings']} (mean {row['incomplete_allreduce_mean_fraction_received']:.0%} "
            "received)")


def plot(settings: dict, rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines = sorted({(row["link"], row["mode"], row["compression"]) for row in rows if "error" not in row})
    for link, mode, compression in lines:  # one line per link, mode and codec
        mine = [row for row in rows if (row["link"], row["mode"], row["compression"]) == (link, mode, compression)
                and "error" not in row]
        label = f"{link}, {mode}, {compression}"
        left.plot([r["peers"] for r in mine], [r["samples_per_s"] for r in mine], marker="o", label=label)
        right.plot([r["peers"] for r in mine], [r["utilisation"] for r in mine], marker="o", label=label)
    peers = sorted({row["peers"] for row in rows})
    per_peer = settings["micro_batch_size"] / settings["step_time_s"]
    left.plot(peers, [p * per_peer for p in peers], linestyle="--", color="grey", label="ideal")
    left.set_xlabel("peers")
    left.set_ylabel("swarm samples/s")
    left.legend()
    right.set_xlabel("peers")
    right.set_ylabel("utilisation (compute / wall)")
    right.set_ylim(0, 1.05)
    right.legend()
    rounds = (f"DiLoCo H={settings['inner_steps']}" if settings.get("mode") == "diloco"
              else f"target batch {settings['target_batch_size']}")
    figure.suptitle(f"{settings['model']}, {settings['link']}, simulated compute "
                    f"{settings['step_time_s']:.3f} s/micro-step, {rounds}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 peers, fp16, short windows (smoke test).")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--peers", type=int, nargs="+", default=None, help="Peer counts (default 1 2 4 8).")
    parser.add_argument("--compression", nargs="+", choices=["none", "fp16", "uint8"], default=None,
                        help="Gradient codecs (default fp16 uint8).")
    parser.add_argument("--link", choices=sorted(LINKS), default="loopback",
                        help="loopback, or a shaped link in network namespaces (needs root, ip and tc): "
                             "RATE-ONE-WAY-DELAY.")
    parser.add_argument("--overlap", action="store_true",
                        help="Keep training while a round's all-reduce runs: DiLoCo collaboration.diloco."
                             "overlap_communication; DeDLOC collaboration.delay_updates.")
    parser.add_argument("--mode", choices=["dedloc", "diloco"], default="dedloc",
                        help="Collaboration mode of the peers (recipe collaboration.mode).")
    parser.add_argument("--inner-steps", type=int, default=None,
                        help="DiLoCo: inner steps per round (default 50: several rounds fit a short window).")
    parser.add_argument("--simulate-inner-step", action="store_true",
                        help="DiLoCo: count the inner optimiser step in the simulated step time instead of running "
                             "AdamW on this CPU (for models whose CPU AdamW step outlasts the simulated step).")
    parser.add_argument("--step-time-s", type=float, default=None,
                        help="Simulated forward/backward per micro-step (default: measured here for tiny).")
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--target-batch-size", type=int, default=None, help="Override the recipe's global batch.")
    parser.add_argument("--matchmaking-time-s", type=float, default=None, help="Override the recipe's matchmaking.")
    parser.add_argument("--wait-out-windows", action="store_true",
                        help="Groups form only at the end of their matchmaking window (collaboration."
                        "close_groups_early: false, hivemind's own behaviour), for an A/B against the default.")
    parser.add_argument("--average-state-every", type=int, default=None,
                        help="DeDLOC: override the recipe's state averaging period in epochs (what it costs).")
    parser.add_argument("--seconds", type=float, default=None, help="Measured window per row (default 25).")
    parser.add_argument("--warmup-s", type=float, default=None, help="Warm-up before the window (default 10).")
    parser.add_argument("--startup-timeout-s", type=float, default=180.0)
    parser.add_argument("--convergence-file", type=Path, default=None,
                        help="convergence.py results that give time_to_target_s "
                             "(default RESULTS_DIR/convergence.json).")
    parser.add_argument("--name", default="scaling", help="Results file stem.")
    add_results_dir_option(parser)
    parser.add_argument("--keep-work-dir", type=Path, default=None,
                        help="Keep each row's peer logs in a new folder under this one (default: deleted).")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peer-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--initial-peer", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shapes-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--announce-host", help=argparse.SUPPRESS)
    args = parse_benchmark_args(parser, argv)
    if args.bootstrap:
        run_bootstrap(args)
        return
    if args.inner_steps is not None and args.inner_steps < 1:
        parser.error(f"--inner-steps {args.inner_steps}: must be at least 1 (e.g. --inner-steps 50)")
    if args.inner_steps is not None and args.mode != "diloco":
        parser.error("--inner-steps only applies to --mode diloco: add --mode diloco or drop --inner-steps")
    if args.simulate_inner_step and args.mode != "diloco":
        parser.error("--simulate-inner-step only applies to --mode diloco: add --mode diloco or drop it")
    if args.average_state_every is not None and (args.mode != "dedloc" or args.average_state_every < 1):
        parser.error(f"--average-state-every {args.average_state_every}: a period of 1 or more epochs, in --mode "
                     "dedloc only (DiLoCo averages its outer state every diloco.average_parameters_every rounds)")
    if args.step_time_s is not None and not args.step_time_s > 0:
        parser.error(f"--step-time-s {args.step_time_s:g}: a positive time per micro-step (leave it out to measure it)")
    if any(peers < 1 for peers in (args.peers or [])):
        parser.error(f"--peers {' '.join(map(str, args.peers))}: each peer count must be at least 1")
    args.inner_steps = args.inner_steps or 50
    args.peers = args.peers or ([2] if args.quick else [1, 2, 4, 8])
    args.compression = args.compression or (["fp16"] if args.quick else ["fp16", "uint8"])
    args.seconds = args.seconds or (6.0 if args.quick else 25.0)
    if args.quick:  # fixed, small numbers so that a short window holds several epochs whatever the machine's load
        args.step_time_s = args.step_time_s or 0.1
        args.target_batch_size = args.target_batch_size or 64
        args.matchmaking_time_s = args.matchmaking_time_s or 1.0
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (3.0 if args.quick else 10.0)
    if args.worker:
        import logging

        logging.basicConfig(level=os.environ.get("SCALING_WORKER_LOG_LEVEL", "WARNING"))  # INFO to debug rounds
        run_peer(args)
        return
    document = run_benchmark(args)
    print(f"wrote {args.results_dir / args.name}.json ({len(document['results']['rows'])} rows)")


if __name__ == "__main__":
    main()
