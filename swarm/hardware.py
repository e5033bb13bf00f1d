"""Pick the device, precision and micro-batch for the volunteer's machine, within the owner's limits."""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass

import torch

from swarm.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    threads: int
    description: str

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]


def pick_hardware(device: str = "auto", threads: int | None = None) -> Hardware:
    """CUDA with bf16 where the GPU supports it, else MPS, else CPU; `threads` caps CPU use (owner's limit)."""
    cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads (or SWARM_THREADS) must be at least 1, not {threads}: leave it out to use "
                         f"all {cpu_count} CPU cores")
    threads = min(threads or cpu_count, cpu_count)
    torch.set_num_threads(threads)
    # torch gives each thread the process-wide count when it first asks for one; asking now fixes this thread's count,
    # which a background thread's later `background_torch_on_one_thread` would otherwise lower to one as well
    torch.get_num_threads()
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        name = torch.cuda.get_device_name(chosen.index)
        # bf16 keeps fp32's range, so no loss scaling is needed; older GPUs train in fp32 rather than risk fp16 overflow
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return Hardware(chosen, dtype, threads, f"{name} ({chosen})")
    if chosen.type == "mps":
        return Hardware(chosen, None, threads, "Apple GPU (mps)")
    return Hardware(chosen, None, threads, f"CPU ({threads} thread{'s' * (threads > 1)})")


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device that `--device` names, if this machine has it: auto, cpu, cuda, cuda:N or mps."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device mps: Apple GPU not available (use --device cpu)")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise UsageError(f"--device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    index = int(match.group(1) or 0)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == 0:
        raise UsageError(f"--device {device}: no CUDA GPU is visible to torch on this machine (check the driver and "
                         "CUDA_VISIBLE_DEVICES, or use --device cpu)")
    if index >= visible:
        which = "cuda:0" if visible == 1 else f"cuda:0 to cuda:{visible - 1}"
        raise UsageError(f"--device {device}: torch sees {visible} CUDA GPU{'s' * (visible > 1)} on this machine "
                         f"({which}): pick one of those (CUDA_VISIBLE_DEVICES renumbers them), or use --device cpu")
    return torch.device("cuda", index)


def background_torch_on_one_thread() -> None:
    """Run the torch CPU work of the calling background thread on one thread (a no-op in the main thread).

    torch's CPU build parallelises with GNU OpenMP, which gives every thread that starts a parallel region a team of
    worker threads of its own. Once the teams' threads outnumber the cores, libgomp has every idle worker sleep almost
    at once instead of spinning between parallel regions, in all teams, for the rest of the process's life. hivemind
    runs the optimiser step and serves the state to newcomers on background threads of the training process; the
    first optimiser step thus made a second team, and the training thread's forward and backward, hundreds of short
    parallel regions each, ran 6-17% slower on a 2-core machine (~100 sleeps per micro-step; benchmarks/README.md,
    overhead). Background work is small next to training, so it gets one thread and the training thread keeps the
    only team. torch has no per-thread setter: this also lowers the process-wide count that a thread takes on its
    first torch call, so threads that start using torch later get one thread too (what every thread but the training
    one should have) and `pick_hardware` fixes the training thread's own count before any background thread runs.
    """
    if threading.current_thread() is threading.main_thread():
        return
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def pick_micro_batch_size(model: torch.nn.Module, hardware: Hardware, seq_len: int, upper_bound: int,
                          vocab_size: int) -> int:
    """The largest power of two (up to `upper_bound`) whose forward/backward fits; about 2k tokens on CPU.

    On CPU a bigger micro-batch buys little speed and costs latency (progress reports, graceful exits),
    so it aims for ~2048 tokens per micro-step. On a GPU it probes: doubling until out of memory, then
    keeping half of the last fit as head-room for fragmentation and the optimiser step.
    """
    if hardware.device.type != "cuda":
        return max(1, min(upper_bound, 2048 // seq_len))
    best, size = 1, 1
    while size <= upper_bound:
        try:
            batch = torch.randint(0, vocab_size, (size, seq_len), device=hardware.device)
            with torch.autocast("cuda", dtype=hardware.autocast_dtype, enabled=hardware.autocast_dtype is not None):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            best = size
            size *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return best if best == upper_bound else max(1, best // 2)


COMPILE_MODES = ("auto", "on", "off")


def should_compile(mode: str, hardware: Hardware) -> bool:
    """`--compile auto` compiles on CUDA only: on the CPU, compiling a small model costs minutes and buys little."""
    if mode not in COMPILE_MODES:
        raise UsageError(f"--compile {mode!r}: use auto, on or off")
    if mode == "off":
        return False
    if mode == "on":
        return True
    return hardware.device.type == "cuda" and hasattr(torch, "compile")


class TrainingForward:
    """The model's training forward (loss of a batch under the hardware's autocast), compiled where it pays.

    torch.compile returns a wrapper that shares the model's parameters, so hivemind's optimiser, state loading and
    checkpoints keep working on `model` itself (whose state_dict keys stay un-prefixed); only the forward goes
    through the wrapper. Compilation happens at the first call (a minute or so for GPT-2 small); if it fails and the
    mode is `auto`, the forward falls back to eager with a warning instead of stopping the volunteer.

    >>> forward = TrainingForward(model, pick_hardware("cpu"), compile_mode="off")   # doctest: +SKIP
    >>> loss = forward(batch); loss.backward()                                      # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, hardware: Hardware, compile_mode: str = "auto"):
        self.model, self.hardware, self.compile_mode = model, hardware, compile_mode
        self.compiled = should_compile(compile_mode, hardware)
        self._module = torch.compile(model, dynamic=False) if self.compiled else model
        self._verified = not self.compiled

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self._verified:
            return self._loss(self._module, batch)
        try:
            loss = self._loss(self._module, batch)
        except Exception as error:  # torch raises many kinds here (missing compiler, unsupported op, ...)
            if self.compile_mode == "on":
                raise
            logger.warning(
                f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); training without it "
                "(use --compile off to skip the attempt)")
            self._module, self.compiled = self.model, False
            loss = self._loss(self.model, batch)
        self._verified = True
        return loss

    def _loss(self, module: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.hardware.device.type, dtype=self.hardware.autocast_dtype,
                            enabled=self.hardware.autocast_dtype is not None):
            return module(input_ids=batch, labels=batch).loss
