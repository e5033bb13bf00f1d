"""Real swarms for end-to-end tests: `swarm launch` and `swarm join` as separate processes on 127.0.0.1."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from cli_process import CliProcess, write_test_recipe


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Swarm:
    """A coordinator plus volunteers in a temporary folder; everything is stopped at teardown."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.processes: list[CliProcess] = []
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        self.address: str | None = None

    def launch(self, recipe: Path, port: int | None = None, terminal: bool = False) -> CliProcess:
        """Start (or, with the same folder and port, restart) the coordinator; `terminal`: as a job in a terminal."""
        self.port = port or free_port()
        coordinator = CliProcess(["launch", str(recipe), "--host", "127.0.0.1", "--port", str(self.port),
                               "--state-dir", str(self.folder / "coordinator"),
                               "--checkpoint-dir", str(self.folder / "checkpoints"),
                               "--summary-file", str(self.folder / "summary.json"),
                               "--final-model-dir", str(self.folder / "final"),
                               "--ledger-dir", str(self.folder / "ledger"), "--dashboard-port", "0"],
                              self.folder / "logs" / f"coordinator-{len(self.processes)}.log", terminal=terminal)
        self.processes.append(coordinator)
        self.address = coordinator.wait_for(r"swarm join --initial-peers (\S+)", timeout_s=120).group(1)
        return coordinator

    def join(self, name: str, *extra: str, prefix: tuple[str, ...] = (), terminal: bool = False) -> CliProcess:
        peer_dir = self.folder / name
        peer = CliProcess(["join", "--initial-peers", self.address, "--identity", str(peer_dir / "identity"),
                        "--name", name, "--team", "tests", "--threads", "1", "--host", "127.0.0.1",
                        "--stats-file", str(peer_dir / "stats.json"), "--display", "log",
                        "--cache-dir", str(self.folder.parent / "data-cache"), *extra],
                       self.folder / "logs" / f"{name}.log", prefix, terminal)
        self.processes.append(peer)
        return peer

    def stats(self, name: str) -> dict:
        return json.loads((self.folder / name / "stats.json").read_text())

    def summary(self) -> dict:
        return json.loads((self.folder / "summary.json").read_text())

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def recipe_writer():
    return write_test_recipe


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the last lines of every swarm process, so a CI log alone can explain it."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for swarm in getattr(item, "_swarms", []):
        for process in swarm.processes:
            state = "running" if process.popen.poll() is None else f"exited {process.popen.returncode}"
            report.sections.append((f"{process.log_path.name} ({state}), last 25 lines", process.tail(25)))


@pytest.fixture
def swarm_factory(tmp_path, request):
    swarms: list[Swarm] = []
    request.node._swarms = swarms

    def make() -> Swarm:
        swarm = Swarm(tmp_path / f"swarm-{len(swarms)}")
        swarms.append(swarm)
        return swarm

    yield make
    for swarm in swarms:
        swarm.close()
