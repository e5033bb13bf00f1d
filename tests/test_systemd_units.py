"""The shipped systemd units give a stop the time that the shipped recipes need.

A stop that outlasts TimeoutStopSec is SIGKILLed: a volunteer mid-round loses the round (the very kill that the units'
KillMode=mixed is there to avoid), a coordinator mid-upload leaves its final version off the Hub for good.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers

from coordinator.coordinator import FINAL_STATE_TIMEOUT_S
from coordinator.hub import HubPublisher
from peer.volunteer import LocalStats, Volunteer
from swarm.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
LEAVING_S = 30.0  # after the epoch: hivemind's averagers and DHT stop, the last records are published
SECONDS_PER_LOCAL_STEP = 2.0  # gpt2-small-fineweb-diloco's header says ~1 s on its GPUs; a slower card takes longer
UPLINK_BITS_PER_S = 20e6  # a home uplink, as gpt2-small-fineweb-diloco's header assumes


def timeout_stop_s(unit: str) -> float:
    text = (ROOT / "configs" / "systemd" / unit).read_text()
    values = re.findall(r"^TimeoutStopSec=(\d+)$", text, flags=re.M)
    assert len(values) == 1, f"{unit}: one TimeoutStopSec= in seconds, found {values}"
    return float(values[0])


@pytest.mark.parametrize("recipe_path", RECIPES, ids=[path.stem for path in RECIPES])
def test_the_volunteer_unit_lets_a_peer_finish_its_epoch_under_every_shipped_recipe(recipe_path):
    recipe = load_recipe(recipe_path)
    steps = 1000  # the peer's own measure of its step time, as `_finish_budget_s` reads it
    peer = SimpleNamespace(recipe=recipe, stats=LocalStats(compute_s=steps * SECONDS_PER_LOCAL_STEP, micro_steps=steps))
    needed_s = Volunteer._finish_budget_s(peer) + LEAVING_S
    assert timeout_stop_s("swarm-volunteer.service") >= needed_s, f"{recipe_path.name} needs {needed_s:.0f} s"


@pytest.mark.parametrize("recipe_path", RECIPES, ids=[path.stem for path in RECIPES])
def test_the_coordinator_unit_lets_the_final_version_reach_the_hub_under_every_shipped_recipe(recipe_path):
    recipe = load_recipe(recipe_path)
    assert recipe.model.architecture == "gpt2"  # sized below as a GPT-2 with gpt2's vocabulary: an upper bound
    config = transformers.GPT2Config(**dict(recipe.model.config or {}), vocab_size=50304)  # gpt2's, padded
    with torch.device("meta"):
        parameters = sum(parameter.numel() for parameter in transformers.GPT2LMHeadModel(config).parameters())
    upload_s = parameters * 4 * 8 / UPLINK_BITS_PER_S  # float32 safetensors
    retry_delay_s = inspect.signature(HubPublisher).parameters["retry_delay_s"].default
    # the final version's fetch, then the version queued before it, the final one, and a retry of it
    needed_s = FINAL_STATE_TIMEOUT_S + 3 * upload_s + retry_delay_s
    assert timeout_stop_s("swarm-coordinator.service") >= needed_s, f"{recipe_path.name} needs {needed_s:.0f} s"
