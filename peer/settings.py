"""What a volunteer's owner sets on `swarm join`, and the checks that need neither the swarm nor torch.

Kept free of heavy imports: `swarm join` runs these checks before it imports torch and hivemind (seconds), so a
mistyped flag is named at once.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from peer.schedule import TrainingHours, parse_hours
from swarm.errors import UsageError

# When the first `swarm join` of this process started: set by the process itself as it runs `swarm join` again between
# two --hours windows (peer.volunteer.join_again), so that --max-runtime counts from the owner's start. Not a setting.
JOINED_AT_ENV = "_SWARM_JOINED_AT"


def _joined_at() -> float:
    """Now, or when the `swarm join` that this process re-ran started."""
    now = time.time()
    try:
        joined = float(os.environ.get(JOINED_AT_ENV, ""))
    except ValueError:
        return now
    return joined if math.isfinite(joined) and joined <= now else now


@dataclass
class VolunteerSettings:
    """What differs per machine (the recipe comes from the swarm)."""

    initial_peers: list[str]
    run_id: str | None = None
    identity_dir: str | None = None
    name: str | None = None
    team: str | None = None
    host: str = "0.0.0.0"
    port: int = 0
    announce_host: str | None = None
    client_mode: bool = False
    device: str = "auto"
    threads: int | None = None
    micro_batch_size: int | None = None
    max_runtime_s: float | None = None  # counted from joined_at_s: waits outside --hours included
    hours: str | None = None  # --hours: windows of local time to train in, "22:00-07:00" or "12:00-13:00,22:00-07:00"
    cache_dir: str | None = None
    data_dir: str | None = None  # this machine's copy of the run's data folder (source=files, a local dataset)
    model_dir: str | None = None  # this machine's copy of the organiser's model folder (a local model.pretrained)
    tokenizer_dir: str | None = None  # this machine's copy of the organiser's tokenizer folder (a local tokenizer.name)
    stats_file: str | None = None
    display: str = "auto"  # auto | rich | log | none
    connect_timeout_s: float = 60.0
    from_checkpoint: str | None = None  # a folder or "<hub repo>[@revision]"; default: the run's latest version
    compile: str = "auto"  # torch.compile the forward: auto (CUDA only) | on | off
    joined_at_s: float = field(default_factory=_joined_at)  # when `swarm join` started (time.time())

    @property
    def training_hours(self) -> TrainingHours | None:
        return parse_hours(self.hours) if self.hours is not None else None


def _check_folder(flag: str, folder: Path, fix: str, of: str | None = None) -> None:
    """The folder a flag names (or that holds the file it names, `of`) is one, or can be made where a file does not
    block it: checked without creating anything."""
    given = of if of is not None else folder
    if folder.exists() and not folder.is_dir():
        where = "is a file" if of is None else f"is in {folder}, which is a file"
        raise UsageError(f"{flag} {given}: {where}; {fix}")
    blocker = next((parent for parent in folder.parents if parent.exists()), None)
    if not folder.exists() and blocker is not None and not blocker.is_dir():
        raise UsageError(f"{flag} {given}: cannot create {folder}, as {blocker} is a file; {fix}")


def _make_folder(flag: str, folder: Path, fix: str, of: str | None = None) -> None:
    """Create the folder a flag names (or that holds the file it names, `of`): a flag that cannot be used fails now
    with its name and the fix, not as a traceback (or a silent loss) once the swarm is joined."""
    _check_folder(flag, folder, fix, of)
    given = of if of is not None else folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocker = next((parent for parent in folder.parents if parent.exists()), None)
        if isinstance(error, (FileExistsError, NotADirectoryError)) and blocker is not None and not blocker.is_dir():
            raise UsageError(f"{flag} {given}: cannot create {folder}, as {blocker} is a file; {fix}") from None
        raise UsageError(f"{flag} {given}: cannot create {folder} ({error.strerror or error}); {fix}") from None


def check_local_settings(s: VolunteerSettings) -> None:
    """The flags that need no swarm and no torch; they change nothing on disk. A mistake is reported at once, not
    after the connection (or as "could not reach any initial peer" when the swarm is down, or a crash mid-training).
    Whether this machine has the `--device` needs torch (`pick_hardware`), and the folders are made after it
    (`make_local_folders`); a file in a folder's way is named here."""
    if s.micro_batch_size is not None and s.micro_batch_size < 1:
        raise UsageError(f"--micro-batch-size {s.micro_batch_size}: must be at least 1 (leave it out to pick one "
                         "for this hardware)")
    if s.threads is not None and s.threads < 1:  # as `pick_hardware` says it, before torch is imported
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        raise UsageError(f"--threads (or SWARM_THREADS) must be at least 1, not {s.threads}: leave it out to use "
                         f"all {cores} CPU cores")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", s.device):  # whether this machine has it needs torch
        raise UsageError(f"--device {s.device!r}: use auto, cpu, cuda, cuda:N or mps")
    if s.display not in ("auto", "rich", "log", "none"):
        raise UsageError(f"--display {s.display!r}: use auto, rich, log or none")
    if s.compile not in ("auto", "on", "off"):
        raise UsageError(f"--compile {s.compile!r}: use auto, on or off")
    # not `<= 0`: NaN compares false with everything, and meant "never stop"; inf is accepted as no limit
    if s.max_runtime_s is not None and not s.max_runtime_s > 0:
        raise UsageError(f"--max-runtime {s.max_runtime_s:g}: must be a positive number of seconds (leave it out "
                         "for no limit)")
    if s.hours is not None:
        parse_hours(s.hours)  # names the flag, the bad part and the form
    for flag, folder, what in (("--data-dir", s.data_dir, "data"), ("--model-dir", s.model_dir, "model"),
                               ("--tokenizer-dir", s.tokenizer_dir, "tokenizer")):
        if not folder or Path(folder).expanduser().is_dir():
            continue
        problem = "is a file, not a folder" if Path(folder).expanduser().exists() else "no such folder"
        raise UsageError(f"{flag} {folder}: {problem}; give your copy of the run's {what} folder, or leave {flag} "
                         "out if the run needs none")
    if s.stats_file and Path(s.stats_file).is_dir():
        raise UsageError(f"--stats-file {s.stats_file}: is a folder; give a file path (e.g. "
                         f"{Path(s.stats_file) / 'stats.json'})")
    if s.cache_dir:  # made later (`make_local_folders`): a file in the way is named now, before torch is imported
        _check_folder("--cache-dir", Path(s.cache_dir), "give a folder")
    if s.stats_file:
        _check_folder("--stats-file", Path(s.stats_file).parent, "give a file path in a folder", of=s.stats_file)
    if s.from_checkpoint:
        path, _, revision = s.from_checkpoint.partition("@")
        local = Path(s.from_checkpoint)
        hub_repo = not local.exists() and path.count("/") == 1 and not path.startswith((".", "/", "~"))
        if not local.exists() and not hub_repo:
            raise UsageError(f"--from-checkpoint {s.from_checkpoint}: no such folder; give a published version's "
                             "folder (checkpoints/epoch-NNNNNN) or a Hub repository as org/name[@revision]")


def make_local_folders(s: VolunteerSettings) -> None:
    """The folders the flags name, made after every other check: a folder that cannot be made was a traceback
    mid-join (--cache-dir) or no stats at all, without a word (--stats-file)."""
    if s.cache_dir:
        _make_folder("--cache-dir", Path(s.cache_dir), "give a folder")
    if s.stats_file:
        _make_folder("--stats-file", Path(s.stats_file).parent, "give a file path in a folder", of=s.stats_file)
