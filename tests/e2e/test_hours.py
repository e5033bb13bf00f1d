"""`swarm join --hours`: a real volunteer trains only inside its window of local time, on the real clock."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from cli_process import process_tree


def _clock(instant_s: float) -> str:
    return time.strftime("%H:%M", time.localtime(instant_s))


def _holds_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def _descendants(pid: int) -> list[str]:
    """What else runs under `pid`: state and command line of each."""
    found = []
    for child in process_tree(pid)[1:]:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except OSError:
            continue
        found.append(f"{child} {state} {command}")
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_volunteer_trains_in_its_hours_window_leaves_at_its_end_with_its_epoch_done_then_waits(
        swarm_factory, recipe_writer, tmp_path):
    swarm = swarm_factory()
    coordinator = swarm.launch(recipe_writer(tmp_path / "recipe.yaml", "e2e-hours", max_epochs=1000))
    # a one-minute window that opens at the next turn of the minute (at least 10 s away): the volunteer waits for it
    now = time.time()
    opens_s = (now // 60 + 1) * 60 + (60 if (now // 60 + 1) * 60 - now < 10 else 0)
    closes_s = opens_s + 60
    window, start, end = f"{_clock(opens_s)}-{_clock(closes_s)}", _clock(opens_s), _clock(closes_s)
    night = swarm.join("night", "--hours", window, terminal=True)
    pid = night.popen.pid

    night.wait_for(rf"Outside --hours {window}: training starts at {start} \(in [^)]+\)", timeout_s=30)
    assert not _holds_torch(pid) and _descendants(pid) == [], "it waits holding neither torch nor hivemind"
    night.wait_for(rf"Inside --hours {window}: training until {end} \(for [^)]+\), and again from {start}",
                   timeout_s=opens_s - time.time() + 30)
    assert time.time() >= opens_s - 1
    night.wait_for("First samples contributed", timeout_s=closes_s - time.time())

    limit = night.wait_for(rf"Stopping: the --hours window {window} ended at {end}; back at {start}",
                           timeout_s=closes_s - time.time() + 60)
    assert closes_s - 1 <= time.time() <= closes_s + 30, "it stopped at the window's end, one micro-step at most after"
    night.wait_for(rf"Outside --hours {window}: training starts at {start} \(in 23 h \d+ min\)", timeout_s=240)
    output = night.output
    before = output[:limit.start()]
    stopped_at = int(re.findall(r"epoch (\d+) \(", before)[-1])
    leaving = output[limit.end():]
    finishing, saved, left = (leaving.find("Stopping: finishing the current epoch"),
                              leaving.find("The coordinator saved this peer's state as the version of epoch"),
                              leaving.find("Left the swarm after"))
    assert 0 <= finishing < saved < left, output[-3000:]  # as at --max-runtime: its epoch, then the last-peer hand-over
    assert swarm.stats("night")["epoch"] > stopped_at, output[-3000:]  # it finished the epoch in progress

    # the same process (re-executed) waits for tomorrow's window, holding nothing, and Ctrl-C ends it at once
    assert night.popen.poll() is None
    assert not _holds_torch(pid) and _descendants(pid) == [], "it waits holding neither torch nor hivemind"
    asked = time.monotonic()
    night.press_ctrl_c()
    assert night.wait(timeout_s=10) == 130, night.output[-3000:]
    assert time.monotonic() - asked < 3.0
    assert coordinator.popen.poll() is None


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_volunteer_whose_hivemind_processes_die_after_its_window_ended_exits_1_for_a_restart(
        swarm_factory, recipe_writer, tmp_path):
    """The OOM killer (or a crash) took hivemind's processes while the volunteer finished its epoch after the window's
    end. It left, as it must, but exited 0 as if it had been told to stop: systemd's Restart=on-failure did not start
    it again, and it never trained in the next window."""
    swarm = swarm_factory()
    swarm.launch(recipe_writer(tmp_path / "recipe.yaml", "e2e-hours-died", max_epochs=1000))
    # a window open now that ends at a turn of the minute at least 50 s away: time to start and train first
    now = time.time()
    opens_s = now // 60 * 60
    closes_s = opens_s + 60 * (1 if opens_s + 60 - now >= 50 else 2)
    window, end = f"{_clock(opens_s)}-{_clock(closes_s)}", _clock(closes_s)
    volunteer = swarm.join("night", "--hours", window)
    volunteer.wait_for("First samples contributed", timeout_s=closes_s - time.time())
    volunteer.wait_for(rf"Stopping: the --hours window {window} ended at {end}", timeout_s=closes_s - time.time() + 60)
    # hivemind's DHT and averager processes and their p2p daemons: all but torch's shared-memory manager
    hivemind = [pid for pid in process_tree(volunteer.popen.pid)[1:]
                if b"torch_shm_manager" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert hivemind, _descendants(volunteer.popen.pid)
    for pid in hivemind:
        os.kill(pid, signal.SIGKILL)
    assert volunteer.wait(timeout_s=60) == 1, volunteer.output[-3000:]
    output = volunteer.output
    assert "hivemind's processes stopped: " in output, output[-3000:]  # not "with this one": no signal asked
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_stats_files_counters_go_on_across_hours_windows(swarm_factory, recipe_writer, tmp_path):
    """`swarm join` runs itself again between two windows, and its --stats-file counters started again from zero:
    a dashboard reading the file saw the volunteer's samples fall every morning."""
    swarm = swarm_factory()
    swarm.launch(recipe_writer(tmp_path / "recipe.yaml", "e2e-hours-stats", max_epochs=1000))
    # a window open now that ends at a turn of the minute at least 50 s away, a minute's break, then a second window
    now = time.time()
    opens_s = now // 60 * 60
    closes_s = opens_s + 60 * (1 if opens_s + 60 - now >= 50 else 2)
    reopens_s, last_s = closes_s + 60, closes_s + 120
    volunteer = swarm.join("night", "--hours", f"{_clock(opens_s)}-{_clock(closes_s)},"
                                               f"{_clock(reopens_s)}-{_clock(last_s)}")
    volunteer.wait_for("First samples contributed", timeout_s=closes_s - time.time())
    volunteer.wait_for(rf"Outside --hours \S+: training starts at {_clock(reopens_s)}",
                       timeout_s=closes_s - time.time() + 120)
    before = swarm.stats("night")  # written as the first window's volunteer left
    assert before["samples"] > 0 and before["micro_steps"] > 0, before
    volunteer.wait_for(rf"Inside --hours \S+: training until {_clock(last_s)}[\s\S]*First samples contributed",
                       timeout_s=last_s - time.time())
    after = swarm.stats("night")  # written at the second window's first samples
    assert after["peer_id"] == before["peer_id"], (before, after)
    for counter in ("samples", "micro_steps", "compute_s", "wall_s"):
        assert after[counter] > before[counter], (counter, before, after)
    for counter in ("averaged_rounds", "solo_rounds", "reconnects", "non_finite_losses", "sync_s"):
        assert after[counter] >= before[counter], (counter, before, after)
    assert sum(after["group_sizes"].values()) >= sum(before["group_sizes"].values()), (before, after)
    assert after["longest_pause_s"] >= before["longest_pause_s"]
    assert 0 < after["compute_utilisation"] <= 1
    assert (before["windows"], after["windows"]) == (1, 2)
