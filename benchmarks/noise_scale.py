"""A recipe's gradient noise scale along training: how many samples per update the model can use.

    python benchmarks/noise_scale.py              # tiny-stdlib, 1920 steps at micro-batch 16: ~10 min (14 loaded)
    python benchmarks/noise_scale.py --quick      # 40 steps (smoke test)
    python benchmarks/noise_scale.py --micro-batch-size 4 --steps 960 --name noise_scale-mb4
    python benchmarks/noise_scale.py --recipe my-run.yaml --steps 400 --measure-every 100   # your recipe, on CPU

Why: a swarm of n peers turns each update's batch from b samples into n x b. That saves steps only while the
gradient is noisy. McCandlish et al. (2018, "An Empirical Model of Large-Batch Training") measure this with the
*simple noise scale* B = tr(Sigma) / |G|^2 (the per-sample gradient variance over the squared true gradient), and
find that the steps to a given loss go as S_min (1 + B / batch). So n peers of micro-batch b need, at best,

    (1 + B / (n b)) / (1 + B / b)

of one peer's steps: 1/n while b is far below B, no gain once b is far above it. For the tiny recipe this is the
ceiling that `benchmarks/convergence.py` measures for synchronous data parallelism (all-reduce every micro-step);
DiLoCo and DeDLOC can only approach it.

How: a plain loop (the model, data and clipped AdamW of `--recipe`, default tiny-stdlib; one micro-batch of
`--micro-batch-size` per step, one thread) trains `--steps` steps. Its learning-rate schedule advances one step per
`--schedule-every` micro-steps (default 20), as it does for a DiLoCo peer with H=20 and for `convergence.py`'s
synchronous reference, so the loop follows the trajectory whose time to target that benchmark measures. At each
measurement point it freezes the model and, on the recipe's training stream of another data identity
(`build_data`, peer id `noise-scale-probe`), takes `--probe-batches` gradients of `--probe-size` samples each. With |g_s|^2 the mean squared norm of those small-batch gradients and
|g_b|^2 that of their mean (a batch of probe-batches x probe-size samples), the unbiased estimates are

    |G|^2 = (b_big |g_b|^2 - b_small |g_s|^2) / (b_big - b_small)
    tr(Sigma) = (|g_s|^2 - |g_b|^2) / (1 / b_small - 1 / b_big)

averaged over `--repeats` independent draws before dividing. Gradients are the raw loss gradients, before the
recipe's clipping. The unit is a sample (one sequence of seq_len tokens).

Writes benchmarks/results/noise_scale.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_results_dir_option,
    parse_benchmark_args,
    RECIPES_DIR,
    describe_machine,
    machine,
    timestamp,
    write_results,
)

RECIPE = "tiny-stdlib.yaml"
VALIDATION_BATCH_SIZE = 64


def predicted_step_ratio(noise_scale: float, micro_batch: int, peers: int) -> float:
    """Steps n peers of micro-batch b need to one peer's, with steps = S_min (1 + B / batch)."""
    return (1 + noise_scale / (peers * micro_batch)) / (1 + noise_scale / micro_batch)


def noise_scale_estimate(small_sq_norms: list[float], big_sq_norm: float, small: int, big: int) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from one draw: the small-batch gradients' mean squared norm and their mean's squared norm."""
    small_sq = sum(small_sq_norms) / len(small_sq_norms)
    true_sq = (big * big_sq_norm - small * small_sq) / (big - small)
    trace = (small_sq - big_sq_norm) / (1 / small - 1 / big)
    return true_sq, trace


def jackknife_noise_scale(estimates: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """(B, its jackknife standard error) from per-draw (|G|^2, tr(Sigma)) estimates, averaged before dividing."""
    true_sq, trace = sum(e[0] for e in estimates), sum(e[1] for e in estimates)
    if true_sq <= 0:
        return None, None
    count = len(estimates)
    leave_one_out = [(trace - t) / (true_sq - g) for g, t in estimates if true_sq - g > 0]
    if count < 2 or len(leave_one_out) < count:
        return trace / true_sq, None
    mean = sum(leave_one_out) / count
    return trace / true_sq, ((count - 1) / count * sum((b - mean) ** 2 for b in leave_one_out)) ** 0.5


def measure(model, probe, step: int, args: argparse.Namespace) -> list[tuple[float, float]]:
    """(|G|^2, tr(Sigma)) of each of `repeats` draws of probe-batches gradients of probe-size samples each."""
    import torch

    parameters = [p for p in model.parameters() if p.requires_grad]
    estimates = []
    for repeat in range(args.repeats):
        total = [torch.zeros_like(p) for p in parameters]
        small_sq_norms = []
        for _ in range(args.probe_batches):
            # one probe epoch (a fresh shuffle) per point and repeat, read on batch after batch: independent draws
            batch = probe.next_batch(step * args.repeats + repeat, args.probe_size)
            model.zero_grad(set_to_none=True)
            model(input_ids=batch, labels=batch).loss.backward()
            grads = [p.grad for p in parameters]
            small_sq_norms.append(float(sum((g.double() ** 2).sum() for g in grads)))
            for accumulated, g in zip(total, grads):
                accumulated.add_(g)
        big_sq = float(sum(((t.double() / args.probe_batches) ** 2).sum() for t in total))
        estimates.append(noise_scale_estimate(small_sq_norms, big_sq, args.probe_size,
                                              args.probe_size * args.probe_batches))
    model.zero_grad(set_to_none=True)
    return estimates


def run(args: argparse.Namespace, recipe) -> dict:
    import torch

    from swarm.data import build_data
    from swarm.evaluation import validation_loss
    from swarm.model import build_model
    from swarm.optim import build_optimizer_factories, lr_multiplier, parameter_groups
    from swarm.tokenizer import build_tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    info = machine()
    tokenizer = build_tokenizer(recipe.tokenizer)
    data = build_data(recipe.data, tokenizer, peer_id=b"convergence-peer-0")  # the benchmarks' lone peer's stream
    probe = build_data(recipe.data, tokenizer, peer_id=b"noise-scale-probe")
    validation = data.validation_batches(VALIDATION_BATCH_SIZE)
    model = build_model(recipe.model, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
    model.train()
    make_optimizer, _ = build_optimizer_factories(recipe.optimizer)
    optimizer = make_optimizer(parameter_groups(model, recipe.optimizer.weight_decay))
    peak_lrs = [group["lr"] for group in optimizer.param_groups]
    multiplier = lr_multiplier(recipe.optimizer.schedule)
    points = sorted({0, *range(args.measure_every, args.steps + 1, args.measure_every), args.steps})
    rows, started = [], time.time()
    for step in range(args.steps + 1):
        if step in points:
            measure_started = time.time()
            estimates = measure(model, probe, step, args)
            noise, error = jackknife_noise_scale(estimates)
            row = {"step": step, "validation_loss": round(validation_loss(model, validation), 4),
                   "true_gradient_sq_norm": sum(e[0] for e in estimates) / len(estimates),
                   "per_sample_variance_trace": sum(e[1] for e in estimates) / len(estimates),
                   "noise_scale_samples": round(noise, 1) if noise is not None else None,
                   "noise_scale_standard_error": round(error, 1) if error is not None else None,
                   "predicted_step_ratio": {f"{peers} peers x {b}": round(predicted_step_ratio(noise, b, peers), 3)
                                            for b in args.ratio_micro_batches for peers in args.ratio_peers}
                   if noise is not None else None,
                   "measure_s": round(time.time() - measure_started, 2)}
            rows.append(row)
            print(f"step {step}: validation loss {row['validation_loss']}, noise scale "
                  f"{row['noise_scale_samples']} samples", flush=True)
        if step == args.steps:
            break
        # one micro-batch per step (AdamW clips in its pre-step hook, swarm.optim); the schedule at step / H
        for group, peak_lr in zip(optimizer.param_groups, peak_lrs):
            group["lr"] = peak_lr * multiplier(step / args.schedule_every)
        batch = data.next_batch(step // args.schedule_every, args.micro_batch_size)
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    settings = {
        "recipe": args.recipe.name, "steps": args.steps, "micro_batch_size": args.micro_batch_size,
        "seq_len": recipe.data.seq_len,
        "measure_every": args.measure_every, "probe_size": args.probe_size, "probe_batches": args.probe_batches,
        "repeats": args.repeats,
        "standard_error": "jackknife over the repeats (leave one draw out)",
        "probe_stream": "peer id noise-scale-probe (training shards of another identity)",
        "schedule_every": args.schedule_every,
        "training": "plain loop, the recipe's clipped AdamW, one micro-batch per step, the recipe's schedule read at "
                    "step / schedule_every (a DiLoCo peer's progress at H = schedule_every)",
        "noise_scale": "B_simple = tr(Sigma) / |G|^2 in samples (McCandlish et al. 2018), unbiased two-batch-size "
                       "estimates averaged over the repeats before dividing, raw loss gradients (no clipping)",
        "predicted_step_ratio": "(1 + B / (n b)) / (1 + B / b): n peers of micro-batch b against one, steps = "
                                "S_min (1 + B / batch); a ceiling for synchronous data parallelism",
        "quick": args.quick, "command": " ".join(sys.argv), "date": timestamp(),
        "total_wall_s": round(time.time() - started, 1),
    }
    return write_results(args.name, settings, {"rows": rows}, markdown(settings, rows, info),
                         plot=lambda path: plot(rows, path), machine_info=info, results_dir=args.results_dir)


def markdown(settings: dict, rows: list[dict], info: dict) -> str:
    ratio_keys = list(rows[0]["predicted_step_ratio"] or {}) if rows else []
    lines = ["# Gradient noise scale along training", "",
             f"{settings['recipe']}, plain loop at micro-batch {settings['micro_batch_size']} x "
             f"{settings['seq_len']} tokens, {settings['steps']} steps. Noise scale from {settings['repeats']} x "
             f"{settings['probe_batches']} probe gradients of {settings['probe_size']} samples per point. "
             f"{describe_machine(info)}. `{settings['command'].strip()}`, {settings['date']}.", "",
             "Predicted steps of n peers to one peer's, `(1 + B/(n b)) / (1 + B/b)`: a ceiling for synchronous data "
             "parallelism; 1/n is perfect.", "",
             "| step | validation loss | noise scale B (samples, +- s.e.) | " + " | ".join(ratio_keys) + " |",
             "|---|---|---|" + "---|" * len(ratio_keys)]
    for row in rows:
        ratios = row["predicted_step_ratio"] or {}
        noise, error = row["noise_scale_samples"], row.get("noise_scale_standard_error")
        shown = "n/a" if noise is None else f"{noise} +- {error}" if error is not None else str(noise)
        lines.append(f"| {row['step']} | {row['validation_loss']} | {shown} | "
                     + " | ".join(str(ratios.get(key, "n/a")) for key in ratio_keys) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    points = [(row["validation_loss"], row["noise_scale_samples"], row.get("noise_scale_standard_error") or 0.0)
              for row in rows if row["noise_scale_samples"] is not None and row["step"] > 0]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                  capsize=3)
    axis.set_xlabel("validation loss (training goes left to right)")
    axis.set_ylabel("gradient noise scale B (samples)")
    axis.invert_xaxis()
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.set_title("How many samples per update the model can use")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 steps, two points, few probes (smoke test).")
    parser.add_argument("--recipe", type=Path, default=RECIPES_DIR / RECIPE,
                        help="Recipe whose model, data and optimiser to measure (default recipes/tiny-stdlib.yaml).")
    parser.add_argument("--steps", type=int, default=None, help="Training steps of the plain loop (default 1920).")
    parser.add_argument("--micro-batch-size", type=int, default=16, help="Samples per training step (default 16).")
    parser.add_argument("--schedule-every", type=int, default=20,
                        help="Micro-steps per step of the recipe's lr schedule (default 20: DiLoCo at H=20).")
    parser.add_argument("--measure-every", type=int, default=None, help="Steps between measurements (default 160).")
    parser.add_argument("--probe-size", type=int, default=2, help="Samples per probe gradient, b_small (default 2).")
    parser.add_argument("--probe-batches", type=int, default=None,
                        help="Probe gradients per draw; b_big = probe-batches x probe-size (default 32).")
    parser.add_argument("--repeats", type=int, default=None, help="Independent draws per point (default 16).")
    parser.add_argument("--ratio-peers", type=int, nargs="+", default=[4, 8, 16],
                        help="Peer counts of the predicted step ratios (default 4 8 16).")
    parser.add_argument("--ratio-micro-batches", type=int, nargs="+", default=[4, 16],
                        help="Micro-batch sizes of the predicted step ratios (default 4 16).")
    parser.add_argument("--name", default="noise_scale", help="Results file stem.")
    add_results_dir_option(parser)
    args = parse_benchmark_args(parser, argv)
    args.steps = args.steps if args.steps is not None else (40 if args.quick else 1920)
    args.measure_every = args.measure_every or (20 if args.quick else 160)
    args.probe_batches = args.probe_batches or (8 if args.quick else 32)
    args.repeats = args.repeats or (2 if args.quick else 16)
    problems = []
    if args.steps < 1:
        problems.append(f"--steps {args.steps} must be 1 or more (default 1920)")
    if args.schedule_every < 1:
        problems.append(f"--schedule-every {args.schedule_every} must be 1 or more (default 20)")
    if args.measure_every < 1:
        problems.append(f"--measure-every {args.measure_every} must be 1 or more (default 160)")
    if args.probe_size < 1 or args.probe_batches < 2 or args.repeats < 1:
        problems.append("--probe-size and --repeats must be 1 or more and --probe-batches 2 or more: the estimate "
                        "compares a small batch with the mean of at least two")
    if not 1 <= args.micro_batch_size <= 1024:
        problems.append(f"--micro-batch-size {args.micro_batch_size} must be in [1, 1024] (default 16)")
    if min(args.ratio_peers) < 1 or min(args.ratio_micro_batches) < 1:
        problems.append("--ratio-peers and --ratio-micro-batches take counts of 1 or more")
    recipe = None
    if not problems:
        from swarm.errors import SwarmError
        from swarm.recipe import RecipeError, load_recipe

        try:
            recipe = load_recipe(args.recipe)
        except (OSError, RecipeError, SwarmError) as error:
            problems.append(f"--recipe {args.recipe}: {error}")
    if problems:
        parser.error("; ".join(problems))
    document = run(args, recipe)
    print(f"wrote {args.results_dir / args.name}.json ({len(document['results']['rows'])} points)")


if __name__ == "__main__":
    main()
