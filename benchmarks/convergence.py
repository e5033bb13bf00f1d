"""Time to a target validation loss, one peer vs a swarm, with real training (the statistical side).

    python benchmarks/convergence.py            # dedloc and diloco, 1 and 4 peers, fp16: ~15 minutes on 2 cores
    python benchmarks/convergence.py --quick    # diloco, 1 and 2 peers, a few rounds: under a minute (smoke test)
    python benchmarks/convergence.py --modes diloco --peers 1 2 4 --compression fp16 uint8 --inner-steps 20

On 2 cores, the wall time of 4 real peers measures the cores, not the swarm. This benchmark therefore counts
*per-peer micro-steps*: how many micro-batches each peer must compute before the swarm's model reaches the
validation loss one peer reaches alone. `benchmarks/scaling.py` measures the wall time of a micro-step on shaped
links; their product is the time to target.

Everything is real: each peer is its own process with its own hivemind DHT node (joined through one bootstrap
node on loopback) and one torch thread; it builds the tiny-stdlib recipe's model (`build_model`, the same seeded
weights everywhere) and data (`build_data` with its own peer id, so every peer reads its own shards), and trains
with the volunteer's per-micro-step work (`next_batch`, forward, backward, `opt.step()`, `opt.zero_grad()`) on the
real optimiser of `peer.collaboration.build_swarm_optimizer`: hivemind's Optimizer in mode `dedloc`, swarm's
`DiLoCoOptimizer` in mode `diloco`. After every swarm epoch (DeDLOC: one global batch; DiLoCo: one outer round),
when the peers of a swarm hold the same model, every peer measures the validation loss on the recipe's fixed
held-out batches (`swarm.evaluation.validation_loss`) and logs (its micro-steps so far, loss).

- The 1-peer run of a mode trains `--micro-steps` micro-steps; `target_loss` is its validation loss at its
  last evaluation point.
- A multi-peer run stops when peer 0's loss reaches that target (or after `--micro-steps` per peer);
  `micro_steps_to_target` is where its curve first reaches the target, linearly interpolated between the two
  evaluation points around the crossing (also for the 1-peer run, whose curve may touch its final loss earlier).
- `step_ratio_vs_1_peer` = micro_steps_to_target(n peers) / micro_steps_to_target(1 peer): 1/n would be
  perfect statistical scaling (n times the samples per micro-step, no loss in sample efficiency).
- DeDLOC keeps the recipe's global batch (`target_batch_size`, 256 samples) whatever the number of peers, as
  a real run does: the organiser fixes it in the recipe and volunteers come and go. With n peers each computes
  1/n of every global batch, so the optimiser sees the same sequence of batches and the ratio is ~1/n by
  construction; the row checks that averaging really delivers it. DiLoCo is where the ratio is a question:
  n peers each take `inner_steps` local steps on their own batches and average the pseudo-gradients.

- `--plain-loops` adds, per mode, one row per peer count computed without hivemind in one process, on the same
  peers' data: what a swarm whose every round reaches every peer computes (DeDLOC: a plain loop on the mean
  gradient; DiLoCo: one replica per peer and the exact mean pseudo-gradient through the outer step). A single
  run's time to target moves with the data order (on the tiny recipe the loss hovers near the target for many
  epochs); these rows show how much, and how far the real swarm is from its own perfect counterpart.

Writes benchmarks/results/convergence.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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

RECIPE = "tiny-stdlib.yaml"
MICRO_BATCH_SIZE = 16  # the recipe's `auto` on CPU; fixed so that every peer and every run computes the same
VALIDATION_BATCH_SIZE = 64  # all 64 held-out samples in one forward pass
STARTUP_TIMEOUT_S = 180.0


# ------------------------------------------------------------------------------------------------- the recipe
def bench_recipe(config: dict):
    """The tiny-stdlib recipe with this run's mode, codec, batch, matchmaking and DiLoCo settings."""
    from swarm.recipe import load_recipe

    recipe = load_recipe(RECIPES_DIR / RECIPE)
    collab = recipe.collaboration
    micro_batch = config.get("micro_batch_size", MICRO_BATCH_SIZE)
    update = {"mode": config["mode"], "compression": config["compression"], "micro_batch_size": micro_batch,
              "matchmaking_time_s": config["matchmaking_time_s"]}
    if config["mode"] == "dedloc":
        update["target_batch_size"] = config["target_batch_size"]
        if config.get("average_state_every"):
            update["average_state_every"] = config["average_state_every"]
        if config.get("no_average_optimizer_state"):
            update["average_optimizer_state"] = False
        if config.get("delay_updates"):
            update["delay_updates"] = True
    else:
        # in mode diloco the global batch only sizes progress and credit: the samples the swarm does per round
        update["target_batch_size"] = config["peers"] * config["inner_steps"] * micro_batch
        update["diloco"] = collab.diloco.model_copy(update={"inner_steps": config["inner_steps"],
                                                            "outer_lr": config["outer_lr"]})
    return recipe.model_copy(update={"collaboration": collab.model_copy(update=update),
                                     "run": recipe.run.model_copy(update={"id": config["run_id"]})})


# ------------------------------------------------------------------------------------------------- one peer
def run_peer(config: dict, peer_index: int, result_file: Path) -> None:
    """Worker: one real volunteer. Joins, waits for the others, trains and evaluates after every swarm epoch."""
    import torch

    from peer.collaboration import build_swarm_optimizer
    from swarm.data import build_data
    from swarm.evaluation import validation_loss
    from swarm.identity import Identity
    from swarm.model import build_model
    from swarm.network import create_dht
    from swarm.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    work_dir = Path(config["work_dir"])
    recipe = bench_recipe(config)
    tokenizer = build_tokenizer(recipe.tokenizer)
    # a fixed data identity per peer index: peer 0 reads the same shards in the 1-peer and the n-peer runs
    data = build_data(recipe.data, tokenizer, peer_id=f"convergence-peer-{peer_index}".encode())
    validation = data.validation_batches(VALIDATION_BATCH_SIZE)
    model = build_model(recipe.model, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
    model.train()
    initial_loss = validation_loss(model, validation)
    folder = work_dir / f"peer-{peer_index}"
    identity = Identity.load_or_create(folder / "identity", name=f"convergence-peer-{peer_index}")
    dht = create_dht([config["initial_peer"]], host="127.0.0.1", port=0, identity=identity)
    micro_batch = recipe.collaboration.micro_batch_size
    optimizer = build_swarm_optimizer(dht, model, recipe, identity, micro_batch)
    (folder / "ready").write_text(str(os.getpid()))
    go_file, stop_file = work_dir / "go", work_dir / "stop"
    while not go_file.exists():
        time.sleep(0.05)
    started = time.time()
    # a progress record appears only once a peer has trained, so there is nothing to wait for here: every peer
    # starts at the same moment (the go file), and the first global batch or round gives the trackers time to meet
    curve = [[0, initial_loss, 0, 0.0]]  # micro-steps done, validation loss, swarm epoch, seconds since start
    micro_steps, stopped_by, peers_seen = 0, "budget", 0
    learning_rates = [optimizer.param_groups[0]["lr"]]  # at each evaluation point of the curve
    group_size_by_epoch = [0]  # the group of the round that ended before each evaluation point (0: none yet)
    deadline = started + config["max_run_s"]
    try:
        while micro_steps < config["micro_steps"]:
            if stop_file.exists():
                stopped_by = "target reached"
                break
            if time.time() > deadline:
                stopped_by = "time limit"
                break
            epoch = optimizer.local_epoch
            batch = data.next_batch(epoch, micro_batch)
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            micro_steps += 1
            if optimizer.local_epoch != epoch and optimizer.local_epoch % config["eval_every_epochs"] == 0:
                peers_seen = max(peers_seen, optimizer.tracker.global_progress.num_peers)
                loss = validation_loss(model, validation)
                curve.append([micro_steps, loss, optimizer.local_epoch, round(time.time() - started, 2)])
                learning_rates.append(optimizer.param_groups[0]["lr"])
                group_size_by_epoch.append(optimizer.rounds.last_group_size)
                target = config.get("target_loss")
                if peer_index == 0 and target is not None and loss <= target:
                    stop_file.write_text(f"{micro_steps} {loss}")
        # written before the shutdown, which can take seconds
        result_file.write_text(json.dumps({
            "peer_index": peer_index, "curve": curve, "micro_steps": micro_steps, "epochs": optimizer.local_epoch,
            "averaged_rounds": optimizer.rounds.averaged, "solo_rounds": optimizer.rounds.solo,
            "learning_rates": learning_rates,
            "group_size_by_epoch": group_size_by_epoch,
            "group_sizes": {str(size): n for size, n in sorted(optimizer.rounds.group_sizes.items())},
            "wall_s": round(time.time() - started, 2), "most_peers_seen": peers_seen,
            "stopped_by": stopped_by}))
    finally:
        optimizer.shutdown()
        dht.shutdown()


# ------------------------------------------------------------------------------------------------- plain loops
def _plain_setup(config: dict):
    """(recipe, the peers' data streams, the validation batches, a fresh model) for a plain-loop worker, one thread."""
    import torch

    from swarm.data import build_data
    from swarm.model import build_model
    from swarm.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    recipe = bench_recipe(config)
    tokenizer = build_tokenizer(recipe.tokenizer)
    streams = [build_data(recipe.data, tokenizer, peer_id=f"convergence-peer-{index}".encode())
               for index in range(config["peers"])]
    model = build_model(recipe.model, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
    model.train()
    return recipe, streams, streams[0].validation_batches(VALIDATION_BATCH_SIZE), model


def run_plain_loop(config: dict, result_file: Path) -> None:
    """Worker: what a perfect DeDLOC swarm of `peers` would compute, as one plain PyTorch loop without hivemind.

    Every epoch takes `micro_batches_per_peer` micro-batches from each of the swarm's peers' data streams (the same
    peer ids as the real peers, so the same samples), steps the recipe's optimiser (clip, AdamW, schedule) on their
    mean gradient, and evaluates. tests/peer/test_collaboration.py checks that a swarm whose rounds reach every peer
    computes exactly this; the gap between this row and the real swarm's is what split rounds and drift cost, and
    the spread between data orders is the noise of a single run's time to target.
    """
    from hivemind.optim.state_averager import initialize_optimizer_state_

    from swarm.evaluation import validation_loss
    from swarm.optim import build_optimizer_factories, parameter_groups

    recipe, streams, validation, model = _plain_setup(config)
    make_optimizer, make_scheduler = build_optimizer_factories(recipe.optimizer)
    optimizer = make_optimizer(parameter_groups(model, recipe.optimizer.weight_decay))
    initialize_optimizer_state_(optimizer)  # as hivemind's state averager does at start
    scheduler = make_scheduler(optimizer)
    per_peer, micro_batch = config["micro_batches_per_peer"], recipe.collaboration.micro_batch_size
    curve = [[0, validation_loss(model, validation), 0, 0.0]]
    started = time.time()
    for epoch in range(config["max_epochs"]):
        count = per_peer * len(streams)
        for stream in streams:
            for _ in range(per_peer):
                batch = stream.next_batch(epoch, micro_batch)
                (model(input_ids=batch, labels=batch).loss / count).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = validation_loss(model, validation)
        curve.append([(epoch + 1) * per_peer, loss, epoch + 1, round(time.time() - started, 2)])
        if config.get("target_loss") is not None and loss <= config["target_loss"]:
            break
    result_file.write_text(json.dumps({"curve": curve, "epochs": len(curve) - 1,
                                       "wall_s": round(time.time() - started, 2)}))


def run_diloco_plain_loop(config: dict, result_file: Path) -> None:
    """Worker: what a perfect DiLoCo swarm of `peers` would compute, in one process without hivemind.

    One replica of the model per peer, each with its own inner optimiser (the recipe's: clip, AdamW, the schedule
    read at epoch + step / H, as `DiLoCoOptimizer` reads it) and its own data stream (the same peer ids as the real
    peers). Every round, each replica takes `inner_steps` steps from the outer parameters; the mean of their
    pseudo-gradients (outer - replica) goes through the same outer step (`peer.diloco.apply_outer_step`: SGD,
    Nesterov momentum) and every replica restarts from the result. Exact averaging, every round reaching every peer,
    no overlap: the reference for the real swarm's rows, and a cheap way to ask what DiLoCo itself can give here.

    With `synchronous`, the same peers instead run synchronous data parallelism, the communication-heavy ideal: one
    model, one inner optimiser stepping every micro-step on the mean gradient of every peer's micro-batch (an
    all-reduce per micro-step), the schedule read the same way. `lr_scale` multiplies the inner peak learning rate.
    """
    import copy

    import torch

    from peer.diloco import apply_outer_step, make_outer_optimizer
    from swarm.evaluation import validation_loss
    from swarm.optim import build_optimizer_factories, lr_multiplier, parameter_groups

    recipe, streams, validation, outer_model = _plain_setup(config)
    diloco = recipe.collaboration.diloco
    inner_steps, synchronous = diloco.inner_steps, config.get("synchronous", False)
    micro_batch = recipe.collaboration.micro_batch_size
    replicas = [outer_model] if synchronous else [copy.deepcopy(outer_model) for _ in streams]
    make_optimizer, _ = build_optimizer_factories(recipe.optimizer)
    inner = [make_optimizer(parameter_groups(replica, recipe.optimizer.weight_decay)) for replica in replicas]
    peak_lrs = [group["lr"] * config.get("lr_scale", 1.0) for group in inner[0].param_groups]
    multiplier = lr_multiplier(recipe.optimizer.schedule)
    outer = list(outer_model.parameters())
    outer_optimizer = None if synchronous else make_outer_optimizer(outer, diloco)

    def inner_step(replica, optimizer, batches: list, progress: float) -> None:
        for group, peak_lr in zip(optimizer.param_groups, peak_lrs):
            group["lr"] = peak_lr * multiplier(progress)
        for batch in batches:
            (replica(input_ids=batch, labels=batch).loss / len(batches)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    curve = [[0, validation_loss(outer_model, validation), 0, 0.0]]
    started = time.time()
    for epoch in range(config["max_epochs"]):
        if synchronous:
            for step in range(inner_steps):
                batches = [stream.next_batch(epoch, micro_batch) for stream in streams]
                inner_step(outer_model, inner[0], batches, epoch + step / inner_steps)
        else:
            mean_pseudo_gradient = [torch.zeros_like(param) for param in outer]
            for replica, optimizer, stream in zip(replicas, inner, streams):
                for step in range(inner_steps):
                    inner_step(replica, optimizer, [stream.next_batch(epoch, micro_batch)],
                               epoch + step / inner_steps)
                with torch.no_grad():
                    for total, start, param in zip(mean_pseudo_gradient, outer, replica.parameters()):
                        total.add_(start - param, alpha=1 / len(replicas))
            apply_outer_step(outer_optimizer, mean_pseudo_gradient)
            with torch.no_grad():
                for replica in replicas:
                    for param, start in zip(replica.parameters(), outer):
                        param.copy_(start)
        loss = validation_loss(outer_model, validation)
        curve.append([(epoch + 1) * inner_steps, loss, epoch + 1, round(time.time() - started, 2)])
        if not math.isfinite(loss) or (config.get("target_loss") is not None and loss <= config["target_loss"]):
            break
    result_file.write_text(json.dumps({"curve": curve, "epochs": len(curve) - 1,
                                       "wall_s": round(time.time() - started, 2)}))


def run_plain_loops(args: argparse.Namespace, kind: str, target_loss: float, work_root: Path) -> list[dict]:
    """One plain-loop row of `kind` per peer count, side by side (one process and one thread each).

    kind: dedloc (`run_plain_loop`), diloco or synchronous (`run_diloco_plain_loop`, the latter with `synchronous`).
    """
    mode = "dedloc" if kind == "dedloc" else "diloco"
    processes = []
    for peers in args.peers:
        if mode == "dedloc":
            per_peer = math.ceil(args.target_batch_size / (args.micro_batch_size * peers))
        else:  # one round (or, synchronous, one evaluation interval) is inner_steps micro-steps on every peer
            per_peer = args.inner_steps
        config = {"mode": mode, "peers": peers, "compression": "none", "run_id": "convergence-plain",
                  "target_batch_size": args.target_batch_size, "matchmaking_time_s": args.matchmaking_time_s,
                  "inner_steps": args.inner_steps, "outer_lr": args.outer_lr, "synchronous": kind == "synchronous",
                  "lr_scale": args.plain_lr_scale, "micro_batches_per_peer": per_peer, "target_loss": target_loss,
                  "micro_batch_size": args.micro_batch_size,
                  # twice the swarm's budget: a plain loop is cheap, and where it crosses is what it is run for
                  "max_epochs": math.ceil(2 * args.micro_steps / per_peer)}
        folder = Path(tempfile.mkdtemp(prefix=f"plain-{kind}-{peers}-", dir=work_root))
        (folder / "config.json").write_text(json.dumps(config))
        argv = [sys.executable, str(Path(__file__).resolve()), "--plain-worker",
                "--config", str(folder / "config.json"), "--result-file", str(folder / "result.json")]
        with open(folder / "plain.log", "w") as log:  # the child keeps its own copy of the handle
            processes.append((config, folder, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)))
    rows = []
    for config, folder, process in processes:
        if process.wait() != 0 or not (folder / "result.json").exists():
            rows.append({"mode": f"{kind}-plain-loop", "peers": config["peers"], "compression": "n/a (no swarm)",
                         "error": (folder / "plain.log").read_text(errors="replace")[-2000:]})
            continue
        result = json.loads((folder / "result.json").read_text())
        reached = steps_to_target(result["curve"], target_loss)
        rows.append({
            "mode": f"{kind}-plain-loop", "peers": config["peers"], "compression": "n/a (no swarm)",
            "plain_loop": True, "inner_steps": args.inner_steps if mode == "diloco" else None,
            "outer_lr": args.outer_lr if kind == "diloco" else None, "lr_scale": args.plain_lr_scale,
            "target_batch_size": args.target_batch_size if mode == "dedloc" else None,
            "micro_batches_per_peer_per_epoch": config["micro_batches_per_peer"],
            "target_loss": round(target_loss, 4),
            "micro_steps_to_target": round(reached, 1) if reached is not None else None,
            "samples_to_target": (round(reached * args.micro_batch_size * config["peers"])
                                  if reached is not None else None),
            "epochs_to_target": next((epoch for _, loss, epoch, _ in result["curve"] if loss <= target_loss), None),
            "initial_loss": round(result["curve"][0][1], 4), "final_loss": _finite(result["curve"][-1][1]),
            "diverged_at_micro_step": None, "micro_steps_done": result["curve"][-1][0], "epochs": result["epochs"],
            "curve": [[steps, _finite(loss)] for steps, loss, *_ in result["curve"]],
            "max_val_loss_spread_across_peers": None, "averaged_rounds": 0, "solo_rounds": 0,
            "stopped_by": "target reached" if reached is not None else "budget", "wall_s": result["wall_s"],
        })
    return rows


# ------------------------------------------------------------------------------------------------- one run
class Run:
    """One swarm (one configuration): a bootstrap DHT node here and `peers` worker processes."""

    def __init__(self, args: argparse.Namespace, mode: str, peers: int, compression: str, work_root: Path,
                 target_loss: float | None):
        from swarm.network import create_dht

        self.mode, self.peers, self.compression, self.target_loss = mode, peers, compression, target_loss
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"{mode}-{peers}-{compression}-", dir=work_root))
        self.bootstrap = create_dht([], host="127.0.0.1", port=0)
        self.config = {
            "mode": mode, "peers": peers, "compression": compression, "run_id": f"convergence-{self.work_dir.name}",
            "work_dir": str(self.work_dir), "initial_peer": str(self.bootstrap.get_visible_maddrs()[0]),
            "micro_steps": args.micro_steps, "max_run_s": args.max_run_s, "target_loss": target_loss,
            "target_batch_size": args.target_batch_size, "matchmaking_time_s": args.matchmaking_time_s,
            "inner_steps": args.inner_steps, "outer_lr": args.outer_lr,
            "no_average_optimizer_state": args.no_average_optimizer_state,
            "average_state_every": args.average_state_every, "delay_updates": args.delay_updates,
            "eval_every_epochs": args.eval_every_epochs if mode == "dedloc" else 1,
            "micro_batch_size": args.micro_batch_size,
        }
        (self.work_dir / "config.json").write_text(json.dumps(self.config))
        self.processes: list[subprocess.Popen] = []
        self.launched = time.time()
        for index in range(peers):
            argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--config",
                    str(self.work_dir / "config.json"), "--peer-index", str(index),
                    "--result-file", str(self.work_dir / f"result-{index}.json")]
            log = open(self.work_dir / f"peer-{index}.log", "w")
            self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir))

    def ready(self) -> bool:
        if any(process.poll() is not None for process in self.processes):
            raise RuntimeError(f"a peer exited during start-up:\n{self.log_tail()}")
        return all((self.work_dir / f"peer-{i}" / "ready").exists() for i in range(self.peers))

    def go(self) -> None:
        self.startup_s = time.time() - self.launched
        (self.work_dir / "go.tmp").write_text(repr(time.time()))
        (self.work_dir / "go.tmp").replace(self.work_dir / "go")  # atomic: peers poll for it

    def results(self) -> list[dict] | None:
        """The peers' results once all have written them (None before); raises if a peer died without one."""
        files = [self.work_dir / f"result-{i}.json" for i in range(self.peers)]
        if all(file.exists() for file in files):
            time.sleep(0.2)  # let the last writer close its file
            return [json.loads(file.read_text()) for file in files]
        crashed = [i for i, p in enumerate(self.processes) if p.poll() not in (None, 0) and not files[i].exists()]
        if crashed:
            raise RuntimeError(f"peer(s) {crashed} failed:\n{self.log_tail()}")
        return None

    def close(self, grace_s: float = 20.0) -> None:
        import psutil

        deadline = time.time() + grace_s
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes:
            if process.poll() is None:
                try:
                    members = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
                except psutil.Error:
                    members = []
                for member in members:
                    try:
                        member.kill()
                    except psutil.Error:
                        pass
                process.wait()
        self.bootstrap.shutdown()

    def log_tail(self) -> str:
        return "\n".join(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-12:])
                         for log in sorted(self.work_dir.glob("peer-*.log")))


def run_together(runs: list[Run], timeout_s: float) -> list[list[dict]]:
    """Start every run's peers at once when all are ready, wait for all results; always stops the processes."""
    try:
        deadline = time.time() + STARTUP_TIMEOUT_S
        while not all(run.ready() for run in runs):
            if time.time() > deadline:
                raise RuntimeError("peers did not start in time:\n" + "\n".join(run.log_tail() for run in runs))
            time.sleep(0.2)
        for run in runs:
            run.go()
        deadline = time.time() + timeout_s
        done: dict[int, list[dict]] = {}
        while len(done) < len(runs):
            for index, run in enumerate(runs):
                if index not in done:
                    results = run.results()
                    if results is not None:
                        done[index] = results
            if time.time() > deadline:
                raise RuntimeError("runs did not finish in time:\n" + "\n".join(run.log_tail() for run in runs))
            time.sleep(0.5)
        return [done[index] for index in range(len(runs))]
    finally:
        for run in runs:
            run.close()


# ------------------------------------------------------------------------------------------------- figures
def steps_to_target(curve: list[list[float]], target: float) -> float | None:
    """Micro-steps at which the curve first reaches `target`, linearly interpolated; None if it never does."""
    for index, (steps, loss, *_rest) in enumerate(curve):
        if loss is None or not math.isfinite(loss):
            return None  # the model diverged before reaching the target
        if loss <= target:
            if index == 0:
                return float(steps)
            previous_steps, previous_loss = curve[index - 1][:2]
            fraction = (previous_loss - target) / (previous_loss - loss)
            return previous_steps + fraction * (steps - previous_steps)
    return None


def loss_spread(results: list[dict]) -> float | None:
    """Largest difference between the peers' validation losses at one swarm epoch (0: identical models)."""
    by_epoch: dict[int, list[float]] = {}
    for result in results:
        for _steps, loss, epoch, _t in result["curve"][1:]:
            if math.isfinite(loss):
                by_epoch.setdefault(epoch, []).append(loss)
    spreads = [max(losses) - min(losses) for losses in by_epoch.values() if len(losses) > 1]
    return round(max(spreads), 4) if spreads else None


def _finite(loss: float) -> float | None:
    """A loss for the JSON: NaN and infinity (a diverged model) become null."""
    return round(loss, 4) if math.isfinite(loss) else None


def make_row(args, run: Run, results: list[dict], target_loss: float) -> dict:
    lead = results[0]
    diverged = next((steps for steps, loss, *_ in lead["curve"] if not math.isfinite(loss)), None)
    reached = steps_to_target(lead["curve"], target_loss)
    epochs = max(result["epochs"] for result in results)
    return {
        "mode": run.mode,
        "peers": run.peers,
        "compression": run.compression if run.peers > 1 else "n/a (alone)",
        "inner_steps": args.inner_steps if run.mode == "diloco" else None,
        "outer_lr": args.outer_lr if run.mode == "diloco" else None,
        "target_batch_size": args.target_batch_size if run.mode == "dedloc" else None,
        "average_optimizer_state": (not args.no_average_optimizer_state) if run.mode == "dedloc" else None,
        "delay_updates": args.delay_updates if run.mode == "dedloc" else None,
        "target_loss": round(target_loss, 4),
        "micro_steps_to_target": round(reached, 1) if reached is not None else None,
        "samples_to_target": round(reached * args.micro_batch_size * run.peers) if reached is not None else None,
        "interpolated": True,
        "initial_loss": round(lead["curve"][0][1], 4),
        "final_loss": _finite(lead["curve"][-1][1]),
        "diverged_at_micro_step": diverged,  # first evaluation with a non-finite loss (null: never)
        "micro_steps_done": lead["micro_steps"],
        "epochs": epochs,
        "micro_steps_per_epoch": round(lead["micro_steps"] / epochs, 2) if epochs else None,
        "curve": [[steps, _finite(loss)] for steps, loss, *_ in lead["curve"]],
        "curves_all_peers": [[[s, _finite(l), e] for s, l, e, _ in r["curve"]] for r in results],
        "max_val_loss_spread_across_peers": loss_spread(results),
        "averaged_rounds": lead["averaged_rounds"],
        "solo_rounds": lead["solo_rounds"],
        "averaged_rounds_per_peer": [r["averaged_rounds"] for r in results],
        "solo_rounds_per_peer": [r["solo_rounds"] for r in results],
        # rounds by the size of the group they reached, per peer: groups smaller than `peers` mean rounds split
        "group_sizes_per_peer": [r.get("group_sizes", {}) for r in results],
        "group_size_at_each_evaluation": [r.get("group_size_by_epoch", []) for r in results],
        "learning_rate_at_each_evaluation": lead.get("learning_rates", []),
        "most_peers_seen_by_tracker": [r["most_peers_seen"] for r in results],
        "stopped_by": lead["stopped_by"],
        "wall_s": max(result["wall_s"] for result in results),
        "startup_s": round(run.startup_s, 1),
    }


# ------------------------------------------------------------------------------------------------- the benchmark
def run_benchmark(args: argparse.Namespace) -> dict:
    info = machine()
    started = time.time()
    work_root = Path(tempfile.mkdtemp(prefix="swarm-convergence-"))
    print(f"work folder {work_root} (peer logs)", flush=True)
    rows: list[dict] = []
    # --plain-only: the single peers' rows and targets come from --targets-from, and only the plain loops run
    multi = [(mode, peers, codec) for mode in args.modes for codec in args.compression for peers in args.peers
             if peers > 1 and not args.plain_only]
    if args.quick:
        # everything at once, no early stop: the target is applied afterwards (the curves are the same)
        runs = [Run(args, mode, 1, args.compression[0], work_root, None) for mode in args.modes]
        runs += [Run(args, mode, peers, codec, work_root, None) for mode, peers, codec in multi]
        all_results = run_together(runs, args.max_run_s + 120)
        targets = {run.mode: results[0]["curve"][-1][1] for run, results in zip(runs, all_results) if run.peers == 1}
        rows = [make_row(args, run, results, targets[run.mode]) for run, results in zip(runs, all_results)]
    elif args.targets_from:
        earlier = json.loads(args.targets_from.read_text())["results"]["rows"]
        rows = [row for row in earlier if row["peers"] == 1 and row["mode"] in args.modes and "error" not in row]
        targets = {row["mode"]: row["target_loss"] for row in rows}
    else:
        # the single peers of every mode side by side (one process each), then each swarm alone
        solo = [Run(args, mode, 1, args.compression[0], work_root, None) for mode in args.modes]
        solo_results = run_together(solo, args.max_run_s + 120)
        targets = {run.mode: results[0]["curve"][-1][1] for run, results in zip(solo, solo_results)}
        rows = [make_row(args, run, results, targets[run.mode]) for run, results in zip(solo, solo_results)]
    if not args.quick:
        for row in rows:
            print(f"{row['mode']} 1 peer: target loss {row['target_loss']} after {row['micro_steps_done']} "
                  f"micro-steps ({row['wall_s']} s)", flush=True)
        for mode, peers, codec in multi:
            run = Run(args, mode, peers, codec, work_root, targets[mode])
            try:
                (results,) = run_together([run], args.max_run_s + 120)
            except RuntimeError as error:
                rows.append({"mode": mode, "peers": peers, "compression": codec, "error": str(error)[:2000]})
                print(f"{mode} {peers} peers {codec}: FAILED\n{error}", flush=True)
                continue
            rows.append(make_row(args, run, results, targets[mode]))
            print(f"{mode} {peers} peers {codec}: {rows[-1]['micro_steps_to_target']} micro-steps to target, "
                  f"{rows[-1]['averaged_rounds']} averaged / {rows[-1]['solo_rounds']} solo rounds "
                  f"({rows[-1]['wall_s']} s)", flush=True)
    if args.plain_loops:
        # diloco's target also for synchronous data parallelism: the usual ceiling for combining those peers
        kinds = [(kind, mode) for mode in args.modes
                 for kind in ([mode] if mode == "dedloc" else [mode, "synchronous"])]
        for kind, mode in kinds:
            print(f"{kind} plain loops (no swarm) for " + ", ".join(f"{n} peer(s)" for n in args.peers), flush=True)
            rows += run_plain_loops(args, kind, targets[mode], work_root)
    add_ratios(rows)
    settings = {
        "recipe": RECIPE, "modes": args.modes, "peers": args.peers, "compression": args.compression,
        "micro_steps_budget_per_peer": args.micro_steps, "micro_batch_size": args.micro_batch_size,
        "seq_len": 128, "dedloc_target_batch_size": args.target_batch_size,
        "dedloc_global_batch": "fixed (the recipe's), whatever the number of peers",
        "dedloc_eval_every_epochs": args.eval_every_epochs,
        "dedloc_average_optimizer_state": not args.no_average_optimizer_state,
        "dedloc_average_state_every": args.average_state_every or "the recipe's",
        "single_peer_rows_from": str(args.targets_from) if args.targets_from else None,
        "diloco_inner_steps": args.inner_steps,
        "diloco_outer_lr": args.outer_lr, "diloco_outer_momentum": 0.9, "diloco_eval": "after every outer round",
        "matchmaking_time_s": args.matchmaking_time_s, "torch_threads_per_peer": 1,
        "plain_only": args.plain_only,
        "plain_loops": ("rows <mode>-plain-loop: one process per peer count, no hivemind, the same peers' data "
                        "streams. dedloc: each epoch the mean gradient of "
                        "ceil(target_batch_size / (micro-batch x peers)) "
                        "micro-batches from each stream; diloco: one model replica per peer, inner_steps steps each, "
                        "the exact mean pseudo-gradient through the outer step; synchronous (with diloco): one model "
                        "stepping every micro-step on the mean gradient of every peer's micro-batch (all-reduce per "
                        "micro-step), diloco's schedule and target. What a swarm whose every round reaches every peer "
                        f"computes. Inner peak lr x {args.plain_lr_scale}")
        if args.plain_loops else None,
        "validation": f"the recipe's {64} fixed held-out samples (data.val_samples), one batch",
        "target": "the 1-peer run's validation loss at its last evaluation point; multi-peer runs stop when peer 0 "
                  "reaches it" + (" (quick: no early stop)" if args.quick else ""),
        "micro_steps_to_target": "first crossing of the target on peer 0's curve, linearly interpolated between the "
                                 "evaluation points around it",
        "quick": args.quick, "command": " ".join(sys.argv), "date": timestamp(),
        "total_wall_s": round(time.time() - started, 1), "load_average_at_end": load_average(),
        "work_dir": str(work_root),
    }
    results = {"rows": rows, "step_ratio_vs_1_peer": {
        f"{row['mode']}-{row['peers']}-{row['compression']}": row.get("step_ratio_vs_1_peer")
        for row in rows if row["peers"] > 1}}
    document = write_results(args.name, settings, results, markdown(settings, rows, info),
                             plot=lambda path: plot(settings, rows, path), machine_info=info,
                             results_dir=args.results_dir)
    return document


def add_ratios(rows: list[dict]) -> None:
    """step_ratio_vs_1_peer on every multi-peer row; for diloco, also against the dedloc single peer's target."""
    solo = {row["mode"]: row for row in rows if row["peers"] == 1 and "error" not in row}
    for row in rows:
        if row["peers"] == 1 or "error" in row:
            continue
        base = solo[row["mode"]]
        mine, theirs = row["micro_steps_to_target"], base["micro_steps_to_target"]
        row["step_ratio_vs_1_peer"] = round(mine / theirs, 3) if mine is not None and theirs else None
        row["ideal_step_ratio"] = round(1 / row["peers"], 3)
        plain = next((other for other in rows if other["mode"] == f"{row['mode']}-plain-loop"
                      and "error" not in other and other["peers"] == row["peers"]), None)
        if plain is not None:
            # against a perfect swarm of the same peers (same samples): what this swarm's rounds cost
            theirs = plain["micro_steps_to_target"]
            row["plain_loop_micro_steps_to_target"] = theirs
            row["step_ratio_vs_plain_loop_same_peers"] = (round(mine / theirs, 3) if mine is not None and theirs
                                                          else None)
        real_mode = {"dedloc-plain-loop": "dedloc", "diloco-plain-loop": "diloco",
                     "synchronous-plain-loop": "diloco"}.get(row["mode"])
        if real_mode in solo and solo[real_mode]["micro_steps_to_target"]:
            # a perfect swarm against the real lone peer that set the target: the best ratio those peers could show
            row["step_ratio_vs_real_1_peer"] = (round(mine / solo[real_mode]["micro_steps_to_target"], 3)
                                                if mine is not None else None)
        if row["mode"] == "diloco" and "dedloc" in solo:
            dedloc = solo["dedloc"]
            reached = steps_to_target(row["curve"], dedloc["target_loss"])
            row["micro_steps_to_dedloc_1_peer_target"] = round(reached, 1) if reached is not None else None
            row["step_ratio_vs_dedloc_1_peer"] = (round(reached / dedloc["micro_steps_to_target"], 3)
                                                  if reached is not None and dedloc["micro_steps_to_target"] else None)


def markdown(settings: dict, rows: list[dict], info: dict) -> str:
    lines = [
        "# Time to a target validation loss: one peer vs a swarm (real training, per-peer micro-steps)",
        "",
        f"tiny-stdlib (0.84M parameters), micro-batch {settings['micro_batch_size']} x {settings['seq_len']} tokens, "
        f"1 torch thread per peer, every peer a real hivemind peer on loopback. DeDLOC: global batch "
        f"{settings['dedloc_target_batch_size']} fixed whatever the number of peers, evaluated every "
        f"{settings['dedloc_eval_every_epochs']} epoch(s). DiLoCo: {settings['diloco_inner_steps']} inner steps, "
        f"outer Nesterov lr {settings['diloco_outer_lr']} momentum 0.9, evaluated after every round. Budget "
        f"{settings['micro_steps_budget_per_peer']} micro-steps per peer; target = the 1-peer run's final "
        f"validation loss; micro-steps to target interpolated between evaluation points. {describe_machine(info)} "
        f"(end: {settings['load_average_at_end'][0]}). `{settings['command'].strip()}`, {settings['date']}, "
        f"{settings['total_wall_s']:.0f} s in all.",
        "",
        "| mode | peers | compression | inner steps | target loss | micro-steps to target (per peer) | samples to "
        "target (swarm) | step ratio vs 1 peer (ideal 1/n) | averaged / solo rounds | max loss spread across peers "
        "| wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['mode']} | {row['peers']} | {row['compression']} | failed: "
                         f"{row['error'].splitlines()[0]} |" + " |" * 7)
            continue
        ratio = row.get("step_ratio_vs_1_peer")
        ratio_cell = "1" if row["peers"] == 1 else (f"{ratio:.3f} ({row['ideal_step_ratio']:.3f})" if ratio is not None
                                                    else f"not reached in {row['micro_steps_done']}")
        to_target = row["micro_steps_to_target"]
        if to_target is None and row.get("diverged_at_micro_step") is not None:
            to_target = f"diverged (NaN) at {row['diverged_at_micro_step']}"
        lines.append(
            f"| {row['mode']} | {row['peers']} | {row['compression']} | {row['inner_steps'] or '-'} | "
            f"{row['target_loss']:.3f} | {to_target if to_target is not None else 'not reached'} | "
            f"{row['samples_to_target'] if row['samples_to_target'] is not None else '-'} | {ratio_cell} | "
            f"{row['averaged_rounds']} / {row['solo_rounds']} | {_cell(row['max_val_loss_spread_across_peers'])} | "
            f"{row['wall_s']:.0f} |")
    notes = []
    for row in rows:
        name = f"{row['mode']}, {row['peers']} peers"
        if row.get("diverged_at_micro_step") is not None:
            notes.append(f"- {name}: the validation loss became NaN at micro-step {row['diverged_at_micro_step']} "
                         "(epoch-by-epoch losses of every peer are in the JSON, `curves_all_peers`).")
        spread = row.get("max_val_loss_spread_across_peers")
        if spread is not None and spread > 0.01:
            notes.append(f"- {name}: at some epochs the peers' losses differ by up to {spread}: they did not all hold "
                         "one model, i.e. some rounds averaged in smaller groups or a peer caught up by downloading "
                         "the state (see `curves_all_peers`).")
    if notes:
        lines += ["", "Notes:", "", *notes]
    plain_rows = [row for row in rows if row["mode"].endswith("-plain-loop") and "error" not in row]
    if plain_rows:
        lines += ["", "Plain loops (rows <mode>-plain-loop): no hivemind, one process, the listed peers' data. DeDLOC: "
                  "each epoch steps on the mean gradient of every peer's micro-batches; DiLoCo: one replica per "
                  "peer, the exact mean pseudo-gradient through the outer step every round. That is what a swarm "
                  "computes when every round reaches every peer. Their spread is the noise of one run's time to "
                  "target (data order alone); a real swarm above its plain loop lost that much to split rounds and "
                  "drift:", ""]
        if any(row["mode"] == "synchronous-plain-loop" for row in plain_rows):
            lines += ["Rows synchronous-plain-loop: one model stepping every micro-step on the mean gradient of every "
                      "peer's micro-batch (an all-reduce per micro-step), DiLoCo's schedule and target: the usual "
                      "ceiling for any way of combining those peers' gradients at this learning rate.", ""]
        for row in plain_rows:
            if row["peers"] > 1 and row.get("step_ratio_vs_1_peer") is not None:
                against_real = (f", {row['step_ratio_vs_real_1_peer']:.2f}x the real lone peer's"
                                if row.get("step_ratio_vs_real_1_peer") is not None else "")
                lines.append(f"- {row['mode']}, {row['peers']} peers: {row['micro_steps_to_target']} micro-steps per "
                             f"peer, {row['step_ratio_vs_1_peer']:.2f}x its 1-peer plain loop's{against_real}")
        for row in rows:
            if row.get("step_ratio_vs_plain_loop_same_peers") is not None:
                lines.append(f"- {row['mode']}, {row['peers']} peers, {row['compression']}: "
                             f"{row['micro_steps_to_target']} micro-steps per peer vs "
                             f"{row['plain_loop_micro_steps_to_target']} for its plain loop: "
                             f"{row['step_ratio_vs_plain_loop_same_peers']:.2f}x")
    cross = [row for row in rows if row.get("step_ratio_vs_dedloc_1_peer") is not None]
    if cross:
        lines += ["", "DiLoCo swarms against the DeDLOC single peer's target:", ""]
        for row in cross:
            lines.append(f"- diloco, {row['peers']} peers, {row['compression']}: "
                         f"{row['micro_steps_to_dedloc_1_peer_target']} micro-steps per peer to DeDLOC's 1-peer "
                         f"target {solo_target(rows, 'dedloc'):.3f}, ratio {row['step_ratio_vs_dedloc_1_peer']:.3f}")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return "-" if value is None else str(value)


def solo_target(rows: list[dict], mode: str) -> float:
    return next(row["target_loss"] for row in rows if row["mode"] == mode and row["peers"] == 1)


def plot(settings: dict, rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    modes = [mode for mode in settings["modes"] if any(r["mode"] == mode and "error" not in r for r in rows)]
    figure, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    for axis, mode in zip(axes[0], modes):
        for row in rows:
            plain = row["mode"] in ({f"{mode}-plain-loop", "synchronous-plain-loop"} if mode == "diloco"
                                    else {f"{mode}-plain-loop"})
            if (row["mode"] != mode and not plain) or "error" in row:
                continue
            steps, losses = zip(*[(s, l if l is not None else float("nan")) for s, l in row["curve"]])
            label = f"{row['peers']} peer{'s' if row['peers'] > 1 else ''}"
            if plain:
                label += {"synchronous-plain-loop": ", synchronous data parallel (no swarm)",
                          "diloco-plain-loop": ", perfect DiLoCo (no swarm)"}.get(row["mode"],
                                                                                ", plain loop (no swarm)")
            elif row["peers"] > 1:
                label += f", {row['compression']}"
            axis.plot(steps, losses, marker="" if plain else ".", linestyle=":" if plain else "-", label=label)
        axis.axhline(solo_target(rows, mode), color="grey", linestyle="--", linewidth=1, label="target (1 peer)")
        title = (f"DiLoCo, H={settings['diloco_inner_steps']}, outer lr {settings['diloco_outer_lr']}"
                 if mode == "diloco" else f"DeDLOC, global batch {settings['dedloc_target_batch_size']}")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("micro-steps per peer (16 x 128 tokens each)")
        axis.set_ylabel("validation loss (nats/token)")
        axis.legend()
    figure.suptitle("tiny-stdlib: validation loss vs per-peer micro-steps", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="diloco, 1 and 2 peers, a few rounds (smoke test).")
    parser.add_argument("--modes", nargs="+", choices=["dedloc", "diloco"], default=None,
                        help="Collaboration modes (default dedloc diloco; quick: diloco).")
    parser.add_argument("--peers", type=int, nargs="+", default=None,
                        help="Peer counts; must include 1, which defines the target (default 1 4; quick: 1 2).")
    parser.add_argument("--compression", nargs="+", choices=["none", "fp16", "uint8"], default=None,
                        help="Wire formats of the multi-peer runs (default fp16).")
    parser.add_argument("--micro-steps", type=int, default=None,
                        help="Micro-steps per peer: the 1-peer budget, and the multi-peer cap (default 480).")
    parser.add_argument("--inner-steps", type=int, default=None, help="DiLoCo inner steps H (default 20).")
    parser.add_argument("--outer-lr", type=float, default=None, help="DiLoCo outer learning rate (default 0.7).")
    parser.add_argument("--micro-batch-size", type=int, default=MICRO_BATCH_SIZE,
                        help="Samples per micro-step on every peer (default 16, the recipe's on CPU). Smaller is "
                             "noisier: where averaging more peers' samples helps most.")
    parser.add_argument("--target-batch-size", type=int, default=None,
                        help="DeDLOC global batch in samples (default the recipe's 256; quick: 64).")
    parser.add_argument("--eval-every-epochs", type=int, default=1, help="DeDLOC: evaluate every N global steps.")
    parser.add_argument("--matchmaking-time-s", type=float, default=None, help="Default the recipe's 2 s.")
    parser.add_argument("--max-run-s", type=float, default=None,
                        help="Wall-clock cap of one run's training (default 900; quick: 45).")
    parser.add_argument("--average-state-every", type=int, default=None,
                        help="DeDLOC: average parameters and optimiser state every N epochs (default: the recipe's 5).")
    parser.add_argument("--no-average-optimizer-state", action="store_true",
                        help="DeDLOC: do not average Adam's statistics with the parameters every few epochs.")
    parser.add_argument("--delay-updates", action="store_true",
                        help="DeDLOC: average and step in the background (recipe collaboration.delay_updates).")
    parser.add_argument("--plain-loops", action="store_true",
                        help="Also run, for each mode and peer count, what a perfect swarm would compute (same "
                             "peers' data, no hivemind, one process): the reference for the swarm's rows. With "
                             "diloco, also synchronous data parallelism (all-reduce every micro-step), the ceiling.")
    parser.add_argument("--plain-only", action="store_true",
                        help="With --plain-loops and --targets-from: run only the plain loops, no swarm (minutes: "
                             "for asking what a setting can give before running real peers with it).")
    parser.add_argument("--plain-lr-scale", type=float, default=1.0,
                        help="Multiply the inner (or synchronous) peak learning rate of the plain loops only, to ask "
                             "what a retuned recipe could give (default 1).")
    parser.add_argument("--targets-from", type=Path, default=None,
                        help="Reuse the 1-peer rows (and targets) of an earlier convergence.json: run only the swarms.")
    parser.add_argument("--name", default="convergence", help="Results file stem.")
    add_results_dir_option(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peer-index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parse_benchmark_args(parser, argv)
    if args.plain_worker:
        config = json.loads(args.config.read_text())
        (run_plain_loop if config["mode"] == "dedloc" else run_diloco_plain_loop)(config, args.result_file)
        return
    if args.worker:
        import logging

        logging.basicConfig(level=logging.WARNING)
        run_peer(json.loads(args.config.read_text()), args.peer_index, args.result_file)
        return
    quick = args.quick
    args.modes = args.modes or (["diloco"] if quick else ["dedloc", "diloco"])
    args.peers = sorted(set(args.peers or ([1, 2] if quick else [1, 4])))
    args.compression = args.compression or ["fp16"]
    args.micro_steps = args.micro_steps or (12 if quick else 480)
    args.inner_steps = args.inner_steps or (3 if quick else 20)
    args.outer_lr = args.outer_lr if args.outer_lr is not None else 0.7
    args.target_batch_size = args.target_batch_size or (64 if quick else 256)
    args.matchmaking_time_s = args.matchmaking_time_s or (1.0 if quick else 2.0)
    args.max_run_s = args.max_run_s or (45.0 if quick else 900.0)
    problems = []
    if args.peers[0] != 1:
        problems.append("--peers must include 1: the single peer's final loss is the target (e.g. --peers 1 4)")
    if args.peers[0] < 1:
        problems.append("--peers takes counts of 1 or more (e.g. --peers 1 4)")
    if args.micro_steps < 2:
        problems.append(f"--micro-steps {args.micro_steps} is too small: use 2 or more (default 480)")
    if args.inner_steps < 1:
        problems.append(f"--inner-steps {args.inner_steps} must be 1 or more (default 20)")
    if not 0 < args.outer_lr <= 10:
        problems.append(f"--outer-lr {args.outer_lr} must be in (0, 10] (DiLoCo's default is 0.7)")
    if not 0 < args.plain_lr_scale <= 100:
        problems.append(f"--plain-lr-scale {args.plain_lr_scale} must be in (0, 100] (default 1)")
    if args.plain_only and not (args.plain_loops and args.targets_from):
        problems.append("--plain-only needs --plain-loops and --targets-from (the single peer's target)")
    if args.plain_lr_scale != 1.0 and not args.plain_loops:
        problems.append("--plain-lr-scale changes only the plain loops: add --plain-loops")
    if not 1 <= args.micro_batch_size <= 1024:
        problems.append(f"--micro-batch-size {args.micro_batch_size} must be in [1, 1024] "
                        f"(default {MICRO_BATCH_SIZE})")
    elif args.target_batch_size < args.micro_batch_size:
        problems.append(f"--target-batch-size {args.target_batch_size} is below one micro-batch "
                        f"({args.micro_batch_size}): use {args.micro_batch_size} or more")
    if args.eval_every_epochs < 1:
        problems.append(f"--eval-every-epochs {args.eval_every_epochs} must be 1 or more")
    if args.matchmaking_time_s <= 0 or args.max_run_s <= 0:
        problems.append("--matchmaking-time-s and --max-run-s must be positive")
    if args.targets_from is not None:
        try:
            earlier = json.loads(args.targets_from.read_text())
            have = {row["mode"] for row in earlier["results"]["rows"] if row.get("peers") == 1 and "error" not in row}
            earlier_batch = earlier.get("settings", {}).get("micro_batch_size", MICRO_BATCH_SIZE)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            problems.append(f"--targets-from {args.targets_from}: not a readable convergence.json ({error})")
        else:
            if earlier_batch != args.micro_batch_size:
                problems.append(f"--targets-from {args.targets_from} was run at --micro-batch-size {earlier_batch}, "
                                f"not {args.micro_batch_size}: its targets do not apply; pass the same size")
            missing = sorted(set(args.modes) - have)
            if missing:
                problems.append(f"--targets-from {args.targets_from} has no 1-peer row for {', '.join(missing)}: "
                                "run those modes without --targets-from")
        if args.quick:
            problems.append("--targets-from does not combine with --quick")
    if problems:
        parser.error("; ".join(problems))
    document = run_benchmark(args)
    print(f"wrote {args.results_dir / args.name}.json ({len(document['results']['rows'])} rows)")


if __name__ == "__main__":
    main()
