"""Publishing model versions: every version is kept, each loadable with `from_pretrained`.

Layout of the checkpoint folder:

    checkpoints/
      epoch-000050/   config.json, model.safetensors, tokenizer files, README.md (model card), swarm.json,
                      ledger/head.json and ledger/public_key.pem (the credit ledger's signed checkpoint then)
      epoch-000100/   ...
      latest          the name of the newest version (one line)

A version is written to a hidden temporary folder and renamed into place, so a crash never leaves a
half-written version under its final name. A published version is never deleted or replaced: saving an epoch
that is already published raises `VersionExistsError` and leaves the folder as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import swarm
from swarm.errors import SwarmError
from swarm.ledger import HEAD_FILE, PUBLIC_KEY_FILE, SignedCheckpoint, visible_text
from swarm.recipe import Recipe

_VERSION_NAME = re.compile(r"epoch-(\d{6,})")


@dataclass
class VersionInfo:
    epoch: int
    samples_seen: int
    val_loss: float | None
    recipe_fingerprint: str
    data_digest: str
    data_description: str
    ledger_root: str | None = None
    ledger_tree_size: int = 0
    top_contributors: list = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    swarm_version: str = swarm.__version__
    extra: dict = field(default_factory=dict)


def _model_card(recipe: Recipe, info: VersionInfo) -> str:
    loss = "n/a" if info.val_loss is None else f"{info.val_loss:.4f}"
    return f"""---
library_name: transformers
tags: [swarm, volunteer-training, {recipe.run.id}]
---
# {recipe.run.id} — epoch {info.epoch}

{recipe.run.description or "Trained by volunteers with swarm."}

| | |
|---|---|
| swarm epoch (global steps) | {info.epoch} |
| samples seen | {info.samples_seen} |
| validation loss (nats/token) | {loss} |
| recipe fingerprint | `{info.recipe_fingerprint}` |
| data | {info.data_description} (identity `{info.data_digest[:16]}`) |
| swarm version | {info.swarm_version} |
| ledger root at this version | `{info.ledger_root or "empty"}` ({info.ledger_tree_size} entries) |

## Top contributors

{_contributors(info)}

Credit is recorded in the run's public ledger; check it offline with `swarm ledger verify <ledger folder or URL>`.
{_head_note(info)}

Load it with `transformers.AutoModelForCausalLM.from_pretrained("<this folder>")`. The full recipe is in
`swarm.json`; earlier versions stay published next to this one.
"""


def _head_note(info: VersionInfo) -> str:
    if info.ledger_root is None:
        return "This version was published before the ledger signed any credit: it carries no ledger head."
    return ("`ledger/head.json` is the ledger's signed checkpoint at this version: `swarm ledger verify <ledger> "
            "--trusted\n<this folder>` proves that the ledger still holds the credit this version was published with.")


# Backslash-escaped in a name: markup (links, images, HTML, code, emphasis, math), the table's | and what makes an
# autolink (www. , @ of an e-mail, : of a scheme). CommonMark renders any backslash-escaped ASCII punctuation as is.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#!|~&.@:$])")


def _markdown_cell(text: str) -> str:
    """A volunteer's name or team as the text of a Markdown table cell: shown as typed, never rendered.

    Names come from volunteers, and the model card is the run's page on the Hub: "[prize](https://evil.example)"
    or "![](https://tracker.example/p.gif)" would be a live link or image there, and a | would break the table.
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\1", visible_text(text))


def _contributors(info: VersionInfo) -> str:
    if not info.top_contributors:
        return "No credit committed yet."
    rows = ["| volunteer | team | granted samples |", "|---|---|---|"]
    rows += [f"| {_markdown_cell(c['name'])} | {_markdown_cell(c['team']) or '-'} | {int(c['granted_samples'])} |"
             for c in info.top_contributors]
    return "\n".join(rows)


class VersionExistsError(SwarmError):
    """The epoch is already published: a version is never replaced (its files may be mirrored, hashed, cited)."""


def version_name(epoch: int) -> str:
    return f"epoch-{epoch:06d}"


def save_version(folder: Path, model: torch.nn.Module, tokenizer, recipe: Recipe, info: VersionInfo,
                 ledger_head: SignedCheckpoint | None = None, ledger_public_key: bytes | None = None) -> Path:
    """Write one version atomically as `epoch-NNNNNN/` and point `latest` at it if it is the newest; returns its
    folder. Raises `VersionExistsError` if that epoch is already published: the existing version is kept as is.

    With `ledger_head` (the ledger's newest signed checkpoint) and the ledger's public key, the version carries them
    in `ledger/`: wherever the version is hosted, `swarm ledger verify <the run's ledger> --trusted <version>` proves
    that the ledger still holds the credit the version was published with. Not a copy of the ledger: one per
    version made the checkpoint folder grow with the square of the run's length (the Hub upload adds the ledger).
    """
    folder.mkdir(parents=True, exist_ok=True)
    name = version_name(info.epoch)
    final, tmp = folder / name, folder / f".tmp-{name}-{os.getpid()}"
    if final.exists():
        raise VersionExistsError(f"version {name} is already published in {folder}; it is kept as is")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_model_files(tmp, model, tokenizer, recipe, info)
        if ledger_head is not None and ledger_public_key is not None:
            (tmp / "ledger").mkdir()
            (tmp / "ledger" / HEAD_FILE).write_bytes(ledger_head.canonical_bytes() + b"\n")
            (tmp / "ledger" / PUBLIC_KEY_FILE).write_bytes(ledger_public_key)
        _apply_umask(tmp)
        # rename(2) of a folder onto an existing empty folder would replace it: look once more right before
        if final.exists():
            raise VersionExistsError(f"version {name} is already published in {folder}; it is kept as is")
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if latest_version(folder) == final:  # an older epoch published late never moves `latest` back
        latest_tmp = folder / ".latest.tmp"
        latest_tmp.write_text(name + "\n")
        os.replace(latest_tmp, folder / "latest")
    return final


def write_model_files(target: Path, model: torch.nn.Module, tokenizer, recipe: Recipe, info: VersionInfo) -> None:
    """safetensors + config + tokenizer + model card + swarm.json into `target` (created if needed)."""
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "README.md").write_text(_model_card(recipe, info))
    metadata = dict(asdict(info), recipe=json.loads(recipe.to_json()))
    (target / "swarm.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))


def _apply_umask(folder: Path) -> None:
    """Give every file and folder of a version the mode a plain open() or mkdir() gives (0666 or 0777 less the
    umask). transformers writes the weights through a private temporary file (mode 0600), so a web server serving
    checkpoints/ as another user, or another user's `--from-checkpoint`, was refused the weights only."""
    mask = _umask()
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    """The process umask, read without setting it (os.umask sets it, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def published_epoch(version: Path) -> int | None:
    """The epoch of a complete version folder (`epoch-NNNNNN/` with its weights and `swarm.json`), else None."""
    match = _VERSION_NAME.fullmatch(version.name)
    if match is None or not (version / "swarm.json").is_file() or not any(version.glob("*.safetensors")):
        return None
    return int(match.group(1))


def latest_version(folder: Path) -> Path | None:
    """The newest complete version in `folder`, or None. Found from the folders themselves, not the `latest`
    pointer: a coordinator killed between writing a version and its pointer leaves the pointer one behind."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return None
    versions = [(epoch, path) for path in entries if (epoch := published_epoch(path)) is not None]
    return max(versions)[1] if versions else None
