"""The recipe: one YAML file that describes a training run, validated as a whole before anything starts.

Each concern has its own small model and is handed only to the component that owns it:

>>> from swarm.recipe import load_recipe
>>> recipe = load_recipe("recipes/tiny-stdlib.yaml")
>>> recipe.collaboration.target_batch_size
256

`load_recipe` raises `RecipeError` listing *every* problem at once, each with its key path and the fix;
`swarm recipe validate FILE...` prints them and exits 2.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

RECIPE_FORMAT_VERSION = 1


class _Section(BaseModel):
    # Unknown keys are errors: a typo such as `learning_rate` for `lr` must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


class RunConfig(_Section):
    """Who the run is: its id names every DHT key of the run, so peers of different runs never mix."""

    id: str = Field(description="Run id, shared by every peer: lowercase letters, digits, '-' and '_'.")
    description: str = Field("", description="One line for volunteers: what is trained and why.")

    @field_validator("id")
    @classmethod
    def _id_is_a_key(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", value):
            raise ValueError("use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit")
        return value


class ModelConfig(_Section):
    """The network: a transformers architecture built from `config` (random init), or a pretrained one."""

    architecture: str | None = Field(
        "gpt2", description="transformers `model_type` to build from `config`, e.g. gpt2, llama, gpt_neox."
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the architecture's config class (sizes, dropout)."
    )
    pretrained: str | None = Field(
        None, description="Continue from a checkpoint: a local folder or a Hub model id. Replaces architecture/config."
    )
    revision: str | None = Field(None, description="Hub revision of `pretrained` (branch, tag or commit).")
    init_seed: int = Field(0, description="Seed of the random initialisation; every peer must use the same.")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if self.pretrained is None and not self.architecture:
            raise ValueError("set model.architecture (with model.config) or model.pretrained")
        return self


class TokenizerConfig(_Section):
    """How text becomes token ids."""

    kind: Literal["byte", "pretrained"] = Field(
        "byte", description="`byte`: built-in byte-level tokenizer (no download); `pretrained`: load `name`."
    )
    name: str | None = Field(None, description="tokenizers/transformers name or local path, for kind=pretrained.")

    @model_validator(mode="after")
    def _name_for_pretrained(self) -> "TokenizerConfig":
        if self.kind == "pretrained" and not self.name:
            raise ValueError("tokenizer.kind is 'pretrained' but tokenizer.name is empty: set a name or path")
        return self


class DataConfig(_Section):
    """What the swarm trains on. Every peer must see the same data: its identity hash is checked on join."""

    source: Literal["stdlib", "files", "hub"] = Field(
        "stdlib",
        description="`stdlib`: this Python's standard library source (found at run time); `files`: local text or "
        "JSON-lines files; `hub`: a `datasets` dataset.",
    )
    files: list[str] = Field(
        default_factory=list, description="Paths or glob patterns, for source=files (relative to the recipe file)."
    )
    format: Literal["text", "jsonl"] = Field("text", description="File format, for source=files.")
    text_field: str = Field("text", description="Field holding the text, for jsonl files and hub datasets.")
    dataset: str | None = Field(None, description="`datasets` name or local path, for source=hub.")
    dataset_config: str | None = Field(None, description="`datasets` configuration name, for source=hub.")
    split: str = Field("train", description="`datasets` split, for source=hub.")
    revision: str | None = Field(None, description="Dataset revision (commit), for source=hub; pin it.")
    streaming: bool = Field(True, description="Stream the hub dataset instead of downloading it whole.")
    seq_len: int = Field(128, gt=1, le=131072, description="Tokens per training sample.")
    val_fraction: float = Field(
        0.02, ge=0.0, lt=0.5, description="Fraction of documents held out for validation loss."
    )
    val_samples: int = Field(64, ge=1, description="Samples of the held-out set used for one validation loss.")
    num_shards: int = Field(
        1024, ge=1, description="Slices of the data per epoch; each peer reads the slice its id and the epoch pick."
    )
    seed: int = Field(0, description="Seed of the per-epoch shuffle shared by all peers.")
    stdlib_max_files: int | None = Field(
        None, ge=1, description="Use only the first N files (sorted) of the standard library, for source=stdlib."
    )

    @model_validator(mode="after")
    def _source_fields(self) -> "DataConfig":
        if self.source == "files" and not self.files:
            raise ValueError("data.source is 'files' but data.files is empty: list paths or glob patterns")
        if self.source == "hub" and not self.dataset:
            raise ValueError("data.source is 'hub' but data.dataset is empty: set a dataset name or path")
        return self


class ScheduleConfig(_Section):
    """Learning-rate schedule, counted in swarm epochs (one epoch = one global optimiser step)."""

    warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0 to optimizer.lr, in global steps.")
    decay: Literal["constant", "linear", "cosine"] = Field("cosine", description="Shape after the warm-up.")
    total_steps: int = Field(1000, ge=1, description="Global step at which the decay reaches min_lr_ratio.")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Final learning rate as a fraction of lr.")

    @model_validator(mode="after")
    def _warmup_fits(self) -> "ScheduleConfig":
        if self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"schedule.warmup_steps ({self.warmup_steps}) must be below schedule.total_steps ({self.total_steps})"
            )
        return self


class OptimConfig(_Section):
    """The optimiser that every peer applies to the swarm-averaged gradients."""

    name: Literal["adamw", "lamb"] = Field("adamw", description="`adamw` or `lamb` (layer-wise adaptive, large batches).")
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0, description="Decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="Adam moment decay rates, each in [0, 1).")
    eps: float = Field(1e-8, gt=0.0, description="Adam epsilon.")
    clip_grad_norm: float | None = Field(1.0, gt=0.0, description="Clip the averaged gradient's norm; null disables.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError("each beta must be in [0, 1), for example [0.9, 0.95]")
        return value


class CollaborationConfig(_Section):
    """How peers cooperate: DeDLOC-style accumulation to a swarm-wide batch, then gradient averaging."""

    target_batch_size: int = Field(
        256, ge=1, description="Samples the whole swarm accumulates per global step (the global batch)."
    )
    micro_batch_size: int | Literal["auto"] = Field(
        "auto", description="Samples per local forward/backward; `auto` picks one for the volunteer's hardware."
    )
    max_micro_batch_size: int = Field(64, ge=1, description="Upper bound for `auto` micro-batch selection.")
    matchmaking_time_s: float = Field(
        5.0, gt=0.0, le=600.0, description="Seconds to gather a group before averaging (3-5 locally, 10-15 online)."
    )
    averaging_timeout_s: float = Field(
        60.0, gt=0.0, le=3600.0, description="Give up on an all-reduce after this long (about 2x its real time)."
    )
    compression: Literal["none", "fp16", "uint8", "blockwise8"] = Field(
        "fp16", description="Wire format of averaged gradients: fp16 halves traffic; 8-bit quarters it."
    )
    average_optimizer_state: bool = Field(
        True, description="Also average the optimiser statistics (Adam moments) between peers every few epochs."
    )
    average_state_every: int = Field(
        1, ge=1, description="Average parameters (and optimiser state) every N epochs to undo drift."
    )
    load_state_timeout_s: float = Field(
        300.0, gt=0.0, description="How long a joining peer waits for the current state before giving up."
    )

    @model_validator(mode="after")
    def _micro_fits_target(self) -> "CollaborationConfig":
        if isinstance(self.micro_batch_size, int):
            if self.micro_batch_size < 1:
                raise ValueError("collaboration.micro_batch_size must be >= 1 or 'auto'")
            if self.micro_batch_size > self.target_batch_size:
                raise ValueError(
                    f"collaboration.micro_batch_size ({self.micro_batch_size}) exceeds target_batch_size "
                    f"({self.target_batch_size}): lower it or raise target_batch_size"
                )
        if self.averaging_timeout_s < self.matchmaking_time_s:
            raise ValueError(
                f"collaboration.averaging_timeout_s ({self.averaging_timeout_s}) is shorter than matchmaking_time_s "
                f"({self.matchmaking_time_s}): a round could never finish; raise averaging_timeout_s"
            )
        return self


class CheckpointConfig(_Section):
    """Where and how often the coordinator publishes the averaged model."""

    dir: str = Field("runs/{run_id}/checkpoints", description="Local folder of published versions ({run_id} expands).")
    every_epochs: int = Field(50, ge=1, description="Publish a version every N swarm epochs (and at the end).")
    hub_repo_id: str | None = Field(None, description="Also upload each version to this Hub repo (needs HF_TOKEN).")

    @field_validator("hub_repo_id")
    @classmethod
    def _repo_id_shape(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value):
            raise ValueError("use the form 'namespace/name', for example 'my-org/tiny-stdlib'")
        return value


class LimitsConfig(_Section):
    """When the run is over. Unset limits do not apply; with none set the run goes on until stopped."""

    max_epochs: int | None = Field(None, ge=1, description="Stop after this many swarm epochs (global steps).")
    max_samples: int | None = Field(None, ge=1, description="Stop after the swarm has trained on this many samples.")
    max_wall_time_s: float | None = Field(None, gt=0, description="Stop this many seconds after the launch.")


class CreditConfig(_Section):
    """How claimed work is turned into granted credit in the ledger."""

    max_samples_per_second: float = Field(
        1e5, gt=0, description="A claim faster than this per peer is implausible and not granted."
    )


class Recipe(_Section):
    """A whole run. Only `run.id` is required; every other section has working defaults."""

    format_version: int = Field(RECIPE_FORMAT_VERSION, description="Recipe format version; leave as is.")
    run: RunConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optimizer: OptimConfig = Field(default_factory=OptimConfig)
    collaboration: CollaborationConfig = Field(default_factory=CollaborationConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    credit: CreditConfig = Field(default_factory=CreditConfig)

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != RECIPE_FORMAT_VERSION:
            raise ValueError(f"this swarm reads format_version {RECIPE_FORMAT_VERSION}; upgrade swarm or the recipe")
        return value

    def to_json(self) -> str:
        """Canonical JSON: the form published to the swarm and hashed into the recipe id."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir.replace("{run_id}", self.run.id))


class RecipeProblem(BaseModel):
    """One thing wrong with a recipe, at a key path such as `optimizer.schedule.warmup_steps`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RecipeError(Exception):
    """Every problem found in one recipe file."""

    def __init__(self, source: str, problems: list[RecipeProblem]):
        self.source, self.problems = source, problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


_FIX_HINTS = {
    "extra_forbidden": "unknown key: remove it or check its spelling (`swarm recipe show` lists every key)",
    "missing": "required: add this key",
}


def _problems_from_validation(error: ValidationError) -> list[RecipeProblem]:
    problems = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"] if not str(part).startswith("function-after")]
        # pydantic adds the union member tried ("int", "literal['auto']") to the path; those are not keys
        loc = [part for part in loc if not re.fullmatch(r"(int|float|str|bool|none|literal\[.*\]|tuple\[.*\])", part)]
        message = _FIX_HINTS.get(item["type"], item["msg"].removeprefix("Value error, "))
        if item["type"] not in _FIX_HINTS and "input" in item and not isinstance(item["input"], (dict, list)):
            message = f"{message} (got {item['input']!r})"
        problem = RecipeProblem(path=".".join(loc), message=message)
        if problem not in problems:
            problems.append(problem)
    return problems


def _check_files(recipe: Recipe, base_dir: Path) -> list[RecipeProblem]:
    """Problems only visible on disk: data files that match nothing, a pretrained path that is not there."""
    problems = []
    if recipe.data.source == "files":
        for index, pattern in enumerate(recipe.data.files):
            full = pattern if os.path.isabs(pattern) else str(base_dir / pattern)
            if not glob.glob(full, recursive=True):
                problems.append(
                    RecipeProblem(
                        path=f"data.files.{index}",
                        message=f"no file matches {full!r}: fix the path (relative paths start at the recipe's folder)",
                    )
                )
    for key, value in (("model.pretrained", recipe.model.pretrained), ("tokenizer.name", recipe.tokenizer.name)):
        if value and _looks_like_local_path(value) and not (base_dir / value).expanduser().exists():
            problems.append(
                RecipeProblem(path=key, message=f"{value!r} does not exist: fix the path or use a Hub id 'org/name'")
            )
    if recipe.data.source == "hub" and recipe.data.dataset and _looks_like_local_path(recipe.data.dataset):
        if not (base_dir / recipe.data.dataset).expanduser().exists():
            problems.append(
                RecipeProblem(path="data.dataset", message=f"{recipe.data.dataset!r} does not exist: fix the path")
            )
    return problems


def _looks_like_local_path(value: str) -> bool:
    # A Hub id is "name" or "namespace/name"; anything else that names a path is local.
    return value.startswith((".", "/", "~")) or value.count("/") > 1


def parse_recipe(data: Any, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate an already-parsed mapping; `base_dir` enables the on-disk checks (files, paths)."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise RecipeError(source, [RecipeProblem(path="", message=f"the recipe is {kind}, expected a mapping of sections such as 'run:' and 'model:'")])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(source, _problems_from_validation(error)) from None
    if base_dir is not None:
        problems = _check_files(recipe, base_dir)
        if problems:
            raise RecipeError(source, problems)
    return recipe


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a recipe file; relative data paths are resolved against the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), [RecipeProblem(path="", message="file not found: check the path")]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise RecipeError(str(path), [RecipeProblem(path="", message=f"cannot read the file ({error.__class__.__name__}): pass a readable UTF-8 YAML file")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(error, "problem", None) or str(error)
        raise RecipeError(str(path), [RecipeProblem(path="", message=f"invalid YAML at {where}{reason}: fix the syntax")]) from None
    recipe = parse_recipe(data, source=str(path), base_dir=path.resolve().parent)
    if recipe.data.source == "files":
        base = path.resolve().parent
        resolved = [p if os.path.isabs(p) else str(base / p) for p in recipe.data.files]
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"files": resolved})})
    return recipe


def recipe_from_json(text: str, source: str = "the swarm") -> Recipe:
    """Rebuild a recipe published by a coordinator (no on-disk checks: paths are the coordinator's)."""
    return parse_recipe(json.loads(text), source=source)
