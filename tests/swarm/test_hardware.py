"""Picking the device: what `--device` names must exist on this machine, and an error says what does."""

from __future__ import annotations

import pytest
import torch

from swarm.errors import UsageError
from swarm.hardware import pick_hardware, resolve_device

VISIBLE = torch.cuda.device_count() if torch.cuda.is_available() else 0


def test_a_cuda_index_past_the_visible_gpus_is_named_with_the_count():
    # it said "--device cuda: no CUDA GPU is visible" whatever index was asked for
    asked = f"cuda:{max(5, VISIBLE)}"
    with pytest.raises(UsageError) as error:
        pick_hardware(asked, threads=1)
    message = str(error.value)
    assert message.startswith(f"--device {asked}: ")
    if VISIBLE:
        expected = "cuda:0" if VISIBLE == 1 else f"cuda:0 to cuda:{VISIBLE - 1}"
        assert f"torch sees {VISIBLE} CUDA GPU" in message and f"({expected})" in message
    else:
        assert "no CUDA GPU is visible to torch" in message and "--device cpu" in message


@pytest.mark.parametrize("device", ["cudafoo", "cuda:-1", "cuda:x", "gpu", "CPU", ""])
def test_a_device_that_is_no_device_lists_the_choices(device):
    with pytest.raises(UsageError, match=r"use auto, cpu, cuda, cuda:N or mps"):
        resolve_device(device)


def test_cpu_and_auto_resolve_to_what_this_machine_has():
    assert resolve_device("cpu") == torch.device("cpu")
    assert pick_hardware("cpu", threads=1).device == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if VISIBLE else "mps" if torch.backends.mps.is_available() else "cpu")


@pytest.mark.skipif(not VISIBLE, reason="needs a CUDA GPU")
def test_every_visible_gpu_can_be_picked_by_index():
    for index in range(VISIBLE):
        hardware = pick_hardware(f"cuda:{index}", threads=1)
        assert hardware.device == torch.device("cuda", index) and f"(cuda:{index})" in hardware.description
    assert pick_hardware("cuda", threads=1).device == torch.device("cuda", 0)
