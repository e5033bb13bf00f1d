"""Churn: a real swarm keeps training while volunteers are killed with SIGKILL and restarted.

    python benchmarks/churn.py                                  # 4 peers, 2 arms x 300 s, a kill every 30 s (~14 min)
    python benchmarks/churn.py --quick                          # 2 peers, both arms at once x 30 s, 1 kill (~2 min)
    python benchmarks/churn.py --arms churn --duration 3600     # the one-hour memory run (churn arm only)

Each arm starts a fresh run of the product on 127.0.0.1: `swarm launch` (the coordinator, with its dashboard) and
`--peers` x `swarm join` (1 torch thread each, own identity folder, own stats file), all separate processes, on the
tiny-stdlib recipe (only `run.id` and a safety `limits.max_wall_time_s` differ). Once every volunteer has contributed
its first samples the measured window of `--duration` seconds begins:

- `no-churn`: nothing happens.
- `churn`: every `--period-s` seconds one volunteer is killed with SIGKILL (its whole process tree: the training
  process, hivemind's DHT and averager processes and p2pd; `--kill main` kills the training process only and
  leaves the rest to PR_SET_PDEATHSIG) and restarted at once with the same identity folder. Victims rotate over
  volunteers 1..N-1; volunteer 0 is never killed, so that one peer shows the memory of a long-lived volunteer.

Measured, from the coordinator's view (its dashboard JSON API and its ledger files):

- throughput: granted samples (ledger) of the swarm epochs that began inside the window, divided by the time from
  the first to the last of those epoch starts; `throughput_kept` = churn / no-churn. The epoch rate times the
  target batch (what the optimiser steps on) is reported too.
- stall: the longest time the swarm epoch did not advance inside the window (polled every second; the coordinator
  refreshes its view every 2 s), against the recipe's `collaboration.averaging_timeout_s`.
- peer pause: the longest single wait of any volunteer's training for the swarm after its first sample (the
  optimizer step that ends an epoch, or a state download), from each incarnation's stats file. The swarm can keep
  advancing while one peer stands still, which the stall does not show.
- loss: the mean training loss the peers report (coordinator's `mean_training_loss`) over time and per epoch, and
  the validation loss of every version the coordinator published.
- memory: every `--memory-interval-s`, each volunteer's process tree (training process + hivemind's forked DHT and
  averager processes + p2pd): RSS summed (counts shared pages once per process: an upper bound), PSS summed (shared
  pages split between the processes that map them: the tree's real share) and USS. "Beyond model" subtracts the
  fp32 tensors that training and hivemind keep by design (`tensor_copies` below). Slope: least squares over the
  samples after `--memory-warmup-s`, for the never-killed volunteer and for each restarted incarnation.
- orphans: processes of a killed tree still alive (not zombies) 10 s after the kill.

Writes benchmarks/results/churn.{json,md,png}. The machine is shared: the load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_results_dir_option,
    parse_benchmark_args,
    RECIPES_DIR, REPO_ROOT, describe_machine, load_average, machine, process_tree, timestamp,
    write_results,
)

ARMS = ("no-churn", "churn")
MB = 1e6
# fp32 tensors of the model's size that a volunteer keeps by design with the tiny recipe (hivemind.Optimizer with
# offload_optimizer=True, its default when given params; reuse_tensors=True follows from it), hivemind 1.1.12:
TENSOR_COPIES = {
    "model parameters": 1,
    "model gradients (.grad after backward)": 1,
    "GradientAverager accumulators (grad_averager.py:98)": 1,
    "GradientAverager averaged tensors, shared memory (grad_averager.py:106)": 1,
    "TrainingStateAverager offloaded parameters = AdamW's parameters, shared (state_averager.py:175)": 1,
    "gradients of the offloaded parameters (state_averager.py:227)": 1,
    "AdamW exp_avg and exp_avg_sq (averaged in place: reuse_tensors shares them, no extra copy)": 2,
}
ORPHAN_CHECK_DELAY_S = 10.0


def _die_with_parent() -> None:
    """preexec_fn: the swarm processes die with this harness (SIGKILL), so an interrupted benchmark leaves nothing."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SwarmProcess:
    """One `python -m swarm.cli ...` process; output goes to its own log file."""

    def __init__(self, args: list[str], log_path: Path):
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        with open(log_path, "w") as log:
            self.popen = subprocess.Popen([sys.executable, "-m", "swarm.cli", *args], stdout=log,
                                          stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, preexec_fn=_die_with_parent)
        self.started_at = time.time()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def search(self, pattern: str) -> re.Match | None:
        return re.search(pattern, self.output())

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while True:
            match = self.search(pattern)
            if match:
                return match
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.log_path.name}: exited with code {self.popen.returncode} before "
                                   f"{pattern!r}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.log_path.name}: no {pattern!r} within {timeout_s:.0f} s:\n"
                                   f"{self.output()[-3000:]}")
            time.sleep(0.5)


def tree_memory(pid: int) -> dict | None:
    """RSS, PSS and USS (MB) summed over the process tree, and its process names."""
    import psutil

    rss = pss = uss = 0
    names = []
    for process in process_tree(pid):
        try:
            info = process.memory_full_info()
            names.append(process.name())
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        uss += getattr(info, "uss", info.rss)
    if not names:
        return None
    return dict(rss_mb=round(rss / MB, 1), pss_mb=round(pss / MB, 1), uss_mb=round(uss / MB, 1), processes=len(names),
                names=sorted(names))


def kill_tree(pid: int, whole_tree: bool) -> list[tuple[int, float, str]]:
    """SIGKILL the process (and, with `whole_tree`, every descendant); returns (pid, create_time, name) of the tree."""
    import psutil

    tree = process_tree(pid)
    members = []
    for process in tree:
        try:
            members.append((process.pid, process.create_time(), process.name()))
        except psutil.Error:
            pass
    for process in tree if whole_tree else tree[:1]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    return members


def survivors(members: list[tuple[int, float, str]]) -> list[dict]:
    """Members of a killed tree that still run (same pid and start time, not a zombie)."""
    import psutil

    alive = []
    for pid, created, name in members:
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - created) < 0.01 and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(dict(pid=pid, name=name, parent=process.ppid()))
        except psutil.Error:
            continue
    return alive


def torch_shared_memory_mb(folder: Path = Path("/dev/shm")) -> float:
    """MB in torch's shared-memory files (hivemind's file_system sharing strategy), whoever created them."""
    total = 0
    try:
        for entry in os.scandir(folder):
            if entry.name.startswith("torch_"):
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
    except OSError:
        return 0.0
    return round(total / MB, 1)


def fetch_json(url: str, timeout_s: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def least_squares_slope(points: list[tuple[float, float]]) -> float | None:
    """Slope of y over x by ordinary least squares (None for fewer than 3 points or no spread in x)."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx <= 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx


def second_half_slope(samples: list[dict], key: str) -> float | None:
    """MB per hour over the second half of a process's life: past the warm-up (copy-on-write pages of the forked
    hivemind processes being copied, caches filling), which dominates a slope taken from the start."""
    if not samples:
        return None
    middle = (samples[0]["age_s"] + samples[-1]["age_s"]) / 2
    value = least_squares_slope([(m["age_s"] / 3600, m[key]) for m in samples if m["age_s"] >= middle])
    return None if value is None else round(value, 1)


def epoch_durations(epoch_starts: list[tuple[int, float]], average_state_every: int) -> dict:
    """How long the swarm's epochs took, from (epoch, first seen at) pairs in time order.

    Split by whether an epoch began with a state averaging: hivemind averages the parameters and optimiser statistics
    when a peer enters an epoch divisible by `average_state_every`, in the background of that epoch's training. The
    longest stall is usually one of those epochs. Only epochs whose successor was seen count (an epoch the poll
    skipped has no duration of its own).
    """
    epoch_s = {epoch: next_t - t for (epoch, t), (next_epoch, next_t) in zip(epoch_starts, epoch_starts[1:])
               if next_epoch == epoch + 1}
    with_state = [s for epoch, s in epoch_s.items() if epoch % average_state_every == 0]
    without = [s for epoch, s in epoch_s.items() if epoch % average_state_every != 0]
    return dict(
        epoch_s_median=round(statistics.median(epoch_s.values()), 2) if epoch_s else None,
        epoch_s_mean_with_state_averaging=round(statistics.fmean(with_state), 2) if with_state else None,
        epoch_s_mean_without=round(statistics.fmean(without), 2) if without else None,
        epochs_with_state_averaging=len(with_state),
    )


CPU_MICRO_BATCH = 16  # what tiny-stdlib's `micro_batch_size: auto` picks on CPU


def write_recipe(path: Path, run_id: str, max_wall_time_s: float, average_state_every: int | None = None,
                 wait_out_windows: bool = False, diloco_inner_steps: int | None = None, peers: int = 4) -> dict:
    """The tiny-stdlib recipe with its own run id; only a safety wall-time limit (the harness stops the run).

    `average_state_every` overrides the recipe's state averaging period, to measure what that averaging costs;
    `wait_out_windows` sets `collaboration.close_groups_early: false`; `diloco_inner_steps` switches to mode diloco
    with that many inner steps, and a target batch of what `peers` peers process per round (micro-batch 16 on CPU).
    """
    import yaml

    recipe = yaml.safe_load((RECIPES_DIR / "tiny-stdlib.yaml").read_text())
    recipe["run"]["id"] = run_id
    recipe["limits"] = {"max_wall_time_s": float(max_wall_time_s)}
    if average_state_every is not None:
        recipe["collaboration"]["average_state_every"] = average_state_every
    if wait_out_windows:
        recipe["collaboration"]["close_groups_early"] = False
    if diloco_inner_steps is not None:
        recipe["collaboration"]["mode"] = "diloco"
        recipe["collaboration"]["diloco"] = {"inner_steps": diloco_inner_steps}
        recipe["collaboration"]["target_batch_size"] = peers * diloco_inner_steps * CPU_MICRO_BATCH
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return recipe


def count_model_parameters(recipe_path: Path) -> int:
    from swarm.model import build_model, count_parameters
    from swarm.recipe import load_recipe
    from swarm.tokenizer import build_tokenizer

    recipe = load_recipe(recipe_path)
    tokenizer = build_tokenizer(recipe.tokenizer)
    model = build_model(recipe.model, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
    return count_parameters(model)


@dataclass
class Volunteer:
    index: int
    folder: Path
    incarnation: int = 0
    process: SwarmProcess | None = None
    history: list[dict] = field(default_factory=list)  # one row per incarnation

    @property
    def name(self) -> str:
        return f"peer-{self.index}"


class Arm:
    """One arm: a fresh coordinator and volunteers, a measured window, then everything is stopped."""

    def __init__(self, name: str, args: argparse.Namespace, root: Path, recipe_path: Path, recipe: dict):
        self.name, self.args, self.recipe_path, self.recipe = name, args, recipe_path, recipe
        self.folder = root / name
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        self.volunteers = [Volunteer(i, self.folder / f"peer-{i}") for i in range(args.peers)]
        self.coordinator: SwarmProcess | None = None
        self.dashboard_url = ""
        self.address = ""
        self.status_polls: list[dict] = []
        self.memory: list[dict] = []
        self.shm: list[tuple[float, float]] = []  # (seconds since start, MB in /dev/shm/torch_*)
        self.kills: list[dict] = []
        self.pending_orphan_checks: list[tuple[float, dict, list]] = []
        self.t0 = self.t1 = 0.0

    # ---------------------------------------------------------------- processes
    def launch(self) -> None:
        self.coordinator = SwarmProcess(
            ["launch", str(self.recipe_path), "--host", "127.0.0.1", "--port", "0",
             "--state-dir", str(self.folder / "coordinator"), "--checkpoint-dir", str(self.folder / "checkpoints"),
             "--ledger-dir", str(self.folder / "ledger"), "--summary-file", str(self.folder / "summary.json"),
             "--dashboard-port", str(free_port())],
            self.folder / "logs" / "coordinator.log")
        self.address = self.coordinator.wait_for(r"swarm join --initial-peers (\S+)", self.args.startup_timeout_s).group(1)
        self.dashboard_url = self.coordinator.wait_for(r"Dashboard: (http://\S+/)", 10).group(1)
        for volunteer in self.volunteers:
            self.start(volunteer)

    def start(self, volunteer: Volunteer) -> None:
        volunteer.incarnation += 1
        volunteer.folder.mkdir(parents=True, exist_ok=True)
        (volunteer.folder / "stats.json").unlink(missing_ok=True)  # each incarnation's own, read when it ends
        volunteer.process = SwarmProcess(
            ["join", "--initial-peers", self.address, "--identity", str(volunteer.folder / "identity"),
             "--name", volunteer.name, "--team", "churn", "--threads", "1", "--host", "127.0.0.1",
             "--stats-file", str(volunteer.folder / "stats.json"), "--display", "log"],
            self.folder / "logs" / f"{volunteer.name}.{volunteer.incarnation}.log")
        volunteer.history.append(dict(incarnation=volunteer.incarnation, pid=volunteer.process.pid,
                                      started_at=volunteer.process.started_at, killed_at=None,
                                      first_sample_s=None, loaded_state_epoch=None))

    def kill(self, volunteer: Volunteer, now: float) -> dict:
        members = kill_tree(volunteer.process.pid, whole_tree=self.args.kill == "tree")
        volunteer.process.popen.wait(timeout=30)
        self._note_incarnation(volunteer)
        volunteer.history[-1]["killed_at"] = now
        event = dict(time_s=round(now - self.t0, 2), peer=volunteer.name, incarnation=volunteer.incarnation,
                     processes_in_tree=len(members), process_names=sorted({m[2] for m in members}))
        self.pending_orphan_checks.append((now + ORPHAN_CHECK_DELAY_S, event, members))
        self.kills.append(event)
        return event

    def _note_incarnation(self, volunteer: Volunteer) -> None:
        row = volunteer.history[-1]
        output = volunteer.process.output()
        match = re.search(r"First samples contributed ([\d.]+) s after start", output)
        row["first_sample_s"] = float(match.group(1)) if match else None
        match = re.search(r"Loaded the swarm's state at epoch (\d+)", output)
        row["loaded_state_epoch"] = int(match.group(1)) if match else None
        row["state_load_timed_out"] = "No peer sent its state within" in output
        try:  # written every few seconds by the volunteer; a SIGKILLed one's last write
            stats = json.loads((volunteer.folder / "stats.json").read_text())
        except (OSError, ValueError):
            stats = {}
        row["longest_pause_s"] = stats.get("longest_pause_s")
        for key in ("sync_s", "compute_s", "wall_s"):
            row[key] = stats.get(key)
        row["log"] = volunteer.process.log_path.name

    def stop_all(self) -> list[dict]:
        """SIGKILL every tree (the coordinator's ledger is crash-safe); returns what outlived it 10 s later."""
        members = []
        for volunteer in self.volunteers:
            if volunteer.process is not None:
                self._note_incarnation(volunteer)
                members += kill_tree(volunteer.process.pid, whole_tree=True)
        if self.coordinator is not None:
            members += kill_tree(self.coordinator.pid, whole_tree=True)
        for process in [v.process for v in self.volunteers if v.process] + [self.coordinator]:
            if process is not None:
                try:
                    process.popen.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        time.sleep(2.0)
        return survivors(members)

    # ---------------------------------------------------------------- the arm
    def run(self) -> dict:
        args = self.args
        started = time.time()
        try:
            self.launch()
            for volunteer in self.volunteers:
                volunteer.process.wait_for(r"First samples contributed", args.startup_timeout_s)
            self.t0 = time.time()
            startup_s = self.t0 - started
            print(f"[{self.name}] all {args.peers} volunteers training after {startup_s:.0f} s; "
                  f"measuring {args.duration:.0f} s", flush=True)
            self._measure()
            self.t1 = time.time()
            ledger_wait_s = self._wait_for_ledger()
            epochs = self._poll("/api/epochs") or []
        finally:
            leftovers = self.stop_all()
        self._finish_orphan_checks(force=True)
        return self._summarise(startup_s, ledger_wait_s, epochs, leftovers)

    def _measure(self) -> None:
        args = self.args
        kill_times = [self.t0 + k * args.period_s for k in range(1, 10**6) if k * args.period_s < args.duration - 1e-6]
        if self.name != "churn":
            kill_times = []
        victims = self.volunteers[1:]
        next_memory = self.t0
        kills_done = 0
        while True:
            now = time.time()
            if now >= self.t0 + args.duration:
                break
            if kills_done < len(kill_times) and now >= kill_times[kills_done]:
                victim = victims[kills_done % len(victims)]
                event = self.kill(victim, now)
                self.start(victim)
                kills_done += 1
                print(f"[{self.name}] t={event['time_s']:.0f} s: killed {victim.name} ({event['processes_in_tree']} "
                      f"processes), restarted as incarnation {victim.incarnation}", flush=True)
            self._record_status(now)
            if now >= next_memory:
                self._record_memory(now)
                next_memory += args.memory_interval_s
            self._finish_orphan_checks()
            time.sleep(max(0.0, 1.0 - (time.time() - now)))

    def _poll(self, path: str):
        try:
            return fetch_json(self.dashboard_url.rstrip("/") + path)
        except Exception:
            return None

    def _record_status(self, now: float) -> None:
        status = self._poll("/api/status")
        if status is None:
            return
        self.status_polls.append(dict(t=round(now - self.t0, 2), epoch=status["epoch"],
                                      alive_peers=status["alive_peers"],
                                      samples_per_second=status["samples_per_second"],
                                      loss=status["mean_training_loss"]))

    def _record_memory(self, now: float) -> None:
        self.shm.append((round(now - self.t0, 2), torch_shared_memory_mb()))
        for volunteer in self.volunteers:
            if volunteer.process is None or volunteer.process.popen.poll() is not None:
                continue
            memory = tree_memory(volunteer.process.pid)
            if memory is None:
                continue
            memory.pop("names")
            self.memory.append(dict(t=round(now - self.t0, 2), peer=volunteer.name,
                                    incarnation=volunteer.incarnation,
                                    age_s=round(time.time() - volunteer.process.started_at, 2), **memory))
        memory = tree_memory(self.coordinator.pid) if self.coordinator is not None else None
        if memory is not None:
            memory.pop("names")
            self.memory.append(dict(t=round(now - self.t0, 2), peer="coordinator", incarnation=1,
                                    age_s=round(now - self.coordinator.started_at, 2), **memory))

    def _finish_orphan_checks(self, force: bool = False) -> None:
        now = time.time()
        still_pending = []
        for due, event, members in self.pending_orphan_checks:
            if now < due and not force:
                still_pending.append((due, event, members))
                continue
            if now < due:
                time.sleep(due - now)
            alive = survivors(members)
            event["orphans"] = len(alive)
            event["orphan_processes"] = alive
        self.pending_orphan_checks = still_pending

    def _ledger_entries(self) -> list[dict]:
        path = self.folder / "ledger" / "entries.jsonl"
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except OSError:
            return []

    def _wait_for_ledger(self) -> float:
        """Keep the swarm up (no kills) until the ledger has committed the window's epochs, at most a while."""
        last_epoch = max((p["epoch"] for p in self.status_polls), default=0)
        started = time.time()
        deadline = started + self.args.ledger_wait_s
        while time.time() < deadline:
            committed = max((e["epoch"] for e in self._ledger_entries()), default=-1)
            if committed >= last_epoch - 1:
                break
            self._record_status(time.time())
            time.sleep(2.0)
        return time.time() - started

    # ---------------------------------------------------------------- results
    def _summarise(self, startup_s: float, ledger_wait_s: float, epoch_history: list[dict],
                   leftovers: list[dict]) -> dict:
        args = self.args
        window = [p for p in self.status_polls if p["t"] <= args.duration]
        # the time each epoch was first seen by this harness (polled every second)
        first_seen: dict[int, float] = {}
        for poll in window:
            first_seen.setdefault(poll["epoch"], poll["t"])
        start_epoch = window[0]["epoch"] if window else 0
        began_inside = sorted(e for e in first_seen if e > start_epoch)
        throughput = self._throughput(began_inside, first_seen)
        advances = sorted(first_seen.items())
        gaps = [b[1] - a[1] for a, b in zip(advances, advances[1:])]
        if advances:
            gaps.append(args.duration - advances[-1][1])  # the swarm may be stuck at the end
            gaps.insert(0, advances[0][1])
        max_stall_s = max(gaps, default=float(args.duration))
        timeout_s = self.recipe["collaboration"]["averaging_timeout_s"]
        durations = epoch_durations(advances, self.recipe["collaboration"]["average_state_every"])

        loss_curve = [dict(t=p["t"], epoch=p["epoch"], loss=p["loss"]) for p in window if p["loss"] is not None]
        loss_by_epoch: dict[int, float] = {}
        for point in loss_curve:
            loss_by_epoch[point["epoch"]] = point["loss"]  # the last value seen during the epoch
        tail = [p["loss"] for p in loss_curve if p["t"] >= args.duration - min(30.0, args.duration / 5)]
        val_losses = [dict(epoch=row["epoch"], t=round(row["time"] - self.t0, 1), val_loss=row["val_loss"])
                      for row in epoch_history if row.get("val_loss") is not None]
        # the dashboard turns a NaN validation loss into null; the published versions keep it
        versions = self.published_versions()
        return dict(
            arm=self.name,
            startup_s=round(startup_s, 1),
            ledger_wait_s=round(ledger_wait_s, 1),
            **throughput,
            epochs_in_window=(window[-1]["epoch"] - start_epoch) if window else 0,
            start_epoch=start_epoch,
            end_epoch=window[-1]["epoch"] if window else 0,
            max_stall_s=round(max_stall_s, 1),
            **durations,
            averaging_timeout_s=timeout_s,
            stalled_longer_than_timeout=max_stall_s > timeout_s,
            **self._pauses(timeout_s),
            mean_alive_peers=round(statistics.fmean(p["alive_peers"] for p in window), 2) if window else None,
            final_loss=round(statistics.fmean(tail), 4) if tail else None,
            loss_by_epoch={str(e): round(v, 4) for e, v in sorted(loss_by_epoch.items())},
            loss_curve=loss_curve,
            val_loss=val_losses,
            published_versions=versions,
            model_diverged=any(not v["val_loss_finite"] for v in versions),
            epoch_starts=[dict(epoch=e, t=t) for e, t in advances],
            memory=self._memory_summary(),
            memory_samples=self.memory,
            kills=len(self.kills),
            restarts=sum(len(v.history) - 1 for v in self.volunteers),
            kill_events=self.kills,
            orphans=sum(event.get("orphans", 0) for event in self.kills),
            leftover_processes_after_teardown=len(leftovers),
            incarnations={v.name: v.history for v in self.volunteers},
            work_folder=str(self.folder),
        )

    def _pauses(self, timeout_s: float) -> dict:
        """The longest time a volunteer's training stood still waiting for the swarm (after its first sample)."""
        rows = [dict(peer=v.name, incarnation=row["incarnation"], longest_pause_s=row.get("longest_pause_s"))
                for v in self.volunteers for row in v.history if row.get("longest_pause_s") is not None]
        never_killed = [row["longest_pause_s"] for row in rows if row["peer"] == self.volunteers[0].name]
        longest = max((row["longest_pause_s"] for row in rows), default=None)
        return dict(
            longest_peer_pause_s=None if longest is None else round(longest, 1),
            longest_peer_pause_never_killed_s=round(max(never_killed), 1) if never_killed else None,
            peer_paused_longer_than_timeout=None if longest is None else longest > timeout_s,
            peer_pauses=rows,
        )

    def published_versions(self) -> list[dict]:
        """Epoch and validation loss of every version the coordinator published (NaN: the swarm's model diverged)."""
        versions = []
        for path in sorted((self.folder / "checkpoints").glob("epoch-*/swarm.json")):
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            value = info.get("val_loss")
            finite = isinstance(value, (int, float)) and math.isfinite(value)
            versions.append(dict(epoch=info.get("epoch"), val_loss=value if finite else None, val_loss_finite=finite))
        return versions

    def _throughput(self, began_inside: list[int], first_seen: dict[int, float]) -> dict:
        """Granted samples of the epochs that began inside the window, over the time between the first and last start."""
        target = self.recipe["collaboration"]["target_batch_size"]
        if len(began_inside) < 2:
            return dict(samples_per_s=0.0, target_samples_per_s=0.0, epochs_per_min=0.0, granted_samples=0,
                        claimed_samples=0, throughput_epochs=began_inside, ledger_complete=False)
        first, last = began_inside[0], began_inside[-1]
        span_s = first_seen[last] - first_seen[first]
        entries = [e for e in self._ledger_entries() if first <= e["epoch"] < last]
        granted = sum(e["granted_samples"] for e in entries)
        claimed = sum(e["claimed_samples"] for e in entries)
        committed = max((e["epoch"] for e in self._ledger_entries()), default=-1)
        return dict(
            samples_per_s=round(granted / span_s, 2),
            target_samples_per_s=round((last - first) * target / span_s, 2),
            epochs_per_min=round((last - first) * 60 / span_s, 2),
            granted_samples=granted,
            claimed_samples=claimed,
            throughput_epochs=[first, last],
            throughput_span_s=round(span_s, 1),
            ledger_complete=committed >= last - 1,
        )

    def _memory_summary(self) -> dict:
        args = self.args
        parameters = args.parameters
        model_bytes_mb = parameters * 4 * sum(TENSOR_COPIES.values()) / MB
        volunteer_rows = [m for m in self.memory if m["peer"] != "coordinator"]
        coordinator_rows = [m for m in self.memory if m["peer"] == "coordinator"]

        def slope(rows: list[dict], key: str, warmup_s: float = args.memory_warmup_s) -> float | None:
            points = [(m["age_s"] / 3600, m[key]) for m in rows if m["age_s"] >= warmup_s]
            value = least_squares_slope(points)
            return None if value is None else round(value, 1)

        never_killed, restarted = [], []
        for volunteer in self.volunteers:
            for row in volunteer.history:
                samples = [m for m in volunteer_rows if m["peer"] == volunteer.name
                           and m["incarnation"] == row["incarnation"]]
                if not samples:
                    continue
                # a restarted process imports, loads the state, then trains: its slope starts after its first samples
                warmup_s = max(args.memory_warmup_s, (row.get("first_sample_s") or 0.0) + 10.0)
                item = dict(peer=volunteer.name, incarnation=row["incarnation"],
                            samples=len(samples), slope_after_age_s=round(warmup_s, 1),
                            span_s=round(samples[-1]["age_s"] - samples[0]["age_s"], 1),
                            peak_pss_mb=max(m["pss_mb"] for m in samples),
                            peak_rss_mb=max(m["rss_mb"] for m in samples),
                            pss_slope_mb_per_hour=slope(samples, "pss_mb", warmup_s),
                            rss_slope_mb_per_hour=slope(samples, "rss_mb", warmup_s),
                            uss_slope_mb_per_hour=slope(samples, "uss_mb", warmup_s),
                            pss_slope_second_half_mb_per_hour=second_half_slope(samples, "pss_mb"))
                killed = row["killed_at"] is not None or row["incarnation"] > 1
                (restarted if killed else never_killed).append(item)

        def median(values):
            values = [v for v in values if v is not None]
            return round(statistics.median(values), 1) if values else None

        peak_pss = max((m["pss_mb"] for m in volunteer_rows), default=None)
        peak_rss = max((m["rss_mb"] for m in volunteer_rows), default=None)
        return dict(
            peak_rss_mb=peak_rss,
            peak_pss_mb=peak_pss,
            peak_uss_mb=max((m["uss_mb"] for m in volunteer_rows), default=None),
            model_state_mb=round(model_bytes_mb, 1),
            beyond_model_mb_peak=None if peak_pss is None else round(peak_pss - model_bytes_mb, 1),
            beyond_model_rss_mb_peak=None if peak_rss is None else round(peak_rss - model_bytes_mb, 1),
            processes_per_volunteer=max((m["processes"] for m in volunteer_rows), default=None),
            slope_mb_per_hour=dict(
                never_killed_pss=median(i["pss_slope_mb_per_hour"] for i in never_killed),
                never_killed_rss=median(i["rss_slope_mb_per_hour"] for i in never_killed),
                never_killed_pss_second_half=median(i["pss_slope_second_half_mb_per_hour"] for i in never_killed),
                restarted_pss_median=median(i["pss_slope_mb_per_hour"] for i in restarted),
                restarted_rss_median=median(i["rss_slope_mb_per_hour"] for i in restarted),
            ),
            never_killed=never_killed,
            restarted=restarted,  # every incarnation that was killed or is a restart

            # torch's shared-memory files in /dev/shm (every process on the machine): owned by no process once a killed
            # tree took its torch_shm_manager along, so no process's PSS shows them
            shm_mb_first=self.shm[0][1] if self.shm else None,
            shm_mb_last=self.shm[-1][1] if self.shm else None,
            shm_mb_peak=max((mb for _, mb in self.shm), default=None),
            shm_slope_mb_per_hour=(None if len(self.shm) < 3 else
                                   round(least_squares_slope([(t / 3600, mb) for t, mb in self.shm]) or 0.0, 1)),
            coordinator_peak_pss_mb=max((m["pss_mb"] for m in coordinator_rows), default=None),
            coordinator_pss_slope_mb_per_hour=slope(coordinator_rows, "pss_mb"),
        )


# -------------------------------------------------------------------- report
def mode_note(settings: dict) -> str:
    """', mode diloco, H=20' for a DiLoCo run; nothing for DeDLOC (the recipe's mode)."""
    if settings.get("mode") == "diloco":
        return f", mode diloco, H={settings.get('inner_steps')}"
    return ""


def markdown(settings: dict, results: dict, info: dict) -> str:
    arms = results["arms"]
    lines = [
        "# churn: a swarm under SIGKILL churn vs without",
        "",
        f"{timestamp()}. {describe_machine(info)}, {info.get('load_average_at_end', ['?'])[0]} at the end.",
        f"{settings['peers']} volunteers (`swarm join`, 1 thread each) and a coordinator (`swarm launch`) on 127.0.0.1, "
        f"recipe tiny-stdlib ({settings['parameters'] / 1e6:.2f}M parameters, target batch "
        f"{settings['target_batch_size']}{mode_note(settings)}). Window {settings['duration_s']:.0f} s per arm; "
        "churn: one volunteer "
        f"(peers 1..{settings['peers'] - 1} in turn) SIGKILLed ({settings['kill']}) and restarted every "
        f"{settings['period_s']:.0f} s.",
        "",
        "| arm | samples/s (granted) | epochs/min | max stall s (timeout) | longest peer pause s | final loss | "
        "kills | orphans | "
        "peak PSS MB | peak RSS-sum MB | beyond model MB (PSS) | slope MB/h never-killed (PSS) | "
        "same, second half of the window | slope MB/h restarted, median (PSS) | /dev/shm torch MB first -> last |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        memory = arm["memory"]
        slopes = memory["slope_mb_per_hour"]
        lines.append(
            f"| {name} | {arm['samples_per_s']:.1f} | {arm['epochs_per_min']:.1f} | {arm['max_stall_s']:.0f} "
            f"({arm['averaging_timeout_s']:.0f}) | {_fmt(arm.get('longest_peer_pause_s'), 0)} | "
            f"{_fmt(arm['final_loss'], 3)} | {arm['kills']} | {arm['orphans']} | "
            f"{_fmt(memory['peak_pss_mb'], 0)} | {_fmt(memory['peak_rss_mb'], 0)} | "
            f"{_fmt(memory['beyond_model_mb_peak'], 0)} | {_fmt(slopes['never_killed_pss'], 0)} | "
            f"{_fmt(slopes.get('never_killed_pss_second_half'), 0)} | {_fmt(slopes['restarted_pss_median'], 0)} | {_fmt(memory.get('shm_mb_first'), 0)} -> "
            f"{_fmt(memory.get('shm_mb_last'), 0)} |")
    lines.append("")
    epoch_lines = [f"- {name}: epochs took {arm['epoch_s_median']:.1f} s (median); those that began with a state "
                   f"averaging (every {settings['average_state_every']} epochs) "
                   f"{_fmt(arm['epoch_s_mean_with_state_averaging'], 1)} s on average, the others "
                   f"{_fmt(arm['epoch_s_mean_without'], 1)} s."
                   for name, arm in arms.items() if arm.get("epoch_s_median") is not None]
    if epoch_lines:
        lines += [*epoch_lines, ""]
    if results.get("throughput_kept") is not None:
        lines.append(f"**throughput kept: {results['throughput_kept']:.2f}** (goal >= 0.80; epoch rate ratio "
                     f"{_fmt(results.get('epoch_rate_kept'), 2)}). Loss at epoch {results.get('common_epoch')}: "
                     f"no-churn {_fmt(results.get('loss_at_common_epoch', {}).get('no-churn'), 3)}, churn "
                     f"{_fmt(results.get('loss_at_common_epoch', {}).get('churn'), 3)}.")
        lines.append("")
    diverged = [name for name, arm in arms.items() if arm.get("model_diverged")]
    if diverged:
        lines += [f"**The model diverged (NaN validation loss of a published version) in: {', '.join(diverged)}.** "
                  "The training-loss curve then shows the peers' last finite loss: it is not a loss curve.", ""]
    lines += [
        "Throughput: ledger-granted samples of the epochs that began in the window over the time between their "
        "starts. Stall: longest time the swarm epoch did not advance (polled every 1 s). Peer pause: longest single "
        "wait of any volunteer's training for the swarm after its first sample (the step that ends an epoch, or a "
        "state download), from its own stats. Memory: each volunteer's "
        "process tree (training process, hivemind DHT and averager processes, p2pd); PSS counts shared pages once "
        "(RSS-sum counts them in every process: an upper bound); 'beyond model' subtracts "
        f"{settings['model_state_mb']:.0f} MB = {sum(TENSOR_COPIES.values())} fp32 copies of the parameters "
        "(see settings.tensor_copies). Slopes: least squares over samples older than "
        f"{settings['memory_warmup_s']:.0f} s per incarnation. Orphans: processes of a killed tree alive "
        f"{ORPHAN_CHECK_DELAY_S:.0f} s after the kill.",
    ]
    return "\n".join(lines) + "\n"


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def plot(results: dict, settings: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    arms = results["arms"]
    colours = {"no-churn": "tab:blue", "churn": "tab:red"}
    figure, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for name, arm in arms.items():
        colour = colours.get(name, "black")
        starts = arm["epoch_starts"]
        axes[0].step([s["t"] for s in starts], [s["epoch"] - arm["start_epoch"] for s in starts], where="post",
                     color=colour, label=f"{name}: {arm['samples_per_s']:.1f} samples/s, max stall "
                                         f"{arm['max_stall_s']:.0f} s")
        curve = arm["loss_curve"]
        axes[1].plot([p["t"] for p in curve], [p["loss"] for p in curve], color=colour, label=f"{name} (training)")
        if arm["val_loss"]:
            axes[1].plot([v["t"] for v in arm["val_loss"]], [v["val_loss"] for v in arm["val_loss"]], "o--",
                         color=colour, label=f"{name} (validation, published versions)")
        for peer in sorted({m["peer"] for m in arm["memory_samples"] if m["peer"] != "coordinator"}):
            for incarnation in sorted({m["incarnation"] for m in arm["memory_samples"] if m["peer"] == peer}):
                rows = [m for m in arm["memory_samples"] if m["peer"] == peer and m["incarnation"] == incarnation]
                axes[2].plot([m["t"] for m in rows], [m["pss_mb"] for m in rows], color=colour,
                             alpha=0.9 if peer == "peer-0" else 0.45,
                             linewidth=2 if peer == "peer-0" else 1,
                             label=f"{name}: peer-0 (never killed)" if peer == "peer-0" else None)
        for event in arm["kill_events"]:
            for axis in axes:
                axis.axvline(event["time_s"], color=colour, alpha=0.25, linestyle=":")
    axes[0].set_ylabel("swarm epochs since window start")
    axes[0].set_title(f"{settings['peers']} volunteers, tiny-stdlib; dotted: SIGKILL + restart")
    axes[1].set_ylabel("loss (nats/token)")
    axes[2].set_ylabel("volunteer tree PSS (MB)")
    axes[2].set_xlabel("seconds since window start")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def loss_at_epoch(arm: dict, epoch: int) -> float | None:
    values = [(int(e), v) for e, v in arm["loss_by_epoch"].items() if int(e) <= epoch]
    return max(values)[1] if values else None


def run_benchmark(args: argparse.Namespace) -> dict:
    info = machine()
    root = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="swarm-churn-"))
    root.mkdir(parents=True, exist_ok=True)
    recipe_path = root / "recipe.yaml"
    safety_s = args.duration + args.startup_timeout_s + args.ledger_wait_s + 600
    recipe = write_recipe(recipe_path, "churn-bench", safety_s, args.average_state_every, args.wait_out_windows,
                          args.inner_steps, args.peers)
    args.parameters = count_model_parameters(recipe_path)
    settings = dict(
        peers=args.peers, duration_s=args.duration, period_s=args.period_s, arms=list(args.arms), kill=args.kill,
        victims=[f"peer-{i}" for i in range(1, args.peers)], threads_per_volunteer=1,
        arms_ran_in_parallel=args.parallel_arms,
        memory_interval_s=args.memory_interval_s, memory_warmup_s=args.memory_warmup_s, quick=args.quick,
        recipe="recipes/tiny-stdlib.yaml (run.id churn-bench, limits.max_wall_time_s as a safety net)",
        target_batch_size=recipe["collaboration"]["target_batch_size"],
        close_groups_early=recipe["collaboration"].get("close_groups_early", True),
        mode=recipe["collaboration"].get("mode", "dedloc"),
        inner_steps=args.inner_steps,
        averaging_timeout_s=recipe["collaboration"]["averaging_timeout_s"],
        matchmaking_time_s=recipe["collaboration"]["matchmaking_time_s"],
        average_state_every=recipe["collaboration"]["average_state_every"],
        parameters=args.parameters, tensor_copies=TENSOR_COPIES,
        model_state_mb=round(args.parameters * 4 * sum(TENSOR_COPIES.values()) / MB, 1),
        orphan_check_delay_s=ORPHAN_CHECK_DELAY_S, work_dir=str(root),
    )
    arms: dict = {}
    errors: dict = {}

    def run_arm(name: str) -> None:
        print(f"[{name}] starting ({timestamp()}, load {load_average()})", flush=True)
        try:
            arms[name] = arm = Arm(name, args, root, recipe_path, recipe).run()
        except Exception as error:  # reported after the other arm is done
            errors[name] = error
            return
        print(f"[{name}] {arm['samples_per_s']:.1f} samples/s, {arm['epochs_in_window']} epochs, max stall "
              f"{arm['max_stall_s']:.0f} s, longest peer pause {_fmt(arm['longest_peer_pause_s'], 0)} s, "
              f"peak PSS {arm['memory']['peak_pss_mb']} MB, kills {arm['kills']}, orphans {arm['orphans']}",
              flush=True)

    try:
        if args.parallel_arms:  # the smoke test: both swarms at once (their figures share the CPU: not comparable)
            threads = [threading.Thread(target=run_arm, args=(name,)) for name in args.arms]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for name in args.arms:
                run_arm(name)
        if errors:
            name, error = next(iter(errors.items()))
            raise RuntimeError(f"arm {name} failed: {error}") from error
        arms = {name: arms[name] for name in args.arms}
    finally:
        if not args.keep_work_dir and not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)
    results: dict = dict(arms=arms)
    if "churn" in arms and "no-churn" in arms and arms["no-churn"]["samples_per_s"] > 0:
        results["throughput_kept"] = round(arms["churn"]["samples_per_s"] / arms["no-churn"]["samples_per_s"], 3)
        base = arms["no-churn"]["epochs_per_min"]
        results["epoch_rate_kept"] = round(arms["churn"]["epochs_per_min"] / base, 3) if base else None
        common = min(arms["churn"]["end_epoch"], arms["no-churn"]["end_epoch"])
        results["common_epoch"] = common
        results["loss_at_common_epoch"] = {name: loss_at_epoch(arm, common) for name, arm in arms.items()}
    else:
        results["throughput_kept"] = None
    churn = arms.get("churn")
    results["goals"] = dict(
        throughput_kept_at_least_0_8=None if results["throughput_kept"] is None else results["throughput_kept"] >= 0.8,
        model_stayed_finite=not any(a["model_diverged"] for a in arms.values()),
        no_stall_longer_than_averaging_timeout=all(not a["stalled_longer_than_timeout"] for a in arms.values()),
        no_peer_paused_longer_than_averaging_timeout=all(not a["peer_paused_longer_than_timeout"]
                                                         for a in arms.values()),
        beyond_model_under_1_5_gb=all((a["memory"]["beyond_model_mb_peak"] or 0) < 1500 for a in arms.values()),
        no_orphans=all(a["orphans"] == 0 and a["leftover_processes_after_teardown"] == 0 for a in arms.values()),
        memory_slope_note="a slope over minutes is dominated by warm-up; run --arms churn --duration 3600 for the "
                          "one-hour figure" if (churn or {}).get("memory") and args.duration < 1800 else None,
    )
    info["load_average_at_end"] = load_average()
    document = write_results(args.name, settings, results, markdown(settings, results, info),
                             plot=lambda path: plot(results, settings, path), machine_info=info,
                             results_dir=args.results_dir)
    return document


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 peers, both arms at once x 30 s, 1 kill (smoke test; figures not comparable).")
    parser.add_argument("--peers", type=int, default=None, help="Volunteers (default 4; 2 with --quick).")
    parser.add_argument("--duration", type=float, default=None,
                        help="Measured seconds per arm (default 300; 20 with --quick; 3600 for the memory run).")
    parser.add_argument("--period-s", type=float, default=None,
                        help="Seconds between kills in the churn arm (default 30; 10 with --quick).")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="Arms to run, in this order.")
    parser.add_argument("--kill", choices=["tree", "main"], default="tree",
                        help="SIGKILL the volunteer's whole process tree, or its main process only (then hivemind's "
                             "children must die by PR_SET_PDEATHSIG).")
    parser.add_argument("--memory-interval-s", type=float, default=None, help="Memory sampling period (default 5).")
    parser.add_argument("--memory-warmup-s", type=float, default=None,
                        help="Ignore a process's first seconds for the memory slope (default 60; 5 with --quick).")
    parser.add_argument("--startup-timeout-s", type=float, default=240.0,
                        help="Seconds for the coordinator and every volunteer to start training.")
    parser.add_argument("--ledger-wait-s", type=float, default=None,
                        help="After the window, wait at most this long for the ledger (default 40; 15 with --quick).")
    parser.add_argument("--average-state-every", type=int, default=None,
                        help="Override the recipe's state averaging period in epochs (default: the recipe's 5).")
    parser.add_argument("--mode", choices=("dedloc", "diloco"), default="dedloc",
                        help="Collaboration mode (default dedloc, the recipe's); diloco sets the target batch to what "
                        "the peers process per round.")
    parser.add_argument("--inner-steps", type=int, default=None,
                        help="DiLoCo inner steps per round (default 20; only with --mode diloco).")
    parser.add_argument("--wait-out-windows", action="store_true",
                        help="Groups form only at the end of their matchmaking window (collaboration."
                        "close_groups_early: false), for an A/B against the default.")
    parser.add_argument("--name", default="churn", help="Results file stem.")
    add_results_dir_option(parser)
    parser.add_argument("--work-dir", default=None, help="Keep the runs' files (logs, ledger) in this folder.")
    parser.add_argument("--keep-work-dir", action="store_true", help="Do not delete the temporary work folder.")
    args = parse_benchmark_args(parser, argv)
    args.peers = args.peers if args.peers is not None else (2 if args.quick else 4)
    args.duration = args.duration if args.duration is not None else (30.0 if args.quick else 300.0)
    args.period_s = args.period_s if args.period_s is not None else (15.0 if args.quick else 30.0)
    args.parallel_arms = args.quick
    args.memory_interval_s = args.memory_interval_s if args.memory_interval_s is not None else (2.0 if args.quick else 5.0)
    args.memory_warmup_s = args.memory_warmup_s if args.memory_warmup_s is not None else (5.0 if args.quick else 60.0)
    args.ledger_wait_s = args.ledger_wait_s if args.ledger_wait_s is not None else (15.0 if args.quick else 40.0)
    if args.peers < 2:
        parser.error(f"--peers {args.peers}: a swarm needs at least 2 volunteers (volunteer 0 is never killed); "
                     "use --peers 2 or more")
    if args.duration <= 0:
        parser.error(f"--duration {args.duration:g}: the measured window must be positive; e.g. --duration 300")
    if args.period_s <= 0 or ("churn" in args.arms and args.period_s >= args.duration):
        parser.error(f"--period-s {args.period_s:g}: must be positive and below --duration ({args.duration:g}) "
                     "so that the churn arm kills at least once; e.g. --period-s 30 --duration 300")
    if args.inner_steps is not None and args.mode != "diloco":
        parser.error(f"--inner-steps {args.inner_steps}: only mode diloco has inner steps; add --mode diloco")
    if args.mode == "diloco":
        args.inner_steps = 20 if args.inner_steps is None else args.inner_steps
        if args.inner_steps < 1:
            parser.error(f"--inner-steps {args.inner_steps}: DiLoCo takes 1 or more inner steps per round; e.g. 20")
    if args.average_state_every is not None and args.average_state_every < 1:
        parser.error(f"--average-state-every {args.average_state_every}: a period of 1 or more epochs; e.g. 10")
    if args.memory_interval_s <= 0:
        parser.error(f"--memory-interval-s {args.memory_interval_s:g}: must be positive; e.g. 5")
    if len(set(args.arms)) != len(args.arms):
        parser.error("--arms: name each arm once, e.g. --arms no-churn churn")
    try:
        import psutil  # noqa: F401
    except ImportError:
        parser.error("psutil is missing: pip install psutil (it measures the volunteers' memory)")
    document = run_benchmark(args)
    results = document["results"]
    print(f"wrote {args.results_dir / args.name}.json; throughput kept {results['throughput_kept']}")


if __name__ == "__main__":
    main()
