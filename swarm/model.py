"""Build the model a recipe describes: a transformers architecture from a config (random init) or a checkpoint.

>>> from swarm.recipe import ModelConfig
>>> model = build_model(ModelConfig(architecture="gpt2", config={"n_layer": 2, "n_embd": 64, "n_head": 2}),
...                     vocab_size=259, eos_id=1, pad_id=0)
>>> sum(p.numel() for p in model.parameters()) > 0
True

Every peer must build bit-identical initial weights (hivemind averages tensors by position), so the
initialisation is seeded from the recipe and never from the process.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import transformers

from swarm.errors import UsageError
from swarm.recipe import ModelConfig, looks_like_local_path

if TYPE_CHECKING:
    from swarm.recipe import Recipe


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers logs a warning per default config it builds (a GPT-2 token id outside a smaller vocabulary...)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


# Size keys that architectures name differently, and the name transformers' configs share (or map to their own)
_GENERIC_NAMES = {
    "n_embd": "hidden_size", "d_model": "hidden_size", "n_layer": "num_hidden_layers",
    "num_layers": "num_hidden_layers", "n_head": "num_attention_heads", "num_heads": "num_attention_heads",
    "n_positions": "max_position_embeddings", "n_ctx": "max_position_embeddings", "n_inner": "intermediate_size",
    "ffn_dim": "intermediate_size", "d_ff": "intermediate_size",
}


def architecture_problems(architecture: str, config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(key, message) for what is wrong with building `architecture` from `config`, found without building it.

    An architecture transformers does not know, one without a causal-LM head, and keys its config class ignores:
    transformers keeps an unknown key as a plain attribute, so `n_embd` under llama left llama's default width of
    4096 in place and built a 6.5B-parameter model without a word. A key counts as known when the config class
    takes it, or when passing it changes the config (an old name transformers still maps, such as `rope_theta`).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if architecture not in transformers.CONFIG_MAPPING:
        close = difflib.get_close_matches(architecture, list(transformers.CONFIG_MAPPING), n=1)
        yield "architecture", (f"{architecture!r} is not a transformers model type"
                               + (f": did you mean {close[0]!r}?" if close else " (for example gpt2, llama, gpt_neox)"))
        return
    if architecture not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        yield "architecture", (f"{architecture!r} has no causal-LM head: use a decoder model type such as gpt2 or "
                               "llama")
        return
    config_class = transformers.CONFIG_MAPPING[architecture]
    with _quiet_transformers():
        try:
            defaults = vars(config_class())
        except Exception:  # noqa: BLE001 - a config class that needs arguments: the build reports what is wrong
            return
        known = set(inspect.signature(config_class.__init__).parameters) | set(defaults)
        known |= set(getattr(config_class, "attribute_map", {}))
        unknown = False
        for key, value in config.items():
            if key in known:
                continue
            try:
                changed = dict(vars(config_class(**{key: value})))
            except Exception:  # noqa: BLE001 - a value of the wrong kind: the build names it
                continue
            changed.pop(key, None)
            if changed != defaults:
                continue
            names = sorted(name for name in known if not name.startswith("_") and name != "self")
            generic = _GENERIC_NAMES.get(key)
            close = ([generic] if generic in known else []) or difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            yield f"config.{key}", (f"not a setting of {architecture} ({config_class.__name__}), which would ignore it "
                                    "and keep its default" + (f": did you mean {close[0]!r}?" if close else ""))
            unknown = True
        if unknown:
            return
        try:  # the config class's own checks (llama: the width a multiple of the heads), as the build runs them
            transformers.AutoConfig.for_model(architecture, **config)
        except Exception as error:  # noqa: BLE001 - whatever transformers says, as one line
            yield "config", f"does not fit {architecture!r}: {config_error_text(error)}"


def config_error_text(error: BaseException) -> str:
    """transformers' complaint about a config as one line: the innermost reason of a validation error's lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return re.sub(r"^[A-Za-z]*Error: ", "", lines[-1])


def _from_pretrained(load: Callable[..., Any], cfg: ModelConfig, **options: Any) -> Any:
    """`load(cfg.pretrained)`, with what went wrong said in terms of the recipe (transformers raises OSError and
    ValueError with advice about its own API)."""
    assert cfg.pretrained is not None
    name = os.path.expanduser(cfg.pretrained)
    if looks_like_local_path(cfg.pretrained):
        if not os.path.isdir(name):
            raise UsageError(f"model.pretrained: the folder {cfg.pretrained!r} does not exist: fix the path or use a "
                             "Hub id such as 'gpt2'")
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise UsageError(f"model.pretrained: the folder {cfg.pretrained!r} has no config.json: give a folder "
                             "written by transformers' save_pretrained (config.json and weights)")
    advice = "set it to a model folder with config.json and weights, or a Hub id such as 'gpt2'"
    try:
        return load(name, revision=cfg.revision, **options)
    except ValueError as error:
        if "Unrecognized configuration class" in str(error):
            raise UsageError(f"model.pretrained {cfg.pretrained!r} has no causal-LM head: use a decoder model such as "
                             "gpt2 or llama") from None
        raise UsageError(f"model.pretrained: cannot load {cfg.pretrained!r} ({str(error).splitlines()[0]}): "
                         f"{advice}") from None
    except OSError as error:
        raise UsageError(f"model.pretrained: cannot load {cfg.pretrained!r} ({str(error).splitlines()[0]}): {advice} "
                         "(a Hub model is downloaded once, then cached)") from None


def build_model_config(cfg: ModelConfig, vocab_size: int, eos_id: int | None, pad_id: int | None):
    """The transformers config of the model; the tokenizer decides vocabulary and special ids."""
    if cfg.pretrained:
        return _from_pretrained(transformers.AutoConfig.from_pretrained, cfg)
    try:
        config = transformers.AutoConfig.for_model(cfg.architecture, **cfg.config)
    except ValueError as error:
        if "Unrecognized model identifier" in str(error) or cfg.architecture not in transformers.CONFIG_MAPPING:
            raise UsageError(f"model.architecture {cfg.architecture!r} is not a transformers model type "
                             "(for example gpt2, llama, gpt_neox)") from None
        raise UsageError(f"model.config does not fit {cfg.architecture!r}: {config_error_text(error)}") from None
    except Exception as error:  # wrong value types surface as TypeError or huggingface_hub's strict validation
        raise UsageError(f"model.config does not fit {cfg.architecture!r}: {config_error_text(error)}") from None
    multiple = cfg.pad_vocab_to_multiple_of or 1
    config.vocab_size = -(-vocab_size // multiple) * multiple  # the tokenizer never produces the padding ids
    config.bos_token_id = eos_id
    config.eos_token_id = eos_id
    config.pad_token_id = pad_id
    return config


def build_model(cfg: ModelConfig, vocab_size: int, eos_id: int | None = None, pad_id: int | None = None,
                seq_len: int | None = None):
    """A causal LM, deterministic for a given recipe: same seed, same architecture, same weights on every peer.
    With `seq_len` (data.seq_len), a pretrained model whose learned position table is shorter is refused."""
    config = build_model_config(cfg, vocab_size, eos_id, pad_id)
    if cfg.pretrained and seq_len is not None:
        _check_positions(config, cfg.pretrained, seq_len)
    if cfg.pretrained:
        model = _from_pretrained(transformers.AutoModelForCausalLM.from_pretrained, cfg, config=config)
    else:
        state = torch.random.get_rng_state()
        torch.manual_seed(cfg.init_seed)
        try:
            model = transformers.AutoModelForCausalLM.from_config(config)
        except ValueError as error:
            if "Unrecognized configuration class" in str(error):
                raise UsageError(f"model.architecture {cfg.architecture!r} has no causal-LM head: use a decoder "
                                 "model type such as gpt2 or llama") from None
            raise UsageError(f"model.config does not fit {cfg.architecture!r}: {error}") from None
        finally:
            torch.random.set_rng_state(state)
    if model.get_input_embeddings().weight.shape[0] < vocab_size:
        raise UsageError(
            f"the model's vocabulary ({model.get_input_embeddings().weight.shape[0]}) is smaller than the "
            f"tokenizer's ({vocab_size}): use the model's own tokenizer or a matching model.config.vocab_size"
        )
    if not _is_causal(model, vocab_size):
        what = (f"model.pretrained {cfg.pretrained!r} ({model.config.model_type})" if cfg.pretrained
                else f"model.architecture {cfg.architecture!r}")
        raise UsageError(f"{what} lets each position see the tokens after it (an encoder), so it would learn to copy "
                         "the next token rather than predict it: use a decoder such as gpt2 or llama (an encoder "
                         "that can run as a decoder, such as bert, needs model.config.is_decoder: true)")
    return model


def _check_positions(config, pretrained: str, seq_len: int) -> None:
    """A pretrained gpt2, gpt_neo or opt has a learned table of positions (rotary models have none): a longer
    sample failed at the first forward, the validation loss at launch, with an IndexError traceback."""
    from swarm.recipe import _ARCHITECTURE_SIZES

    if config.model_type not in _ARCHITECTURE_SIZES:
        return
    for key in _ARCHITECTURE_SIZES[config.model_type]["positions"][0]:
        positions = getattr(config, key, None)
        if isinstance(positions, int) and positions < seq_len:
            raise UsageError(f"data.seq_len ({seq_len}) is longer than model.pretrained {pretrained!r} takes: its "
                             f"{key} is {positions} (a learned table of positions); set data.seq_len to {positions} "
                             "or less")
        if isinstance(positions, int):
            return


def _is_causal(model: torch.nn.Module, vocab_size: int, length: int = 8) -> bool:
    """Whether the model's output at a position ignores the tokens after it: two inputs that differ only in their
    last token must give the same logits everywhere before it. AutoModelForCausalLM builds encoders such as bert
    (BertLMHeadModel) without complaint, with attention over the whole sequence."""
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, min(vocab_size, 256), (1, length), generator=generator)
    second = first.clone()
    second[0, -1] = (first[0, -1] + 1) % min(vocab_size, 256)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.cat([first, second])).logits.float()
    finally:
        model.train(training)
    return torch.allclose(logits[0, :-1], logits[1, :-1], rtol=1e-4, atol=1e-5)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def organiser_folders(recipe: "Recipe") -> tuple[str | None, str | None]:
    """The organiser's own model and tokenizer folders that a recipe names (None where it names a Hub id or
    nothing): what a volunteer on another machine must copy."""
    model, tokenizer = recipe.model, recipe.tokenizer
    local_model = model.pretrained if model.pretrained and looks_like_local_path(model.pretrained) else None
    local_tokenizer = (tokenizer.name if tokenizer.kind == "pretrained" and tokenizer.name
                       and looks_like_local_path(tokenizer.name) else None)
    return local_model, local_tokenizer


def with_local_model(recipe: "Recipe", model_dir: str | os.PathLike | None,
                     tokenizer_dir: str | os.PathLike | None) -> "Recipe":
    """A recipe published by a coordinator, its model and tokenizer folders pointed at this machine's copies.

    A coordinator publishes the paths of its own machine. A volunteer elsewhere passes its copy of the organiser's
    model folder (`model.pretrained`) as `model_dir`, which also stands for `tokenizer.name` when that is the same
    folder, and its copy of a tokenizer folder of its own as `tokenizer_dir`. Raises UsageError saying what to copy
    and how to pass it when a folder the run needs is missing here, or a flag has nothing to point at.
    """
    model, tokenizer = recipe.model, recipe.tokenizer
    local_model, local_tokenizer = organiser_folders(recipe)
    tokenizer_in_model = local_tokenizer is not None and local_tokenizer == local_model
    if model_dir is not None:
        if local_model is None:
            what = (f"the Hub model {model.pretrained!r}, downloaded by name" if model.pretrained
                    else "model.config (random weights, the same on every peer)")
            raise UsageError(f"--model-dir {model_dir}: this run's model comes from {what}, which needs no model "
                             "folder: leave it out")
        folder = Path(model_dir).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise UsageError(f"--model-dir {model_dir}: no config.json in it; give your copy of the organiser's "
                             f"model folder {local_model}")
        model = model.model_copy(update={"pretrained": str(folder)})
        if tokenizer_in_model:
            tokenizer = tokenizer.model_copy(update={"name": str(folder)})
    elif local_model is not None and not os.path.isdir(os.path.expanduser(local_model)):
        raise UsageError(f"this run starts from the model folder {local_model} of the organiser's machine, which this "
                         "machine does not have: get a copy of that folder and pass it with --model-dir DIR")
    if tokenizer_dir is not None:
        if local_tokenizer is None:
            what = (f"the Hub tokenizer {tokenizer.name!r}, downloaded by name" if tokenizer.kind == "pretrained"
                    else "the built-in byte-level tokenizer")
            raise UsageError(f"--tokenizer-dir {tokenizer_dir}: this run uses {what}, which needs no tokenizer "
                             "folder: leave it out")
        if tokenizer_in_model and model_dir is not None:
            raise UsageError(f"--tokenizer-dir {tokenizer_dir}: this run's tokenizer is in its model folder, which "
                             "--model-dir gives already: leave --tokenizer-dir out")
        tokenizer = tokenizer.model_copy(update={"name": str(Path(tokenizer_dir).expanduser().resolve())})
    elif local_tokenizer is not None and not (tokenizer_in_model and model_dir is not None) \
            and not os.path.isdir(os.path.expanduser(local_tokenizer)):
        flag = "--model-dir DIR (the tokenizer is in the model folder)" if tokenizer_in_model else "--tokenizer-dir DIR"
        raise UsageError(f"this run's tokenizer is the folder {local_tokenizer} of the organiser's machine, which this "
                         f"machine does not have: get a copy of that folder and pass it with {flag}")
    return recipe.model_copy(update={"model": model, "tokenizer": tokenizer})
