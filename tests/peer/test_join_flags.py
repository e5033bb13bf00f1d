"""`swarm join` checks the flags that need no swarm before it connects: against an address nobody answers, a bad flag
is named (exit 2), not hidden behind "could not reach any initial peer", and none crashes mid-training."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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
    (["--threads", "0"], "--threads must be at least 1"),
    (["--device", "tpu"], "--device"),
    (["--from-checkpoint", "./does/not/exist"], "--from-checkpoint ./does/not/exist: no such folder"),
    (["--model-dir", "./does/not/exist"], "--model-dir does/not/exist: no such folder"),
    (["--tokenizer-dir", "./does/not/exist"], "--tokenizer-dir does/not/exist: no such folder"),
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
