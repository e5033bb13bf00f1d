"""A real `swarm launch` in its own process group, and real run folders (published versions, a ledger) to give it.

The coordinator tests drive the CLI exactly as an organiser would, on 127.0.0.1 only. Each process gets its own
process group, so a test can send a signal to the group (as systemd or `kill -- -PGID` does) without touching
pytest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]


def write_recipe(path: Path, run_id: str, **limits) -> Path:
    """The tiny recipe, made smaller and quicker (as the e2e tests do): a test needs rounds, not a good model."""
    recipe = yaml.safe_load((REPO / "recipes" / "tiny-stdlib.yaml").read_text())
    recipe["run"]["id"] = run_id
    recipe["model"]["config"].update(n_layer=2, n_embd=64, n_head=2, n_positions=64)
    recipe["data"].update(seq_len=64, stdlib_max_files=80, val_fraction=0.1, val_samples=32)
    recipe["optimizer"]["schedule"].update(warmup_steps=2, total_steps=100)
    recipe["collaboration"].update(target_batch_size=256, micro_batch_size=16, matchmaking_time_s=1.5,
                                   averaging_timeout_s=15.0, average_state_every=2, load_state_timeout_s=60.0)
    recipe["checkpoint"]["every_epochs"] = 5
    recipe["limits"] = limits
    path.write_text(yaml.safe_dump(recipe))
    return path


class RunFolder:
    """The folders one coordinator writes: state, checkpoints, ledger, summary (each passed by its flag)."""

    def __init__(self, root: Path):
        self.root = root
        self.state = root / "coordinator"
        self.checkpoints = root / "checkpoints"
        self.ledger = root / "ledger"
        self.summary = root / "summary.json"
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def flags(self) -> list[str]:
        return ["--state-dir", str(self.state), "--checkpoint-dir", str(self.checkpoints),
                "--ledger-dir", str(self.ledger), "--summary-file", str(self.summary)]

    def status(self) -> dict:
        return json.loads((self.state / "status.json").read_text())

    def publish_versions(self, recipe_path: Path, epochs: list[int]) -> dict[int, Path]:
        """Real versions of the recipe's model, as the coordinator publishes them, each with other weights."""
        from coordinator.checkpoint import VersionInfo, save_version
        from swarm.model import build_model
        from swarm.recipe import load_recipe
        from swarm.tokenizer import build_tokenizer

        recipe = load_recipe(recipe_path)
        tokenizer = build_tokenizer(recipe.tokenizer)
        model = build_model(recipe.model, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
        published = {}
        for epoch in epochs:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.01 * epoch)
            info = VersionInfo(epoch=epoch, samples_seen=256 * epoch, val_loss=4.0,
                               recipe_fingerprint=recipe.fingerprint, data_digest="0" * 64, data_description="test")
            published[epoch] = save_version(self.checkpoints, model, tokenizer, recipe, info)
        return published

    def credit_epochs(self, run_id: str, epochs: range, peer: str = "12D3KooWVolunteer") -> None:
        """Ledger entries for `epochs`, signed with the coordinator's own key (as a previous launch left them)."""
        from swarm.ledger import Ledger, LedgerEntry, load_or_create_signing_key

        key = load_or_create_signing_key(self.state / "ledger_signing_key.pem")
        with Ledger.open(self.ledger, key, run_id=run_id) as ledger:
            for epoch in epochs:
                ledger.commit_epoch([LedgerEntry(run_id=run_id, epoch=epoch, peer_id=peer, name="ada", team="",
                                                 claimed_samples=256, granted_samples=256, reason="", compute_s=2.0,
                                                 timestamp=time.time())])


def tree_digest(folder: Path) -> dict[str, str]:
    """sha1 of every file under `folder`: what "never deleted or replaced" is checked against."""
    return {path.relative_to(folder).as_posix(): hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


class SwarmProcess:
    """A `swarm` CLI process in its own process group; its combined output is collected and kept in a log file."""

    def __init__(self, args: list[str], log_path: Path):
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        env.pop("SWARM_VERBOSE", None)
        self.log_path = log_path
        self.lines: list[str] = []
        self.popen = subprocess.Popen([sys.executable, "-m", "swarm.cli", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                                      start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.popen.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output)
            if match:
                return match
            if self.popen.poll() is not None:
                self._reader.join(timeout=5)
                match = re.search(pattern, self.output)
                if match:
                    return match
                raise AssertionError(f"exited ({self.popen.returncode}) before {pattern!r}:\n{self.output[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.output[-3000:]}")

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log_path.stem} still running after {timeout_s:.0f} s:\n"
                                 f"{self.output[-3000:]}") from None
        self._reader.join(timeout=5)
        return code

    def interrupt(self) -> None:
        """Ctrl-C, as the e2e tests send it: to the main process only. (A terminal sends it to the whole foreground
        process group, hivemind's p2p daemons included, which die of it.)"""
        self.popen.send_signal(signal.SIGINT)

    def signal_group(self, signum: int) -> None:
        os.killpg(self.popen.pid, signum)

    def children(self) -> list[int]:
        """Process ids of the direct children (hivemind's DHT and averager processes, for a coordinator)."""
        found = []
        for task in Path(f"/proc/{self.popen.pid}/task").iterdir():
            found += [int(pid) for pid in (task / "children").read_text().split()]
        return found

    def stop(self) -> None:
        """Teardown: the whole group, whatever state the test left it in."""
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # children left behind by a coordinator that hung
        except ProcessLookupError:
            pass


def launch(run: RunFolder, recipe: Path, *extra: str, port: int = 0, dashboard_port: int | None = 0,
           name: str = "coordinator") -> SwarmProcess:
    args = ["launch", str(recipe), "--host", "127.0.0.1", "--port", str(port), *run.flags(),
            "--dashboard-port", str(-1 if dashboard_port is None else dashboard_port), *extra]
    number = len(list((run.root / "logs").glob(f"{name}-*.log")))
    return SwarmProcess(args, run.root / "logs" / f"{name}-{number}.log")


def join(run: RunFolder, address: str, name: str) -> SwarmProcess:
    """A volunteer on this machine (one thread), with its identity under the run folder."""
    args = ["join", "--initial-peers", address, "--identity", str(run.root / name / "identity"), "--name", name,
            "--team", "tests", "--threads", "1", "--host", "127.0.0.1", "--display", "log"]
    number = len(list((run.root / "logs").glob(f"{name}-*.log")))
    return SwarmProcess(args, run.root / "logs" / f"{name}-{number}.log")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def read_announcement(address: str, run_id: str):
    """The run's announcement as a volunteer reads it: through a real DHT node joined to `address`."""
    import hivemind

    from swarm import records

    dht = hivemind.DHT(initial_peers=[address], host_maddrs=["/ip4/127.0.0.1/tcp/0"], client_mode=True, start=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            announcement = records.read_announcements(dht.get(records.RUNS_KEY, latest=True)).get(run_id)
            if announcement is not None:
                return announcement
            time.sleep(0.5)
        raise AssertionError(f"no announcement of run {run_id!r} in the DHT at {address}")
    finally:
        dht.shutdown()
