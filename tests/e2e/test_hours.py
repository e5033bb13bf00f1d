"""`swarm join --hours`: a real volunteer trains only inside its window of local time, on the real clock."""

from __future__ import annotations

import re
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
