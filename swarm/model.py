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

import torch
import transformers

from swarm.errors import UsageError
from swarm.recipe import ModelConfig


def build_model_config(cfg: ModelConfig, vocab_size: int, eos_id: int | None, pad_id: int | None):
    """The transformers config of the model; the tokenizer decides vocabulary and special ids."""
    if cfg.pretrained:
        return transformers.AutoConfig.from_pretrained(cfg.pretrained, revision=cfg.revision)
    try:
        config = transformers.AutoConfig.for_model(cfg.architecture, **cfg.config)
    except ValueError as error:
        if "Unrecognized model identifier" in str(error) or cfg.architecture not in transformers.CONFIG_MAPPING:
            raise UsageError(f"model.architecture {cfg.architecture!r} is not a transformers model type "
                             "(for example gpt2, llama, gpt_neox)") from None
        raise UsageError(f"model.config does not fit {cfg.architecture!r}: {error}") from None
    except Exception as error:  # wrong value types surface as TypeError or huggingface_hub's strict validation
        raise UsageError(f"model.config does not fit {cfg.architecture!r}: {error}") from None
    multiple = cfg.pad_vocab_to_multiple_of or 1
    config.vocab_size = -(-vocab_size // multiple) * multiple  # the tokenizer never produces the padding ids
    config.bos_token_id = eos_id
    config.eos_token_id = eos_id
    config.pad_token_id = pad_id
    return config


def build_model(cfg: ModelConfig, vocab_size: int, eos_id: int | None = None, pad_id: int | None = None):
    """A causal LM, deterministic for a given recipe: same seed, same architecture, same weights on every peer."""
    config = build_model_config(cfg, vocab_size, eos_id, pad_id)
    if cfg.pretrained:
        model = transformers.AutoModelForCausalLM.from_pretrained(cfg.pretrained, revision=cfg.revision, config=config)
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
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
