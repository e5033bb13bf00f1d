"""Joining a running swarm: time from `swarm join` to the first contributed samples, by model size and link.

    python benchmarks/join.py                    # tiny, 10m, 50m, 124m on loopback: about 15 minutes on 2 cores
    python benchmarks/join.py --quick            # tiny on loopback (smoke test): under a minute idle
    python benchmarks/join.py --models tiny 50m --links loopback 100mbit-25ms   # shaped links need benchmarks/netlab.py

Each row runs the real product on loopback: `swarm launch` (the coordinator) and one `swarm join` volunteer that
trains for `--warmup-epochs` swarm epochs, then one more `swarm join` with a fresh identity and a cold data cache
(a new volunteer). The row's figure is the wall time from that process's Popen to the end of its first contributed
micro-step ("First samples contributed" in its log: imports count, they are part of joining). The joiner's log
lines, stamped by this script as they arrive, split it into phases:

    imports_identity        process start -> "Joining the swarm through" (Python imports, identity keys created)
    dht_and_recipe          -> "Run '<id>'"            (DHT node up, bootstrapped, run announcement fetched)
    data                    -> "Data: "                (data built from a cold cache, identity checked)
    model                   -> "Model: "               (model built from the recipe, micro-batch picked)
    optimizer_and_progress  -> "Loading the current state from peers" (hivemind.Optimizer built, swarm progress)
    state_download          -> "Loaded the swarm's state at epoch N"   (parameters + optimiser state from a peer)
    first_micro_step        -> "First samples contributed"             (one forward/backward and opt.step())

Models: `tiny` is recipes/tiny-stdlib.yaml as shipped (0.84M parameters); `10m`, `50m` and `124m` derive it with
wider and deeper GPT-2 `model.config` sections (byte vocabulary, so the parameters sit in the transformer blocks),
and on this 2-core CPU machine use sequences of 64 tokens and micro-batches of 1 so that one micro-step stays
short: the point is the state download and the set-up. Every row sets target_batch_size to 4 micro-batches so the
warm-up epochs pass quickly, and never publishes a version mid-row (the coordinator would download the state too).

state_bytes: measured, the bytes the joiner's libp2p daemon received on its TCP sockets during the state_download
phase (kernel tcp_info via `ss`; loopback rows); and computed, parameters x 3 (weights and AdamW's two moments,
which hivemind sends with the state) x 4 bytes: swarm passes no `load_state_compression` to hivemind.Optimizer,
whose default is no compression, so the state travels in fp32 whatever `collaboration.compression` says. The
prediction column is fixed set-up (this model's loopback row without its state download) + computed state bytes
/ link rate.

cpu_seconds_to_first_sample: the CPU time (user + system) the joiner's process tree had used when its first-sample
line arrived, by process: the training process, hivemind's helper processes (DHT, averagers) and p2pd. On a
machine shared with other peers, as in the churn benchmark, this is what a restart takes from their training.
Writes benchmarks/results/join.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_results_dir_option,
    parse_benchmark_args,
    RECIPES_DIR,
    REPO_ROOT,
    describe_machine,
    load_average,
    machine,
    process_tree,
    timestamp,
    write_results,
)

# GPT-2 shapes derived from tiny-stdlib; with the byte vocabulary (259) a layer of width d holds ~12 d^2 parameters
MODELS: dict[str, dict | None] = {
    "tiny": None,  # the shipped recipe's own model (4 x 128)
    "10m": {"n_layer": 6, "n_head": 6, "n_embd": 384},
    "50m": {"n_layer": 8, "n_head": 8, "n_embd": 704},
    "124m": {"n_layer": 16, "n_head": 10, "n_embd": 800},
}
DERIVED_SEQ_LEN = 64
DERIVED_MICRO_BATCH = 1
# Named links: (rate in Mbit/s, one-way delay in ms), as in scaling.py
LINKS: dict[str, tuple[float, float] | None] = {"loopback": None, "1gbit-5ms": (1000, 5), "100mbit-25ms": (100, 25),
                                                "20mbit-50ms": (20, 50)}
PHASES = [
    ("imports_identity", re.compile(r"Joining the swarm through")),
    ("dht_and_recipe", re.compile(r"\] Run '")),
    ("data", re.compile(r"\] Data: ")),
    ("model", re.compile(r"\] Model: ")),
    ("optimizer_and_progress", re.compile(r"Loading the current state from peers|No peer is ahead of this one")),
    ("state_download",
     re.compile(r"Loaded the swarm's state at epoch|No peer sent its state|Loading state from peers failed")),
    ("first_micro_step", re.compile(r"First samples contributed")),
]
LOADED = re.compile(r"Loaded the swarm's state at epoch (\d+)")
ADDRESS = re.compile(r"swarm join --initial-peers (\S+)")
STATE_VALUES_PER_PARAMETER = 3  # weights, AdamW exp_avg and exp_avg_sq (hivemind sends the optimiser state too)
# hivemind.Optimizer(load_state_compression=NoCompression()) is the default and swarm keeps it: fp32 on the wire
STATE_BYTES_PER_VALUE = 4


class UsageError(Exception):
    pass


# ------------------------------------------------------------------------------------------------- one row
def derived_recipe(model: str, work_dir: Path) -> tuple[Path, dict]:
    """The tiny recipe with the model swapped (and settings that keep a row short); written as YAML."""
    import yaml

    from swarm.recipe import load_recipe

    recipe = load_recipe(RECIPES_DIR / "tiny-stdlib.yaml")
    data = json.loads(recipe.to_json())
    shape = MODELS[model]
    if shape is not None:
        data["model"]["config"].update(shape, n_positions=DERIVED_SEQ_LEN)
        data["data"]["seq_len"] = DERIVED_SEQ_LEN
        data["collaboration"]["micro_batch_size"] = DERIVED_MICRO_BATCH
    micro = data["collaboration"]["micro_batch_size"]
    micro = micro if isinstance(micro, int) else 16  # auto picks 16 on CPU
    data["run"]["id"] = f"join-bench-{model}"
    data["data"]["val_samples"] = 16  # the coordinator evaluates the model once at start
    data["collaboration"].update(target_batch_size=4 * micro, load_state_timeout_s=1800.0)
    data["checkpoint"].update(dir=str(work_dir / "checkpoints"), every_epochs=100_000)
    data["limits"].update(max_epochs=100_000, max_wall_time_s=None)
    path = work_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


def count_parameters_of(recipe_data: dict) -> int:
    """Parameters of the recipe's model, built on the meta device (no memory, no time)."""
    import torch
    import transformers

    from swarm.model import build_model_config
    from swarm.recipe import recipe_from_json
    from swarm.tokenizer import build_tokenizer

    recipe = recipe_from_json(json.dumps(recipe_data), source="join benchmark")
    tokenizer = build_tokenizer(recipe.tokenizer)
    config = build_model_config(recipe.model, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Child:
    """A `swarm` process whose output lines are logged and stamped (seconds since its Popen) as they arrive."""

    def __init__(self, argv: list[str], log_path: Path, popen=subprocess.Popen):
        self.log_path = log_path
        self.lines: list[tuple[float, str]] = []
        self.started = time.monotonic()
        self.process = popen([sys.executable, "-m", "swarm.cli", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=_environment(), cwd=REPO_ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w", encoding="utf-8") as log:
            for line in self.process.stdout:
                self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))
                log.write(line)
                log.flush()

    def find(self, pattern: re.Pattern) -> tuple[float, re.Match] | None:
        for stamp, line in list(self.lines):
            match = pattern.search(line)
            if match:
                return stamp, match
        return None

    def wait_for(self, pattern: re.Pattern, timeout_s: float, what: str) -> tuple[float, re.Match]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.find(pattern)
            if found:
                return found
            if self.process.poll() is not None:
                time.sleep(0.5)  # let the reader drain the last lines
                found = self.find(pattern)
                if found:
                    return found
                raise RuntimeError(f"{what}: the process exited with code {self.process.returncode}\n{self.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"{what}: not seen within {timeout_s:.0f} s\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        return f"--- {self.log_path.name}\n" + "\n".join(line for _, line in self.lines[-lines:])


def stop(children: list[Child], grace_s: float = 10.0) -> None:
    """SIGTERM each process, then kill what is left of each process tree (hivemind's DHT and p2pd children)."""
    import psutil

    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for child in children:
        try:
            tree = psutil.Process(child.process.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        for member in [*tree, psutil.Process(child.process.pid) if child.process.poll() is None else None]:
            try:
                if member is not None:
                    member.kill()
            except psutil.Error:
                pass
        child.process.wait()


_SS_OWNER = re.compile(r'users:\(\("p2pd",pid=(\d+)')
_SS_ADDRESSES = re.compile(r"^\S+\s+\d+\s+\d+\s+(\S+)\s+(\S+)")
_SS_RECEIVED = re.compile(r"bytes_received:(\d+)")


class ReceiveMeter:
    """Samples `read()` (bytes received so far) every `period_s`: (seconds since the child's Popen, bytes)."""

    def __init__(self, child: Child, read, period_s: float = 0.25):
        self.child, self.read, self.period_s = child, read, period_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                value = self.read()
            except Exception:  # a counter that cannot be read now (process gone, lab closing)
                value = None
            if value is not None:
                self.samples.append((time.monotonic() - self.child.started, value))

    def between(self, start_s: float, end_s: float) -> int | None:
        """Bytes received from `start_s` to `end_s` (nearest samples at or before start, at or after end)."""
        if not self.samples:
            return None
        before = [b for t, b in self.samples if t <= start_s]
        after = [b for t, b in self.samples if t >= end_s]
        first = before[-1] if before else 0
        last = after[0] if after else self.samples[-1][1]
        return last - first

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Loopback:
    """Every process on this machine's loopback; bytes from the joiner's p2pd sockets (tcp_info)."""

    link = None

    def __init__(self):
        self.coordinator_port = _free_port()

    def listen(self, host: int) -> list[str]:
        return ["--host", "127.0.0.1", "--port", str(self.coordinator_port if host == 0 else 0)]

    def initial_peer(self, printed: str) -> str:
        return printed

    def child(self, host: int, argv: list[str], log_path: Path) -> Child:
        return Child(argv, log_path)

    def meter(self, child: Child, host: int) -> "ReceiveMeter":
        return ReceiveMeter(child, lambda: _p2pd_bytes_received(child))

    def close(self) -> None:
        pass


class Lab:
    """Host 0 the coordinator, 1 the volunteer, 2 the joiner, each in its own network namespace behind `link`
    (benchmarks/netlab.py: tbf both ways, a delaying relay in front of each host); bytes from the joiner's eth0."""

    PORT = 31337

    def __init__(self, link_name: str):
        from benchmarks.netlab import Link, NetLab

        self.link = Link.parse(link_name)
        self.lab = NetLab(hosts=3, link=self.link)
        self.lab.start()

    def listen(self, host: int) -> list[str]:
        return ["--host", self.lab.host_ip(host), "--port", str(self.PORT),
                "--announce-host", self.lab.dial_address(host, self.PORT)]

    def initial_peer(self, printed: str) -> str:
        peer_id = printed.rsplit("/p2p/", 1)[1]
        return f"{self.lab.maddr(0, self.PORT)}/p2p/{peer_id}"

    def child(self, host: int, argv: list[str], log_path: Path) -> Child:
        return Child(argv, log_path, popen=lambda command, **kwargs: self.lab.popen(host, command, **kwargs))

    def meter(self, child: Child, host: int) -> "ReceiveMeter":
        return ReceiveMeter(child, lambda: self.lab.bytes(host)["received"])

    def close(self) -> None:
        self.lab.close()


def _p2pd_bytes_received(child: Child, _sockets: dict | None = None) -> int | None:
    """Bytes the child's libp2p daemon(s) received so far on their TCP sockets (kernel tcp_info via `ss`)."""
    import psutil

    try:
        daemons = {p.pid for p in psutil.Process(child.process.pid).children(recursive=True) if p.name() == "p2pd"}
    except psutil.Error:
        return None
    if not daemons:
        return None
    try:
        output = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    sockets = child.__dict__.setdefault("_sockets_seen", {})  # a closed socket keeps its last count
    lines = output.splitlines()
    for line, info in zip(lines, lines[1:]):
        owner, addresses, received = _SS_OWNER.search(line), _SS_ADDRESSES.match(line), _SS_RECEIVED.search(info)
        if owner and addresses and received and int(owner.group(1)) in daemons:
            sockets[" ".join(addresses.groups())] = int(received.group(1))
    return sum(sockets.values())


def tree_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) the process tree under `pid` has used so far: training process, helpers, p2pd."""
    import psutil

    totals = {"training_process": 0.0, "hivemind_processes": 0.0, "p2pd": 0.0}
    for process in process_tree(pid):
        try:
            times = process.cpu_times()
            kind = ("training_process" if process.pid == pid else
                    "p2pd" if "p2pd" in process.name() else "hivemind_processes")
        except psutil.Error:  # it exited meanwhile
            continue
        # children_*: children of this one that already exited and were reaped (the live ones are counted apart)
        totals[kind] += times.user + times.system + times.children_user + times.children_system
    totals = {kind: round(seconds, 2) for kind, seconds in totals.items()}
    totals["total"] = round(sum(totals.values()), 2)
    return totals


def run_row(model: str, link: str, args: argparse.Namespace, work_root: Path) -> dict:
    """One join measurement; returns the row (raises RuntimeError with the logs' tails on failure)."""
    work_dir = work_root / f"{model}-{link}"
    work_dir.mkdir(parents=True)
    recipe_path, recipe_data = derived_recipe(model, work_dir)
    parameters = count_parameters_of(recipe_data)
    place = Loopback() if LINKS.get(link, "shaped") is None else Lab(link)
    children: list[Child] = []
    meter = None
    try:
        coordinator = place.child(0, ["launch", str(recipe_path), *place.listen(0),
                                      "--state-dir", str(work_dir / "coordinator"),
                                      "--ledger-dir", str(work_dir / "ledger"), "--dashboard-port", "0"],
                                  work_dir / "coordinator.log")
        children.append(coordinator)
        _, match = coordinator.wait_for(ADDRESS, args.startup_timeout_s, "the coordinator's join command")
        address = place.initial_peer(match.group(1))

        def join(host: int, role: str) -> Child:
            folder = work_dir / role
            return place.child(host, ["join", "--initial-peers", address, *place.listen(host), "--threads", "1",
                                      "--display", "log", "--identity", str(folder / "identity"),
                                      "--name", f"bench-{role}", "--stats-file", str(folder / "stats.json"),
                                      "--cache-dir", str(folder / "cache")], work_dir / f"{role}.log")

        volunteer = join(1, "volunteer")
        children.append(volunteer)
        warm_epoch = _wait_for_epochs(volunteer, work_dir / "volunteer" / "stats.json", args.warmup_epochs,
                                      args.startup_timeout_s + args.warmup_epochs * args.epoch_timeout_s)
        joiner = join(2, "joiner")
        children.append(joiner)
        meter = place.meter(joiner, 2)
        first, _ = joiner.wait_for(PHASES[-1][1], args.join_timeout_s, "the joiner's first contributed samples")
        cpu = tree_cpu_seconds(joiner.process.pid)  # within ~0.2 s of the line (wait_for's poll)
        time.sleep(1.0)  # the stats file is written right after the log line
    except RuntimeError as error:
        raise RuntimeError(f"{error}\n" + "\n".join(child.tail() for child in children[:-1])) from None
    finally:
        if meter is not None:
            meter.close()
        stop(children)
        place.close()

    stamps = {}
    for name, pattern in PHASES:
        found = joiner.find(pattern)
        stamps[name] = found[0] if found else None
    phases, previous = {}, 0.0
    for name, _ in PHASES:
        if stamps[name] is None:
            phases[name] = None
            continue
        phases[name] = round(stamps[name] - previous, 2)
        previous = stamps[name]
    loaded = joiner.find(LOADED)
    stats_path = work_dir / "joiner" / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    state_measured = None
    if stamps["optimizer_and_progress"] is not None and stamps["state_download"] is not None:
        state_measured = meter.between(stamps["optimizer_and_progress"], stamps["state_download"])
    state_computed = parameters * STATE_VALUES_PER_PARAMETER * STATE_BYTES_PER_VALUE
    state_s = phases["state_download"]
    return {
        "model": model,
        "parameters": parameters,
        "link": link,
        "join_to_first_sample_s": round(first, 2),
        "first_sample_s_reported": stats.get("first_sample_s"),  # the volunteer's own clock: from after its imports
        "phases": phases,
        "cpu_seconds_to_first_sample": cpu,
        "loaded_state_epoch": int(loaded[1].group(1)) if loaded else None,
        "swarm_epoch_when_started": warm_epoch,
        "state_bytes": state_measured,
        "state_bytes_is": ("measured: bytes the joiner's p2pd received on its TCP sockets during state_download "
                           "(tcp_info)" if place.link is None else
                           "measured: bytes on the joiner's eth0 (headers included) during state_download"),
        "state_bytes_computed": state_computed,
        "state_codec": "none (fp32): hivemind's default load_state_compression",
        "download_mbit_per_s": round(state_computed * 8 / state_s / 1e6, 1) if state_s else None,
        "micro_batch_size": stats.get("micro_batch_size"),
        "seq_len": recipe_data["data"]["seq_len"],
        "emulated": place.link is not None,
    }


def _wait_for_epochs(volunteer: Child, stats_path: Path, epochs: int, timeout_s: float) -> int:
    """Wait until the running volunteer's stats file says it reached swarm epoch `epochs`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if volunteer.process.poll() is not None:
            raise RuntimeError(f"the first volunteer exited with code {volunteer.process.returncode}\n"
                               + volunteer.tail())
        try:
            epoch = int(json.loads(stats_path.read_text()).get("epoch", 0))
        except (OSError, ValueError):
            epoch = 0
        if epoch >= epochs:
            return epoch
        time.sleep(0.5)
    raise RuntimeError(f"the first volunteer did not reach epoch {epochs} within {timeout_s:.0f} s\n{volunteer.tail()}")


# ------------------------------------------------------------------------------------------------- the benchmark
def predict(rows: list[dict]) -> None:
    """Fill `predicted_s`: this model's loopback set-up (everything but the download) + state bytes / link rate."""
    setup = {row["model"]: row["join_to_first_sample_s"] - (row["phases"].get("state_download") or 0.0)
             for row in rows if row["link"] == "loopback" and "error" not in row}
    for row in rows:
        if "error" in row:
            continue
        rate = LINKS[row["link"]]
        row["fixed_setup_s"] = round(setup[row["model"]], 2) if row["model"] in setup else None
        if rate is None or row["fixed_setup_s"] is None:
            row["predicted_s"] = None
            continue
        row["predicted_s"] = round(row["fixed_setup_s"] + row["state_bytes_computed"] * 8 / (rate[0] * 1e6), 2)


def projections(rows: list[dict]) -> list[dict]:
    """On paper, for every model with a loopback row: its set-up + its state bytes / rate, on every named link."""
    result = []
    for row in rows:
        if row["link"] != "loopback" or "error" in row or row.get("fixed_setup_s") is None:
            continue
        for link, shape in LINKS.items():
            if shape is None:
                continue
            transfer_s = row["state_bytes_computed"] * 8 / (shape[0] * 1e6)
            result.append({"model": row["model"], "parameters": row["parameters"], "link": link,
                           "predicted_s": round(row["fixed_setup_s"] + transfer_s, 1),
                           "transfer_s": round(transfer_s, 1),
                           "transfer_s_with_fp16_state": round(transfer_s / 2, 1)})
    return result


def run_benchmark(args: argparse.Namespace) -> dict:
    info = machine()
    rows: list[dict] = []
    work_root = Path(tempfile.mkdtemp(prefix="join-bench-"))
    print(f"work folder (logs): {work_root}", file=sys.stderr)
    settings = {
        "models": {model: MODELS[model] or "recipes/tiny-stdlib.yaml as shipped" for model, _ in args.rows},
        "links": {link: LINKS.get(link) for _, link in args.rows},
        "link_emulation": ("benchmarks/netlab.py: coordinator, volunteer and joiner each in a network namespace, "
                           "tbf at the rate on both ends of each host's link, the one-way delay added by a user-space "
                           "relay per host (no netem in this kernel); loopback rows are unshaped"),
        "warmup_epochs": args.warmup_epochs,
        "existing_volunteers": 1,
        "threads_per_process": 1,
        "target_batch_size": "4 micro-batches",
        "joiner": "fresh identity, cold data cache, its own process (imports counted)",
        "work_folder": str(work_root),
        "quick": args.quick,
        "date": timestamp(),
        "command": "python benchmarks/join.py " + " ".join(sys.argv[1:]),
        "rows_planned": len(args.rows),
    }
    document: dict = {}
    for model, link in args.rows:
        started = time.monotonic()
        try:
            row = run_row(model, link, args, work_root)
        except RuntimeError as error:
            print(f"{model} / {link}: failed: {error}", file=sys.stderr)
            row = {"model": model, "link": link, "error": str(error).splitlines()[0][:300]}
        row["row_wall_s"] = round(time.monotonic() - started, 1)
        row["load_average_after"] = load_average()
        rows.append(row)
        if "error" not in row:
            print(f"{model} / {link}: {row['join_to_first_sample_s']} s to the first samples; phases "
                  f"{row['phases']}", file=sys.stderr)
        # written after every row: a long run that is stopped keeps the rows it finished
        predict(rows)
        info["load_average_at_end"] = load_average()
        settings["rows_done"] = len(rows)
        results = {"rows": rows, "model_on_paper": projections(rows)}
        document = write_results(args.name, settings, results, markdown(settings, results, info),
                                 plot=lambda path: plot(rows, path), machine_info=info, results_dir=args.results_dir)
    if args.keep_work_folder or any("error" in row for row in rows):
        print(f"work folder kept: {work_root}", file=sys.stderr)
    else:  # each run left ~50 MB per row in /tmp
        shutil.rmtree(work_root, ignore_errors=True)
    return document


def markdown(settings: dict, results: dict, info: dict) -> str:
    rows = results["rows"]
    names = [name for name, _ in PHASES]
    lines = [
        "# Joining a running swarm: time to the first contributed samples",
        "",
        f"Coordinator + {settings['existing_volunteers']} volunteer already training (joined at swarm epoch >= "
        f"{settings['warmup_epochs']}), then a new `swarm join` (fresh identity, cold data cache), all real processes, "
        f"{settings['threads_per_process']} thread each. Time from the joiner's Popen to its first contributed "
        f"micro-step, and its phases (s). {describe_machine(info)}. `{settings['command'].strip()}`, "
        f"{settings['date']}."
        + (f" **Partial: {settings['rows_done']} of {settings['rows_planned']} rows.**"
           if settings.get("rows_done", 0) < settings.get("rows_planned", 0) else ""),
        "",
        "| model | parameters | link | join to first sample (s) | predicted (s) | " + " | ".join(names)
        + " | state bytes (measured) | state bytes (computed) | download Mbit/s | CPU s to first sample: "
        "training / hivemind / p2pd |",
        "|---|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | | {row['link']} | failed: {row['error']} |" + " |" * (len(names) + 5))
            continue
        phases = " | ".join("n/a" if row["phases"][n] is None else f"{row['phases'][n]:.1f}" for n in names)
        measured = f"{row['state_bytes']:,}" if row["state_bytes"] is not None else "n/a"
        predicted = f"{row['predicted_s']:.1f}" if row.get("predicted_s") is not None else "n/a"
        rate = f"{row['download_mbit_per_s']:.0f}" if row["download_mbit_per_s"] is not None else "n/a"
        cpu = row.get("cpu_seconds_to_first_sample")  # rows of earlier result files have none
        cpu_text = (f"{cpu['total']:.1f}: {cpu['training_process']:.1f} / {cpu['hivemind_processes']:.1f} / "
                    f"{cpu['p2pd']:.1f}" if cpu else "n/a")
        lines.append(f"| {row['model']} | {row['parameters'] / 1e6:.2f}M | {row['link']} | "
                     f"{row['join_to_first_sample_s']:.1f} | {predicted} | {phases} | {measured} | "
                     f"{row['state_bytes_computed']:,} | {rate} | {cpu_text} |")
    lines += ["", "Phases end at these joiner log lines: " + "; ".join(
        f"{name}: `{pattern.pattern.split('|')[0].lstrip(chr(92) + '] ')}`" for name, pattern in PHASES) + ".",
        "State bytes computed = parameters x 3 (weights, AdamW exp_avg and exp_avg_sq) x 4 bytes (the state is sent "
        "uncompressed: hivemind's default load_state_compression); "
        "measured = what the joiner's p2pd received during the state download. Predicted (shaped links only) = this "
        "model's loopback time without its download + computed state bytes / link rate."]
    if results["model_on_paper"]:
        lines += ["", "On paper for every named link (set-up measured on loopback here; the download at the full link "
                  "rate; the last column if the state were sent in fp16 instead of fp32):", "",
                  "| model | link | predicted join to first sample (s) | of which download (s) | "
                  "download in fp16 (s) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p['model']} | {p['link']} | {p['predicted_s']} | {p['transfer_s']} | "
                  f"{p['transfer_s_with_fp16_state']} |" for p in results["model_on_paper"]]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    good = [row for row in rows if "error" not in row]
    names = [name for name, _ in PHASES]
    figure, axis = plt.subplots(figsize=(9, 4.2))
    labels = [f"{row['model']}\n{row['link']}" for row in good]
    bottoms = [0.0] * len(good)
    for name in names:
        values = [row["phases"][name] or 0.0 for row in good]
        axis.bar(labels, values, bottom=bottoms, label=name)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    predicted = [(i, row["predicted_s"]) for i, row in enumerate(good) if row.get("predicted_s") is not None]
    if predicted:
        axis.scatter([i for i, _ in predicted], [p for _, p in predicted], marker="_", s=600, color="black",
                     label="predicted", zorder=3)
    axis.set_ylabel("seconds from `swarm join` to the first samples")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny on loopback, 1 warm-up epoch (smoke test).")
    parser.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                        help=f"Models ({', '.join(MODELS)}; default all).")
    parser.add_argument("--links", nargs="+", default=None, metavar="LINK",
                        help=f"Links ({', '.join(LINKS)}; default loopback).")
    parser.add_argument("--rows", nargs="+", default=None, metavar="MODEL@LINK",
                        help="Exact rows instead of the --models x --links grid, e.g. tiny@loopback 50m@100mbit-25ms.")
    parser.add_argument("--warmup-epochs", type=int, default=None, help="Epochs the swarm trains before the join (3).")
    parser.add_argument("--startup-timeout-s", type=float, default=300.0)
    parser.add_argument("--epoch-timeout-s", type=float, default=120.0, help="Allowance per warm-up epoch.")
    parser.add_argument("--join-timeout-s", type=float, default=1800.0, help="Allowance for the joiner.")
    parser.add_argument("--keep-work-folder", action="store_true",
                        help="Keep the work folder (logs, identities, data caches: ~50 MB per row) after a run whose "
                             "rows all succeeded (it is always kept after a failure).")
    parser.add_argument("--name", default="join", help="Results file stem.")
    add_results_dir_option(parser)
    args = parse_benchmark_args(parser, argv)
    args.models = args.models or (["tiny"] if args.quick else list(MODELS))
    args.links = args.links or ["loopback"]
    if args.rows:
        pairs = [row.split("@", 1) for row in args.rows]
        bad = [row for row, pair in zip(args.rows, pairs) if len(pair) != 2]
        if bad:
            raise UsageError(f"--rows {' '.join(bad)}: write each row as MODEL@LINK, e.g. 10m@100mbit-25ms")
        args.rows = [tuple(pair) for pair in pairs]
    else:
        args.rows = [(model, link) for link in args.links for model in args.models]
    args.links = sorted({link for _, link in args.rows})
    for flag, values, known in (("--models", [m for m, _ in args.rows], MODELS),
                                ("--links", [link for _, link in args.rows], LINKS)):
        unknown = [value for value in values if value not in known]
        if unknown:
            raise UsageError(f"{flag}: unknown {', '.join(unknown)}; pick from {', '.join(known)}")
    if args.warmup_epochs is None:
        args.warmup_epochs = 1 if args.quick else 3
    if args.warmup_epochs < 1:
        raise UsageError("--warmup-epochs must be at least 1 (the joiner must have a state to download)")
    if any(LINKS[link] is not None for link in args.links):
        from benchmarks.netlab import NetLabUnavailable, check_requirements

        try:
            check_requirements()
        except NetLabUnavailable as error:
            raise UsageError(f"--links {' '.join(args.links)}: shaped links need a network lab here: {error}; "
                             "or use --links loopback") from None
    return args


def main(argv: list[str] | None = None) -> None:
    try:
        args = _parse_args(argv)
    except UsageError as error:
        print(f"join.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    # SIGTERM (a killed benchmark) unwinds like Ctrl-C, so every row's processes and namespaces are cleaned up
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    document = run_benchmark(args)
    rows = document["results"]["rows"]
    print(f"wrote {args.results_dir / args.name}.json ({len(rows)} rows, "
          f"{sum('error' in row for row in rows)} failed)")


if __name__ == "__main__":
    main()
