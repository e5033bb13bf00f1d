"""A run whose recipe says `collaboration.compression: blockwise8`, launched and joined as people do."""

from __future__ import annotations

import importlib.util

import pytest
import yaml


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None,
                    reason="bitsandbytes is installed: a volunteer here trains (tests/swarm/test_blockwise8.py)")
def test_a_volunteer_without_bitsandbytes_is_refused_before_its_data_and_the_launch_warned(swarm_factory,
                                                                                            recipe_writer, tmp_path):
    """The volunteer found out only when it built its optimiser, after its data and model, and the launch had said
    nothing where the organiser's own machine had bitsandbytes."""
    path = recipe_writer(tmp_path / "recipe.yaml", "e2e-blockwise8", max_epochs=3)
    recipe = yaml.safe_load(path.read_text())
    recipe["collaboration"]["compression"] = "blockwise8"
    path.write_text(yaml.safe_dump(recipe))
    swarm = swarm_factory()
    coordinator = swarm.launch(path)
    coordinator.wait_for(r"Warning: collaboration.compression is blockwise8, which needs bitsandbytes on every "
                         r"volunteer, CPU ones included", timeout_s=10)
    volunteer = swarm.join("cpu-only", "--device", "cpu")
    assert volunteer.wait(timeout_s=150) == 2, volunteer.output[-3000:]
    output = volunteer.output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors == ["error: collaboration.compression in this run's recipe is blockwise8, which needs bitsandbytes "
                      "on every peer, CPUs included (it runs there): install it in swarm's environment "
                      "(`.venv/bin/pip install bitsandbytes` after scripts/setup.sh), then start again"], output[-3000:]
    assert "Data:" not in output and "Traceback" not in output, output[-3000:]
