"""Overhead of being a swarm peer: one peer alone vs the plain PyTorch loop doing the same optimisation.

    python benchmarks/overhead.py            # 5 rounds x 2 arms x 20 s, about 6 minutes on an idle 2-core machine
    python benchmarks/overhead.py --quick    # 1 round x 2 arms x 3 s, global batch 32, for the smoke test
    python benchmarks/overhead.py --device cuda --model gpt2-small   # on a GPU machine (bf16, random tokens)
    python benchmarks/overhead.py --profile  # adds one cProfile'd swarm run: where the peer's time goes
    python benchmarks/overhead.py --diloco-inner-steps 20   # the peer in DiLoCo mode vs a loop stepping every batch

Both arms train the same model on the same data with the same optimiser (the recipe's AdamW, its LR schedule and
its gradient clipping), accumulating `target_batch_size / micro_batch_size` micro-batches per optimiser step:

- `plain`: forward, backward of loss / accumulation_steps, and every accumulation_steps micro-steps
  clip + AdamW step + scheduler step + zero_grad; `loss.item()` every micro-step.
- `swarm`: one peer alone with a real DHT on loopback and `build_swarm_optimizer`, doing exactly the volunteer's
  per-micro-step work (`Volunteer._train_micro_step`): next_batch, forward (`swarm.hardware.TrainingForward`:
  torch.compile on CUDA, the hardware's autocast), backward, opt.step() with reuse_grad_buffers and no zero_grad,
  the loss kept on the device. hivemind decides when the epoch (the optimiser step) comes. The optimiser is
  offloaded or not as the volunteer decides (`default_offload_optimizer`: never on CUDA).
- `swarm-before` (optional): the volunteer before the hot-path changes: no reuse_grad_buffers, zero_grad every
  micro-step, offloaded optimiser, a DHT progress store per micro-step, loss.item() every micro-step, no compile.
- `swarm-offload` (optional): `swarm` with the optimiser offloaded (hivemind's default): the CPU choice.
- `swarm-unfixed` (optional): `swarm` with hivemind's own pre-scheduling of matchmaking while alone.
- `swarm-omp-teams` (optional): `swarm` with hivemind's background threads at torch's full thread count, as before
  `swarm.hardware.background_torch_on_one_thread`: the optimiser step's thread makes a second OpenMP team.

With `--diloco-inner-steps H` the recipe's collaboration becomes mode `diloco` with H inner steps per round (a lone
peer's round: target batch H x micro-batch): the plain loop then steps its optimiser on every micro-batch (as the
DiLoCo peer's inner optimiser does), and the peer also closes a round alone every H micro-steps (pseudo-gradient,
outer Nesterov step, the model reset onto the outer parameters). "Optimiser steps" in its rows are rounds.

Both arms read the loss on the host once per optimiser step (phase `item`), as a training loop that logs does.
On CUDA the results carry the model FLOPs utilisation (MFU): model FLOPs per token = 6 x N + 12 x n_layer x
n_embd x seq_len (N: parameters without the position embeddings; the second term is attention's QK^T and AV,
forward and backward, as in the PaLM paper's appendix B), times tokens per second, over the GPU's dense bf16 peak
(H100 SXM: 989 TFLOPS; `--peak-tflops` for another GPU).

Each arm runs in a fresh process with the same torch thread count; the arms alternate order round by round so
that a change in the machine's load hits both. Each run warms up (at least one optimiser step) and its
measured window runs from one optimiser step to another, at least `--seconds` long. Result: samples/s per arm (mean, stdev over rounds) and throughput_ratio = swarm / plain.
Per-phase times (data, forward, backward, step, zero_grad, item) and the CPU used by hivemind's background
processes show where the difference goes. Writes benchmarks/results/overhead.{json,md,png}.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_results_dir_option,
    parse_benchmark_args,
    RECIPES_DIR,
    describe_machine,
    load_average,
    machine,
    mean_stdev,
    ratio_stdev,
    run_worker,
    timestamp,
    write_results,
)

ARMS = ("plain", "swarm", "swarm-before", "swarm-offload", "swarm-unfixed", "swarm-omp-teams")
DEFAULT_ARMS = ("plain", "swarm")
PHASES = ("data", "forward", "backward", "step", "zero_grad", "item")
# dense bf16 tensor-core peak, TFLOPS, by a substring of torch.cuda.get_device_name(): the MFU denominator
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "RTX 4090": 165.0}
MODELS = {
    # model: (recipe whose model/optimizer/collaboration sections are used, vocabulary, default micro-batch)
    "tiny": ("tiny-stdlib.yaml", None, 16),
    # 32: the recipe's max_micro_batch_size, which a volunteer's `auto` picks where it fits (21 GB on an H100)
    "gpt2-small": ("gpt2-small-fineweb.yaml", 50257, 32),
}


# ------------------------------------------------------------------------------------------------- one arm
class Workload:
    """Model, data and hardware of one arm, built as the volunteer builds them."""

    def __init__(self, model_name: str, device: str, threads: int, micro_batch_size: int | None,
                 target_batch_size: int | None = None, diloco_inner_steps: int | None = None):
        import torch

        from swarm.data import build_data
        from swarm.hardware import pick_hardware
        from swarm.model import build_model
        from swarm.recipe import load_recipe
        from swarm.tokenizer import build_tokenizer

        recipe_file, vocab_size, default_micro_batch = MODELS[model_name]
        self.recipe = load_recipe(RECIPES_DIR / recipe_file)
        if target_batch_size is not None:
            collaboration = self.recipe.collaboration.model_copy(update={"target_batch_size": target_batch_size})
            self.recipe = self.recipe.model_copy(update={"collaboration": collaboration})
        self.hardware = pick_hardware(device, threads)
        self.micro_batch_size = micro_batch_size or default_micro_batch
        self.diloco_inner_steps = diloco_inner_steps
        if diloco_inner_steps:
            from swarm.recipe import Recipe

            recipe_data = self.recipe.model_dump()
            recipe_data["collaboration"].update(
                mode="diloco", target_batch_size=diloco_inner_steps * self.micro_batch_size,
                micro_batch_size=self.micro_batch_size, diloco={"inner_steps": diloco_inner_steps})
            self.recipe = Recipe.model_validate(recipe_data)
        self.seq_len = self.recipe.data.seq_len
        if vocab_size is None:  # the tiny recipe's own byte tokenizer and standard-library data
            tokenizer = build_tokenizer(self.recipe.tokenizer)
            self.data = build_data(self.recipe.data, tokenizer, peer_id=b"overhead-benchmark")
            vocab_size, eos_id, pad_id = tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id
            self.random_tokens = None
        else:  # gpt2-small: the recipe streams FineWeb from the Hub; random tokens cost the same compute
            self.data, eos_id, pad_id = None, vocab_size - 1, None
            generator = torch.Generator().manual_seed(0)
            self.random_tokens = torch.randint(0, vocab_size, (64, self.micro_batch_size, self.seq_len),
                                               generator=generator)
        self.model = build_model(self.recipe.model, vocab_size, eos_id, pad_id).to(self.hardware.device)
        self.model.train()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.flops_per_token = model_flops_per_token(self.model, self.seq_len)
        self.forward = None  # set by the arm: TrainingForward(model, hardware, compile_mode)
        # DiLoCo's inner optimiser steps on every micro-batch, and so does the plain loop it is compared with
        self.accumulation_steps = 1 if diloco_inner_steps else max(
            1, self.recipe.collaboration.target_batch_size // self.micro_batch_size)
        self._batches_drawn = 0

    def next_batch(self, epoch: int):
        if self.data is not None:
            batch = self.data.next_batch(epoch, self.micro_batch_size)
        else:
            batch = self.random_tokens[self._batches_drawn % len(self.random_tokens)]
        self._batches_drawn += 1
        return batch.to(self.hardware.device, non_blocking=True)

    def use_forward(self, compile_mode: str) -> None:
        from swarm.hardware import TrainingForward

        self.forward = TrainingForward(self.model, self.hardware, compile_mode)

    def synchronize(self) -> None:
        import torch

        if self.hardware.device.type == "cuda":
            torch.cuda.synchronize()


def model_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (forward + backward matmuls) + 12 n_layer n_embd seq_len (attention scores).

    N counts every parameter but the position embeddings (a lookup, no multiply); the tied token embedding stays in
    because it is also the output projection.
    """
    config = model.config
    positions = sum(p.numel() for name, p in model.named_parameters() if name.endswith("wpe.weight"))
    parameters = sum(p.numel() for p in model.parameters()) - positions
    return 6.0 * parameters + 12.0 * config.n_layer * config.n_embd * seq_len


def peak_tflops(device_description: str, override: float | None) -> float | None:
    if override:
        return override
    return next((peak for name, peak in PEAK_BF16_TFLOPS.items() if name in device_description), None)


class PlainLoop:
    """The reference: gradient accumulation and the recipe's optimiser in one process, nothing else."""

    def __init__(self, work: Workload, compile_mode: str = "auto"):
        import torch

        from swarm.optim import build_optimizer_factories, lr_multiplier, parameter_groups

        make_optimizer, make_scheduler = build_optimizer_factories(work.recipe.optimizer)
        # in DiLoCo mode the loop does what the peer's inner loop does: the data epoch and the LR schedule follow
        # the round (inner steps / H), not the step, so both arms read the same batches at the same LRs
        self.inner_steps = work.diloco_inner_steps
        work.use_forward(compile_mode)  # the same forward as the peer: compiled on CUDA
        self.work = work
        self.losses = []
        self.optimizer = make_optimizer(parameter_groups(work.model, work.recipe.optimizer.weight_decay))
        if self.inner_steps:
            by_round = lr_multiplier(work.recipe.optimizer.schedule)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda step: by_round(step / self.inner_steps))
        else:
            self.scheduler = make_scheduler(self.optimizer)
        self.micro_step = 0
        self.epoch = 0

    def train_micro_step(self, phases: dict[str, float] | None) -> int:
        clock = _PhaseClock(phases)
        batch = self.work.next_batch(self.micro_step // self.inner_steps if self.inner_steps else self.epoch)
        clock.lap("data")
        loss = self.work.forward(batch)
        clock.lap("forward")
        (loss / self.work.accumulation_steps).backward()
        clock.lap("backward")
        self.micro_step += 1
        self.losses.append(loss.detach())
        if self.micro_step % self.work.accumulation_steps == 0:
            self.optimizer.step()  # the recipe's clip_grad_norm runs in the optimiser's pre-step hook
            self.scheduler.step()
            clock.lap("step")
            self.optimizer.zero_grad(set_to_none=True)
            self.epoch += 1
            clock.lap("zero_grad")
            _read_losses(self.losses)
            clock.lap("item")
        return batch.shape[0]

    def close(self) -> None:
        pass


def _read_losses(losses: list) -> None:
    """What the volunteer's display and reporter do with the losses: one host read for all since the last one."""
    import torch

    if losses:
        torch.stack(losses).float().tolist()
        losses.clear()


class SwarmPeer:
    """One volunteer alone: a real DHT on loopback and the optimiser `swarm join` builds.

    `before=True` is the volunteer before the hot-path changes (arm `swarm-before`): accumulators separate from
    .grad, zero_grad every micro-step, the optimiser offloaded, a progress store per micro-step, loss.item() every
    micro-step, no compile. `offload_optimizer` overrides the volunteer's choice (arm `swarm-offload`). The arm
    `swarm-unfixed` puts back hivemind's own pre-scheduling of matchmaking while alone, which SwarmOptimizer skips.
    `omp_teams=True` (arm `swarm-omp-teams`) leaves hivemind's background threads at torch's full thread count.
    """

    def __init__(self, work: Workload, folder: Path, before: bool = False, offload_optimizer: bool | None = None,
                 unfixed: bool = False, compile_mode: str = "auto", omp_teams: bool = False):
        from peer.collaboration import PROGRESS_REPORT_PERIOD_S, build_swarm_optimizer
        from swarm.identity import Identity
        from swarm.network import create_dht

        if omp_teams:
            import peer.collaboration

            peer.collaboration.background_torch_on_one_thread = lambda: None  # what the averagers call, looked up late
        self.work = work
        work.use_forward("off" if before else compile_mode)
        identity = Identity.load_or_create(folder / "identity", name="overhead-benchmark")
        self.dht = create_dht([], host="127.0.0.1", port=0, identity=identity)
        self.before = before
        self.losses = []
        self.optimizer = build_swarm_optimizer(
            self.dht, work.model, work.recipe, identity, work.micro_batch_size, reuse_grad_buffers=not before,
            offload_optimizer=True if before else offload_optimizer,
            progress_report_period_s=0.0 if before else PROGRESS_REPORT_PERIOD_S)
        if unfixed:
            import hivemind

            self.optimizer._maybe_schedule_gradient_averaging = partial(
                hivemind.Optimizer._maybe_schedule_gradient_averaging, self.optimizer)

    @property
    def epoch(self) -> int:
        return self.optimizer.local_epoch

    def train_micro_step(self, phases: dict[str, float] | None) -> int:
        # the body of Volunteer._train_micro_step without its bookkeeping (contribution log, progress view)
        clock = _PhaseClock(phases)
        epoch = self.optimizer.local_epoch
        batch = self.work.next_batch(epoch)
        clock.lap("data")
        loss = self.work.forward(batch)
        clock.lap("forward")
        loss.backward()
        clock.lap("backward")
        self.optimizer.step()
        clock.lap("step")
        if self.before:
            self.optimizer.zero_grad(set_to_none=True)
        clock.lap("zero_grad")
        if self.before:
            loss.item()
        else:
            self.losses.append(loss.detach())
            if self.optimizer.local_epoch != epoch:
                _read_losses(self.losses)
        clock.lap("item")
        return batch.shape[0]

    def close(self) -> None:
        self.optimizer.shutdown()
        self.dht.shutdown()


class _PhaseClock:
    def __init__(self, phases: dict[str, float] | None):
        self.phases = phases
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.phases is not None:
            now = time.perf_counter()
            self.phases[phase] += now - self.last
            self.last = now


def _run_to_epoch_boundary(trainer) -> None:
    epoch = trainer.epoch
    while trainer.epoch == epoch:
        trainer.train_micro_step(None)


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of all its descendants (hivemind's DHT and averagers)."""
    import psutil

    me = psutil.Process()
    own = me.cpu_times()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
            children += times.user + times.system
        except psutil.Error:
            pass
    return own.user + own.system, children


def run_arm(args: argparse.Namespace) -> dict:
    """Worker: build one arm, warm it up, measure it for args.seconds, return what it measured."""
    import torch

    work = Workload(args.model, args.device, args.threads, args.micro_batch_size, args.target_batch_size,
                    args.diloco_inner_steps)
    folder = Path(tempfile.mkdtemp(prefix="swarm-overhead-"))
    if args.worker == "plain":
        trainer = PlainLoop(work, args.compile)
    else:
        trainer = SwarmPeer(work, folder, before=args.worker == "swarm-before",
                            offload_optimizer=True if args.worker == "swarm-offload" else None,
                            unfixed=args.worker == "swarm-unfixed", compile_mode=args.compile,
                            omp_teams=args.worker == "swarm-omp-teams")
    try:
        # warm-up: allocator, first optimiser step (hivemind builds its offloaded copies lazily), DHT records
        warmup_deadline = time.perf_counter() + args.warmup_seconds
        while trainer.epoch < 1 or time.perf_counter() < warmup_deadline:
            trainer.train_micro_step(None)
        _run_to_epoch_boundary(trainer)  # windows hold whole optimiser steps, whose cost is part of the comparison
        work.synchronize()
        use_phases = work.hardware.device.type == "cpu"  # on a GPU the host-side laps would not mean much
        phases = dict.fromkeys(PHASES, 0.0) if use_phases else None
        profiler = cProfile.Profile() if args.profile else None
        epoch_before, samples, micro_steps = trainer.epoch, 0, 0
        load_at_start = os.getloadavg()[0]
        cpu_own_before, cpu_children_before = _cpu_seconds()
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        while True:  # from one optimiser step to the first one that ends after args.seconds
            epoch = trainer.epoch
            samples += trainer.train_micro_step(phases)
            micro_steps += 1
            if time.perf_counter() - started >= args.seconds and trainer.epoch != epoch:
                break
        work.synchronize()
        wall_s = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
        cpu_own_after, cpu_children_after = _cpu_seconds()
        model_tflops = samples * work.seq_len * work.flops_per_token / wall_s / 1e12
        peak = peak_tflops(work.hardware.description, args.peak_tflops)
        result = {
            "arm": args.worker,
            "load_average_1m_at_start": round(load_at_start, 2),
            "samples": samples,
            "micro_steps": micro_steps,
            "optimizer_steps": trainer.epoch - epoch_before,
            "wall_s": wall_s,
            "samples_per_s": samples / wall_s,
            "torch_threads": torch.get_num_threads(),
            "parameters": work.parameters,
            "device": work.hardware.device.type,
            "device_description": work.hardware.description,
            "precision": work.hardware.precision,
            "micro_batch_size": work.micro_batch_size,
            "seq_len": work.seq_len,
            "accumulation_steps": work.accumulation_steps,
            "mode": work.recipe.collaboration.mode,
            "target_batch_size": work.recipe.collaboration.target_batch_size,
            "compiled": work.forward.compiled,
            "offload_optimizer": getattr(getattr(trainer, "optimizer", None), "offload_optimizer", None),
            "model_flops_per_token": work.flops_per_token,
            "model_tflops_per_s": model_tflops,
            "peak_tflops": peak,
            "mfu": model_tflops / peak if peak else None,
            "phase_ms_per_micro_step": (
                {name: 1000 * seconds / micro_steps for name, seconds in phases.items()} if phases else None
            ),
            # CPU the arm used per wall second: the training process itself and its helper processes
            "cpu_cores_busy_main_process": (cpu_own_after - cpu_own_before) / wall_s,
            "cpu_cores_busy_background_processes": (cpu_children_after - cpu_children_before) / wall_s,
        }
        if profiler is not None:
            result["profile"] = _profile_summary(profiler, micro_steps)
        return result
    finally:
        trainer.close()


def _profile_summary(profiler: cProfile.Profile, micro_steps: int, top: int = 40) -> dict:
    """The functions under the peer's opt.step() that take the most time, in ms per micro-step."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, function), (_calls, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        where = filename.split("site-packages/")[-1].split("/main/")[-1]
        rows.append({
            "function": f"{where}:{line}({function})",
            "calls_per_micro_step": ncalls / micro_steps,
            "own_ms_per_micro_step": 1000 * tottime / micro_steps,
            "cumulative_ms_per_micro_step": 1000 * cumtime / micro_steps,
        })
    by_cumulative = sorted(rows, key=lambda row: -row["cumulative_ms_per_micro_step"])
    by_own = sorted(rows, key=lambda row: -row["own_ms_per_micro_step"])
    round_all = lambda items: [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in items]
    peer_path = [row for row in by_cumulative if _on_peer_path(row["function"])]
    return {"by_cumulative": round_all(by_cumulative[:top]), "by_own": round_all(by_own[:top]),
            "peer_path": round_all(peer_path[:top])}


def _on_peer_path(function: str) -> bool:
    return function.startswith(("hivemind/", "swarm/", "peer/")) or "zero_grad" in function


# ------------------------------------------------------------------------------------------------- the A/B
def run_benchmark(args: argparse.Namespace) -> dict:
    info = machine()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="swarm-overhead-") as folder:
        result_file = Path(folder) / "arm.json"
        for round_index in range(args.rounds):
            order = args.arms if round_index % 2 == 0 else args.arms[::-1]
            for arm in order:
                started = time.perf_counter()
                result = run_worker(_worker_argv(args, arm), result_file, timeout_s=args.seconds * 6 + 180)
                result.update(round=round_index, process_s=round(time.perf_counter() - started, 1))
                runs.append(result)
                print(f"round {round_index + 1}/{args.rounds} {arm:11s}: {result['samples_per_s']:8.2f} samples/s "
                      f"({result['optimizer_steps']} optimiser steps in {result['wall_s']:.1f} s)", flush=True)
        profile = None
        if args.profile:
            profile = run_worker(_worker_argv(args, "swarm", profile=True), result_file,
                                 timeout_s=args.seconds * 10 + 180)
    info["load_average_at_end"] = load_average()
    summary = summarise(runs)
    summary["profile"] = profile
    settings = {
        "model": args.model,
        "parameters": runs[0]["parameters"],
        "recipe": MODELS[args.model][0],
        "device": args.device,
        "precision": runs[0]["precision"],
        "micro_batch_size": runs[0]["micro_batch_size"],
        "seq_len": runs[0]["seq_len"],
        "accumulation_steps": runs[0]["accumulation_steps"],
        "mode": runs[0]["mode"],
        "diloco_inner_steps": args.diloco_inner_steps,
        "torch_threads": runs[0]["torch_threads"],
        "rounds": args.rounds,
        "seconds_per_arm": args.seconds,
        "warmup_seconds": args.warmup_seconds,
        "target_batch_size": runs[0]["target_batch_size"],
        "arms": list(args.arms),
        "compile": args.compile,
        "quick": args.quick,
        "load_average_at_start": info["load_average_at_start"][0],
        "date": timestamp(),
        "command": "python benchmarks/overhead.py " + " ".join(sys.argv[1:]),
    }
    return write_results(args.name, settings, summary, markdown(settings, summary, info),
                         plot=lambda path: plot(summary, settings, path), machine_info=info,
                         results_dir=args.results_dir)


def rerender(args: argparse.Namespace) -> dict:
    """The tables and plot of an earlier run, from the raw runs in its JSON."""
    earlier = json.loads(args.from_json.read_text())
    summary = summarise(earlier["results"]["runs"])
    summary["profile"] = earlier["results"].get("profile")
    settings, info = earlier["settings"], earlier["machine"]
    return write_results(args.name, settings, summary, markdown(settings, summary, info),
                         plot=lambda path: plot(summary, settings, path), machine_info=info,
                         results_dir=args.results_dir)


def _worker_argv(args: argparse.Namespace, arm: str, profile: bool = False) -> list[str]:
    argv = [str(Path(__file__).resolve()), "--worker", arm, "--model", args.model, "--device", args.device,
            "--threads", str(args.threads), "--seconds", str(args.seconds),
            "--warmup-seconds", str(args.warmup_seconds), "--compile", args.compile]
    if args.peak_tflops:
        argv += ["--peak-tflops", str(args.peak_tflops)]
    if args.micro_batch_size:
        argv += ["--micro-batch-size", str(args.micro_batch_size)]
    if args.target_batch_size:
        argv += ["--target-batch-size", str(args.target_batch_size)]
    if args.diloco_inner_steps:
        argv += ["--diloco-inner-steps", str(args.diloco_inner_steps)]
    if profile:
        argv.append("--profile")
    return argv


ARM_TITLES = {"plain": "plain PyTorch loop", "swarm": "swarm peer alone",
              "swarm-before": "swarm peer before the hot-path changes",
              "swarm-offload": "swarm peer, optimiser offloaded (hivemind's default)",
              "swarm-reuse": "swarm peer, reuse_grad_buffers, no zero_grad",  # arm of earlier result files
              "swarm-unfixed": "swarm peer, hivemind's matchmaking while alone (before the fix)",
              "swarm-omp-teams": "swarm peer, hivemind's threads at torch's full thread count (before the fix)"}


def summarise(runs: list[dict]) -> dict:
    arms = {}
    for arm in dict.fromkeys(run["arm"] for run in runs):
        mine = [run for run in runs if run["arm"] == arm]
        mean, stdev = mean_stdev([run["samples_per_s"] for run in mine])
        phases = None
        if mine[0]["phase_ms_per_micro_step"] is not None:
            phases = {name: round(mean_stdev([r["phase_ms_per_micro_step"][name] for r in mine])[0], 3)
                      for name in PHASES}
        arms[arm] = {
            "samples_per_s_mean": round(mean, 3),
            "samples_per_s_stdev": round(stdev, 3),
            "samples_per_s_runs": [round(run["samples_per_s"], 3) for run in mine],
            "phase_ms_per_micro_step": phases,
            "cpu_cores_busy_main_process": round(mean_stdev([r["cpu_cores_busy_main_process"] for r in mine])[0], 3),
            "cpu_cores_busy_background_processes": round(
                mean_stdev([r["cpu_cores_busy_background_processes"] for r in mine])[0], 3),
            "optimizer_steps_per_run": [run["optimizer_steps"] for run in mine],
            # CPU-seconds (training process and its helper processes) per sample: what the arm costs the machine,
            # much less sensitive than samples/s to other people's load on a shared machine
            "cpu_seconds_per_sample_runs": [round(_cpu_per_sample(run), 5) for run in mine],
            "load_average_1m_runs": [run.get("load_average_1m_at_start") for run in mine],
            "model_tflops_per_s_mean": round(mean_stdev([r.get("model_tflops_per_s", 0.0) for r in mine])[0], 4),
            "mfu_mean": (round(mean_stdev([r["mfu"] for r in mine])[0], 4) if mine[0].get("mfu") is not None
                         else None),
        }
    summary = {"device": runs[0]["device"], "device_description": runs[0]["device_description"], "arms": arms}
    for arm in arms:
        if arm == "plain":
            continue
        suffix = "" if arm == "swarm" else "_" + arm.replace("-", "_")
        ratio, ratio_sd = ratio_stdev(arms[arm]["samples_per_s_runs"], arms["plain"]["samples_per_s_runs"])
        # the same ratio round by round (a round's arms ran back to back, under similar load)
        paired = [pair[arm]["samples_per_s"] / pair["plain"]["samples_per_s"] for pair in _rounds(runs)
                  if arm in pair and "plain" in pair]
        paired_mean, paired_sd = mean_stdev(paired)
        cpu_ratio, cpu_ratio_sd = ratio_stdev(arms["plain"]["cpu_seconds_per_sample_runs"],
                                              arms[arm]["cpu_seconds_per_sample_runs"])
        summary.update({
            f"cpu_cost_ratio{suffix}": round(cpu_ratio, 4),
            f"cpu_cost_ratio{suffix}_stdev": round(cpu_ratio_sd, 4),
            f"throughput_ratio{suffix}": round(ratio, 4),
            f"throughput_ratio{suffix}_stdev": round(ratio_sd, 4),
            f"throughput_ratio{suffix}_per_round": [round(value, 4) for value in paired],
            f"throughput_ratio{suffix}_paired_mean": round(paired_mean, 4),
            f"throughput_ratio{suffix}_paired_stdev": round(paired_sd if not math.isnan(paired_sd) else 0.0, 4),
        })
    # the goals: a lone peer keeps >= 97% of the plain loop on a GPU, >= 95% on CPU; >= 40% MFU on an H100
    summary["goal"] = 0.97 if summary["device"] == "cuda" else 0.95
    summary["meets_goal"] = summary["throughput_ratio"] >= summary["goal"]
    swarm_mfu = arms.get("swarm", {}).get("mfu_mean")
    summary["mfu_goal"] = 0.40 if swarm_mfu is not None else None
    summary["meets_mfu_goal"] = swarm_mfu >= 0.40 if swarm_mfu is not None else None
    summary["runs"] = [{k: v for k, v in run.items() if k != "profile"} for run in runs]
    return summary


def _cpu_per_sample(run: dict) -> float:
    busy = run["cpu_cores_busy_main_process"] + run["cpu_cores_busy_background_processes"]
    return busy / run["samples_per_s"]


def _rounds(runs: list[dict]) -> list[dict[str, dict]]:
    by_round: dict[int, dict[str, dict]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["arm"]] = run
    return [arms for _, arms in sorted(by_round.items())]


def markdown(settings: dict, summary: dict, info: dict) -> str:
    arms = summary["arms"]
    lines = [
        "# Overhead of a swarm peer vs a plain PyTorch loop",
        "",
        f"{settings['model']} ({settings['parameters'] / 1e6:.2f}M parameters), {summary['device_description']}, "
        f"{settings['precision']}, micro-batch {settings['micro_batch_size']} x {settings['seq_len']} tokens, "
        + (f"DiLoCo, a round every {settings['diloco_inner_steps']} micro-steps (the plain loop steps every one); "
           if settings.get("diloco_inner_steps") else
           f"{settings['accumulation_steps']} micro-steps per optimiser step; ")
        + f"{settings['rounds']} rounds x "
        f"{len(arms)} arms x {settings['seconds_per_arm']} s, alternating order, each arm in a fresh process with "
        f"{settings['torch_threads']} torch threads. {describe_machine(info)} (end: "
        f"{info['load_average_at_end'][0]}). `{settings['command'].strip()}`, {settings['date']}.",
        "",
        "| arm | samples/s (mean ± stdev) | per round | throughput ratio to plain | CPU cores busy: main / "
        "background | CPU ms per sample | CPU cost ratio (plain / arm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, values in arms.items():
        suffix = "" if arm == "swarm" else "_" + arm.replace("-", "_")
        ratio = (f"{summary[f'throughput_ratio{suffix}']:.3f} ± {summary[f'throughput_ratio{suffix}_stdev']:.3f}"
                 if arm != "plain" else "1")
        cpu_ratio = (f"{summary[f'cpu_cost_ratio{suffix}']:.3f} ± {summary[f'cpu_cost_ratio{suffix}_stdev']:.3f}"
                     if arm != "plain" else "1")
        cpu_ms = mean_stdev(values["cpu_seconds_per_sample_runs"])
        lines.append(
            f"| {ARM_TITLES[arm]} | {values['samples_per_s_mean']:.2f} ± {values['samples_per_s_stdev']:.2f} | "
            f"{', '.join(f'{v:.1f}' for v in values['samples_per_s_runs'])} | {ratio} | "
            f"{values['cpu_cores_busy_main_process']:.2f} / {values['cpu_cores_busy_background_processes']:.2f} | "
            f"{1000 * cpu_ms[0]:.1f} ± {1000 * cpu_ms[1]:.1f} | {cpu_ratio} |"
        )
    lines += [
        "",
        f"**throughput_ratio (swarm / plain) = {summary['throughput_ratio']:.3f} ± "
        f"{summary['throughput_ratio_stdev']:.3f}** (paired by round: {summary['throughput_ratio_paired_mean']:.3f} ± "
        f"{summary['throughput_ratio_paired_stdev']:.3f}); goal >= {summary.get('goal', 0.95)}: "
        f"{'met' if summary['meets_goal'] else 'not met'}.",
    ]
    if any(values.get("mfu_mean") is not None for values in arms.values()):
        lines += ["", "Model FLOPs utilisation (6 N + 12 n_layer n_embd seq_len FLOPs per token, over the GPU's dense "
                  "bf16 peak): " + ", ".join(f"{arm} {values['mfu_mean']:.1%} ({values['model_tflops_per_s_mean']:.0f} "
                                              "TFLOPS)" for arm, values in arms.items() if values.get("mfu_mean"))
                  + f"; goal for the peer >= 40%: {'met' if summary.get('meets_mfu_goal') else 'not met'}."]
    if arms["plain"]["phase_ms_per_micro_step"]:
        lines += ["", "Where a micro-step's time goes (ms, mean over rounds):", "",
                  "| arm | " + " | ".join(PHASES) + " | total |", "|---|" + "---|" * (len(PHASES) + 1)]
        for arm, values in arms.items():
            phases = values["phase_ms_per_micro_step"]
            lines.append(f"| {arm} | " + " | ".join(f"{phases[p]:.2f}" for p in PHASES)
                         + f" | {sum(phases.values()):.2f} |")
    if summary.get("profile"):
        profile = summary["profile"]["profile"]
        rows = (profile.get("peer_path") or [r for r in profile["by_cumulative"] if _on_peer_path(r["function"])])[:20]
        lines += ["", "Swarm peer under cProfile (one extra run; cProfile itself slows Python-heavy code): the "
                  "functions of the peer's own path (hivemind, swarm, `zero_grad`), by cumulative ms per micro-step "
                  "(the model's forward/backward is in the JSON):", "",
                  "| function | calls/micro-step | cumulative ms | own ms |", "|---|---|---|---|"]
        for row in rows:
            lines.append(f"| `{row['function']}` | {row['calls_per_micro_step']:.2f} | "
                         f"{row['cumulative_ms_per_micro_step']:.3f} | {row['own_ms_per_micro_step']:.3f} |")
    if settings["device"] == "cpu":
        lines += ["", "No GPU arm: this machine has no GPU. On a GPU machine run "
                  "`python benchmarks/overhead.py --device cuda --model gpt2-small` (GPT-2 124M from its config, bf16, "
                  "random tokens)."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, settings: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(summary["arms"])
    arms = list(summary["arms"].values())
    colours = ["#888888", "#2a7ab9", "#59a14f", "#e15759", "#f28e2b"][: len(arms)]
    left.bar(names, [a["samples_per_s_mean"] for a in arms], yerr=[a["samples_per_s_stdev"] for a in arms],
             color=colours, capsize=6)
    for index, arm in enumerate(arms):
        left.scatter([index] * len(arm["samples_per_s_runs"]), arm["samples_per_s_runs"], color="black", s=12, zorder=3)
    left.set_ylabel("samples/s")
    left.set_title(f"swarm / plain = {summary['throughput_ratio']:.3f} ± {summary['throughput_ratio_stdev']:.3f} "
                   f"(goal {summary.get('goal', 0.95)})", fontsize=10)
    if arms[0]["phase_ms_per_micro_step"]:
        bottom = [0.0] * len(arms)
        for phase in PHASES:
            values = [a["phase_ms_per_micro_step"][phase] for a in arms]
            right.bar(names, values, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, values)]
        right.set_ylabel("ms per micro-step")
        right.legend(fontsize=8)
        right.set_title("where a micro-step goes", fontsize=10)
    else:
        right.axis("off")
    figure.suptitle(f"{settings['model']} on {summary['device_description']}, micro-batch "
                    f"{settings['micro_batch_size']}x{settings['seq_len']}, load average at start "
                    f"{settings.get('load_average_at_start', '?')}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round x 3 s per arm (smoke test).")
    parser.add_argument("--rounds", type=int, default=None, help="A/B rounds (default 5; 1 with --quick).")
    parser.add_argument("--seconds", type=float, default=None, help="Measured seconds per arm (default 20).")
    parser.add_argument("--warmup-seconds", type=float, default=None, help="Warm-up per arm (default 3).")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both arms (default: all cores).")
    parser.add_argument("--micro-batch-size", type=int, default=None)
    parser.add_argument("--target-batch-size", type=int, default=None,
                        help="Override the recipe's global batch (default: the recipe's; 32 with --quick).")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(DEFAULT_ARMS),
                        help="swarm-before: the peer before the hot-path changes; swarm-offload: with the optimiser "
                        "offloaded; "
                        "swarm-unfixed: the peer before the matchmaking fix in peer/collaboration.py; "
                        "swarm-omp-teams: the peer before its background threads used one torch thread.")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile the forward in plain and swarm arms (auto: on CUDA only, as the volunteer).")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="The GPU's dense bf16 peak for MFU (default: known GPUs by name, e.g. H100 989).")
    add_results_dir_option(parser)
    parser.add_argument("--from-json", type=Path, default=None,
                        help="Re-summarise the runs recorded in an earlier overhead.json (no new measurement).")
    parser.add_argument("--profile", action="store_true", help="Add one cProfile'd swarm run to the results.")
    parser.add_argument("--diloco-inner-steps", type=int, default=None,
                        help="Run the peer in DiLoCo mode with this many inner steps per round (default: the "
                        "recipe's mode, DeDLOC); the plain loop then steps on every micro-batch.")
    parser.add_argument("--name", default="overhead", help="Results file stem in benchmarks/results.")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parse_benchmark_args(parser, argv)
    if args.diloco_inner_steps is not None and args.diloco_inner_steps < 1:
        parser.error("--diloco-inner-steps must be at least 1")
    args.threads = args.threads or len(os.sched_getaffinity(0))
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least 1 A/B round (leave it out for 5)")
    if args.seconds is not None and not args.seconds > 0:
        parser.error(f"--seconds {args.seconds:g}: a positive window (leave it out for 20)")
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.seconds = args.seconds or (3.0 if args.quick else 20.0)
    args.warmup_seconds = args.warmup_seconds if args.warmup_seconds is not None else (0.0 if args.quick else 3.0)
    if args.quick:  # 2 micro-steps per optimiser step: the warm-up's optimiser step takes half a second
        args.target_batch_size = args.target_batch_size or 32
    if args.worker:
        import logging

        logging.basicConfig(level=logging.WARNING)
        result = run_arm(args)
        args.result_file.write_text(json.dumps(result))
        return
    document = rerender(args) if args.from_json else run_benchmark(args)
    summary = document["results"]
    print(f"throughput_ratio = {summary['throughput_ratio']:.3f} ± {summary['throughput_ratio_stdev']:.3f} "
          f"(plain {summary['arms']['plain']['samples_per_s_mean']:.1f}, swarm "
          f"{summary['arms']['swarm']['samples_per_s_mean']:.1f} samples/s); wrote {args.results_dir / args.name}.json")


if __name__ == "__main__":
    main()
