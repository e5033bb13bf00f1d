"""`swarm demo`: a whole swarm on one machine, as real processes talking over loopback.

It writes the recipe (with the demo's time limit) into a fresh output folder, starts `swarm launch` and then N
`swarm join` processes exactly as a person would, waits for the run to end, and leaves in the folder:

- the final model (config.json + model.safetensors + tokenizer): `from_pretrained(<folder>)` loads it;
- `summary.json`: peers, epochs, samples_total, wall_s, initial/final validation loss, averaged_rounds;
- `checkpoints/` (every published version), `logs/` (one log per process), `peers/` (identities, stats).

Ctrl-C stops it as it stops a real swarm: the coordinator saves a final version from the volunteers' state, then the
volunteers finish their epoch and leave; a second Ctrl-C stops everything at once. The processes run in process
groups of their own, so a terminal's Ctrl-C reaches only the demo, which passes it on in that order.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from swarm.errors import SwarmError, UsageError
from swarm.recipe import load_recipe

logger = logging.getLogger("swarm.demo")

PEER_START_STAGGER_S = 3.0  # peers started at the same instant have been seen to split the DHT (hivemind #624)
SHUTDOWN_GRACE_S = 150.0
STOP_TIMEOUT_S = 150.0  # after Ctrl-C, for the coordinator's final version (its fetch gives up after 90 s)
VOLUNTEERS_LEAVE_S = 30.0  # after the final version: volunteers see it within a few seconds and leave


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _swarm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "swarm.cli", *args]


def _environment() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _follow(stream, log_file: Path, echo_prefix: str | None, found: dict, pattern: re.Pattern | None) -> None:
    """Copy a child's output to its log; echo it (prefixed) and capture the join address when it appears."""
    with open(log_file, "a", encoding="utf-8") as log:
        for line in stream:
            log.write(line)
            log.flush()
            if pattern is not None and "address" not in found:
                match = pattern.search(line)
                if match:
                    found["address"] = match.group(1)
            if echo_prefix is not None and line.strip():
                print(f"{echo_prefix} {line.rstrip()}", file=sys.stderr, flush=True)


def check_output_folder(output: Path) -> None:
    """A demo writes into a new or empty folder: one with an earlier run would mix the two (its ledger, its
    checkpoints' `latest`, its model and summary), so it is refused and left as it is."""
    if not output.exists():
        return
    if not output.is_dir():
        raise UsageError(f"--output {output} is a file: pass a new or empty folder")
    try:
        entries = sorted(entry.name for entry in output.iterdir())
    except OSError as error:
        raise UsageError(f"--output {output}: cannot read the folder ({error.strerror}): pass another one") from None
    if entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise UsageError(f"--output {output} is not empty ({shown}): a demo would mix its files with the ones there; "
                         "pass a new or empty folder, or leave --output out for demo-output/<time>")


def run_demo(recipe_path: Path, num_peers: int = 2, epochs: int = 40, max_duration_s: float = 540.0,
             output: Path | None = None, verbose: bool = False) -> Path:
    """Run the demo swarm; returns the output folder (summary.json and the final model are inside)."""
    folder = Path(output or Path("demo-output") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    check_output_folder(folder)
    recipe = load_recipe(recipe_path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--output {folder}: cannot create the folder ({error.strerror}): pass another one") from None
    (folder / "logs").mkdir(exist_ok=True)
    data = json.loads(recipe.to_json())
    # the run ends after `epochs` global steps; the wall-time cap only bites on a slow or busy machine
    data["limits"].update(max_epochs=epochs, max_wall_time_s=float(max_duration_s))
    duration_s = max_duration_s
    run_recipe = folder / "recipe.yaml"
    run_recipe.write_text(f"# {recipe.run.id}, as run by `swarm demo` ({num_peers} peers, {epochs} epochs)\n"
                          + yaml.safe_dump(data, sort_keys=False))

    env = _environment()
    threads = max(1, (os.cpu_count() or 2) // num_peers)
    port = _free_port()
    processes: list[subprocess.Popen] = []
    found: dict = {}  # the coordinator's join address, once it is up
    logger.info(f"Demo: coordinator + {num_peers} volunteer(s) on loopback, {epochs} epochs (at most "
                f"{max_duration_s:.0f} s); output in {folder}")
    restore = _stop_on_termination()
    try:
        coordinator = subprocess.Popen(
            _swarm_command("launch", str(run_recipe), "--host", "127.0.0.1", "--port", str(port),
                           "--state-dir", str(folder / "coordinator"), "--checkpoint-dir", str(folder / "checkpoints"),
                           "--summary-file", str(folder / "summary.json"), "--final-model-dir", str(folder),
                           "--ledger-dir", str(folder / "ledger"), "--dashboard-port", "0",
                           *(["--verbose"] if verbose else [])),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, process_group=0)
        processes.append(coordinator)
        follower = threading.Thread(
            target=_follow, daemon=True,
            args=(coordinator.stdout, folder / "logs" / "coordinator.log", "[coordinator]", found,
                  re.compile(r"swarm join --initial-peers (\S+)")))
        follower.start()
        deadline = time.monotonic() + 300
        while "address" not in found:
            if coordinator.poll() is not None or time.monotonic() > deadline:
                raise SwarmError(f"the coordinator did not start; see {folder / 'logs' / 'coordinator.log'}")
            time.sleep(0.2)

        for index in range(num_peers):
            peer_dir = folder / "peers" / f"peer-{index}"
            peer_dir.mkdir(parents=True, exist_ok=True)
            peer = subprocess.Popen(
                _swarm_command("join", "--initial-peers", found["address"], "--identity", str(peer_dir / "identity"),
                               "--name", f"demo-peer-{index}", "--team", "demo", "--threads", str(threads),
                               "--host", "127.0.0.1", "--stats-file", str(peer_dir / "stats.json"),
                               "--display", "log", *(["--verbose"] if verbose else [])),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, process_group=0)
            processes.append(peer)
            threading.Thread(target=_follow, daemon=True,
                             args=(peer.stdout, folder / "logs" / f"peer-{index}.log", None, {}, None)).start()
            logger.info(f"Started volunteer {index} (log: {folder / 'logs' / f'peer-{index}.log'})")
            time.sleep(PEER_START_STAGGER_S)

        coordinator.wait(timeout=duration_s + SHUTDOWN_GRACE_S + 300)
        follower.join(timeout=5)
        for peer in processes[1:]:
            try:
                peer.wait(timeout=SHUTDOWN_GRACE_S)
            except subprocess.TimeoutExpired:
                peer.terminate()
        if coordinator.returncode != 0:
            raise SwarmError(f"the coordinator exited with code {coordinator.returncode}; "
                             f"see {folder / 'logs' / 'coordinator.log'}")
    except subprocess.TimeoutExpired:
        raise SwarmError(f"the demo did not finish in time; logs are in {folder / 'logs'}") from None
    except KeyboardInterrupt:
        _stop(processes, folder, coordinator_up="address" in found)
        raise
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        restore()

    summary_path = folder / "summary.json"
    if not summary_path.exists():
        raise SwarmError(f"the run ended without a summary; see {folder / 'logs'}")
    summary = json.loads(summary_path.read_text())
    _print_summary(summary)
    return folder


def _stop_on_termination() -> Callable[[], None]:
    """SIGTERM (`kill`, `timeout`, a service manager) and SIGHUP (its terminal closed) stop the demo as Ctrl-C does.
    They killed it at once: its coordinator and volunteers, each in its own process group so that a terminal's
    Ctrl-C reaches the demo alone, trained on as orphans until --max-duration, their logs lost. Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, _frame) -> None:
        logger.info(f"{signal.Signals(signum).name}: stopping the demo as Ctrl-C would")
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def _stop(processes: list[subprocess.Popen], folder: Path, coordinator_up: bool) -> None:
    """Ctrl-C: the demo's swarm is the whole run, so the run is ended as at a limit: the coordinator (SIGUSR1) lets
    the volunteers finish the epoch in progress, credits every epoch and saves the final version, and the volunteers
    leave once it is saved. Another Ctrl-C stops every process at once."""
    coordinator, volunteers = processes[:1], processes[1:]
    try:
        if coordinator_up and coordinator[0].poll() is None:
            logger.info("Ending the run: the volunteers finish the epoch in progress, then the coordinator credits "
                        "every epoch and saves the final version (press Ctrl-C again to stop at once)")
            coordinator[0].send_signal(signal.SIGUSR1)
            _wait_all(coordinator, STOP_TIMEOUT_S)
            _wait_all(volunteers, VOLUNTEERS_LEAVE_S)  # they leave once they see the final version saved
        for group in (coordinator, volunteers):  # what is still running: stopped as `swarm launch`/`join` stop
            _signal_all(group, signal.SIGINT)
            _wait_all(group, STOP_TIMEOUT_S)
    except KeyboardInterrupt:
        logger.info(f"Stopping every process at once; what was saved so far is in {folder}")
        for _ in range(2):  # a second Ctrl-C each: the coordinator skips its final version, volunteers leave now
            _signal_all(processes, signal.SIGINT)
            time.sleep(0.3)
        raise
    summary_path = folder / "summary.json"
    if summary_path.exists():
        _print_summary(json.loads(summary_path.read_text()))
    logger.info(f"Stopped. What the swarm trained is in {folder}")


def _signal_all(processes: list[subprocess.Popen], signum: int) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signum)


def _wait_all(processes: list[subprocess.Popen], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def _print_summary(summary: dict) -> None:
    final = summary.get("final_val_loss")
    initial = summary.get("initial_val_loss")
    drop = f" ({100 * (1 - final / initial):.0f}% lower)" if final and initial else ""
    print(f"\n{summary['peers']} peer(s) trained {summary['epochs']} epochs on {summary['samples_total']} samples in "
          f"{summary['wall_s']:.0f} s; validation loss {'n/a' if initial is None else f'{initial:.3f}'} -> "
          f"{'n/a' if final is None else f'{final:.3f}'}{drop}; {summary['averaged_rounds']} averaging rounds "
          f"with 2+ peers.", file=sys.stderr)
