"""How faithfully each wire format of `collaboration.compression` carries real gradients, and what it costs.

    python benchmarks/codecs.py            # tiny-stdlib, steps 0/10/30/60/120 of a plain training loop: ~3 minutes
    python benchmarks/codecs.py --quick    # steps 0 and 3 (smoke test)

A plain loop trains the tiny-stdlib model (the recipe's AdamW, 4 micro-batches of 16 per step, clipped). At the
chosen steps it passes that step's gradient, tensor by tensor in hivemind's all-reduce parts (256k values), through
each codec's encode and decode, exactly as an averaging round sends a peer's part, and records the per-entry
relative error |decoded - g| / |g| (median, 90th and 99th percentile), the share of non-zero entries decoded as zero,
and the bytes per value. Codecs: `fp16` as swarm sends it (hivemind's mean-std scaled fp16, MEANSTD_16BIT), plain
IEEE fp16 (hivemind's Float16Compression, what `fp16` meant before), and `uint8`. Then each codec's encode + decode
time per million values (one thread, gradient-sized values).

Why it matters: Adam divides each entry by its own running magnitude, so a small entry's relative error becomes an
error in its step, however small the entry is.

Writes benchmarks/results/codecs.{json,md}.
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

PART_VALUES = 2**18  # hivemind's default part size (2**19 bytes) in fp16 values
FP16_SMALLEST_NORMAL = 6.1e-5


def codecs() -> dict:
    from hivemind.compression import Float16Compression

    from swarm.compat import make_compression

    return {"fp16 (swarm: scaled)": make_compression("fp16"), "plain IEEE fp16": Float16Compression(),
            "uint8": make_compression("uint8")}


def round_trip(codec, part):
    from hivemind.compression import deserialize_torch_tensor
    from hivemind.compression.base import CompressionInfo

    wire = codec.compress(part, CompressionInfo.from_tensor(part))
    return deserialize_torch_tensor(wire), len(wire.buffer)


def measure_gradient(model, codec) -> dict:
    import torch

    errors, zeroed, total, wire_bytes = [], 0, 0, 0
    for parameter in model.parameters():
        for part in parameter.grad.detach().flatten().split(PART_VALUES):
            decoded, size = round_trip(codec, part.clone())
            nonzero = part != 0
            errors.append(((decoded - part).abs()[nonzero] / part.abs()[nonzero]))
            zeroed += int((nonzero & (decoded == 0)).sum())
            total += part.numel()
            wire_bytes += size
    error = torch.cat(errors)
    # quantile() refuses very large inputs; a fixed subsample keeps the percentiles exact enough
    if error.numel() > 10_000_000:
        error = error[torch.randperm(error.numel(), generator=torch.Generator().manual_seed(0))[:10_000_000]]
    return {"median_relative_error": float(error.median()), "p90_relative_error": float(error.quantile(0.9)),
            "p99_relative_error": float(error.quantile(0.99)), "zeroed_fraction": zeroed / total,
            "bytes_per_value": wire_bytes / total}


def timing(codec, values: int = 4_000_000, repeats: int = 3) -> float:
    import torch

    tensor = torch.randn(values, generator=torch.Generator().manual_seed(1)) * 1e-5
    round_trip(codec, tensor[:1000])
    started = time.perf_counter()
    for _ in range(repeats):
        for part in tensor.split(PART_VALUES):
            round_trip(codec, part)
    return (time.perf_counter() - started) / repeats / (values / 1e6)


def run(args: argparse.Namespace) -> dict:
    import torch

    from swarm.data import build_data
    from swarm.model import build_model
    from swarm.optim import build_optimizer_factories, parameter_groups
    from swarm.recipe import load_recipe
    from swarm.tokenizer import build_tokenizer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    info = machine()
    recipe = load_recipe(RECIPES_DIR / "tiny-stdlib.yaml")
    tokenizer = build_tokenizer(recipe.tokenizer)
    data = build_data(recipe.data, tokenizer, peer_id=b"codecs-benchmark")
    model = build_model(recipe.model, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
    make_optimizer, make_scheduler = build_optimizer_factories(recipe.optimizer)
    optimizer = make_optimizer(parameter_groups(model, recipe.optimizer.weight_decay))
    scheduler = make_scheduler(optimizer)
    steps = [0, 3] if args.quick else [0, 10, 30, 60, 120]
    rows = []
    for step in range(max(steps) + 1):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(4):
            batch = data.next_batch(step, 16)
            (model(input_ids=batch, labels=batch).loss / 4).backward()
        if step in steps:
            gradient = torch.cat([p.grad.flatten() for p in model.parameters()])
            below = float((gradient.abs() < FP16_SMALLEST_NORMAL).float().mean())
            for name, codec in codecs().items():
                rows.append(dict(step=step, codec=name, below_fp16_normal=below, **measure_gradient(model, codec)))
            print(f"step {step}: {below:.0%} of the gradient below fp16's smallest normal", flush=True)
        optimizer.step()  # AdamW clips in its pre-step hook (swarm.optim)
        scheduler.step()
    speed = {name: timing(codec) for name, codec in codecs().items()}
    settings = {"recipe": "tiny-stdlib.yaml", "steps": steps, "batch": "4 micro-batches x 16 x 128 tokens",
                "part_values": PART_VALUES, "timing": "encode + decode of N(0, 1e-5) values in 256k parts, 1 thread",
                "quick": args.quick, "command": " ".join(sys.argv), "date": timestamp()}
    results = {"rows": rows, "seconds_per_million_values": speed}
    return write_results(args.name, settings, results, markdown(settings, rows, speed, info), machine_info=info,
                         results_dir=args.results_dir)


def markdown(settings: dict, rows: list[dict], speed: dict, info: dict) -> str:
    lines = ["# Wire formats on real gradients: per-entry relative error and cost", "",
             f"tiny-stdlib, plain training loop, gradients of steps {settings['steps']} in hivemind's 256k-value "
             "parts. "
             f"{describe_machine(info)}. `{settings['command'].strip()}`, {settings['date']}.", "",
             "| step | entries below fp16's smallest normal | codec | median | p90 | p99 | decoded as zero "
             "| bytes/value |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['step']} | {row['below_fp16_normal']:.0%} | {row['codec']} | "
                     f"{row['median_relative_error']:.1e} | {row['p90_relative_error']:.1e} | "
                     f"{row['p99_relative_error']:.1e} | {row['zeroed_fraction']:.1%} | {row['bytes_per_value']:.3f} |")
    lines += ["", "Encode + decode, seconds per million values (1 thread): "
              + ", ".join(f"{name} {seconds:.4f}" for name, seconds in speed.items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Steps 0 and 3 only (smoke test).")
    parser.add_argument("--name", default="codecs", help="Results file stem.")
    add_results_dir_option(parser)
    run(parse_benchmark_args(parser, argv))


if __name__ == "__main__":
    main()
