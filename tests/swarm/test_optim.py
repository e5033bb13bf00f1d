"""Optimisers and schedules built from the recipe: LR shape, parameter groups, AdamW/LAMB updates, clipping."""

from __future__ import annotations

import math

import pytest
import torch

from swarm.optim import Lamb, build_optimizer_factories, lr_multiplier, parameter_groups, parameter_order
from swarm.recipe import OptimConfig, ScheduleConfig

# ---------------------------------------------------------------------------------------------------------------
# learning-rate schedule


def test_warmup_rises_linearly_from_near_zero_to_the_peak():
    multiplier = lr_multiplier(ScheduleConfig(warmup_steps=10, decay="cosine", total_steps=110, min_lr_ratio=0.1))
    warmup = [multiplier(step) for step in range(10)]
    assert warmup[0] == pytest.approx(0.1)  # 1/warmup_steps: the first global step already moves the weights
    steps = [later - earlier for earlier, later in zip(warmup, warmup[1:])]
    assert steps == pytest.approx([0.1] * 9)
    assert multiplier(9) == pytest.approx(1.0)
    assert multiplier(10) == pytest.approx(1.0)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_decay_reaches_min_lr_ratio_at_total_steps_and_stays_there(decay):
    multiplier = lr_multiplier(ScheduleConfig(warmup_steps=10, decay=decay, total_steps=110, min_lr_ratio=0.1))
    values = [multiplier(step) for step in range(10, 111)]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(values, values[1:])), "decay never rises"
    assert values[-1] == pytest.approx(0.1)
    assert [multiplier(step) for step in (111, 500, 10**6)] == pytest.approx([0.1] * 3)
    assert multiplier(60) == pytest.approx(0.55)  # half way: both shapes pass through the midpoint


def test_cosine_and_linear_differ_in_shape():
    cosine = lr_multiplier(ScheduleConfig(warmup_steps=0, decay="cosine", total_steps=100, min_lr_ratio=0.0))
    linear = lr_multiplier(ScheduleConfig(warmup_steps=0, decay="linear", total_steps=100, min_lr_ratio=0.0))
    assert linear(25) == pytest.approx(0.75)
    assert cosine(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine(25) > linear(25) and cosine(75) < linear(75)
    assert cosine(0) == linear(0) == pytest.approx(1.0)


def test_constant_decay_holds_the_peak_after_warmup():
    multiplier = lr_multiplier(ScheduleConfig(warmup_steps=4, decay="constant", total_steps=100, min_lr_ratio=0.1))
    assert [multiplier(step) for step in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [multiplier(step) for step in (4, 50, 100, 10**6)] == pytest.approx([1.0] * 4)


def test_scheduler_factory_drives_the_optimizer_lr():
    cfg = OptimConfig(lr=0.5, schedule=ScheduleConfig(warmup_steps=2, decay="linear", total_steps=4, min_lr_ratio=0.2))
    make_optimizer, make_scheduler = build_optimizer_factories(cfg)
    param = torch.nn.Parameter(torch.ones(2, 2))
    optimizer = make_optimizer([param])
    scheduler = make_scheduler(optimizer)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones_like(param)
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.25, 0.5, 0.5, 0.3, 0.1, 0.1])


# ---------------------------------------------------------------------------------------------------------------
# parameter groups


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.proj = torch.nn.Linear(4, 3)
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.head = torch.nn.Linear(3, 2, bias=False)


def test_matrices_are_decayed_and_biases_and_norms_are_not():
    model = Tiny()
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda params: [id(p) for p in params]  # noqa: E731
    assert ids(decay["params"]) == ids([model.embed.weight, model.proj.weight, model.head.weight])
    assert ids(no_decay["params"]) == ids([model.norm.weight, model.norm.bias, model.proj.bias])


def test_parameter_order_lists_matrices_then_vectors_and_skips_frozen_ones():
    assert parameter_order(Tiny()) == [
        "embed.weight", "proj.weight", "head.weight", "norm.weight", "norm.bias", "proj.bias"]


def test_parameter_order_is_the_same_for_every_build_and_matches_the_groups():
    first, second = Tiny(), Tiny()
    assert parameter_order(first) == parameter_order(second)
    names = {id(p): name for name, p in first.named_parameters()}
    grouped = [names[id(p)] for group in parameter_groups(first, 0.01) for p in group["params"]]
    assert grouped == parameter_order(first)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_factory_decays_only_the_decay_group(name):
    """With zero gradients only weight decay moves the weights: matrices shrink, biases stay."""
    make_optimizer, _ = build_optimizer_factories(OptimConfig(name=name, lr=0.1, weight_decay=0.5, clip_grad_norm=None))
    model = torch.nn.Linear(3, 3)
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    optimizer = make_optimizer(parameter_groups(model, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.equal(model.bias, bias)
    assert model.weight.norm() < weight.norm() * 0.999
    assert torch.allclose(model.weight, weight * (1 - 0.1 * 0.5 * (1 if name == "adamw" else 2)), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# AdamW and LAMB updates


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_optimizer_fits_a_linear_regression(name):
    torch.manual_seed(0)
    true_weight = torch.randn(1, 8)
    inputs = torch.randn(256, 8)
    targets = inputs @ true_weight.T
    model = torch.nn.Linear(8, 1)
    make_optimizer, make_scheduler = build_optimizer_factories(
        OptimConfig(name=name, lr=0.05, weight_decay=0.0, schedule=ScheduleConfig(decay="constant"))
    )
    optimizer = make_optimizer(parameter_groups(model, 0.0))
    scheduler = make_scheduler(optimizer)
    loss_fn = lambda: torch.nn.functional.mse_loss(model(inputs), targets)  # noqa: E731
    initial = loss_fn().item()
    for _ in range(300):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
        scheduler.step()
    assert loss_fn().item() < initial * 0.01


def _first_step(optimizer_class, weight: torch.Tensor, grad: torch.Tensor, **kwargs) -> torch.Tensor:
    param = torch.nn.Parameter(weight.clone())
    param.grad = grad.clone()
    optimizer_class([param], **kwargs).step()
    return (param.detach() - weight).norm()


def test_lamb_step_is_proportional_to_the_weight_norm_unlike_adam():
    grad = torch.randn(10, 10, generator=torch.Generator().manual_seed(1))
    lamb_steps, adam_steps = [], []
    for scale in (1.0, 10.0):
        weight = torch.full((10, 10), 0.3 * scale)  # norm 3 * scale
        lamb_steps.append(_first_step(Lamb, weight, grad, lr=0.1).item())
        adam_steps.append(_first_step(torch.optim.Adam, weight, grad, lr=0.1).item())
        assert lamb_steps[-1] == pytest.approx(0.1 * weight.norm().item(), rel=1e-4)  # lr * ||w||
    assert adam_steps == pytest.approx([0.1 * 10] * 2, rel=1e-3)  # lr * sqrt(numel), whatever the weights
    assert lamb_steps[1] == pytest.approx(10 * lamb_steps[0], rel=1e-4)


def test_lamb_trust_ratio_is_capped():
    weight = torch.full((2, 2), 1000.0)  # ||w|| = 2000, first-step ||update|| = 2: uncapped ratio 1000
    step = _first_step(Lamb, weight, torch.ones(2, 2), lr=0.1, max_trust_ratio=10.0)
    assert step.item() == pytest.approx(0.1 * 10.0 * 2.0, rel=1e-4)


def test_lamb_moves_zero_weights_with_a_trust_ratio_of_one():
    step = _first_step(Lamb, torch.zeros(4), torch.tensor([1.0, -2.0, 3.0, -4.0]), lr=0.1)
    assert step.item() == pytest.approx(0.1 * 2.0, rel=1e-4)  # lr * ||sign-like first Adam update|| = 0.1 * sqrt(4)


def test_lamb_weight_decay_skips_vectors():
    matrix, vector = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    for p in (matrix, vector):
        p.grad = torch.zeros_like(p)
    Lamb([matrix, vector], lr=0.1, weight_decay=0.5).step()
    assert torch.equal(vector.detach(), torch.ones(2))
    # update = 0.5 * w, trust = ||w|| / ||0.5 w|| = 2: the step is lr * w
    assert torch.allclose(matrix.detach(), torch.full((2, 2), 0.9))


# ---------------------------------------------------------------------------------------------------------------
# gradient clipping


def _step_with(cfg: OptimConfig, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight change, gradient as the optimiser left it) after one step of the factory's optimiser."""
    make_optimizer, _ = build_optimizer_factories(cfg)
    weight = torch.linspace(-1, 1, 16).reshape(4, 4)
    param = torch.nn.Parameter(weight.clone())
    param.grad = grad.clone()
    make_optimizer([param]).step()
    return param.detach() - weight, param.grad


HUGE = torch.linspace(-1e6, 1e6, 16).reshape(4, 4) + 3e5


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_clipping_limits_the_gradient_norm_inside_step(name):
    _, grad = _step_with(OptimConfig(name=name, clip_grad_norm=1.0), HUGE)
    assert grad.norm().item() <= 1.0 + 1e-4
    _, unclipped = _step_with(OptimConfig(name=name, clip_grad_norm=None), HUGE)
    assert torch.equal(unclipped, HUGE)


def test_clipped_step_equals_a_step_on_the_clipped_gradient_and_differs_from_the_raw_one():
    # eps=1 makes Adam's update depend on the gradient's scale, so clipping shows in the weights
    clipped = OptimConfig(name="adamw", lr=0.1, eps=1.0, weight_decay=0.0, clip_grad_norm=1.0)
    unclipped = clipped.model_copy(update={"clip_grad_norm": None})
    delta_clipped, _ = _step_with(clipped, HUGE)
    delta_reference, _ = _step_with(unclipped, HUGE / HUGE.norm())
    delta_raw, _ = _step_with(unclipped, HUGE)
    assert torch.allclose(delta_clipped, delta_reference, atol=1e-6)
    assert delta_raw.abs().max() > 3 * delta_clipped.abs().max()


def test_small_gradients_are_not_touched_by_clipping():
    small = torch.full((4, 4), 0.01)
    delta_clipped, grad = _step_with(OptimConfig(clip_grad_norm=1.0, eps=1.0), small)
    delta_free, _ = _step_with(OptimConfig(clip_grad_norm=None, eps=1.0), small)
    assert torch.equal(grad, small)
    assert torch.equal(delta_clipped, delta_free)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
@pytest.mark.parametrize("clip", [1.0, None], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_step_on_a_non_finite_gradient_leaves_weights_and_state_as_they_were(name, clip, bad):
    """One peer's overflowed backward made the swarm's averaged gradient NaN, and the step turned every weight NaN."""
    make_optimizer, _ = build_optimizer_factories(OptimConfig(name=name, lr=0.1, weight_decay=0.1, clip_grad_norm=clip))
    weight, bias = torch.nn.Parameter(torch.ones(4, 4)), torch.nn.Parameter(torch.zeros(4))
    optimizer = make_optimizer([weight, bias])
    weight.grad, bias.grad = torch.full((4, 4), 0.5), torch.full((4,), 0.5)
    optimizer.step()  # a good step first: the optimiser has state to keep
    before = [weight.detach().clone(), bias.detach().clone()]
    state = {key: value.clone() for key, value in optimizer.state[weight].items()}

    gradient = torch.full((4, 4), 0.5)
    gradient[1, 2] = bad
    weight.grad, bias.grad = gradient, torch.full((4,), 0.5)
    optimizer.step()
    assert torch.equal(weight, before[0]) and torch.equal(bias, before[1]), "no parameter moved, finite ones neither"
    assert all(torch.equal(optimizer.state[weight][key], value) for key, value in state.items())
    assert optimizer.skipped_steps == 1
    assert weight.grad is gradient and torch.equal(weight.grad, torch.zeros(4, 4)), "the same buffer, zeroed"

    weight.grad, bias.grad = torch.full((4, 4), 0.5), torch.full((4,), 0.5)
    optimizer.step()
    assert not torch.equal(weight, before[0]) and torch.isfinite(weight).all() and optimizer.skipped_steps == 1


def test_the_finiteness_check_sees_nan_and_infinities_and_no_overflow_of_large_finite_half_tensors():
    from swarm.optim import all_finite

    large = torch.full((10_000,), 60_000.0, dtype=torch.float16)  # its fp16 sum would overflow to inf
    assert all_finite([large, torch.ones(3, dtype=torch.bfloat16), torch.zeros(0)]) and all_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = large.clone()
        broken[17] = bad
        assert not all_finite([torch.ones(3), broken])
    opposite = torch.ones(4)
    opposite[0], opposite[1] = float("inf"), -float("inf")  # they would cancel to NaN, not to a finite sum
    assert not all_finite([opposite])
