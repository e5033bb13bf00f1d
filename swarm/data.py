"""What the swarm trains on: every peer builds the same token stream, and each reads its own part of it.

One call builds everything a peer or the coordinator needs from the recipe's `data:` section:

>>> from swarm.recipe import DataConfig
>>> from swarm.tokenizer import ByteTokenizer
>>> from swarm.data import build_data
>>> data = build_data(DataConfig(source="stdlib", seq_len=64, stdlib_max_files=40, val_fraction=0.1,
...                              num_shards=8), ByteTokenizer(), peer_id=b"peer-1", cache_dir="/tmp/swarm-doc")
>>> data.next_batch(epoch=0, batch_size=4).shape
torch.Size([4, 64])
>>> data.identity.description  # doctest: +ELLIPSIS
'Python 3... standard library (first 40 files): 40 files, ... MB; byte-259 tokens, seq_len 64'

How the parts fit:

- **Identity.** `data_identity` hashes what defines the data (file contents, or the dataset name and revision,
  plus seq_len, val_fraction, seed, num_shards and the tokenizer). The coordinator publishes its digest and
  every joining peer compares with `check_identity`, so a peer with another Python version (for
  source=stdlib) or other files is refused with the fix instead of training on something else.
- **Split.** A document is held out for validation when a keyed hash of its id falls below `val_fraction`:
  the same documents on every peer, in every process, without coordination.
- **Blocks.** `TokenBlocks` tokenises every document once (eos after each), cuts the stream into samples of
  `seq_len` tokens and caches the arrays as .npy under `$XDG_CACHE_HOME/swarm/data/<digest>/` (by default
  `~/.cache/swarm/data/`); a restart maps them back in milliseconds. The cache is an optimisation: where it cannot
  be written (a full disk, a read-only home) the peer says so once and trains without it.
- **Sharding.** Each epoch (one global step) all peers agree on a permutation of the training samples, cut
  into `num_shards` contiguous shards; a peer reads the shard that a hash of its id and the epoch picks, and
  on into the next shards if it needs more. Peers therefore rarely read the same samples in one step.
- **Streaming.** `StreamingBlocks` does the same job for a streamed `datasets` dataset that is too big to
  tokenise up front: each peer starts at a dataset file picked from its id and shuffles with its own seed.
- **Checking.** `check_local_data` reads the first rows of the data through these same readers, for `swarm recipe
  validate`: a wrong split or text field shows before a launch, not minutes into its tokenising. Small data it reads
  whole and splits as a launch does: a split too small for one sample is refused by `training_split_problem` and
  `validation_split_problem`, which the launch raises too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from swarm.errors import SwarmError, UsageError
from swarm.tokenizer import Tokenizer, token_dtype

if TYPE_CHECKING:
    from swarm.recipe import DataConfig, RecipeProblem, TokenizerConfig

logger = logging.getLogger(__name__)

# Bump when the way documents become samples changes (eos placement, split rule, permutation), so peers running
# an older swarm fail the identity check instead of silently reading other samples.
DATA_PIPELINE_VERSION = 1

# Directories of the standard library that are not the library itself: installed packages, the test suite
# (tens of MB of fixtures that would dominate the corpus), and the IDE and demos.
STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
)

# File suffixes of a local dataset folder (source=hub with a path) and the `datasets` builder that reads them.
LOCAL_DATASET_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
# What a local source=hub dataset may be, said in every error about one.
LOCAL_DATASET_LAYOUTS = (
    f"a folder of {', '.join(LOCAL_DATASET_BUILDERS)} files (one kind per folder), one such file, or a folder "
    "written by `datasets`' save_to_disk (a Dataset or a DatasetDict)"
)

_ENCODE_BATCH_DOCUMENTS = 256  # documents per encode_batch call: enough for the Rust tokenizers to use every core


def default_cache_dir() -> Path:
    """Root of the token caches: `$XDG_CACHE_HOME/swarm/data` (`~/.cache/swarm/data` without it), one sub-folder
    per data digest. A relative XDG_CACHE_HOME is ignored, as the XDG base directory specification says."""
    xdg_cache_home = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg_cache_home) if os.path.isabs(xdg_cache_home) else Path.home() / ".cache"
    return root / "swarm" / "data"


# ---------------------------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------------------------


def stdlib_files(max_files: int | None = None) -> list[tuple[str, Path]]:
    """(relative path, path) of this Python's standard-library sources, sorted by relative path.

    Top-level modules, and packages (folders with `__init__.py`) recursively, without `STDLIB_EXCLUDED_DIRS`.
    Folders that are not packages (such as `config-3.11-x86_64-linux-gnu`) are build artefacts and skipped.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []
    for folder, subfolders, names in os.walk(root):
        folder_path = Path(folder)
        # Only packages are descended into, so every folder visited below the root is one.
        subfolders[:] = sorted(
            name
            for name in subfolders
            if name not in STDLIB_EXCLUDED_DIRS and (folder_path / name / "__init__.py").is_file()
        )
        for name in names:
            if name.endswith(".py"):
                path = folder_path / name
                found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return found[:max_files] if max_files is not None else found


def data_files(patterns: Sequence[str]) -> list[tuple[str, Path]]:
    """(relative path, path) of the files that `patterns` match, sorted, for source=files.

    Paths are relative to the deepest folder holding all of them, so the same files in another place on another
    machine get the same document ids (and the same data identity).
    """
    import glob

    paths: set[Path] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = glob.glob(expanded, recursive=True) if glob.has_magic(expanded) else [expanded]
        matches = [match for match in matches if os.path.exists(match)]
        if not matches and os.path.isfile(expanded):  # a file whose name holds [ or ]: the pattern is the name
            matches = [expanded]
        if not matches:
            raise UsageError(f"data.files: nothing matches {pattern!r}: fix the path or pattern")
        for match in matches:
            if os.path.isdir(match):
                if glob.has_magic(expanded):
                    continue  # a pattern such as data/** also yields folders; their files match it too
                raise UsageError(
                    f"data.files: {match!r} is a folder: list its files with a pattern such as '{match}/**/*.txt'"
                )
            paths.add(Path(os.path.abspath(match)))
    if not paths:
        raise UsageError(f"data.files: the patterns {list(patterns)} match only folders: add a file pattern")
    base = Path(os.path.commonpath([str(path.parent) for path in paths]))
    return sorted(((path.relative_to(base).as_posix(), path) for path in paths), key=lambda item: item[0])


def files_layout(patterns: Sequence[str]) -> tuple[Path, list[str]]:
    """The folder that the absolute paths and patterns of a source=files recipe share, and each pattern relative to
    it: what a volunteer's copy of the data must hold.

    >>> files_layout(["/srv/run/corpus/a/*.txt", "/srv/run/corpus/b.jsonl"])
    (PosixPath('/srv/run/corpus'), ['a/*.txt', 'b.jsonl'])
    """
    import glob

    folders = []
    for pattern in patterns:
        parts = Path(pattern).parts
        fixed = next((index for index, part in enumerate(parts) if glob.has_magic(part)), len(parts) - 1)
        folders.append(str(Path(*parts[:fixed])) if fixed else os.sep)
    root = Path(os.path.commonpath(folders))
    return root, [Path(pattern).relative_to(root).as_posix() for pattern in patterns]


def _matches_a_file(pattern: str) -> bool:
    try:
        data_files([pattern])
    except UsageError:
        return False
    return True


def _dataset_file_name(dataset: str) -> str | None:
    """The name of a local source=hub dataset that is one file (such as train.jsonl); None for a folder.

    On a volunteer's machine the organiser's path does not exist, and a data file's suffix says it is a file.
    """
    path = Path(os.path.expanduser(dataset))
    if path.exists():
        return path.name if path.is_file() else None
    return path.name if path.suffix.lower() in LOCAL_DATASET_BUILDERS else None


def _is_local_hub_dataset(cfg: "DataConfig") -> bool:
    from swarm.recipe import looks_like_local_path

    return cfg.source == "hub" and bool(cfg.dataset) and looks_like_local_path(cfg.dataset or "")


def data_copy_note(cfg: "DataConfig") -> str | None:
    """What a volunteer on another machine must copy to join a run on the organiser's own data and how to pass it
    (`swarm launch` prints it); None where every machine gets the data by itself (stdlib, a Hub dataset id).

    >>> from swarm.recipe import DataConfig
    >>> print(data_copy_note(DataConfig(source="hub", dataset="/srv/run/train.jsonl")))  # doctest: +ELLIPSIS
    The data are the dataset file /srv/run/train.jsonl: ... needs a folder holding a copy of train.jsonl, ...

    The folder that `with_local_data` takes as --data-dir is the one this note describes.
    """
    if cfg.source == "files":
        root, layout = files_layout(cfg.files)
        return (f"The data are files in {root} ({', '.join(layout)}): a volunteer on another machine needs a copy of "
                "that folder, passed with --data-dir <the copy>.")
    if not _is_local_hub_dataset(cfg):
        return None
    file_name = _dataset_file_name(cfg.dataset or "")
    if file_name:
        return (f"The data are the dataset file {cfg.dataset}: a volunteer on another machine needs a folder holding "
                f"a copy of {file_name}, passed with --data-dir <that folder>.")
    return (f"The data are the dataset folder {cfg.dataset}: a volunteer on another machine needs a copy of it, "
            "passed with --data-dir <the copy>.")


def with_local_data(cfg: "DataConfig", data_dir: str | os.PathLike | None) -> "DataConfig":
    """The data section of a recipe published by a coordinator, pointed at this machine's copy of the data.

    A coordinator publishes the paths of its own machine. `data_dir` (a volunteer's `--data-dir`) is always a folder
    (what `data_copy_note` describes): this machine's copy of the folder the data files share (`files_layout`) for
    source=files, of the dataset folder for a local source=hub dataset, or a folder holding a copy of the dataset
    file for a source=hub dataset that is one file (train.jsonl). Without it, those paths must exist here. Raises
    UsageError saying what to copy where.
    """
    local_hub = _is_local_hub_dataset(cfg)
    file_name = _dataset_file_name(cfg.dataset or "") if local_hub else None
    if data_dir is None:
        if cfg.source == "files":
            missing = [pattern for pattern in cfg.files if not _matches_a_file(pattern)]
            if missing:
                root, layout = files_layout(cfg.files)
                raise UsageError(
                    f"this run trains on data files from the organiser's folder {root}, which this machine does not "
                    f"have ({missing[0]} matches nothing here): get a copy of that folder and pass it with "
                    f"--data-dir DIR (DIR must hold {', '.join(layout)})")
        elif local_hub and not os.path.exists(os.path.expanduser(cfg.dataset or "")):
            if file_name:
                raise UsageError(
                    f"this run trains on the dataset file {cfg.dataset} of the organiser's machine, which this "
                    f"machine does not have: put a copy of {file_name} in a folder and pass that folder with "
                    f"--data-dir DIR (DIR must hold {file_name})")
            raise UsageError(
                f"this run trains on the dataset folder {cfg.dataset} of the organiser's machine, which this machine "
                "does not have: get a copy of that folder and pass it with --data-dir DIR")
        return cfg
    if cfg.source != "files" and not local_hub:
        what = ("this Python's standard library" if cfg.source == "stdlib"
                else f"the Hub dataset {cfg.dataset!r}, downloaded by name")
        raise UsageError(f"--data-dir {data_dir}: this run trains on {what}, which needs no data folder: leave it out")
    folder = Path(data_dir).expanduser().resolve()
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.is_file() else "no such folder"
        wanted = f"a folder holding your copy of {file_name}" if file_name else "your copy of the run's data folder"
        raise UsageError(f"--data-dir {data_dir}: {problem}; give {wanted}")
    if cfg.source == "files":
        _, layout = files_layout(cfg.files)
        rebased = [str(folder / pattern) for pattern in layout]
        missing = [pattern for pattern, full in zip(layout, rebased) if not _matches_a_file(full)]
        if missing:
            raise UsageError(f"--data-dir {data_dir}: {missing[0]} matches no file in it; this run's data folder "
                             f"holds {', '.join(layout)}")
        return cfg.model_copy(update={"files": rebased})
    # A dataset folder whose name looks like a file's (corpus.txt/) is known by its copy's name, which cp -r keeps.
    if file_name and folder.name != file_name:
        copy = folder / file_name
        if not copy.is_file():
            raise UsageError(f"--data-dir {data_dir}: it holds no {file_name}; this run's dataset is the file "
                             f"{file_name}: put your copy of it in that folder")
        return cfg.model_copy(update={"dataset": str(copy)})
    return cfg.model_copy(update={"dataset": str(folder)})


def _read_text(path: Path, undecodable: list[str] | None) -> str:
    content = path.read_bytes()
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        # Training goes on, on U+FFFD where the bytes were: one bad byte in a large corpus must not stop a run.
        if undecodable is not None:
            undecodable.append(str(path))
        return content.decode("utf-8", errors="replace")


def undecodable_files_note(undecodable: Sequence[str]) -> str:
    """What `swarm launch` warns (and `swarm recipe validate` notes) about data files that are not valid UTF-8.

    >>> undecodable_files_note(["/data/a.txt", "/data/b.txt"])  # doctest: +ELLIPSIS
    '2 data files are not valid UTF-8 (the first: /data/a.txt): each invalid byte is read, and trained on, as U+FFFD...'
    """
    return (f"{_files(len(undecodable), 'data')} {'is' if len(undecodable) == 1 else 'are'} not valid UTF-8 (the "
            f"first: {undecodable[0]}): each invalid byte is read, and trained on, as U+FFFD (the replacement "
            "character); to train on their text, convert them to UTF-8 (such as `iconv -f latin1 -t utf-8`)")


def _iter_jsonl(path: Path, name: str, text_field: str, undecodable: list[str] | None) -> Iterator[tuple[str, str]]:
    undecodable_here = False
    with open(path, "rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                try:
                    record = json.loads(raw)
                except UnicodeDecodeError:
                    if undecodable is not None and not undecodable_here:
                        undecodable.append(str(path))
                    undecodable_here = True
                    record = json.loads(raw.decode("utf-8", errors="replace"))
            except json.JSONDecodeError as error:
                raise UsageError(
                    f"{path}, line {line_number}: not valid JSON ({error.msg}): fix or remove the line"
                ) from None
            if not isinstance(record, dict) or text_field not in record:
                fields = ", ".join(map(repr, record)) if isinstance(record, dict) else f"a {type(record).__name__}"
                raise UsageError(
                    f"{path}, line {line_number}: no field {text_field!r} (found {fields or 'no fields'}): set "
                    "data.text_field to the field that holds the text"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise UsageError(
                    f"{path}, line {line_number}: field {text_field!r} holds a {type(text).__name__}, not text: "
                    "set data.text_field to a field with strings"
                )
            yield f"{name}:{line_number}", text


@dataclass(frozen=True)
class LocalDataset:
    """A source=hub dataset on this machine: where it is, how it is read and the files that define its rows.

    `layout` is "save_to_disk" for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (read
    with `datasets.load_from_disk`), else the `datasets` builder of its data files: json, parquet, csv or text.
    `files` are (path relative to `path`, path) in reading order: what the data identity hashes.
    """

    path: Path
    layout: str
    files: list[tuple[str, Path]]


def _local_dataset(dataset: str) -> LocalDataset | None:
    """The local dataset that data.dataset names, or None for a Hub id (no such path here).

    Raises UsageError, naming data.dataset and the layouts that work, for a path swarm cannot read.
    """
    path = Path(os.path.expanduser(dataset))
    if not path.exists():
        return None
    saved = _saved_dataset_files(path)
    if saved is not None:
        return LocalDataset(path, "save_to_disk", saved)
    builder, files = _local_dataset_files(path)
    return LocalDataset(path, builder, files)


def _unreadable_dataset(path: Path, problem: str, fix: str = "") -> UsageError:
    return UsageError(f"data.dataset: {str(path)!r} {problem}: swarm reads {LOCAL_DATASET_LAYOUTS}{fix}")


def _local_dataset_files(folder: Path) -> tuple[str, list[tuple[str, Path]]]:
    """The `datasets` builder and the (relative path, path) data files of a local dataset folder (or file)."""
    if folder.is_file():
        candidates = [(folder.name, folder)]
    else:
        candidates = sorted(
            (path.relative_to(folder).as_posix(), path)
            for path in folder.rglob("*")
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        )
    files = [(name, path) for name, path in candidates if path.suffix.lower() in LOCAL_DATASET_BUILDERS]
    builders = {LOCAL_DATASET_BUILDERS[path.suffix.lower()] for _, path in files}
    if folder.is_file() and not files:
        raise _unreadable_dataset(folder, "is not a data file")
    if any(path.suffix.lower() == ".arrow" for _, path in candidates):
        # Most likely a save_to_disk folder that lost its state.json, or a sub-folder of one: its .json metadata
        # would otherwise be read as the data.
        raise _unreadable_dataset(
            folder, "holds .arrow files without the state.json (or dataset_dict.json) that save_to_disk writes",
            ": copy the whole folder that save_to_disk wrote"
        )
    if not files:
        raise _unreadable_dataset(folder, "holds no data files", ", or a Hub dataset id")
    if len(builders) > 1:
        raise _unreadable_dataset(
            folder, f"mixes file kinds ({', '.join(sorted(builders))})", ": keep one kind per folder"
        )
    return builders.pop(), files


def _saved_dataset_files(path: Path) -> list[tuple[str, Path]] | None:
    """The (relative path, path) data files of a folder written by `save_to_disk`, as its state.json lists them;
    None for any other path.

    A Dataset folder holds state.json, dataset_info.json and data-*.arrow files; a DatasetDict folder holds
    dataset_dict.json and one such folder per split. Only the .arrow files define the rows: the metadata holds a
    fingerprint that differs between two saves of the same rows, and `datasets` may add cache files next to them.
    """
    if (path / "dataset_dict.json").is_file():
        splits = _saved_metadata(path, path / "dataset_dict.json").get("splits")
        if not isinstance(splits, list) or not all(isinstance(split, str) for split in splits):
            raise _unreadable_dataset(path, "has a dataset_dict.json without a list of splits")
        folders = [path / split for split in splits]
    elif (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        folders = [path]
    else:
        return None
    files = []
    for folder in folders:
        state = _saved_metadata(path, folder / "state.json")
        entries = state.get("_data_files")
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise _unreadable_dataset(path, f"has a {_relative(folder / 'state.json', path)} without _data_files")
        for entry in entries:
            file = folder / str(entry.get("filename"))
            if not file.is_file():
                raise _unreadable_dataset(
                    path, f"lacks {_relative(file, path)}, which its state.json lists",
                    ": copy the whole folder that save_to_disk wrote"
                )
            files.append((_relative(file, path), file))
    return files


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _saved_metadata(root: Path, path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _unreadable_dataset(root, f"lacks {_relative(path, root)}, which save_to_disk writes") from None
    except (OSError, ValueError) as error:
        raise _unreadable_dataset(root, f"has an unreadable {_relative(path, root)} ({error})") from None
    if not isinstance(content, dict):
        raise _unreadable_dataset(root, f"has a {_relative(path, root)} that is not a JSON object")
    return content


def _builder_data_files(local: LocalDataset) -> list[str] | dict[str, list[str]]:
    """The data files of a local folder for its `datasets` builder, by split as `datasets` names them (train-*.jsonl
    and test.jsonl are two splits; files without a split name are "train"), without the other files it would
    otherwise hand the builder too (a LICENSE, a notes.pdf)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    if local.path.is_file():
        return [str(local.path)]
    wanted = {os.path.realpath(path) for _, path in local.files}
    resolved = DataFilesDict.from_patterns(get_data_patterns(str(local.path)), base_path=str(local.path))
    by_split = {
        str(split): [file for file in files if os.path.realpath(file) in wanted] for split, files in resolved.items()
    }
    by_split = {split: files for split, files in by_split.items() if files}
    # Only other files named a split (a test-notes.md next to data.jsonl): the data files are the one split, train.
    return by_split or {"train": [str(path) for _, path in local.files]}


def _load_saved_dataset(local: LocalDataset, split: str, streaming: bool) -> Any:
    """`split` of a save_to_disk folder (slices such as train[:10%] work as in `load_dataset`), as an iterable
    dataset with one shard per .arrow file when `streaming`."""
    import datasets

    saved = datasets.load_from_disk(str(local.path))
    if isinstance(saved, datasets.DatasetDict):
        splits = dict(saved)
    else:
        # A saved Dataset is one split: the one it was loaded as, or "train" (as for a folder of files whose names
        # name no split) when that was not recorded or was a slice such as train[:10%].
        recorded = str(saved.split) if saved.split is not None else ""
        splits = {recorded if re.fullmatch(r"\w+(\.\w+)*", recorded) else "train": saved}
    # ReadInstruction raises ValueError('Unknown split "x". Should be one of [...]') as load_dataset does.
    lengths = {name: len(dataset) for name, dataset in splits.items()}
    instructions = datasets.ReadInstruction.from_spec(split).to_absolute(lengths)
    parts = [
        whole if (part.from_, part.to) == (0, len(whole)) else whole.select(range(part.from_, part.to))
        for part in instructions
        for whole in [splits[part.splitname]]
    ]
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if not streaming:
        return dataset
    return dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset.cache_files), len(dataset))))


def _load_hub_dataset(cfg: "DataConfig", streaming: bool, hf_cache_dir: str | os.PathLike | None = None) -> Any:
    """The dataset of a source=hub recipe: a Hub id read with `datasets.load_dataset`, a save_to_disk folder read with
    `datasets.load_from_disk`, or a local folder (or file) read with the builder of its files."""
    import datasets
    import pyarrow

    assert cfg.dataset is not None  # the recipe refuses source=hub without a dataset
    cache = str(hf_cache_dir) if hf_cache_dir is not None else None
    local = _local_dataset(cfg.dataset)
    try:
        if local is not None and local.layout == "save_to_disk":
            return _load_saved_dataset(local, cfg.split, streaming)
        if local is not None:
            extra = {"sample_by": "document"} if local.layout == "text" else {}  # one .txt file = one document
            try:
                return datasets.load_dataset(
                    local.layout, data_files=_builder_data_files(local), split=cfg.split, streaming=streaming,
                    cache_dir=cache, **extra,
                )
            except datasets.exceptions.DatasetGenerationError as error:
                raise _unreadable_rows(cfg.dataset, error.__cause__ or error) from None
            except pyarrow.ArrowException as error:  # parquet reads each file's schema up front, even streamed
                raise _unreadable_rows(cfg.dataset, error) from None
            except StopIteration:
                # the json builder reads a first table to learn the columns, and files without a row have none (in a
                # generator, such as the callers', it became "RuntimeError: generator raised StopIteration")
                raise UsageError(f"data.dataset: {cfg.dataset!r} has no rows in split {cfg.split!r}: the training "
                                 "data would be empty; add rows to its files") from None
        try:
            return datasets.load_dataset(
                cfg.dataset, cfg.dataset_config, split=cfg.split, revision=cfg.revision, streaming=streaming,
                cache_dir=cache,
            )
        except (ConnectionError, FileNotFoundError) as error:  # datasets' own ConnectionError subclasses the builtin
            raise UsageError(
                f"data.dataset {cfg.dataset!r}: no such dataset here, and the Hub could not give it ({error}). A local "
                "dataset is a path ('./name', '/data/name') or a folder or file next to the recipe; a Hub id needs "
                "the network (or HF_DATASETS_OFFLINE=1 with the dataset in the cache)"
            ) from None
    except ValueError as error:
        if local is not None and "corresponds to no data" in str(error):  # the files are there, without a row
            raise UsageError(f"data.dataset: {cfg.dataset!r} has no rows in split {cfg.split!r}: the training data "
                             "would be empty; add rows to its files") from None
        if "split" in str(error).lower() or "instruction" in str(error).lower():
            message = str(error).rstrip(".")
            raise UsageError(f"data.split: {message}: set data.split to one of the dataset's splits") from None
        raise


def _hub_text_field(cfg: "DataConfig") -> str:
    # The text builder (a folder of .txt files) always names its column "text".
    local = _local_dataset(cfg.dataset or "")
    if local is not None and local.layout == "text":
        return "text"
    return cfg.text_field


def _hub_text(example: dict, text_field: str, dataset: str, doc_id: str) -> str:
    if text_field not in example:
        raise UsageError(
            f"dataset {dataset!r}, row {doc_id}: no field {text_field!r} (fields: {', '.join(map(repr, example))}): "
            "set data.text_field to the field that holds the text"
        )
    text = example[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise UsageError(
            f"dataset {dataset!r}, row {doc_id}: field {text_field!r} holds a {type(text).__name__}, not text: "
            "set data.text_field to a field with strings"
        )
    return text


def _streamed_documents(dataset: Any, file_index: int, text_field: str, name: str) -> Iterator[tuple[str, str]]:
    """The documents of file `file_index` of a streamed dataset, with ids "file/row"."""
    import pyarrow

    try:
        for row, example in enumerate(dataset.shard(num_shards=dataset.num_shards, index=file_index)):
            doc_id = f"{file_index}/{row}"
            yield doc_id, _hub_text(example, text_field, name, doc_id)
    # A file that is not what its name says: pyarrow's ArrowInvalid (JSON, parquet) and pandas' ParserError (CSV)
    # are both ValueErrors. Streaming reads lazily, so they surface here rather than in load_dataset.
    except (pyarrow.ArrowException, ValueError) as error:
        raise _unreadable_rows(name, error) from None


def _unreadable_rows(name: str, error: BaseException) -> UsageError:
    # `datasets` logs the file's name at ERROR level when it knows it; the exception does not carry it.
    return UsageError(f"data.dataset: {name!r} has a file that `datasets` cannot read ({error}): fix or remove it")


def iter_documents(
    cfg: "DataConfig", hf_cache_dir: str | os.PathLike | None = None, undecodable: list[str] | None = None
) -> Iterator[tuple[str, str]]:
    """Every document of the data as (doc_id, text), in the same order on every machine.

    doc_id is the relative path for stdlib and text files, "path:line" for JSON lines, the row number for a
    downloaded hub dataset and "file/row" for a streamed one (the row within the dataset's file `file`).
    Files that are not valid UTF-8 are read with U+FFFD for their invalid bytes; where `undecodable` is given, the
    path of each such file is appended to it (once), for `undecodable_files_note`.

    >>> from swarm.recipe import DataConfig
    >>> next(iter_documents(DataConfig(source="stdlib", stdlib_max_files=1)))[0]
    '__future__.py'
    """
    if cfg.source == "stdlib":
        for name, path in stdlib_files(cfg.stdlib_max_files):
            yield name, _read_text(path, undecodable)
    elif cfg.source == "files":
        for name, path in data_files(cfg.files):
            if cfg.format == "jsonl":
                yield from _iter_jsonl(path, name, cfg.text_field, undecodable)
            else:
                yield name, _read_text(path, undecodable)
    elif cfg.streaming:
        dataset = _load_hub_dataset(cfg, streaming=True, hf_cache_dir=hf_cache_dir)
        text_field = _hub_text_field(cfg)
        for file_index in range(dataset.num_shards):
            yield from _streamed_documents(dataset, file_index, text_field, cfg.dataset or "")
    else:
        dataset = _load_hub_dataset(cfg, streaming=False, hf_cache_dir=hf_cache_dir)
        text_field = _hub_text_field(cfg)
        if text_field not in dataset.column_names:
            raise UsageError(
                f"dataset {cfg.dataset!r} has no column {text_field!r} (columns: {', '.join(dataset.column_names)}): "
                "set data.text_field to the column that holds the text"
            )
        index = 0
        for batch in dataset.select_columns([text_field]).iter(batch_size=1024):
            for text in batch[text_field]:
                yield str(index), _hub_text({text_field: text}, text_field, cfg.dataset or "", str(index))
                index += 1


# ---------------------------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------------------------


class DataIdentity(BaseModel):
    """What a peer's data is, as a digest to compare and a description for people.

    The coordinator publishes `digest` and `description`; a joining peer computes its own and calls
    `check_identity`. Counts are None where they are unknown without reading the data (a streamed Hub dataset).
    """

    model_config = ConfigDict(frozen=True)

    source: str
    digest: str
    description: str
    num_documents: int | None
    num_bytes: int | None


def _sha256_file(path: Path) -> tuple[str, bytes]:
    content = path.read_bytes()
    return hashlib.sha256(content).hexdigest(), content


def _megabytes(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 100_000 else f"{num_bytes / 1e3:.1f} kB"


def data_identity(cfg: "DataConfig", tokenizer: Tokenizer) -> DataIdentity:
    """Digest and description of the data this machine would train on with `cfg` and `tokenizer`.

    The digest covers the content (sorted (doc_id, sha256) of every file for stdlib and files; name, config,
    split, revision and text field for a Hub dataset, plus file hashes for a local dataset folder) and every
    setting that changes the samples: seq_len, val_fraction, seed, num_shards and the tokenizer's identity.
    It reads every file once (about 50 ms for the whole standard library).

    >>> from swarm.recipe import DataConfig
    >>> from swarm.tokenizer import ByteTokenizer
    >>> identity = data_identity(DataConfig(source="stdlib", stdlib_max_files=3), ByteTokenizer())
    >>> identity.num_documents, len(identity.digest)
    (3, 16)
    """
    defining: dict[str, Any] = {
        "pipeline": DATA_PIPELINE_VERSION,
        "source": cfg.source,
        "seq_len": cfg.seq_len,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "num_shards": cfg.num_shards,
        "tokenizer": tokenizer.identity(),
    }
    num_documents: int | None
    num_bytes: int | None
    if cfg.source in ("stdlib", "files"):
        listing = stdlib_files(cfg.stdlib_max_files) if cfg.source == "stdlib" else data_files(cfg.files)
        hashes, num_bytes, num_documents = [], 0, 0
        for name, path in listing:
            digest, content = _sha256_file(path)
            hashes.append((name, digest))
            num_bytes += len(content)
            if cfg.source == "files" and cfg.format == "jsonl":
                num_documents += sum(1 for line in content.splitlines() if line.strip())
            else:
                num_documents += 1
        defining["documents"] = hashes
        if cfg.source == "stdlib":
            limit = f" (first {cfg.stdlib_max_files} files)" if cfg.stdlib_max_files is not None else ""
            implementation = platform.python_implementation().replace("CPython", "Python")
            what = (
                f"{implementation} {platform.python_version()} standard library{limit}: "
                f"{len(listing)} files, {_megabytes(num_bytes)}"
            )
        else:
            defining.update(format=cfg.format, text_field=cfg.text_field)
            documents = f", {num_documents} documents" if cfg.format == "jsonl" else ""
            what = f"{len(listing)} {cfg.format} files{documents}, {_megabytes(num_bytes)}"
    else:
        defining.update(
            split=cfg.split, text_field=cfg.text_field, streaming=cfg.streaming, dataset_config=cfg.dataset_config
        )
        local = _local_dataset(cfg.dataset or "")
        num_documents = None
        if local is not None:
            hashes = [(name, _sha256_file(path)[0]) for name, path in local.files]
            num_bytes = sum(path.stat().st_size for _, path in local.files)
            # The folder's content, not its path: the same files elsewhere on another machine agree. (A save_to_disk
            # folder's .arrow files cannot be a builder folder's data files, so the two layouts never collide.)
            defining["dataset"] = {"local_files": hashes}
            layout = "save_to_disk, " if local.layout == "save_to_disk" else ""
            what = (
                f"local dataset {local.path.name!r} ({layout}{len(local.files)} files, {_megabytes(num_bytes)}), "
                f"split {cfg.split}"
            )
        else:
            num_bytes = None
            defining.update(dataset=cfg.dataset, revision=cfg.revision)
            config = f", config {cfg.dataset_config}" if cfg.dataset_config else ""
            revision = f"revision {cfg.revision}" if cfg.revision else "unpinned revision"
            what = f"dataset {cfg.dataset!r}{config}, split {cfg.split}, {revision}"
        what += ", streamed" if cfg.streaming else ""
    canonical = json.dumps(defining, sort_keys=True, separators=(",", ":"))
    return DataIdentity(
        source=cfg.source,
        digest=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        description=f"{what}; {tokenizer.identity()} tokens, seq_len {cfg.seq_len}",
        num_documents=num_documents,
        num_bytes=num_bytes,
    )


_IDENTITY_ADVICE = {
    "stdlib": (
        "For source=stdlib every peer needs the same Python version as the swarm (the standard library's source "
        "changes between releases, and some Linux distributions patch or split it): run swarm under exactly that "
        "version, e.g. from python.org, pyenv or `uv python install`."
    ),
    "files": "For source=files every peer needs the same files with the same names and contents: copy them again.",
    "hub": "For source=hub every peer needs the same dataset and revision: pin data.revision in the recipe.",
}


def check_identity(expected_digest: str, expected_description: str, local: DataIdentity) -> None:
    """Refuse to train when this machine's data is not the swarm's: raises SwarmError saying what to do.

    >>> mine = DataIdentity(source="files", digest="ab", description="1 text files", num_documents=1, num_bytes=3)
    >>> check_identity("ab", "1 text files", mine)  # the same: nothing happens
    """
    if expected_digest == local.digest:
        return
    if expected_description == local.description:
        what = (
            f"the swarm trains on {expected_description} ({expected_digest}) and this machine has the same "
            f"description but different content ({local.digest})"
        )
    else:
        what = (
            f"the swarm trains on {expected_description} ({expected_digest}), this machine has "
            f"{local.description} ({local.digest})"
        )
    raise SwarmError(
        f"This peer's data differs from the swarm's: {what}. {_IDENTITY_ADVICE.get(local.source, '')} "
        "Also use the swarm's recipe unchanged (seq_len, val_fraction, seed, num_shards, tokenizer) and the same "
        "swarm version."
    )


# ---------------------------------------------------------------------------------------------------------------
# Split and sharding rules, shared by every peer
# ---------------------------------------------------------------------------------------------------------------


def _hash64(*parts: bytes | str | int) -> int:
    """A 64-bit hash that is the same in every process and on every machine (unlike Python's hash())."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        digest.update(len(raw).to_bytes(4, "little") + raw)  # length prefix: ("ab", "c") differs from ("a", "bc")
    return int.from_bytes(digest.digest(), "little")


def is_validation(doc_id: str, seed: int, val_fraction: float) -> bool:
    """Whether a document is held out: the same answer for one id in every process, for the whole run."""
    return _hash64(b"validation", seed, doc_id) < val_fraction * 2.0**64


def _more_data(cfg: "DataConfig") -> str:
    """How to give a recipe's data more documents, in its own keys."""
    if cfg.source == "stdlib":
        return ("raise data.stdlib_max_files" if cfg.stdlib_max_files is not None
                else "train on more text (data.source files or hub)")
    if cfg.source == "files":
        return "add files" if cfg.format == "text" else "add rows or files"
    return "use a larger dataset"


def _is_streamed(cfg: "DataConfig") -> bool:
    return cfg.source == "hub" and cfg.streaming


def training_split_problem(cfg: "DataConfig", train_tokens: int, val_tokens: int) -> str | None:
    """Why the training split is too small to train on, in the words `swarm launch` stops with and `swarm recipe
    validate` reports (so the two cannot disagree); None where it is big enough.

    The counts are the tokens of each split's documents, an eos after each, as `TokenBlocks` stores them. Map-style
    data needs one sample of seq_len; a streamed dataset starts over at its end, so any token will do.

    >>> from swarm.recipe import DataConfig
    >>> print(training_split_problem(DataConfig(source="files", files=["a.jsonl"], format="jsonl"), 12, 0))
    The training split has 12 tokens, less than one sample of seq_len 128: add rows or files, or lower data.seq_len
    """
    streamed = _is_streamed(cfg)
    if train_tokens >= (1 if streamed else cfg.seq_len):
        return None
    if train_tokens == 0 and val_tokens > 0:
        return ("The training split is empty: every document with text is held out for validation (whole documents "
                f"are, picked by data.seed): lower data.val_fraction, {_more_data(cfg)}, or try another data.seed")
    if streamed:
        return (f"The training split of {cfg.dataset!r} is empty (no document has text in field "
                f"{_hub_text_field(cfg)!r}): set data.text_field to the field that holds the text, or use another "
                "dataset")
    return (f"The training split has {train_tokens:,} tokens, less than one sample of seq_len {cfg.seq_len}: "
            f"{_more_data(cfg)}, or lower data.seq_len")


def validation_split_problem(cfg: "DataConfig", val_tokens: int) -> str | None:
    """Why the held-out validation split gives no sample, in the words `swarm launch` stops with and `swarm recipe
    validate` reports; None where it fills one. `val_tokens` counts as in `training_split_problem`.

    >>> from swarm.recipe import DataConfig
    >>> print(validation_split_problem(DataConfig(source="files", files=["a.jsonl"], format="jsonl"), 0))
    ... # doctest: +ELLIPSIS
    The validation split is empty (0 tokens, less than one sample of seq_len 128): raise data.val_fraction, ...
    """
    if _is_streamed(cfg) and cfg.val_fraction == 0:
        return "The validation split is empty (data.val_fraction is 0): raise data.val_fraction"
    if val_tokens >= cfg.seq_len:
        return None
    if _is_streamed(cfg):
        return (f"The validation split of {cfg.dataset!r} is empty (no held-out document fills a sample of seq_len "
                f"{cfg.seq_len}): raise data.val_fraction or use a larger dataset")
    return (f"The validation split is empty ({val_tokens:,} tokens, less than one sample of seq_len {cfg.seq_len}): "
            f"raise data.val_fraction, {_more_data(cfg)}, or try another data.seed (whole documents are held out, "
            "picked by the seed: with few documents, none may be)")


def shard_for_peer(peer_id: bytes, epoch: int, num_shards: int) -> int:
    """The shard a peer starts reading in an epoch: a hash of (peer_id, epoch), so it moves every epoch.

    >>> shard_for_peer(b"peer-a", 0, 1024) == shard_for_peer(b"peer-a", 0, 1024)
    True
    """
    return _hash64(b"shard", peer_id, epoch) % num_shards


def _mix64(values: np.ndarray) -> np.ndarray:
    # The splitmix64 finaliser: a bijection on uint64, in integer numpy arithmetic whose results do not depend on
    # the numpy version (Generator.permutation's algorithm may change between releases; see NEP 19).
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def epoch_permutation(num_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """The order of all training samples in one epoch, identical on every peer (int64 indices)."""
    offset = np.uint64(_hash64(b"permutation", seed, epoch))
    with np.errstate(over="ignore"):
        keys = _mix64(np.arange(num_blocks, dtype=np.uint64) + offset)
    # Keys are distinct (a bijection of distinct inputs), so the order does not depend on the sort algorithm.
    return np.argsort(keys, kind="stable").astype(np.int64)


def shard_bounds(num_blocks: int, num_shards: int, shard: int) -> tuple[int, int]:
    """[start, end) of one shard within an epoch's permutation; shard sizes differ by at most one."""
    return shard * num_blocks // num_shards, (shard + 1) * num_blocks // num_shards


def _pack(token_arrays: Iterable[np.ndarray], seq_len: int) -> Iterator[np.ndarray]:
    """Cut a stream of token arrays into consecutive blocks of seq_len tokens (the tail that does not fill one is
    kept for the next array)."""
    pending: list[np.ndarray] = []
    pending_len = 0
    for tokens in token_arrays:
        pending.append(tokens)
        pending_len += len(tokens)
        if pending_len < seq_len:
            continue
        joined = np.concatenate(pending)
        usable = len(joined) // seq_len * seq_len
        yield from joined[:usable].reshape(-1, seq_len)
        pending, pending_len = [joined[usable:]], len(joined) - usable


def _encoded_documents(
    documents: Iterable[tuple[str, str]], tokenizer: Tokenizer
) -> Iterator[tuple[str, Sequence[int] | np.ndarray]]:
    """(doc_id, token ids) of each document with text, in order (no eos), encoded `_ENCODE_BATCH_DOCUMENTS` at a
    time with the tokenizer's `encode_batch` where it has one."""
    import itertools

    encode_batch = getattr(tokenizer, "encode_batch", None)
    with_text = (document for document in documents if document[1])
    while batch := list(itertools.islice(with_text, _ENCODE_BATCH_DOCUMENTS)):
        texts = [text for _, text in batch]
        encoded = encode_batch(texts) if encode_batch is not None else [tokenizer.encode(text) for text in texts]
        yield from zip([doc_id for doc_id, _ in batch], encoded)


def _to_long(blocks: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(blocks, dtype=np.int64))


# ---------------------------------------------------------------------------------------------------------------
# Map-style data: stdlib, files and downloaded hub datasets
# ---------------------------------------------------------------------------------------------------------------


def _save_atomically(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    # Peers on one machine may build the same cache at once: each writes a private file and renames it, so a
    # reader sees either no file or a complete one.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _free_bytes(path: Path) -> float:
    """Free space on the file system that holds `path` (or its nearest existing parent); infinite if unknown."""
    folder = next((folder for folder in (path, *path.parents) if folder.exists()), None)
    try:
        return shutil.disk_usage(folder).free if folder is not None else float("inf")
    except OSError:
        return float("inf")


class TokenBlocks:
    """Every document tokenised once, as training and validation samples of `seq_len` tokens, cached on disk.

    >>> from swarm.recipe import DataConfig
    >>> from swarm.tokenizer import ByteTokenizer
    >>> blocks = TokenBlocks(DataConfig(source="stdlib", seq_len=128, stdlib_max_files=20, val_fraction=0.1),
    ...                      ByteTokenizer(), cache_dir="/tmp/swarm-doc")
    >>> blocks[0].shape
    torch.Size([128])

    Documents follow one another in `iter_documents` order with an eos after each (empty documents are
    skipped); a sample may span two documents. The arrays (uint16, or uint32 for vocabularies over 65536) are
    written to `<cache_dir>/<digest>/` and memory-mapped on the next start: the log says "loaded ... from cache"
    in milliseconds, or "tokenised ..." with the time the build took (0.3 s for the 11 MB standard library with
    the byte tokenizer on 2 cores). Delete the folder to force a rebuild. The whole data set is tokenised in memory, so
    for data much larger than RAM use a streamed hub dataset (`StreamingBlocks`).
    """

    def __init__(
        self,
        cfg: "DataConfig",
        tokenizer: Tokenizer,
        cache_dir: str | os.PathLike | None = None,
        identity: DataIdentity | None = None,
        hf_cache_dir: str | os.PathLike | None = None,
    ):
        self.identity = identity or data_identity(cfg, tokenizer)
        self.cfg = cfg
        self.seq_len = cfg.seq_len
        self.cache_path = Path(cache_dir or default_cache_dir()) / self.identity.digest
        self.dtype = token_dtype(tokenizer.vocab_size)
        started = time.perf_counter()
        arrays = self._load_cache()
        if arrays is None:
            arrays = self._tokenise(cfg, tokenizer, hf_cache_dir)
            cached = self._save_cache(*arrays)
            logger.info(
                f"Tokenised {self.identity.description} into {len(arrays[0]):,} training and {len(arrays[1]):,} "
                f"validation tokens in {time.perf_counter() - started:.1f} s; "
                + (f"cached in {self.cache_path}" if cached else "not cached")
            )
        else:
            logger.info(
                f"Loaded {len(arrays[0]):,} training and {len(arrays[1]):,} validation tokens from cache "
                f"{self.cache_path} in {(time.perf_counter() - started) * 1000:.0f} ms"
            )
        self.train_tokens, self.val_tokens = arrays
        self.train_blocks = self._as_blocks(self.train_tokens)
        self.val_blocks = self._as_blocks(self.val_tokens)
        too_small = training_split_problem(cfg, len(self.train_tokens), len(self.val_tokens))
        if too_small:
            raise SwarmError(too_small)

    def _as_blocks(self, tokens: np.ndarray) -> np.ndarray:
        count = len(tokens) // self.seq_len
        return tokens[: count * self.seq_len].reshape(count, self.seq_len)

    def _tokenise(
        self, cfg: "DataConfig", tokenizer: Tokenizer, hf_cache_dir: str | os.PathLike | None
    ) -> tuple[np.ndarray, np.ndarray]:
        eos = np.array([tokenizer.eos_id], dtype=self.dtype)
        parts: dict[bool, list[np.ndarray]] = {False: [], True: []}
        undecodable: list[str] = []
        documents = iter_documents(cfg, hf_cache_dir=hf_cache_dir, undecodable=undecodable)
        for doc_id, tokens in _encoded_documents(documents, tokenizer):
            split = parts[is_validation(doc_id, cfg.seed, cfg.val_fraction)]
            split.append(np.asarray(tokens, dtype=self.dtype))
            split.append(eos)
        if undecodable:
            logger.warning(undecodable_files_note(undecodable))
        empty = np.zeros(0, dtype=self.dtype)
        return (
            np.concatenate(parts[False]) if parts[False] else empty,
            np.concatenate(parts[True]) if parts[True] else empty,
        )

    def _save_cache(self, train: np.ndarray, val: np.ndarray) -> bool:
        """Write the cache; False, after one warning, where it cannot be written: the tokens are in memory already,
        so a full disk or a read-only home costs the next start its tokenising time, not this start its run."""
        meta = {
            "identity": self.identity.model_dump(),
            "dtype": self.dtype.str,
            "train_tokens": len(train),
            "val_tokens": len(val),
        }
        existed = self.cache_path.is_dir()
        written: list[Path] = []
        try:
            self.cache_path.mkdir(parents=True, exist_ok=True)
            for name, array in (("train.npy", train), ("val.npy", val)):
                _save_atomically(self.cache_path / name, lambda out, array=array: np.save(out, array))
                written.append(self.cache_path / name)
            # Written last: a folder without meta.json is an interrupted build and is rebuilt.
            _save_atomically(self.cache_path / "meta.json",
                             lambda out: out.write(json.dumps(meta, indent=1).encode()))
        except OSError as error:
            for path in written:  # a cache without its meta.json is of no use, and holds the space that ran out
                path.unlink(missing_ok=True)
            if not existed:
                with contextlib.suppress(OSError):
                    self.cache_path.rmdir()
            no_space = error.errno in (errno.ENOSPC, errno.EDQUOT) or (
                # numpy's own writer says only "N requested and M written" (or "Not enough free space ...")
                error.errno is None and _free_bytes(self.cache_path) < train.nbytes + val.nbytes)
            fix = "free space or pass --cache-dir" if no_space else "pass --cache-dir with a writable folder"
            reason = "No space left on device" if no_space else (error.strerror or str(error))
            logger.warning(f"cannot write the data cache in {self.cache_path} ({reason}): training on without it; "
                           f"{fix}")
            return False
        return True

    def _load_cache(self) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            meta = json.loads((self.cache_path / "meta.json").read_text())
            train = np.load(self.cache_path / "train.npy", mmap_mode="r")
            val = np.load(self.cache_path / "val.npy", mmap_mode="r")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning(f"Token cache {self.cache_path} is unreadable ({error}); rebuilding it")
            return None
        expected = (meta.get("identity", {}).get("digest"), meta.get("train_tokens"), meta.get("val_tokens"))
        if expected != (self.identity.digest, len(train), len(val)) or {train.dtype, val.dtype} != {self.dtype}:
            logger.warning(f"Token cache {self.cache_path} does not match its description; rebuilding it")
            return None
        return train, val

    @property
    def num_train_blocks(self) -> int:
        return len(self.train_blocks)

    @property
    def num_val_blocks(self) -> int:
        return len(self.val_blocks)

    def __len__(self) -> int:
        return self.num_train_blocks

    def __getitem__(self, index: int) -> torch.Tensor:
        """Training sample `index` as a LongTensor of seq_len ids."""
        return _to_long(self.train_blocks[index])

    def train_batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Training samples by index, as a LongTensor [len(indices), seq_len]."""
        return _to_long(self.train_blocks[np.asarray(indices, dtype=np.int64)])

    def __repr__(self) -> str:
        return (
            f"TokenBlocks({self.num_train_blocks:,} training and {self.num_val_blocks:,} validation samples of "
            f"{self.seq_len} tokens, {self.identity.digest})"
        )


class PeerSampler:
    """One peer's reading position in the shared per-epoch order of training samples.

    >>> from swarm.recipe import DataConfig
    >>> from swarm.tokenizer import ByteTokenizer
    >>> cfg = DataConfig(source="stdlib", seq_len=64, stdlib_max_files=20, num_shards=16)
    >>> sampler = PeerSampler(TokenBlocks(cfg, ByteTokenizer(), cache_dir="/tmp/swarm-doc"), b"peer-a", cfg)
    >>> sampler.next_batch(epoch=5, batch_size=8).shape
    torch.Size([8, 64])

    In epoch e every peer computes the same permutation of all samples (seeded by data.seed and e) and cuts it
    into data.num_shards shards; this peer starts at the shard `shard_for_peer(peer_id, e)` picks and reads on
    into the following shards when it needs more. A new epoch restarts at that epoch's shard. Two peers share
    a starting shard with probability 1/num_shards, so keep num_shards well above the number of peers (the
    default 1024 is); a shard only needs to hold one epoch's worth of this peer's micro-batches.
    """

    def __init__(self, blocks: TokenBlocks, peer_id: bytes, cfg: "DataConfig"):
        self.blocks, self.peer_id = blocks, peer_id
        self.seed, self.num_shards = cfg.seed, cfg.num_shards
        self.epoch: int | None = None
        self.shard = 0
        self.blocks_read = 0  # samples handed out in the current epoch
        self._order = np.zeros(0, dtype=np.int64)
        self._start = 0

    def _begin_epoch(self, epoch: int) -> None:
        num_blocks = self.blocks.num_train_blocks
        self.epoch, self.blocks_read = epoch, 0
        self.shard = shard_for_peer(self.peer_id, epoch, self.num_shards)
        self._order = epoch_permutation(num_blocks, self.seed, epoch)
        self._start = shard_bounds(num_blocks, self.num_shards, self.shard)[0]

    def next_indices(self, epoch: int, count: int) -> np.ndarray:
        """Indices of the next `count` training samples for `epoch` (advances the cursor)."""
        if epoch != self.epoch:
            self._begin_epoch(epoch)
        positions = (self._start + self.blocks_read + np.arange(count)) % len(self._order)
        self.blocks_read += count
        return self._order[positions]

    def next_batch(self, epoch: int, batch_size: int) -> torch.Tensor:
        """The next `batch_size` samples of this peer in `epoch`, as a LongTensor [batch_size, seq_len]."""
        return self.blocks.train_batch(self.next_indices(epoch, batch_size))


def validation_batches(blocks: TokenBlocks, num_samples: int, batch_size: int) -> list[torch.Tensor]:
    """A fixed list of validation batches, the same on every peer and the coordinator.

    `num_samples` samples spread evenly over the validation split (all of them if it has fewer), in batches of
    `batch_size` (the last may be smaller).
    """
    available = blocks.num_val_blocks
    empty = validation_split_problem(blocks.cfg, len(blocks.val_tokens))
    if empty:
        raise SwarmError(empty)
    count = min(num_samples, available)
    # Evenly spaced rather than the first ones: with sorted files, the first samples would all be a few modules.
    indices = np.arange(count, dtype=np.int64) * available // count
    return [_to_long(blocks.val_blocks[indices[start : start + batch_size]]) for start in range(0, count, batch_size)]


# ---------------------------------------------------------------------------------------------------------------
# Streamed hub datasets
# ---------------------------------------------------------------------------------------------------------------


class StreamingBlocks:
    """Training samples from a streamed `datasets` dataset, for data too large to tokenise up front.

    >>> from swarm.recipe import DataConfig
    >>> cfg = DataConfig(source="hub", dataset="HuggingFaceFW/fineweb-edu", dataset_config="sample-10BT",
    ...                  revision="v1.2.0", seq_len=1024)
    >>> stream = StreamingBlocks(cfg, tokenizer, peer_id=b"peer-a")  # doctest: +SKIP
    >>> stream.next_batch(epoch=0, batch_size=8).shape  # doctest: +SKIP
    torch.Size([8, 1024])

    On the first `next_batch` the peer picks its starting file of the dataset (`dataset.num_shards` of them) from
    a hash of its id and that epoch, reads the files in order from there (wrapping), and shuffles documents in a
    buffer of `shuffle_buffer_documents` seeded the same way; so a peer's stream is deterministic for its id and
    starting epoch, and peers start in different files. Later epochs continue the stream (there is no cheap way
    to jump in a stream). Spreading peers needs many files: with one file, all peers read the same documents in
    different orders. Documents whose id ("file/row") hashes into validation are skipped here and used by
    `validation_batches`: the first `num_samples` samples packed from them, reading the files in order, the same
    on every peer (the dataset's own validation split is not used, to keep one rule for every source).
    """

    def __init__(
        self,
        cfg: "DataConfig",
        tokenizer: Tokenizer,
        peer_id: bytes,
        shuffle_buffer_documents: int = 1000,
        hf_cache_dir: str | os.PathLike | None = None,
    ):
        self.cfg, self.tokenizer, self.peer_id = cfg, tokenizer, peer_id
        self.seq_len = cfg.seq_len
        self.shuffle_buffer_documents = shuffle_buffer_documents
        self.hf_cache_dir = hf_cache_dir
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.start_epoch: int | None = None
        self.start_file: int | None = None
        self._dataset: Any = None
        self._blocks: Iterator[np.ndarray] | None = None
        self._validation: dict[int, np.ndarray] = {}

    def _load(self) -> Any:
        if self._dataset is None:
            self._dataset = _load_hub_dataset(self.cfg, streaming=True, hf_cache_dir=self.hf_cache_dir)
            self._text_field = _hub_text_field(self.cfg)
        return self._dataset

    def _file_documents(self, file_index: int) -> Iterator[tuple[str, str]]:
        return _streamed_documents(self._load(), file_index, self._text_field, self.cfg.dataset or "")

    def _tokens(self, documents: Iterable[tuple[str, str]]) -> Iterator[np.ndarray]:
        eos = np.array([self.tokenizer.eos_id], dtype=self.dtype)
        for _, text in documents:
            if text:
                yield np.concatenate([np.asarray(self.tokenizer.encode(text), dtype=self.dtype), eos])

    def _training_documents(self, epoch: int) -> Iterator[tuple[str, str]]:
        num_files = self._load().num_shards
        self.start_file = shard_for_peer(self.peer_id, epoch, num_files)
        logger.info(f"Streaming {self.cfg.dataset!r} from file {self.start_file} of {num_files}")
        rng = np.random.Generator(np.random.PCG64(_hash64(b"stream-shuffle", self.peer_id, epoch)))
        buffer: list[tuple[str, str]] = []
        while True:  # one pass over every file per loop, then again: the stream never ends
            read_any = trains_any = held_out_text = False
            for step in range(num_files):
                for doc_id, text in self._file_documents((self.start_file + step) % num_files):
                    read_any = True
                    if is_validation(doc_id, self.cfg.seed, self.cfg.val_fraction):
                        held_out_text = held_out_text or bool(text)
                        continue
                    trains_any = trains_any or bool(text)
                    if len(buffer) < self.shuffle_buffer_documents:
                        buffer.append((doc_id, text))
                        continue
                    slot = int(rng.integers(len(buffer)))
                    yield buffer[slot]
                    buffer[slot] = (doc_id, text)
            if not read_any:
                fix = ("the training data would be empty; add rows to its files"
                       if _local_dataset(self.cfg.dataset or "") is not None else "check data.split")
                raise UsageError(f"data.dataset: {self.cfg.dataset!r} has no rows in split {self.cfg.split!r}: {fix}")
            if not trains_any:  # a pass found no training text, and would start over without end
                raise SwarmError(training_split_problem(self.cfg, 0, int(held_out_text)) or "")
            rng.shuffle(buffer)
            yield from buffer
            buffer = []

    def next_batch(self, epoch: int, batch_size: int) -> torch.Tensor:
        """The next `batch_size` samples of this peer's stream, as a LongTensor [batch_size, seq_len]."""
        if self._blocks is None:
            self.start_epoch = epoch
            self._blocks = _pack(self._tokens(self._training_documents(epoch)), self.seq_len)
        return _to_long(np.stack([next(self._blocks) for _ in range(batch_size)]))

    def validation_batches(self, num_samples: int, batch_size: int) -> list[torch.Tensor]:
        """The first `num_samples` validation samples, in batches; the same on every peer and the coordinator."""
        if num_samples not in self._validation:
            if self.cfg.val_fraction == 0:
                raise SwarmError(validation_split_problem(self.cfg, 0) or "")
            num_files = self._load().num_shards
            documents = (
                document
                for file_index in range(num_files)
                for document in self._file_documents(file_index)
                if is_validation(document[0], self.cfg.seed, self.cfg.val_fraction)
            )
            blocks = []
            for block in _pack(self._tokens(documents), self.seq_len):
                blocks.append(block)
                if len(blocks) == num_samples:
                    break
            if not blocks:  # every held-out token together is less than one sample
                raise SwarmError(validation_split_problem(self.cfg, 0) or "")
            self._validation[num_samples] = np.stack(blocks)
        held_out = self._validation[num_samples]
        return [_to_long(held_out[start : start + batch_size]) for start in range(0, len(held_out), batch_size)]


# ---------------------------------------------------------------------------------------------------------------
# One entry point for the peer and the coordinator
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """A peer's training stream, the shared validation set and the data identity; see `build_data`."""

    train: PeerSampler | StreamingBlocks
    identity: DataIdentity
    val_samples: int

    def next_batch(self, epoch: int, batch_size: int) -> torch.Tensor:
        """This peer's next training samples in `epoch`, a LongTensor [batch_size, seq_len]."""
        return self.train.next_batch(epoch, batch_size)

    def validation_batches(self, batch_size: int) -> list[torch.Tensor]:
        """The data.val_samples held-out samples in batches of `batch_size`: identical on every peer."""
        if isinstance(self.train, StreamingBlocks):
            return self.train.validation_batches(self.val_samples, batch_size)
        return validation_batches(self.train.blocks, self.val_samples, batch_size)


def build_data(
    cfg: "DataConfig",
    tokenizer: Tokenizer,
    peer_id: bytes,
    cache_dir: str | os.PathLike | None = None,
    hf_cache_dir: str | os.PathLike | None = None,
) -> TrainingData:
    """Everything a peer (or the coordinator) needs from the recipe's `data:` section.

    >>> from swarm.recipe import DataConfig
    >>> from swarm.tokenizer import ByteTokenizer
    >>> data = build_data(DataConfig(stdlib_max_files=30, seq_len=32, val_fraction=0.2), ByteTokenizer(),
    ...                   peer_id=b"peer-a", cache_dir="/tmp/swarm-doc")
    >>> data.next_batch(epoch=0, batch_size=2).shape
    torch.Size([2, 32])
    >>> all(batch.shape[1] == 32 for batch in data.validation_batches(batch_size=16))
    True

    Streamed hub datasets give a `StreamingBlocks`; everything else a `PeerSampler` over cached `TokenBlocks`
    (`cache_dir` defaults to `default_cache_dir()`: $XDG_CACHE_HOME/swarm/data, or ~/.cache/swarm/data). The
    coordinator, which reads no training samples, may pass any peer_id: nothing is read before `next_batch`.
    Compare `identity` with the swarm's via `check_identity` before training.
    """
    identity = data_identity(cfg, tokenizer)
    train: PeerSampler | StreamingBlocks
    if cfg.source == "hub" and cfg.streaming:
        train = StreamingBlocks(cfg, tokenizer, peer_id, hf_cache_dir=hf_cache_dir)
    else:
        blocks = TokenBlocks(cfg, tokenizer, cache_dir=cache_dir, identity=identity, hf_cache_dir=hf_cache_dir)
        train = PeerSampler(blocks, peer_id, cfg)
    return TrainingData(train=train, identity=identity, val_samples=cfg.val_samples)


# ---------------------------------------------------------------------------------------------------------------
# A look at the data before a launch (`swarm recipe validate`)
# ---------------------------------------------------------------------------------------------------------------

# Rows `check_local_data` reads to check the text field, then on until one holds text (at most
# _ROWS_SEARCHED_FOR_TEXT): a wrong text_field or empty data shows in the first rows, and a big corpus costs no more
# than a small one.
_ROWS_CHECKED = 20
_ROWS_SEARCHED_FOR_TEXT = 1000
# Data up to this size `check_local_data` reads whole, to see the training and validation splits as a launch makes
# them (about a second for 64 MB of text files); above it, the first rows only, and a launch checks the splits.
_WHOLE_DATA_CHECK_BYTES = 64_000_000


@dataclass(frozen=True)
class DataCheck:
    """What `check_local_data` found: `problems` at key paths, each with its fix, as the recipe's own problems are;
    `checked`, whether the data was looked at; `note`, what was checked or why not (the ok line of `swarm recipe
    validate` ends with it)."""

    checked: bool
    note: str
    problems: list["RecipeProblem"]


def check_local_data(cfg: "DataConfig", tokenizer: "TokenizerConfig | None" = None) -> DataCheck:
    """A quick look at the data a recipe names, where it is on this machine, through the readers `swarm launch`
    uses, so that a wrong path, split or text field, or too little data, shows before a launch instead of minutes
    into one. `tokenizer` is the recipe's tokenizer section (the byte-level tokenizer by default).

    >>> from swarm.recipe import DataConfig
    >>> check_local_data(DataConfig(source="hub", dataset="HuggingFaceFW/fineweb-edu", text_field="text")).note
    "data not checked: Hub dataset 'HuggingFaceFW/fineweb-edu', read at launch"

    Checks that the files exist and can be read, that the split exists, that the first rows hold `text_field` and
    that there is text to train on. Data up to 64 MB is then read whole and split as a launch splits it, and the
    recipe's tokenizer counts each split's tokens until it fills what a launch needs (one sample of seq_len), so an
    empty or too small training or validation split is a problem here, in the words the launch would stop with
    (`training_split_problem`, `validation_split_problem`); files that are not valid UTF-8 get a note. Larger data is
    checked from its first rows (and, where documents are files, by their names), and the ok line says the launch
    checks the split sizes. A Hub dataset or tokenizer is not fetched: no network call.
    """
    from swarm.recipe import RecipeProblem

    problems: list[RecipeProblem] = []
    if cfg.val_fraction == 0:
        problems.append(RecipeProblem(path="data.val_fraction", message=(
            "0 holds out no documents, and a launch measures the validation loss on them: set it above 0, such as "
            "0.02")))
    if cfg.source == "stdlib":
        note = _check_stdlib(cfg, problems)
    elif cfg.source == "files":
        note = _check_data_files(cfg, problems)
    else:
        try:
            local = _local_dataset(cfg.dataset or "")
        except UsageError as error:
            problems.append(_usage_problem(error, "data.dataset"))
            return DataCheck(checked=True, note=f"data checked: local dataset {cfg.dataset!r}", problems=problems)
        if local is None:
            note = f"data not checked: Hub dataset {cfg.dataset!r}, read at launch"
            return DataCheck(checked=False, note=note, problems=problems)
        note = _check_local_dataset(cfg, local, problems)
    if not problems:  # data that cannot be read, or holds no text, has no splits to look at
        note += _check_splits(cfg, tokenizer, problems)
    return DataCheck(checked=True, note=note, problems=problems)


def _usage_problem(error: UsageError, default_path: str) -> "RecipeProblem":
    """A UsageError of the data readers as a problem at the key it names: as "data.split: ..." or in its fix ("set
    data.text_field to ...")."""
    from swarm.recipe import RecipeProblem

    message = str(error)
    named = re.match(r"(data\.\w+): ", message)
    if named:
        return RecipeProblem(path=named.group(1), message=message[named.end():])
    fix = re.search(r"\bset (data\.\w+)", message)
    return RecipeProblem(path=fix.group(1) if fix else default_path, message=message)


def _unreadable_file(files: Iterable[tuple[str, Path]], key: str) -> "RecipeProblem | None":
    from swarm.recipe import RecipeProblem

    for _, path in files:
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: a named pipe must not hang this
        except OSError as error:
            reason = error.strerror or type(error).__name__
            return RecipeProblem(path=key, message=f"{str(path)!r} cannot be read ({reason}): give this user read "
                                                   "access to it (chmod a+r), or leave it out")
        os.close(descriptor)
    return None


def _split_problem(names: list[str], cfg: "DataConfig") -> "RecipeProblem | None":
    """Whether the documents named `names` (ids, in a non-empty list) leave both the training and the validation split
    some: a document is held out whole, by a hash of its id."""
    from swarm.recipe import RecipeProblem

    held_out = sum(is_validation(name, cfg.seed, cfg.val_fraction) for name in names)
    if cfg.val_fraction > 0 and held_out == 0:
        return RecipeProblem(path="data.val_fraction", message=(
            f"no document is held out for validation ({len(names)} in all; whole documents are, picked by "
            "data.seed), and a launch measures the validation loss on them: raise data.val_fraction, "
            f"{_more_data(cfg)}, or try another data.seed"))
    if held_out == len(names):
        return RecipeProblem(path="data.val_fraction", message=(
            f"every document is held out for validation ({len(names)} in all; whole documents are, picked by "
            f"data.seed), which leaves none to train on: lower data.val_fraction, {_more_data(cfg)}, or try another "
            "data.seed"))
    return None


def _files(count: int, kind: str = "") -> str:
    return f"{count} {kind + ' ' if kind else ''}file{'' if count == 1 else 's'}"


def _rows_with_text(documents: Iterable[tuple[str, str]]) -> tuple[int, bool]:
    """(rows read, whether one held text): `_ROWS_CHECKED` rows, or on until one holds text."""
    rows, has_text = 0, False
    for _, text in documents:
        rows += 1
        has_text = has_text or bool(text)
        if (rows >= _ROWS_CHECKED and has_text) or rows >= _ROWS_SEARCHED_FOR_TEXT:
            break
    return rows, has_text


def _check_stdlib(cfg: "DataConfig", problems: list["RecipeProblem"]) -> str:
    from swarm.recipe import RecipeProblem

    listing = stdlib_files(cfg.stdlib_max_files)
    implementation = platform.python_implementation().replace("CPython", "Python")
    if not listing:
        problems.append(RecipeProblem(path="data.source", message=(
            f"'stdlib' trains on this Python's standard-library sources, and {sysconfig.get_paths()['stdlib']} holds "
            "none: run swarm under a Python that ships them (from python.org, pyenv or `uv python install`), or set "
            "data.source to files or hub")))
    return f"data checked: {implementation} {platform.python_version()} standard library, {_files(len(listing))}"


def _check_data_files(cfg: "DataConfig", problems: list["RecipeProblem"]) -> str:
    from swarm.recipe import RecipeProblem

    try:
        listing = data_files(cfg.files)
    except UsageError as error:
        problems.append(_usage_problem(error, "data.files"))
        return f"data checked: {cfg.format} files"
    note = f"data checked: {_files(len(listing), cfg.format)}"
    unreadable = _unreadable_file(listing, "data.files")
    if unreadable:
        problems.append(unreadable)
        return note
    if cfg.format == "text":
        # a text file is one document, and any byte in it is text: its size says whether it is empty, unread
        if not any(path.stat().st_size > 0 for _, path in listing):
            problems.append(RecipeProblem(path="data.files", message=(
                f"every file it matches is empty ({_files(len(listing))}): the training data would be empty; put "
                "text in them or point data.files at the files that hold it")))
        return note
    try:
        rows, has_text = _rows_with_text(iter_documents(cfg))
    except UsageError as error:
        problems.append(_usage_problem(error, "data.files"))
        return note
    if rows == 0:
        problems.append(RecipeProblem(path="data.files", message=(
            f"no file it matches holds a row ({_files(len(listing), 'jsonl')}): the training data would be empty; "
            "add rows (one JSON object per line) or point data.files at the files that hold them")))
    elif not has_text and rows < _ROWS_SEARCHED_FOR_TEXT:
        problems.append(RecipeProblem(path="data.text_field", message=(
            f"{cfg.text_field!r} is empty in every row of the data ({rows} in all): set data.text_field to the "
            "field that holds the text")))
    return f"{note}, field {cfg.text_field!r} in the first rows"


def _check_local_dataset(cfg: "DataConfig", local: LocalDataset, problems: list["RecipeProblem"]) -> str:
    from swarm.recipe import RecipeProblem

    text_field = _hub_text_field(cfg)
    layout = "save_to_disk" if local.layout == "save_to_disk" else f"{local.layout} files"
    note = (f"data checked: local dataset {local.path.name!r} ({layout}, {_files(len(local.files))}), split "
            f"{cfg.split!r}, field {text_field!r} in the first rows")
    unreadable = _unreadable_file(local.files, "data.dataset")
    if unreadable:
        problems.append(unreadable)
        return note
    # Streamed even where the recipe says streaming: false (a launch then builds the whole dataset): a stream reads
    # only the first rows. `datasets` still writes lock files in its cache: a folder of their own goes with the check.
    with tempfile.TemporaryDirectory(prefix="swarm-check-") as hf_cache_dir:
        try:
            dataset = _load_hub_dataset(cfg, streaming=True, hf_cache_dir=hf_cache_dir)
            documents = (
                document
                for file_index in range(dataset.num_shards)
                for document in _streamed_documents(dataset, file_index, text_field, cfg.dataset or "")
            )
            rows, has_text = _rows_with_text(documents)
        except UsageError as error:
            problems.append(_usage_problem(error, "data.dataset"))
            return note
        except StopIteration:
            # `datasets`' json builder reads a first table to learn the columns; with no row in the files there is
            # none (a launch then stops with "generator raised StopIteration")
            rows, has_text = 0, False
        except Exception as error:  # whatever `datasets` raises on files it cannot read: a line, not a traceback
            logger.debug("Reading the dataset failed", exc_info=True)
            problems.append(RecipeProblem(path="data.dataset", message=(
                f"{cfg.dataset!r} cannot be read by `datasets` ({type(error).__name__}: {error}): fix or remove the "
                "file it names")))
            return note
    if rows == 0:
        problems.append(RecipeProblem(path="data.dataset", message=(
            f"{cfg.dataset!r} has no rows in split {cfg.split!r}: the training data would be empty; add rows, or set "
            "data.split to a split that has them")))
    elif not has_text and rows < _ROWS_SEARCHED_FOR_TEXT and local.layout == "text":
        problems.append(RecipeProblem(path="data.dataset", message=(
            f"the .txt files of {cfg.dataset!r} are all empty: the training data would be empty; put text in them")))
    elif not has_text and rows < _ROWS_SEARCHED_FOR_TEXT:
        problems.append(RecipeProblem(path="data.text_field", message=(
            f"{text_field!r} is empty in every row of the data ({rows} in all): set data.text_field to the column "
            "that holds the text")))
    return note


def _data_listing(cfg: "DataConfig") -> list[tuple[str, Path]]:
    if cfg.source == "stdlib":
        return stdlib_files(cfg.stdlib_max_files)
    if cfg.source == "files":
        return data_files(cfg.files)
    local = _local_dataset(cfg.dataset or "")
    assert local is not None  # a Hub dataset is not checked
    return local.files


def _check_splits(cfg: "DataConfig", tokenizer_cfg: "TokenizerConfig | None", problems: list["RecipeProblem"]) -> str:
    """Whether the training and validation splits are big enough for a launch, and whether every file is UTF-8, by
    reading small data whole as a launch does; what to add to the note."""
    from swarm.recipe import RecipeProblem

    listing = _data_listing(cfg)
    data_bytes = sum(path.stat().st_size for _, path in listing)
    plain_files = all(path.is_file() for _, path in listing)  # a named pipe would hang a read to its end
    if data_bytes > _WHOLE_DATA_CHECK_BYTES or not plain_files:
        # Where a document is a file (stdlib, text files), its name alone says which split it is in.
        if cfg.source == "stdlib" or (cfg.source == "files" and cfg.format == "text"):
            names = [name for name, path in listing if not path.is_file() or path.stat().st_size > 0]
            problems += [problem for problem in [_split_problem(names, cfg)] if problem]
        what = f"the data are {_megabytes(data_bytes)}" if plain_files else "not every data file is a plain file"
        return (f"; the split sizes are checked at launch ({what}; validate reads data up to "
                f"{_megabytes(_WHOLE_DATA_CHECK_BYTES)} whole)")
    tokenizer, tokenizer_note = _local_tokenizer(tokenizer_cfg)
    undecodable: list[str] = []
    key = "data.dataset" if cfg.source == "hub" else "data.files"
    # `datasets` writes its cache (and, without streaming, the whole dataset as arrow files) where a launch would
    # not: a folder of the check's own, without progress bars on the console.
    with tempfile.TemporaryDirectory(prefix="swarm-check-") as hf_cache_dir, _no_progress_bars(cfg):
        documents = iter_documents(cfg, hf_cache_dir=hf_cache_dir, undecodable=undecodable)
        try:
            if tokenizer is None:
                names = [doc_id for doc_id, text in documents if text]
                problems += [problem for problem in [_split_problem(names, cfg) if names else None] if problem]
            else:
                train_tokens, val_tokens = _split_tokens(cfg, tokenizer, documents)
        except UsageError as error:
            problems.append(_usage_problem(error, key))
            return ""
        except Exception as error:  # whatever `datasets` raises on files it cannot read: a line, not a traceback
            logger.debug("Reading the data failed", exc_info=True)
            problems.append(RecipeProblem(path=key, message=(
                f"cannot be read whole ({type(error).__name__}: {error}): fix or remove the file it names")))
            return ""
    if tokenizer is not None:
        too_small = training_split_problem(cfg, train_tokens, val_tokens)
        if too_small:
            all_held_out = train_tokens == 0 and val_tokens > 0
            problems.append(RecipeProblem(path="data.val_fraction" if all_held_out else "data.seq_len",
                                          message=too_small))
        empty = validation_split_problem(cfg, val_tokens)
        if empty:
            problems.append(RecipeProblem(path="data.val_fraction", message=empty))
        note = f"; splits checked as a launch makes them ({tokenizer.identity()} tokens)"
    else:
        note = f"; the split sizes in tokens are checked at launch ({tokenizer_note})"
    if undecodable:
        note += f"; note: {undecodable_files_note(undecodable)}"
    return note


def _split_tokens(cfg: "DataConfig", tokenizer: Tokenizer, documents: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """Tokens of the training and the validation split (an eos after each document, as `TokenBlocks` counts them),
    counted until each has what a launch needs: every document is read, but one of a split that has enough is not
    tokenised, so this costs little more than the reading."""
    needed = {False: 1 if _is_streamed(cfg) else cfg.seq_len, True: cfg.seq_len}
    counts = {False: 0, True: 0}

    def still_needed() -> Iterator[tuple[str, str]]:
        for doc_id, text in documents:
            held_out = is_validation(doc_id, cfg.seed, cfg.val_fraction)
            if counts[held_out] < needed[held_out]:
                yield doc_id, text

    for doc_id, tokens in _encoded_documents(still_needed(), tokenizer):
        counts[is_validation(doc_id, cfg.seed, cfg.val_fraction)] += len(tokens) + 1
    return counts[False], counts[True]


def _local_tokenizer(cfg: "TokenizerConfig | None") -> tuple[Tokenizer | None, str]:
    """The recipe's tokenizer where it is on this machine (the byte-level one, or a pretrained one in a local folder),
    else None and why: a Hub tokenizer is not downloaded."""
    from swarm.recipe import TokenizerConfig
    from swarm.tokenizer import build_tokenizer

    cfg = cfg or TokenizerConfig()
    if cfg.kind == "byte":
        return build_tokenizer(cfg), ""
    name = cfg.name or ""
    if not os.path.isdir(os.path.expanduser(name)):
        return None, f"tokenizer {name!r} is not on this machine, and validate downloads nothing"
    try:
        return build_tokenizer(cfg), ""
    except Exception as error:  # the recipe check names a tokenizer folder it cannot load; here it only costs counts
        logger.debug("Loading the tokenizer failed", exc_info=True)
        return None, f"tokenizer {name!r} could not be loaded ({type(error).__name__})"


@contextlib.contextmanager
def _no_progress_bars(cfg: "DataConfig") -> Iterator[None]:
    if cfg.source != "hub":
        yield
        return
    import datasets

    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.enable_progress_bars()

