"""`swarm launch` of a run that publishes to the Hub, while the Hub is away or refuses it (the fake Hub, on 127.0.0.1).

Seen before these tests: a Hub that did not answer when the coordinator started stopped the launch, though versions are
saved in the local checkpoint folder first and can be uploaded later.
"""

from __future__ import annotations

import pytest
import yaml
from coordinator_process import RunFolder, launch
from cli_process import write_test_recipe
from fake_hub import FakeHub

REPO_ID = "swarm-test/launch-outage"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The fake Hub, and the environment a coordinator launched now finds it by (HF_ENDPOINT, HF_TOKEN)."""
    with FakeHub(tmp_path / "fake-hub") as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", fake.write_token)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # the fake speaks LFS
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        yield fake


def hub_recipe(tmp_path, run_id: str):
    path = write_test_recipe(tmp_path / "recipe.yaml", run_id, max_epochs=100)
    recipe = yaml.safe_load(path.read_text())
    recipe["checkpoint"]["hub_repo_id"] = REPO_ID
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_hub_outage_at_launch_is_a_warning_and_the_run_starts(hub, tmp_path):
    # a 5xx at launch takes the same path (check_at_launch: tests/coordinator/test_resilience_hub.py)
    hub.go_down(None)
    run = RunFolder(tmp_path / "run")
    coordinator = launch(run, hub_recipe(tmp_path, "hub-outage"), dashboard_port=None)
    try:
        coordinator.wait_for(r"swarm join --initial-peers", timeout_s=180)
        coordinator.interrupt()
        assert coordinator.wait(timeout_s=45) == 0, coordinator.output[-3000:]
    finally:
        coordinator.stop()
    warnings = [line for line in coordinator.output.splitlines() if f"The Hub repo {REPO_ID} could not be checked" in line]
    assert len(warnings) == 1, coordinator.output[-3000:]
    assert "at launch (could not reach it" in warnings[0] and "uploads will be retried" in warnings[0], warnings[0]
    assert "Traceback" not in coordinator.output


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_token_the_hub_refuses_at_launch_stops_it_with_the_fix(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    run = RunFolder(tmp_path / "run")
    coordinator = launch(run, hub_recipe(tmp_path, "hub-refused"), dashboard_port=None)
    try:
        assert coordinator.wait(timeout_s=180) == 2, coordinator.output[-3000:]  # a usage error: the token
    finally:
        coordinator.stop()
    assert (f"error: cannot create the Hub repo {REPO_ID} at {hub.url}: the token was refused (401)"
            in coordinator.output), coordinator.output[-3000:]
    assert "Set HF_TOKEN to a valid write token" in coordinator.output
    assert "Traceback" not in coordinator.output and "hf_not_a_real_token" not in coordinator.output
    assert "swarm join" not in coordinator.output


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_relaunch_uploads_first_the_versions_the_last_launch_could_not(hub, tmp_path):
    """The last launch stopped during an outage with epoch 5 not uploaded (its real publisher wrote the list); the
    organiser had to run `swarm checkpoint publish`. The relaunch does it, ledger included."""
    from coordinator.hub import HubPublisher

    run = RunFolder(tmp_path / "run")
    recipe = hub_recipe(tmp_path, "hub-pending")
    versions = run.publish_versions(recipe, [5])
    run.credit_epochs("hub-pending", range(0, 5))
    hub.go_down(None)
    last_launch = HubPublisher(REPO_ID, token=hub.write_token, endpoint=hub.url, retry_delay_s=30.0,
                               request_timeout_s=5.0, pending_file=run.state / "hub_pending.json")
    last_launch.publish_async(versions[5], epoch=5)
    last_launch.close()
    assert last_launch.not_uploaded() == [5] and not hub.repos
    hub.come_back()

    coordinator = launch(run, recipe, dashboard_port=None)
    try:
        coordinator.wait_for(rf"Uploading to {REPO_ID} first what the last launch could not: epoch-000005",
                             timeout_s=180)
        coordinator.wait_for(r"published \S+epoch-000005 .* tag epoch-000005", timeout_s=60)
        coordinator.interrupt()
        assert coordinator.wait(timeout_s=45) == 0, coordinator.output[-3000:]
    finally:
        coordinator.stop()
    files = hub.files(REPO_ID, "epoch-000005")
    assert files["model.safetensors"] == (versions[5] / "model.safetensors").read_bytes()
    assert files["ledger/entries.jsonl"].count(b"\n") == 5  # the run's ledger went with it
    assert "Traceback" not in coordinator.output
