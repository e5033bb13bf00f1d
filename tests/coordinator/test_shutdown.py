"""Stopping a coordinator: Ctrl-C, SIGTERM to all its processes, its DHT process dying under it.

Seen before these tests: SIGTERM to all its processes (what systemd's default stop sends) killed the DHT child with
the main process, and
the coordinator hung for ever in its final `dht.get`; Ctrl-C with no live peer retried the final fetch for 90 s,
logging a full hivemind traceback each time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_process import REPO, write_test_recipe
from coordinator_process import RunFolder, launch


def _dht_process(coordinator) -> int:
    """hivemind's DHT process: the coordinator's child that runs the p2p daemon (the averager only borrows it)."""
    for child in coordinator.children():
        grandchildren = Path(f"/proc/{child}/task/{child}/children").read_text().split()
        if any("p2pd" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
               for pid in grandchildren):
            return child
    raise AssertionError(f"no DHT process among the coordinator's children {coordinator.children()}")


@pytest.mark.timeout(240)
def test_sigterm_to_all_the_coordinators_processes_stops_it_within_seconds(tmp_path):
    run = RunFolder(tmp_path / "run")
    coordinator = launch(run, write_test_recipe(tmp_path / "recipe.yaml", "group-sigterm", max_epochs=100))
    try:
        coordinator.wait_for(r"swarm join --initial-peers", timeout_s=180)
        coordinator.wait_for(r"swarm epoch 0 \|", timeout_s=30)  # monitoring
        started = time.monotonic()
        coordinator.signal_tree(signal.SIGTERM)  # systemd's default stop: the children get it too
        code = coordinator.wait(timeout_s=60)
        stopped_in_s = time.monotonic() - started
    finally:
        coordinator.stop()
    assert code == 0, coordinator.output[-3000:]
    assert stopped_in_s < 30, coordinator.output[-3000:]
    assert "Traceback" not in coordinator.output
    assert "Coordinator stopped (stopped by SIGTERM)" in coordinator.output
    assert run.status()["status"] == "stopped"


@pytest.mark.slow  # real peers for 15-30 s: the opt-in job (.ci/run) runs it
@pytest.mark.timeout(240)
def test_a_coordinator_whose_dht_process_dies_says_why_and_exits(tmp_path):
    run = RunFolder(tmp_path / "run")
    coordinator = launch(run, write_test_recipe(tmp_path / "recipe.yaml", "dht-dies", max_epochs=100))
    try:
        coordinator.wait_for(r"swarm join --initial-peers", timeout_s=180)
        coordinator.wait_for(r"swarm epoch 0 \|", timeout_s=30)
        dht_pid = _dht_process(coordinator)
        started = time.monotonic()
        os.kill(dht_pid, signal.SIGKILL)  # the OOM killer's choice, say: the main process lives on
        code = coordinator.wait(timeout_s=60)
        stopped_in_s = time.monotonic() - started
    finally:
        coordinator.stop()
    assert code == 1, coordinator.output[-3000:]
    assert stopped_in_s < 30, coordinator.output[-3000:]
    assert (f"error: The coordinator's DHT process (pid {dht_pid}) has exited (killed by SIGKILL), so it can no "
            "longer follow the swarm. Training goes on without it: restart `swarm launch` with the same --state-dir"
            in coordinator.output), coordinator.output[-3000:]
    assert "Traceback" not in coordinator.output
    assert run.status()["status"] == "stopped"


_DEPARTED_DONOR = """
import hivemind, torch
from hivemind.utils import get_dht_time
from coordinator.state import StateFetcher

dht = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
departed = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True,
                        initial_peers=[str(address) for address in dht.get_visible_maddrs()])
fetcher = StateFetcher(dht, "departed-donor")
departed_id = departed.peer_id
departed.shutdown()
# what a volunteer's state averager declares (hivemind's DecentralizedAverager), left behind when it leaves
dht.store("departed-donor_state_averager.all_averagers", subkey=departed_id.to_bytes(), value=1.0,
          expiration_time=get_dht_time() + 60)
print("fetched", fetcher.fetch_into(torch.nn.Linear(2, 2), timeout_s=20), "from", departed_id, flush=True)
fetcher.shutdown()
dht.shutdown()
"""


def test_a_failed_state_download_is_logged_in_one_line_without_a_traceback():
    """A departed peer stays listed as a state donor for a while: trying it is routine, not an error. (Its own
    process, so that the output is what an organiser's terminal shows, from every hivemind process.)"""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-c", _DEPARTED_DONOR], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    departed_id = re.search(r"fetched None from (\S+)", output).group(1)
    failures = [line for line in output.splitlines() if "Failed to download state from" in line]
    assert len(failures) == 1 and departed_id in failures[0] and "[WARN]" in failures[0], output
    assert "Traceback" not in output, output
