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

import difflib
import glob
import decimal
import hashlib
import json
import math
import os
import re
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

RECIPE_FORMAT_VERSION = 1


class _Section(BaseModel):
    # Unknown keys are errors: a typo such as `learning_rate` for `lr` must not silently fall back to a default.
    # Infinity/NaN are refused: the canonical JSON (`Recipe.to_json`) has no portable spelling for them.
    # Strict: `true` is not the count 1 nor `false` the number 0, and "5" is not 5 (a float still takes 5).
    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=(), allow_inf_nan=False,
                              strict=True)


class _ProblemAt(ValueError):
    """A field check's error, reported at a key inside the field (`model.config.created`) rather than at the field."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


Problems = Iterator[tuple[str, str]]  # what a cross check yields: (key path inside its section, what to fix)


def _cross_check(*keys: str) -> Callable[[Callable[[Any], Problems]], Any]:
    """Make `check(section)`, which yields `(key, message)` for every problem it finds, a validator of its section.

    pydantic runs a section's own validators only once every key in it is valid, and a validator raises once: a
    recipe with three mistakes would take three rounds of `swarm recipe validate`. A cross check runs whenever the
    `keys` it reads (dotted paths into sub-sections, like "data.seq_len") are valid, whatever else is wrong, and
    all its problems are reported with the rest. The check's docstring goes into docs/recipe-reference.md.
    """
    paths = [tuple(key.split(".")) for key in keys]

    def decorate(check: Callable[[Any], Problems]) -> Any:
        def validate(cls: type[BaseModel], data: Any, handler: Callable[[Any], Any]) -> Any:
            try:
                section, errors = handler(data), []
            except ValidationError as error:
                errors = error.errors(include_url=False)
                read_invalid_key = any(_overlaps(item["loc"], path) for item in errors for path in paths)
                if read_invalid_key or not isinstance(data, dict):
                    raise
                section, failed = _partial(cls, data), error
            problems = [
                {"type": "value_error", "loc": tuple(key.split(".")), "input": data if isinstance(data, dict) else {},
                 "ctx": {"error": ValueError(message)}}
                for key, message in check(section)
            ]
            if not problems:
                if errors:
                    raise failed
                return section
            raise ValidationError.from_exception_data(cls.__name__, [*errors, *problems])

        # not functools.wraps: pydantic reads the validator's signature, and would follow __wrapped__ to `check`'s
        validate.__name__, validate.__qualname__, validate.__doc__ = check.__name__, check.__qualname__, check.__doc__
        return model_validator(mode="wrap")(classmethod(validate))

    return decorate


def _overlaps(loc: tuple[int | str, ...], path: tuple[str, ...]) -> bool:
    """Whether an error at `loc` makes the key at `path` unusable: it is at the key, inside it, or above it."""
    common = min(len(loc), len(path))
    return tuple(str(part) for part in loc[:common]) == path[:common]


def _partial(cls: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    """The section as written, unvalidated (defaults where a key is absent), for cross checks of its valid keys."""
    values = {}
    for name, field in cls.model_fields.items():
        if name in data:
            nested = _section_model(field.annotation)
            value = data[name]
            values[name] = _partial(nested, value) if nested is not None and isinstance(value, dict) else value
    return cls.model_construct(**values)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


class RunConfig(_Section):
    """Who the run is: its id names every DHT key of the run, so peers of different runs never mix."""

    id: str = Field(description="Run id, shared by every peer: lowercase letters, digits, '-' and '_'.")
    description: str = Field("", description="One line for volunteers: what is trained and why.")

    @field_validator("id")
    @classmethod
    def _id_is_a_key(cls, value: str) -> str:
        """`id` is 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", value):
            raise ValueError("use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit")
        return value


# Keys that size a transformers model, by the names the common architectures use. transformers takes
# `n_layer: -1` and fails later ("__len__() should return >= 0"), and `n_inner: 0` at the first forward.
_MODEL_SIZE_KEYS = frozenset({
    "n_layer", "n_head", "n_embd", "n_positions", "num_layers", "num_hidden_layers", "num_heads",
    "num_attention_heads", "hidden_size", "intermediate_size", "ffn_dim", "max_position_embeddings",
})
_MODEL_SIZE_KEYS_NULLABLE = frozenset({"n_inner", "num_key_value_heads", "head_dim"})  # null: derived from others

# Where the architectures with a learned position table keep their sizes (a key and its aliases), with transformers'
# defaults. A sample longer than the table fails at the first forward ("IndexError: index out of range in self"),
# and a width that is not a multiple of the heads when the model is built. Rotary models (llama, gpt_neox) have no
# table: they run past max_position_embeddings.
_ARCHITECTURE_SIZES: dict[str, dict[str, tuple[tuple[str, ...], int]]] = {
    "gpt2": {"positions": (("n_positions", "max_position_embeddings"), 1024),
             "width": (("n_embd", "hidden_size"), 768), "heads": (("n_head", "num_attention_heads"), 12)},
    "gpt_neo": {"positions": (("max_position_embeddings",), 2048), "width": (("hidden_size",), 2048),
                "heads": (("num_heads", "num_attention_heads"), 16)},
    "opt": {"positions": (("max_position_embeddings",), 2048), "width": (("hidden_size",), 768),
            "heads": (("num_attention_heads",), 12)},
}


def _architecture_size(architecture: str, config: dict[str, Any], role: str) -> tuple[str, Any]:
    """The key of `config` that sets `role` ("positions", "width", "heads") and its value, or the default's."""
    names, default = _ARCHITECTURE_SIZES[architecture][role]
    return next(((name, config[name]) for name in names if name in config), (names[0], default))


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class ModelConfig(_Section):
    """The network: a transformers architecture built from `config` (random init), or a pretrained one."""

    architecture: str | None = Field(
        "gpt2", description="transformers `model_type` to build from `config`, e.g. gpt2, llama, gpt_neox."
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the architecture's config class (sizes, dropout)."
    )
    pretrained: str | None = Field(
        None, description="Continue from a checkpoint: a local folder (relative to the recipe's folder) or a Hub model "
                          "id. Replaces architecture/config."
    )
    revision: str | None = Field(None, description="Hub revision of `pretrained` (branch, tag or commit).")
    init_seed: int = Field(0, description="Seed of the random initialisation; every peer must use the same.")
    pad_vocab_to_multiple_of: int | None = Field(
        None, ge=1, le=4096,
        description="Round the embedding and output layer up to a multiple of this many tokens (e.g. 64) so the "
        "GPU's matrix units run full tiles; the extra rows are never used as inputs. GPT-2's 50257 -> 50304 trained "
        "19% faster on an H100; on a CPU the extra rows only cost compute (benchmarks/README.md). Models built "
        "from `config` only.",
    )

    @_cross_check("architecture", "pretrained")
    def _one_source(self) -> Problems:
        """Either `architecture` or `pretrained` is set."""
        if self.pretrained is None and not self.architecture:
            yield "architecture", "empty: set model.architecture (with model.config) or model.pretrained"

    @_cross_check("pretrained", "pad_vocab_to_multiple_of")
    def _padding_for_built_models(self) -> Problems:
        """`pad_vocab_to_multiple_of` is only set for a model built from `config`."""
        if self.pretrained is not None and self.pad_vocab_to_multiple_of is not None:
            yield "pad_vocab_to_multiple_of", ("applies to models built from model.config; a pretrained model's "
                                               "vocabulary comes with its weights: remove it")

    @_cross_check("architecture", "pretrained", "config")
    def _sizes_fit(self) -> Problems:
        """The sizes in `config` (layers, heads, widths, positions: `n_layer`, `num_attention_heads`, ...) are whole
        numbers >= 1; for gpt2, gpt_neo and opt the width is a multiple of the heads."""
        if self.pretrained is not None:
            return
        for key, value in self.config.items():
            nullable = key in _MODEL_SIZE_KEYS_NULLABLE
            if (key in _MODEL_SIZE_KEYS or nullable) and not _is_size(value) and not (nullable and value is None):
                yield f"config.{key}", (f"{value!r} is not a size: use a whole number >= 1"
                                        + (" (or null for the architecture's default)" if nullable else ""))
        if self.architecture not in _ARCHITECTURE_SIZES:
            return
        width_key, width = _architecture_size(self.architecture, self.config, "width")
        heads_key, heads = _architecture_size(self.architecture, self.config, "heads")
        if _is_size(width) and _is_size(heads) and width % heads:
            yield f"config.{width_key}", (f"{width} is not a multiple of {heads_key} ({heads}): each attention head "
                                          f"gets {width_key} / {heads_key} dimensions; change one of them")

    @_cross_check("architecture", "pretrained", "config")
    def _config_fits_the_architecture(self) -> Problems:
        """`architecture` is a transformers model type with a causal-LM head, and every key of `config` is a setting
        of its config class (transformers would keep a misspelt or foreign key, such as gpt2's `n_embd` under llama,
        and build the architecture's default size). With `pretrained`, the config comes with the weights: `config`
        stays empty."""
        if self.pretrained is not None:
            if self.config:
                yield "config", ("applies to models built from model.architecture; a pretrained model's config comes "
                                 "with its weights: remove it")
            return
        if not self.architecture:
            return
        from swarm.model import architecture_problems

        yield from architecture_problems(self.architecture, self.config)

    @field_validator("config")
    @classmethod
    def _config_is_plain_data(cls, value: dict[str, Any]) -> dict[str, Any]:
        """`config` holds only numbers, text, true/false, null, lists and mappings."""
        # YAML can also produce dates, sets and binary; those change when the recipe goes through JSON to the
        # swarm, so the fingerprint would differ between the coordinator and the peers.
        def plain(item: Any) -> bool:
            if isinstance(item, dict):
                return all(isinstance(key, str) and plain(val) for key, val in item.items())
            if isinstance(item, list):
                return all(plain(val) for val in item)
            if isinstance(item, float):
                return math.isfinite(item)
            return item is None or isinstance(item, (bool, int, str))

        for key, item in value.items():
            if not plain(item):
                raise _ProblemAt(
                    key, "use only numbers, text, true/false, null, lists and mappings (quote dates; no .inf/.nan)"
                )
        return value


class TokenizerConfig(_Section):
    """How text becomes token ids."""

    kind: Literal["byte", "pretrained"] = Field(
        "byte", description="`byte`: built-in byte-level tokenizer (no download); `pretrained`: load `name`."
    )
    name: str | None = Field(None, description="tokenizers/transformers name or local folder (relative to the recipe's "
                                                  "folder), for kind=pretrained.")

    @_cross_check("kind", "name")
    def _name_for_pretrained(self) -> Problems:
        """`name` is set when `kind` is `pretrained`, and only then."""
        if self.kind == "pretrained" and not self.name:
            yield "name", "required when tokenizer.kind is 'pretrained': set a name such as 'gpt2' or a path"
        if self.kind == "byte" and self.name:
            yield "name", ("only read with tokenizer.kind 'pretrained' (the kind is 'byte', the built-in byte-level "
                           "tokenizer): add kind: pretrained to use it, or remove the name")


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
    dataset: str | None = Field(None, description="`datasets` name or local folder (relative to the recipe's folder), "
                                                     "for source=hub.")
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

    @_cross_check("source", "files")
    def _files_for_files(self) -> Problems:
        """`files` is not empty for source=files, and each entry matches a file; other sources have no `files`."""
        if self.source == "files" and not self.files:
            yield "files", "empty but data.source is 'files': list paths or glob patterns, e.g. [corpus/*.txt]"
        if self.source != "files" and self.files:
            yield "files", (f"only read with data.source 'files', and the source is {self.source!r}: set "
                            "data.source: files to train on them, or remove data.files")

    @_cross_check("source", "dataset")
    def _dataset_for_hub(self) -> Problems:
        """`dataset` is set for source=hub, and only then."""
        if self.source == "hub" and not self.dataset:
            yield "dataset", "required when data.source is 'hub': set a `datasets` name or a local path"
        if self.source != "hub" and self.dataset:
            yield "dataset", (f"only read with data.source 'hub', and the source is {self.source!r}: set "
                              "data.source: hub to train on it, or remove data.dataset")


class ScheduleConfig(_Section):
    """Learning-rate schedule, counted in swarm epochs (one epoch = one global optimiser step)."""

    warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0 to optimizer.lr, in global steps.")
    decay: Literal["constant", "linear", "cosine"] = Field("cosine", description="Shape after the warm-up.")
    total_steps: int = Field(1000, ge=1, description="Global step at which the decay reaches min_lr_ratio.")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="Final learning rate as a fraction of lr.")

    @_cross_check("warmup_steps", "total_steps")
    def _warmup_fits(self) -> Problems:
        """`warmup_steps` is below `total_steps`."""
        if self.warmup_steps >= self.total_steps:
            yield "warmup_steps", (f"{self.warmup_steps} must be below total_steps ({self.total_steps}): "
                                   "lower warmup_steps or raise total_steps")


class OptimConfig(_Section):
    """The optimiser that every peer applies to the swarm-averaged gradients."""

    name: Literal["adamw", "lamb"] = Field(
        "adamw", description="`adamw` or `lamb` (layer-wise adaptive, large batches)."
    )
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0, description="Decoupled weight decay.")
    # not strict as a whole: YAML and JSON give a list, and a strict tuple takes only a tuple (its numbers stay strict)
    betas: tuple[float, float] = Field((0.9, 0.95), strict=False,
                                       description="Adam moment decay rates, each in [0, 1).")
    eps: float = Field(1e-8, gt=0.0, description="Adam epsilon.")
    clip_grad_norm: float | None = Field(1.0, gt=0.0, description="Clip the averaged gradient's norm; null disables.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        """Each of `betas` is in [0, 1)."""
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError("each beta must be in [0, 1), for example [0.9, 0.95]")
        return value


class DiLoCoConfig(_Section):
    """DiLoCo (Douillard et al. 2023), used when `collaboration.mode` is `diloco`: each peer takes `inner_steps`
    local steps of `optimizer` (whose schedule still counts swarm epochs, i.e. outer rounds), then the peers
    average the pseudo-gradient (start-of-round minus current parameters) and all apply one outer Nesterov SGD
    step to the start-of-round parameters. `collaboration.target_batch_size` does not end a round in this mode:
    set it to the samples the swarm processes per round (about peers x inner_steps x micro_batch_size); it drives
    the progress display, the credit bound and `limits.max_samples`.

    Traffic per round and peer is about 2x the parameter count in the wire format of `compression` (1 byte per
    value for 8-bit), once every `inner_steps` micro-batches instead of once per global batch.
    """

    inner_steps: int = Field(
        100, ge=1,
        description="Local optimizer steps (one per micro-batch) before a peer is ready to average. Every peer then "
        "joins with the steps it has done; the round closes once all known peers joined, at the latest one "
        "matchmaking window after the first peer was ready.",
    )
    outer_lr: float = Field(0.7, gt=0.0, le=10.0, description="Learning rate of the outer SGD step on the averaged "
                            "pseudo-gradient (0.7 in the DiLoCo paper; 1.0 without momentum is plain averaging).")
    outer_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum of the outer SGD step, in [0, 1).")
    nesterov: bool = Field(True, description="Nesterov momentum for the outer step (needs outer_momentum > 0).")
    overlap_communication: bool = Field(
        False,
        description="Keep training while a round's all-reduce runs and apply its outer step when it arrives, on top "
        "of the steps taken meanwhile: hides the all-reduce time, but the update is stale by those steps (at most a "
        "round) and a peer joining mid-round misses it until the next parameter averaging. Off: wait for it.",
    )
    average_parameters_every: int = Field(
        10, ge=0,
        description="Every N rounds also average the outer parameters and outer momentum themselves (fp16, ~4 bytes "
        "per parameter), which cancels the drift lossy pseudo-gradient compression and late joiners leave between "
        "peers; 0 never. A round that breaks midway (a dropped link) triggers one such averaging regardless.",
    )

    @_cross_check("nesterov", "outer_momentum")
    def _nesterov_needs_momentum(self) -> Problems:
        """`nesterov` needs `outer_momentum` above 0."""
        if self.nesterov and self.outer_momentum == 0.0:
            yield "nesterov", "needs outer_momentum > 0: set nesterov: false or outer_momentum: 0.9"


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
    close_groups_early: bool = Field(
        True,
        description="Form an averaging group as soon as every peer in the swarm's progress records has joined it, "
        "not at the end of matchmaking_time_s (hivemind's own behaviour, which `false` restores). A peer is in the "
        "records from its first step, and a peer that left stays there for up to a minute (groups then wait out "
        "the window, as with `false`).",
    )
    compression: Literal["none", "fp16", "uint8", "blockwise8"] = Field(
        "fp16", description="Wire format of averaged gradients: fp16 (scaled per part, so small gradients keep their "
        "precision) halves traffic; 8-bit quarters it."
    )
    average_optimizer_state: bool = Field(
        True, description="Also average the optimiser statistics (Adam moments) between peers every few epochs. "
        "Mode `dedloc` only: in mode `diloco` each peer's inner optimiser stays its own, and "
        "`diloco.average_parameters_every` averages the outer parameters and momentum."
    )
    average_state_every: int = Field(
        1, ge=1, description="Average parameters (and optimiser state) every N epochs to undo drift. Mode `dedloc` "
        "only (mode `diloco` has `diloco.average_parameters_every`)."
    )
    load_state_timeout_s: float = Field(
        300.0, gt=0.0, description="How long a joining peer waits for the current state before giving up."
    )
    delay_updates: bool = Field(
        False,
        description="Mode `dedloc`: average an epoch's gradients and run its optimiser step in the background while "
        "the peer computes the next epoch's micro-batches (hivemind's delayed parameter updates), so a slow link costs "
        "no compute until a round takes longer than an epoch. The price: each step applies gradients computed on "
        "weights one epoch old, and the optimiser moves to host memory (an extra fp32 copy of the parameters and "
        "gradients). Mode `diloco` has `diloco.overlap_communication` instead.",
    )
    mode: Literal["dedloc", "diloco"] = Field(
        "dedloc",
        description="`dedloc`: accumulate target_batch_size samples swarm-wide, average gradients, step together. "
        "`diloco`: local steps, then average pseudo-gradients every `diloco.inner_steps` (far less traffic).",
    )
    diloco: DiLoCoConfig = Field(
        default_factory=DiLoCoConfig, description="Settings of mode `diloco` (ignored in mode `dedloc`)."
    )

    @_cross_check("micro_batch_size")
    def _micro_batch_is_positive(self) -> Problems:
        """A numeric `micro_batch_size` is at least 1."""
        if self.micro_batch_size != "auto" and self.micro_batch_size < 1:
            yield "micro_batch_size", f"{self.micro_batch_size} is not allowed: use a number >= 1 or 'auto'"

    @_cross_check("micro_batch_size", "target_batch_size")
    def _micro_fits_target(self) -> Problems:
        """A numeric `micro_batch_size` is at most `target_batch_size`."""
        if self.micro_batch_size != "auto" and self.micro_batch_size > self.target_batch_size:
            yield "micro_batch_size", (f"{self.micro_batch_size} exceeds target_batch_size ({self.target_batch_size}):"
                                       " lower it or raise target_batch_size")

    @_cross_check("delay_updates", "mode")
    def _delay_updates_in_dedloc(self) -> Problems:
        """`delay_updates` is only set in mode `dedloc`."""
        if self.delay_updates and self.mode == "diloco":
            yield "delay_updates", ("applies to mode dedloc only: for diloco set delay_updates: false and use "
                                    "diloco.overlap_communication: true")

    @_cross_check("averaging_timeout_s", "matchmaking_time_s")
    def _timeout_covers_matchmaking(self) -> Problems:
        """`averaging_timeout_s` is at least `matchmaking_time_s`."""
        if self.averaging_timeout_s < self.matchmaking_time_s:
            yield "averaging_timeout_s", (f"{self.averaging_timeout_s} is shorter than matchmaking_time_s "
                                          f"({self.matchmaking_time_s}): a round could never finish; "
                                          "raise averaging_timeout_s")


class CheckpointConfig(_Section):
    """Where and how often the coordinator publishes the averaged model."""

    dir: str = Field("runs/{run_id}/checkpoints",
                     description="Local folder of published versions ({run_id} expands); a relative path starts at "
                                 "the folder `swarm launch` runs in (`--checkpoint-dir` overrides it).")
    every_epochs: int = Field(50, ge=1, description="Publish a version every N swarm epochs (and at the end).")
    hub_repo_id: str | None = Field(None, description="Also upload each version to this Hub repo (needs HF_TOKEN).")

    @field_validator("dir")
    @classmethod
    def _only_run_id_expands(cls, value: str) -> str:
        """`dir` uses no placeholder but {run_id} (another would be taken as part of a folder name)."""
        unknown = sorted(set(re.findall(r"\{[^{}]*\}", value)) - {"{run_id}"})
        if unknown:
            raise ValueError(f"{', '.join(unknown)} is not a placeholder: only {{run_id}} expands (for example "
                             "'runs/{run_id}/checkpoints')")
        return value

    @field_validator("hub_repo_id")
    @classmethod
    def _repo_id_shape(cls, value: str | None) -> str | None:
        """`hub_repo_id` has the form 'namespace/name'."""
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
        """`format_version` is the one this swarm reads."""
        if value != RECIPE_FORMAT_VERSION:
            raise ValueError(f"this swarm reads format_version {RECIPE_FORMAT_VERSION}; upgrade swarm or the recipe")
        return value

    @_cross_check("model.architecture", "model.pretrained", "model.config.n_positions",
                  "model.config.max_position_embeddings", "data.seq_len")
    def _samples_fit_the_positions(self) -> Problems:
        """For gpt2, gpt_neo and opt (learned position tables), `model.config` holds `data.seq_len` positions."""
        architecture = self.model.architecture
        if self.model.pretrained is not None or architecture not in _ARCHITECTURE_SIZES:
            return
        key, positions = _architecture_size(architecture, self.model.config, "positions")
        if _is_size(positions) and positions < self.data.seq_len:
            value = f"{positions}" if key in self.model.config else f"not set, and {architecture}'s default {positions}"
            yield f"model.config.{key}", (
                f"{value} is shorter than data.seq_len ({self.data.seq_len}): a sample would not fit the model's "
                f"position table; set model.config.{key}: {self.data.seq_len} or lower data.seq_len")

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


# What a value of the wrong type should have been, by pydantic error type. A key that accepts several types
# (`micro_batch_size: int | 'auto'`) gets one error per type; they are joined into "expected A or B".
_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "dict_type": "a mapping of 'key: value' lines",
    "model_type": "a mapping of 'key: value' lines",
    "model_attributes_type": "a mapping of 'key: value' lines",
    "list_type": "a list, e.g. [a, b]",
    "tuple_type": "a list, e.g. [0.9, 0.95]",
}
# pydantic puts the union member it tried ("int", "literal['auto']") into the error location; those are not keys.
_UNION_MEMBER = re.compile(r"(int|float|str|bool|none|literal\[.*\]|tuple\[.*\]|function-.*)")


def _problems_from_validation(error: ValidationError) -> list[RecipeProblem]:
    found: dict[str, list[str]] = {}  # key path -> messages, in pydantic's order
    for item in error.errors(include_url=False):
        loc = _key_path(item["loc"], item["type"])
        names_a_key = "[key]" in loc  # a mapping key of the wrong type (`1: x`), not its value
        loc = [str(part) for part in loc if part != "[key]"]
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, _ProblemAt):
            loc.append(cause.key)
        if item["type"] == "missing" and loc and loc[-1].isdigit():
            loc, message = loc[:-1], "too few values in this list"
        elif names_a_key or item["type"] == "invalid_key":
            message = "keys must be text: quote this key or remove it"
        else:
            message = _message(item, loc)
        if isinstance(item.get("input"), bool) and item["type"] in _EXPECTED and _accepts_null(loc):
            message += ", or null to turn it off"  # `clip_grad_norm: false` means "no clipping": that is null
        if item["type"] not in ("missing", "extra_forbidden") and not isinstance(item.get("input"), (dict, list)):
            message = f"{message} (got {_shown(item.get('input'))})"
        messages = found.setdefault(".".join(loc), [])
        if message not in messages:
            messages.append(message)
    return [RecipeProblem(path=path, message=_join_alternatives(messages)) for path, messages in found.items()]


def _key_path(loc: tuple[int | str, ...], kind: str) -> list[int | str]:
    """pydantic's error location as recipe keys, without the union members it tried."""
    # The first part, and for an unknown key the last, are the user's own keys even when spelt like a type.
    own = {0, len(loc) - 1} if kind == "extra_forbidden" else {0}
    return [part for index, part in enumerate(loc) if index in own or not _UNION_MEMBER.fullmatch(str(part))]


def _message(item: dict[str, Any], loc: list[str]) -> str:
    kind = item["type"]
    if kind == "missing":
        return "required: add this key"
    if kind == "extra_forbidden":
        known = _keys_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1) if loc else []
        if close:
            return f"unknown key: did you mean '{close[0]}'?"
        return f"unknown key: remove it or use one of {', '.join(known)}" if known else "unknown key: remove it"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}"
    if kind == "literal_error":
        return f"expected {item['ctx']['expected']}"
    if kind == "too_long":
        return f"too many values: at most {item['ctx'].get('max_length')} (got {item['ctx'].get('actual_length')})"
    if kind == "too_short":
        return f"too few values: at least {item['ctx'].get('min_length')} (got {item['ctx'].get('actual_length')})"
    message = item["msg"].removeprefix("Value error, ")
    return re.sub(r"^Input should be ", "must be ", message)


_EXPECTED_MESSAGE = re.compile(r"expected (.*?)( \(got .*\))?")


def _join_alternatives(messages: list[str]) -> str:
    # "expected a whole number (got 'x')" + "expected 'auto' (got 'x')" -> "expected a whole number or 'auto' (got 'x')"
    matches = [_EXPECTED_MESSAGE.fullmatch(message) for message in messages]
    if len(messages) > 1 and all(matches) and len({match.group(2) for match in matches}) == 1:
        return "expected " + " or ".join(match.group(1) for match in matches) + (matches[0].group(2) or "")
    return "; ".join(messages)


def _keys_at(loc: list[str]) -> list[str]:
    """The keys allowed in the section at `loc`, for suggesting a spelling; [] where that is not a section."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _accepts_null(loc: list[str]) -> bool:
    """Whether the key at `loc` may be null."""
    model: type[BaseModel] | None = Recipe
    field = None
    for part in loc:
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return False
        model = _section_model(field.annotation)
    return field is not None and type(None) in typing.get_args(field.annotation)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _resolve(base_dir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    # normalised: messages and `recipe show` said /srv/run/recipes/../corpus for ../corpus
    return Path(os.path.normpath(path if path.is_absolute() else base_dir / path))


def _check_paths(data: dict[str, Any], base_dir: Path) -> list[RecipeProblem]:
    """Problems only visible on disk: data files that match nothing, a local path that is not there.

    Reads the raw mapping, so that these are reported in the same run as the schema problems.
    """

    def section(name: str) -> dict[str, Any]:
        value = data.get(name)
        return value if isinstance(value, dict) else {}

    problems = []
    data_section = section("data")
    files = data_section.get("files")
    if data_section.get("source") == "files" and isinstance(files, list):
        for index, pattern in enumerate(files):
            if not isinstance(pattern, str):
                continue  # the schema reports it
            full = str(_resolve(base_dir, pattern)) if pattern else ""
            if not os.path.isfile(full) and not any(os.path.isfile(match) for match in glob.glob(full, recursive=True)):
                problems.append(
                    RecipeProblem(
                        path=f"data.files.{index}",
                        message=f"no file matches {full or pattern!r}: fix the path "
                        "(relative paths start at the recipe's folder)",
                    )
                )
    local_paths = [
        ("model.pretrained", section("model").get("pretrained")),
        ("tokenizer.name", section("tokenizer").get("name")),
    ]
    if data_section.get("source") == "hub":
        local_paths.append(("data.dataset", data_section.get("dataset")))
    for key, value in local_paths:
        if isinstance(value, str) and value and is_local_path(value, base_dir, dataset=key == "data.dataset"):
            if not os.path.exists(_resolve(base_dir, value)):
                problems.append(
                    RecipeProblem(
                        path=key, message=f"{value!r} does not exist: fix the path or use a Hub id 'org/name'"
                    )
                )
    return problems


def looks_like_local_path(value: str) -> bool:
    """Whether a model, tokenizer or dataset name is a local path: a Hub id is "name" or "namespace/name"."""
    return value.startswith((".", "/", "~")) or value.count("/") > 1


# A dataset named like a data file ("train.jsonl") is one, next to the recipe: no Hub id ends this way.
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".arrow", ".gz", ".zst")


def is_local_path(value: str, base_dir: Path, dataset: bool = False) -> bool:
    """Whether a recipe's model, tokenizer or dataset name found in `base_dir` (the recipe's folder) means a folder:
    a path, or a name that could be a Hub id but is a folder next to the recipe (as transformers prefers a local
    folder to the Hub). With `dataset`, also a file next to the recipe, or a name with a data file's suffix."""
    if looks_like_local_path(value) or (base_dir / value).is_dir():
        return True
    return dataset and ((base_dir / value).is_file() or value.lower().endswith(DATA_FILE_SUFFIXES))


_WHAT_IT_IS = {"list": "a list", "str": "plain text", "int": "a number", "float": "a number", "bool": "true/false"}


def parse_recipe(data: Any, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate an already-parsed mapping; `base_dir` enables the on-disk checks (files, paths)."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else _WHAT_IT_IS.get(type(data).__name__, type(data).__name__)
        message = f"the recipe is {kind}; expected a mapping of sections such as 'run:' and 'model:'"
        raise RecipeError(source, [RecipeProblem(path="", message=message)])
    problems: list[RecipeProblem] = []
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        problems = _problems_from_validation(error)
    except RecursionError:  # YAML builds `config: &a {x: *a}` as a mapping that contains itself
        message = "the recipe contains itself (a YAML alias inside its own anchor): write the values out"
        raise RecipeError(source, [RecipeProblem(path="", message=message)]) from None
    if base_dir is not None:
        reported = {problem.path for problem in problems}
        problems += [problem for problem in _check_paths(data, base_dir) if problem.path not in reported]
    if problems:
        raise RecipeError(source, sorted(problems, key=_path_order))
    return recipe


def _path_order(problem: RecipeProblem) -> list[tuple[int, int | str]]:
    # Section by section, and list items in their order: data.files.2 before data.files.10.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in problem.path.split(".")]


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice is an error, and `3e-4` is a number.

    Plain YAML keeps the last one without a word: a recipe with two `optimizer:` blocks would lose the first.
    PyYAML follows YAML 1.1, where a float needs a dot (`3.0e-4`), so `lr: 3e-4`, as ML configs write it, was the
    string "3e-4", which the strict schema refuses. Floats are read as YAML 1.2 reads them.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# a whole number written with an exponent (`max_samples: 1e6`): an int, which a count takes and a float field too (a
# float 1000000.0 was refused as "expected a whole number"). First: PyYAML tries the resolvers in the order added.
_WHOLE_WITH_EXPONENT = "tag:swarm,2026:whole-with-exponent"
_RecipeLoader.add_implicit_resolver(_WHOLE_WITH_EXPONENT, re.compile(r"^[-+]?[0-9][0-9_]*[eE]\+?[0-9]+$"),
                                    list("-+0123456789"))
_RecipeLoader.add_constructor(_WHOLE_WITH_EXPONENT,
                              lambda loader, node: int(decimal.Decimal(loader.construct_scalar(node).replace("_", ""))))

# a number with an exponent and no dot, which YAML 1.1 leaves a string and YAML 1.2 reads as a float (`3e-4`, `1E5`);
# added for this loader only (PyYAML copies the resolver table into the class that adds one)
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _read_yaml(path: Path) -> Any:
    def problem(message: str) -> RecipeError:
        return RecipeError(str(path), [RecipeProblem(path="", message=message)])

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise problem("file not found: check the path") from None
    except IsADirectoryError:
        raise problem("this is a folder: pass recipe files, e.g. recipes/*.yaml") from None
    except UnicodeDecodeError:
        raise problem("not a text file (it is not UTF-8): pass a YAML recipe") from None
    except OSError as error:
        reason = error.strerror or error.__class__.__name__
        raise problem(f"cannot read the file ({reason}): check the path and permissions") from None
    try:
        return yaml.load(text, Loader=_RecipeLoader)
    except RecursionError:
        raise problem("the YAML nests too deeply to read: flatten it") from None
    except yaml.reader.ReaderError as error:
        raise problem(
            f"character U+{error.character:04X} at position {error.position} is not allowed in YAML: remove it "
            "(or pass the recipe, not a binary file)"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or str(error)
        if isinstance(error, _DuplicateKey):
            raise problem(f"{reason}{where}: YAML would silently keep only the last one; merge them") from None
        raise problem(f"invalid YAML{where}: {reason}: fix the syntax") from None


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a recipe file; relative local paths (data files, a local dataset, model or tokenizer
    folder) are resolved against the file's folder, where the validation looked for them."""
    path = Path(path)
    data = _read_yaml(path)
    base = path.resolve().parent
    recipe = parse_recipe(data, source=str(path), base_dir=base)
    if recipe.data.source == "files":
        resolved = [str(_resolve(base, pattern)) for pattern in recipe.data.files]
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"files": resolved})})
    local_paths = [("data", "dataset", recipe.data.source == "hub"), ("model", "pretrained", True),
                   ("tokenizer", "name", True)]
    for section_name, key, applies in local_paths:
        section = getattr(recipe, section_name)
        value = getattr(section, key, None)
        if applies and isinstance(value, str) and value and is_local_path(value, base, dataset=key == "dataset"):
            section = section.model_copy(update={key: str(_resolve(base, value))})
            recipe = recipe.model_copy(update={section_name: section})
    return recipe


# What an organiser may change while a run goes on: these steer the run (when it ends, what is published, how work is
# credited), not the training, so volunteers already in it follow the new values and nothing is averaged across two
# recipes. Any other change makes a recipe the peers training now do not run.
RUN_MANAGEMENT_KEYS = ("run.description", "limits", "checkpoint", "credit")


def recipe_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two recipes (as `json.loads(recipe.to_json())` gives them)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        path, before, after = f"{prefix}{key}", old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changed += recipe_changes(before, after, f"{path}.")
        elif before != after:
            changed.append(path)
    return changed


def training_changes(changes: list[str]) -> list[str]:
    """Those of `changes` that change the training (not under `RUN_MANAGEMENT_KEYS`)."""
    return [key for key in changes
            if not any(key == managed or key.startswith(f"{managed}.") for managed in RUN_MANAGEMENT_KEYS)]


def recipe_from_json(text: str, source: str = "the swarm") -> Recipe:
    """Rebuild a recipe published by a coordinator (no on-disk checks: paths are the coordinator's)."""
    return parse_recipe(json.loads(text), source=source)
