"""`swarm join` checks the flags that need no swarm before it connects: against an address nobody answers, a bad flag
is named (exit 2), not hidden behind "could not reach any initial peer", and none crashes mid-training."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _unused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/QmWqn4F7t5kfKScHLUv8M6ZUuTKEJvTrmxRpEk7cy9NpcZ"


@pytest.mark.parametrize("flags, named", [
    (["--micro-batch-size", "-1"], "--micro-batch-size -1: must be at least 1"),
    (["--micro-batch-size", "0"], "--micro-batch-size 0: must be at least 1"),
    (["--display", "bogus"], "--display 'bogus': use auto, rich, log or none"),
    (["--compile", "maybe"], "--compile 'maybe': use auto, on or off"),
    (["--threads", "0"], "--threads (or SWARM_THREADS) must be at least 1, not 0"),
    (["--max-runtime", "-10"], "--max-runtime -10: must be a positive number of seconds"),  # ran a whole join
    (["--max-runtime", "0"], "--max-runtime 0: must be a positive number of seconds"),
    (["--max-runtime", "nan"], "--max-runtime nan: must be a positive number of seconds"),  # meant "never stop"
    (["--device", "tpu"], "--device"),
    (["--from-checkpoint", "./does/not/exist"], "--from-checkpoint ./does/not/exist: no such folder"),
    (["--model-dir", "./does/not/exist"], "--model-dir does/not/exist: no such folder"),
    (["--tokenizer-dir", "./does/not/exist"], "--tokenizer-dir does/not/exist: no such folder"),
    (["--data-dir", "/does/not/exist"], "--data-dir /does/not/exist: no such folder; give your copy of the run's data "
                                        "folder, or leave --data-dir out if the run needs none"),
    (["--hours", "22:00-7am"], "--hours 22:00-7am (or SWARM_HOURS): '7am' is not a time of day as HH:MM; give windows "
                               "of local time as HH:MM-HH:MM, 24-hour, e.g. --hours 22:00-07:00, or --hours "
                               "12:00-13:00,22:00-07:00 for several"),
    (["--hours", "22:00"], "--hours 22:00 (or SWARM_HOURS): '22:00' is not a window from one time to another; give"),
    (["--hours", "12:00-13:00,,22:00-07:00"], "--hours 12:00-13:00,,22:00-07:00 (or SWARM_HOURS): an empty window;"),
    (["--hours", "00:00-24:00"], "--hours 00:00-24:00 (or SWARM_HOURS): '00:00-24:00' ends where it starts (leave "
                                 "--hours out to train at any time)"),
])
def test_a_bad_local_flag_is_named_before_connecting(tmp_path, flags, named):
    completed = subprocess.run(
        [sys.executable, "-m", "swarm.cli", "join", "--initial-peers", _unused_address(), "--identity",
         str(tmp_path / "identity"), *flags],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert named in output, output
    assert "could not reach" not in output and "Traceback" not in output, output


@pytest.mark.parametrize("flag, value, named", [
    ("--display", "bogus", "--display 'bogus'"),
    ("--hours", "10pm-7am", "--hours 10pm-7am (or SWARM_HOURS)"),
    ("--threads", "0", "--threads (or SWARM_THREADS) must be at least 1, not 0"),
    ("--device", "tpu", "--device 'tpu': use auto, cpu, cuda, cuda:N or mps"),
    ("--cache-dir", "{afile}", "--cache-dir {afile}: is a file; give a folder"),
    ("--stats-file", "{afile}/stats.json", "--stats-file {afile}/stats.json: is in {afile}, which is a file"),
])
def test_a_bad_local_flag_is_named_before_torch_and_hivemind_are_imported(tmp_path, flag, value, named):
    # they take seconds to import: a mistyped flag was named only after them
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    value, named = value.format(afile=afile), named.format(afile=afile)
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "swarm.cli", "join", "--initial-peers", _unused_address(),
         "--identity", str(tmp_path / "identity"), flag, value],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2 and f"error: {named}" in completed.stderr, completed.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in completed.stderr.splitlines()
                if line.startswith("import time:")}
    assert "typer" in imported, "no import times: the check below would prove nothing"
    heavy = {"torch", "hivemind", "transformers"}
    assert not imported & heavy, sorted(imported & heavy)


def test_a_stats_file_that_is_a_folder_is_refused_before_connecting(tmp_path):
    folder = tmp_path / "stats"
    folder.mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "swarm.cli", "join", "--initial-peers", _unused_address(), "--identity",
         str(tmp_path / "identity"), "--stats-file", str(folder)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2 and f"--stats-file {folder}: is a folder" in output, output
    assert list(folder.iterdir()) == [] and not (tmp_path / "stats.tmp").exists()


def _join(tmp_path: Path, *flags: str, env: dict | None = None,
          initial_peers: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "swarm.cli", "join", "--initial-peers", initial_peers or _unused_address(),
         "--identity", str(tmp_path / "identity"), *flags],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})), capture_output=True, text=True,
        timeout=120)


def _refused(completed: subprocess.CompletedProcess, message: str) -> None:
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert f"error: {message}" in output, output
    assert "could not reach" not in output and "Traceback" not in output, output


def test_swarm_threads_set_to_zero_is_named_with_the_flag(tmp_path):
    # it said "--threads must be at least 1" to someone who had set SWARM_THREADS=0 and passed no --threads
    completed = _join(tmp_path, env={"SWARM_THREADS": "0"})
    _refused(completed, "--threads (or SWARM_THREADS) must be at least 1, not 0")


@pytest.mark.parametrize("flag, path, message", [
    # a cache "folder" that is a file was a NotADirectoryError traceback once the data was tokenised
    ("--cache-dir", "afile", "--cache-dir {}: is a file; give a folder"),
    ("--cache-dir", "afile/cache", "--cache-dir {}: cannot create {}, as {afile} is a file; give a folder"),
    # a stats file in a "folder" that is a file meant no stats at all, without a word (rc 0)
    ("--stats-file", "afile/stats.json",
     "--stats-file {}: is in {afile}, which is a file; give a file path in a folder"),
    ("--stats-file", "afile/sub/stats.json",
     "--stats-file {}: cannot create {parent}, as {afile} is a file; give a file path in a folder"),
    ("--data-dir", "afile", "--data-dir {}: is a file, not a folder; give your copy of the run's data folder"),
])
def test_a_path_flag_that_a_file_blocks_is_refused_before_connecting(tmp_path, flag, path, message):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    given = tmp_path / path
    completed = _join(tmp_path, flag, str(given))
    expected = message.format(given, given, afile=afile, parent=given.parent)
    _refused(completed, expected)
    assert afile.read_text() == "not a folder"


def test_a_stats_file_folder_that_cannot_be_created_is_refused(tmp_path):
    _refused(_join(tmp_path, "--stats-file", "/proc/no/such/stats.json"),
             "--stats-file /proc/no/such/stats.json: cannot create /proc/no/such")


def test_a_port_another_program_listens_on_is_named_with_the_fix(tmp_path):
    # it said "could not start the DHT node: Daemon failed to start: ... bind: address already in use"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for host in ("127.0.0.1", "0.0.0.0"):
            _refused(_join(tmp_path, "--host", host, "--port", str(port)),
                     f"--port {port} is already in use on this machine (by another program): pick another port or "
                     "leave --port out (any free port)")


def test_the_port_of_the_coordinator_it_joins_is_named_not_taken_for_an_unreachable_peer(tmp_path):
    # hivemind's p2p daemon shares a port with another libp2p node (SO_REUSEPORT): it started on the coordinator's
    # own port, then said "could not reach any initial peer ... check that `swarm launch` is still running"
    from swarm.network import create_dht, join_addresses

    coordinator = create_dht([], host="127.0.0.1", port=0)
    try:
        address = next(a for a in join_addresses(coordinator) if a.startswith("/ip4/127.0.0.1/"))
        port = int(address.split("/")[4])
        completed = _join(tmp_path, "--port", str(port), initial_peers=address)
    finally:
        coordinator.shutdown()
    _refused(completed, f"--port {port} is already in use on this machine (by another program): pick another port")


def test_swarm_hours_set_wrong_is_named_with_the_flag(tmp_path):
    _refused(_join(tmp_path, env={"SWARM_HOURS": "9-17"}),
             "--hours 9-17 (or SWARM_HOURS): '9' is not a time of day as HH:MM; give windows of local time as "
             "HH:MM-HH:MM, 24-hour, e.g. --hours 22:00-07:00")


def _closed_window() -> str:
    """An --hours window of this machine's local time that opens in about two hours: closed for the whole test."""
    now = time.localtime()
    start = (now.tm_hour * 60 + now.tm_min + 120) % (24 * 60)
    end = (start + 60) % (24 * 60)
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def test_a_flag_that_needs_torch_is_named_at_once_not_when_the_hours_window_opens(tmp_path):
    _refused(_join(tmp_path, "--hours", _closed_window(), "--device", "tpu"),
             "--device 'tpu': use auto, cpu, cuda, cuda:N or mps")


def test_outside_its_hours_a_volunteer_says_when_it_starts_and_waits_holding_nothing(tmp_path):
    window = _closed_window()
    command = [sys.executable, "-m", "swarm.cli", "join", "--initial-peers", _unused_address(), "--identity",
               str(tmp_path / "identity"), "--hours", window]
    # with SIGINT as from a terminal: a test run started in the background (`&` in a script) ignores it, and an
    # ignored signal stays ignored across exec, so the Ctrl-C below did nothing and the test hung
    as_from_a_terminal = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                          "os.execv(sys.argv[1], sys.argv[1:])")
    waiting = subprocess.Popen(
        [sys.executable, "-c", as_from_a_terminal, *command],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    try:
        line = waiting.stdout.readline()
        assert f"[INFO] Outside --hours {window}: training starts at {window[:5]} (in 1 h 59 min)" in line or (
            "(in 2 h)" in line), line  # the minute may turn between the two clocks
        time.sleep(1.0)
        assert waiting.poll() is None, waiting.stdout.read()
        maps = Path(f"/proc/{waiting.pid}/maps").read_text()
        assert "libtorch" not in maps and "hivemind" not in maps, "torch or hivemind loaded while waiting"
        children = Path(f"/proc/{waiting.pid}/task/{waiting.pid}/children").read_text().split()
        assert children == [], children
        started = time.monotonic()
        waiting.send_signal(signal.SIGINT)  # Ctrl-C
        assert waiting.wait(timeout=30) == 130
        assert time.monotonic() - started < 5.0
        assert waiting.stdout.read().strip() == "interrupted"
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()


def test_a_max_runtime_that_ends_before_the_hours_open_leaves_at_once(tmp_path):
    completed = _join(tmp_path, "--hours", _closed_window(), "--max-runtime", "3600")
    assert completed.returncode == 0, completed.stderr
    assert "after this volunteer's --max-runtime (3600 s) ends: nothing to train, leaving" in completed.stderr


def _checked(tmp_path: Path, **settings) -> None:
    from peer.volunteer import Volunteer, VolunteerSettings

    volunteer = Volunteer(VolunteerSettings(initial_peers=[_unused_address()], device="cpu",
                                            identity_dir=str(tmp_path / "identity"), **settings))
    volunteer._check_local_settings()


def test_an_infinite_max_runtime_means_no_limit_and_is_accepted(tmp_path):
    _checked(tmp_path, max_runtime_s=float("inf"))
    _checked(tmp_path, max_runtime_s=0.5)


def test_the_folders_of_the_stats_file_and_the_cache_are_made_before_connecting(tmp_path):
    stats, cache = tmp_path / "new" / "deeper" / "stats.json", tmp_path / "cache" / "swarm"
    _checked(tmp_path, stats_file=str(stats), cache_dir=str(cache))
    assert stats.parent.is_dir() and not stats.exists() and cache.is_dir()


def test_a_micro_batch_larger_than_the_run_s_batch_is_lowered_with_a_reason(caplog):
    from peer.volunteer import _capped_micro_batch_size

    with caplog.at_level(logging.INFO, logger="swarm.peer"):
        assert _capped_micro_batch_size(100_000, 100_000, target_batch_size=64) == 64
    assert [record.getMessage() for record in caplog.records] == [
        "--micro-batch-size 100000 is larger than the run's whole batch (collaboration.target_batch_size, 64 samples "
        "per epoch): using 64"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="swarm.peer"):
        assert _capped_micro_batch_size(32, 32, target_batch_size=64) == 32  # within the batch: as asked
        assert _capped_micro_batch_size(128, None, target_batch_size=64) == 64  # picked for the hardware: no news
    assert caplog.records == []
