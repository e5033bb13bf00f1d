"""Optimisers and learning-rate schedules, built from the recipe's `optimizer` section.

hivemind.Optimizer wants factories (it builds the optimiser over its own copies of the parameters), so this
module returns callables:

>>> from swarm.recipe import OptimConfig
>>> make_opt, make_sched = build_optimizer_factories(OptimConfig(name="lamb", lr=1e-3))
>>> opt = make_opt([torch.nn.Parameter(torch.ones(3))]); sched = make_sched(opt)
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable

import torch

from swarm.recipe import OptimConfig, ScheduleConfig

logger = logging.getLogger("swarm.optim")


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019): Adam moments with a per-tensor trust ratio, for very large global batches.

    The trust ratio ||w|| / ||update|| keeps each layer's step proportional to its weight norm, which is what
    lets DeDLOC-style swarms use global batches of thousands of samples without retuning the learning rate.
    Tensors with zero norm (fresh biases) fall back to a ratio of 1. Weight decay is part of the update,
    as in the paper, and is skipped for 1-D tensors (biases, norms), as is common practice.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, max_trust_ratio=10.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_trust_ratio=max_trust_ratio))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = state["step"].item()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (exp_avg / (1 - beta1**step)) / ((exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["eps"]))
                if group["weight_decay"] and param.ndim > 1:
                    update.add_(param, alpha=group["weight_decay"])
                weight_norm, update_norm = param.norm(), update.norm()
                trust = torch.where(
                    (weight_norm > 0) & (update_norm > 0),
                    (weight_norm / update_norm).clamp(max=group["max_trust_ratio"]),
                    torch.ones_like(weight_norm),
                )
                param.add_(update * trust, alpha=-group["lr"])
        return loss


def parameter_order(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters in the order the optimiser (and hivemind's state transfer) holds them.

    Decayed (matrices) first, then non-decayed (biases, norms): the coordinator uses this to map a state
    downloaded from peers back to parameter names.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [name for name, p in named if p.ndim > 1] + [name for name, p in named if p.ndim <= 1]


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (1-D tensors): decaying them only hurts."""
    params = dict(model.named_parameters())
    order = parameter_order(model)
    decay = [params[name] for name in order if params[name].ndim > 1]
    no_decay = [params[name] for name in order if params[name].ndim <= 1]
    groups = [dict(params=decay, weight_decay=weight_decay)]
    if no_decay:
        groups.append(dict(params=no_decay, weight_decay=0.0))
    return groups


def _as_groups(params: Iterable, weight_decay: float) -> list[dict]:
    params = list(params)
    if params and isinstance(params[0], dict):
        return params
    return [dict(params=params, weight_decay=weight_decay)]


def build_optimizer_factories(cfg: OptimConfig, skip_non_finite: bool = True) -> tuple[Callable, Callable]:
    """(params -> optimiser, optimiser -> LR scheduler), for `hivemind.Optimizer(optimizer=..., scheduler=...)`.

    `skip_non_finite`: the optimiser skips a step on a non-finite gradient (`skip_non_finite_steps`), at the cost of a
    host sync per step: right for DeDLOC's one step per epoch; DiLoCo checks its pseudo-gradient per round instead.
    """

    def make_optimizer(params):
        groups = _as_groups(params, cfg.weight_decay)
        if cfg.name == "lamb":
            optimizer = Lamb(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        else:
            fused = all(p.is_cuda for group in groups for p in group["params"])  # fused AdamW needs CUDA tensors
            optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)
        if skip_non_finite:
            skip_non_finite_steps(optimizer)  # first: clipping a NaN gradient makes every entry NaN
        if cfg.clip_grad_norm is not None:
            # hivemind applies the step to the swarm-averaged gradients inside Optimizer.step, so clipping has
            # to happen there too, not on the local micro-batch gradients
            all_params = [p for group in groups for p in group["params"]]

            def clip_before_step(*_):
                torch.nn.utils.clip_grad_norm_(all_params, cfg.clip_grad_norm, foreach=True)

            optimizer.register_step_pre_hook(clip_before_step)
        return optimizer

    def make_scheduler(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg.schedule))

    return make_optimizer, make_scheduler


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite: one host sync for all of them.

    A NaN or an infinity makes the tensor's sum NaN or infinite, and a sum needs no temporary the size of the tensor
    (`isfinite(tensor)` made one per tensor: 8 MB for a 2048x4096 gradient, which the allocator kept). Summed in
    fp32, a finite fp16 tensor does not overflow; a finite fp32 one only beyond 3e38, where skipping is right anyway.
    """
    if not tensors:
        return True
    return bool(torch.isfinite(torch.stack([tensor.sum(dtype=torch.float32) for tensor in tensors])).all())


def skip_non_finite_steps(optimizer: torch.optim.Optimizer) -> None:
    """Make a step on a gradient holding NaN or inf leave the parameters and the optimiser's state as they were.

    The gradient an epoch steps on is the swarm's average: one peer whose backward overflowed, or whose hardware is
    flaky, would otherwise turn every parameter of every peer in its group into NaN at once, and the run could only
    be restarted from its last version. The optimiser skips parameters without a gradient, so the gradients are
    held back for the step and put back (zeroed) after it; `optimizer.skipped_steps` counts such steps.
    """
    params = [param for group in optimizer.param_groups for param in group["params"]]
    held: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    optimizer.skipped_steps = 0

    def hold_back_non_finite(*_):
        grads = [param.grad for param in params if param.grad is not None]
        if all_finite(grads):
            return
        held.extend((param, param.grad) for param in params if param.grad is not None)
        for param, _grad in held:
            param.grad = None
        optimizer.skipped_steps += 1
        logger.warning("This epoch's gradient holds NaN or infinite values (a peer's backward overflowed, or its "
                       "hardware is faulty): skipped its update, the parameters stay as they were")

    def put_back(*_):
        for param, grad in held:
            param.grad = grad.zero_()
        held.clear()

    optimizer.register_step_pre_hook(hold_back_non_finite)
    optimizer.register_step_post_hook(put_back)


def lr_multiplier(cfg: ScheduleConfig) -> Callable[[int], float]:
    """Multiplier of the peak LR at a global step: linear warm-up, then constant/linear/cosine to min_lr_ratio."""

    def multiplier(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.decay == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
        if cfg.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape

    return multiplier
