"""Where a GPU's training step leaves speed behind: GPT-2 small's compiled step under vocabulary padding,
micro-batch size and loss precision, each variant measured the same way in one run.

    python benchmarks/gpu_step.py                          # a CUDA machine: GPT-2 small, 6 variants, ~6 minutes
    python benchmarks/gpu_step.py --quick --device cpu     # tiny recipe on the CPU, 3 variants (smoke test)

Each variant runs in a fresh process (its own compile and memory peak): the recipe's model built from its
config (random init) on random tokens, the volunteer's forward (`swarm.hardware.TrainingForward`: torch.compile
on CUDA, bf16 autocast, TF32 on), backward, and a fused AdamW step every `512 / micro-batch` micro-steps, the
recipe's 512-sequence global batch. Two optimiser steps warm up (they include the compile); the measurement then
runs for `--seconds` up to the next optimiser step. The variant `loss on bf16 logits` replaces the model's own
loss, which upcasts the whole logits tensor to fp32, by a cross-entropy on the bf16 logits inside the compiled
graph.

MFU counts 6 N + 12 n_layer n_embd seq_len FLOPs per token (N: the parameters but the position embeddings), over
the GPU's dense bf16 peak, as `benchmarks/overhead.py` does. Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    RECIPES_DIR,
    add_results_dir_option,
    machine,
    parse_benchmark_args,
    run_worker,
    timestamp,
    write_results,
)
from swarm.errors import SwarmError  # noqa: E402

# (name, micro-batch, pad_vocab_to_multiple_of, loss)
GPU_VARIANTS = (
    ("no padding, micro-batch 16", 16, None, "model"),
    ("padded to 64, micro-batch 16", 16, 64, "model"),
    ("no padding, micro-batch 32", 32, None, "model"),
    ("padded to 64, micro-batch 32 (the recipe)", 32, 64, "model"),
    ("padded to 64, micro-batch 64", 64, 64, "model"),
    ("padded to 64, micro-batch 32, loss on bf16 logits", 32, 64, "bf16-logits"),
)
QUICK_VARIANTS = (
    ("no padding, micro-batch 4", 4, None, "model"),
    ("padded to 64, micro-batch 4", 4, 64, "model"),
    ("padded to 64, micro-batch 4, loss on bf16 logits", 4, 64, "bf16-logits"),
)
MODELS = {"gpt2-small": ("gpt2-small-fineweb.yaml", 50257), "tiny": ("tiny-stdlib.yaml", 259)}
GLOBAL_BATCH = 512


def measure_variant(args: argparse.Namespace) -> dict:
    """Worker: build one variant, warm it up, time it; returns what it measured."""
    import torch

    from benchmarks.overhead import model_flops_per_token, peak_tflops
    from swarm.hardware import TrainingForward, pick_hardware
    from swarm.model import build_model
    from swarm.recipe import load_recipe

    recipe_file, vocab_size = MODELS[args.model]
    recipe = load_recipe(RECIPES_DIR / recipe_file)
    model_section = recipe.model.model_copy(update={"pad_vocab_to_multiple_of": args.pad})
    hardware = pick_hardware(args.device)
    model = build_model(model_section, vocab_size, vocab_size - 1, None).to(hardware.device)
    model.train()
    seq_len = recipe.data.seq_len
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=hardware.device.type == "cuda")
    if args.loss == "model":
        forward = TrainingForward(model, hardware, "auto")
    else:
        body, head = model.base_model, model.get_output_embeddings()

        def bf16_loss(input_ids):
            logits = head(body(input_ids=input_ids).last_hidden_state)[:, :-1]
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))

        compiled = torch.compile(bf16_loss, dynamic=False) if hardware.device.type == "cuda" else bf16_loss

        def forward(batch):
            with torch.autocast(hardware.device.type, dtype=hardware.autocast_dtype,
                                enabled=hardware.autocast_dtype is not None):
                return compiled(batch)

    generator = torch.Generator().manual_seed(0)
    batches = torch.randint(0, vocab_size, (8, args.micro_batch, seq_len), generator=generator).to(hardware.device)
    accumulation = max(1, GLOBAL_BATCH // args.micro_batch) if not args.quick else 2

    def micro_step(index: int) -> None:
        forward(batches[index % len(batches)]).backward()
        if (index + 1) % accumulation == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)

    def synchronize() -> None:
        if hardware.device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    for index in range(2 * accumulation):
        micro_step(index)
    synchronize()
    warmup_s = time.perf_counter() - started
    if hardware.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    micro_steps, started = 0, time.perf_counter()
    while True:
        micro_step(micro_steps)
        micro_steps += 1
        if micro_steps % accumulation == 0 and time.perf_counter() - started >= args.seconds:
            break
    synchronize()
    wall_s = time.perf_counter() - started
    tokens_per_s = micro_steps * args.micro_batch * seq_len / wall_s
    flops_per_token = model_flops_per_token(model, seq_len)
    peak = peak_tflops(hardware.description, None) if hardware.device.type == "cuda" else None
    return {
        "micro_steps": micro_steps,
        "wall_s": round(wall_s, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "model_tflops_per_s": round(tokens_per_s * flops_per_token / 1e12, 2),
        "mfu": round(tokens_per_s * flops_per_token / (peak * 1e12), 4) if peak else None,
        "vocab_rows": model.get_input_embeddings().weight.shape[0],
        "warmup_s_with_compile": round(warmup_s, 1),
        "peak_memory_gb": (round(torch.cuda.max_memory_allocated() / 1e9, 1)
                           if hardware.device.type == "cuda" else None),
        "device_description": hardware.description,
        "precision": hardware.precision,
    }


def run(args: argparse.Namespace) -> dict:
    import torch

    from swarm.hardware import resolve_device

    resolve_device(args.device)  # a device this machine cannot name fails here, not in every worker
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_step: no CUDA GPU is visible; run it on a GPU machine, or use --quick --device cpu",
              file=sys.stderr)
        raise SystemExit(2)
    variants = QUICK_VARIANTS if args.quick else GPU_VARIANTS
    model = "tiny" if args.quick else args.model
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="swarm-gpu-step-") as folder:
        for name, micro_batch, pad, loss in variants:
            argv = [str(Path(__file__)), "--worker", "--model", model, "--device", args.device,
                    "--micro-batch", str(micro_batch), "--loss", loss, "--seconds", str(args.seconds)]
            argv += ["--pad", str(pad)] if pad else []
            argv += ["--quick"] if args.quick else []
            result = run_worker(argv, Path(folder) / "variant.json", timeout_s=args.variant_timeout_s)
            rows.append({"variant": name, "micro_batch_size": micro_batch, "pad_vocab_to_multiple_of": pad,
                         "loss": loss, **result})
            print(f"{name:<52} {result['tokens_per_s']:>10.0f} tokens/s"
                  + (f"  MFU {result['mfu']:.1%}" if result["mfu"] else ""), flush=True)
    for row in rows:
        row["speed_vs_first"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 3)
    settings = {"model": model, "device": args.device, "seconds_per_variant": args.seconds,
                "global_batch": GLOBAL_BATCH if not args.quick else None, "quick": args.quick,
                "date": timestamp(), "command": "python benchmarks/gpu_step.py " + " ".join(args.argv)}
    return write_results(args.name, settings, {"device_description": rows[0]["device_description"], "rows": rows},
                         render(rows, settings, info), machine_info=info, results_dir=args.results_dir)


def render(rows: list[dict], settings: dict, info: dict) -> str:
    lines = [f"# The training step's variants: {settings['model']} on {rows[0]['device_description']}", "",
             f"{rows[0]['precision']}, {settings['seconds_per_variant']} s per variant after two warm-up optimiser "
             f"steps, each in a fresh process; {info['cpu_model']}, {info['cores']} cores. `{settings['command']}`, "
             f"{settings['date']}.", "",
             "| variant | output rows | tokens/s | speed vs the first | MFU | peak GPU memory (GB) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        memory = row["peak_memory_gb"] if row["peak_memory_gb"] is not None else "-"
        lines.append(f"| {row['variant']} | {row['vocab_rows']} | {row['tokens_per_s']:.0f} | "
                     f"{row['speed_vs_first']:.3f} | {mfu} | {memory} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Tiny recipe, 3 variants, 1 s each (smoke test).")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or (with --quick) cpu.")
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-small")
    parser.add_argument("--seconds", type=float, default=None, help="Measured seconds per variant (default 10).")
    parser.add_argument("--variant-timeout-s", type=float, default=240.0)
    parser.add_argument("--name", default=None, help="Results file stem (default gpu-step, or gpu-step-quick).")
    add_results_dir_option(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pad", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--loss", choices=("model", "bf16-logits"), default="model", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parse_benchmark_args(parser, argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.seconds = args.seconds or (1.0 if args.quick else 10.0)
    args.name = args.name or ("gpu-step-quick" if args.quick else "gpu-step")
    if args.worker:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        args.result_file.write_text(json.dumps(measure_variant(args)))
        return
    try:
        run(args)
    except SwarmError as error:  # no GPU here, or a --device this machine does not have
        parser.exit(2, f"gpu_step.py: error: {error}\n")


if __name__ == "__main__":
    main()
