"""Building the recipe's model: the same weights on every peer, the tokenizer's ids, and errors that name the key."""

from __future__ import annotations

import pytest
import torch

from swarm.errors import UsageError
from swarm.model import build_model, count_parameters
from swarm.recipe import ModelConfig, TokenizerConfig
from swarm.tokenizer import build_tokenizer

TINY_GPT2 = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TokenizerConfig(kind="byte"))


def build(tokenizer, **model):
    cfg = ModelConfig(**{"architecture": "gpt2", "config": TINY_GPT2, **model})
    return build_model(cfg, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)


def test_same_seed_gives_bit_identical_weights(tokenizer):
    first, second = build(tokenizer, init_seed=7).state_dict(), build(tokenizer, init_seed=7).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_weights_do_not_depend_on_the_process_random_state(tokenizer):
    torch.manual_seed(1)
    first = build(tokenizer, init_seed=7).state_dict()
    torch.rand(1000)
    torch.manual_seed(12345)
    second = build(tokenizer, init_seed=7).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_another_seed_gives_other_weights(tokenizer):
    first, other = build(tokenizer, init_seed=7).state_dict(), build(tokenizer, init_seed=8).state_dict()
    random_init = [name for name in first if first[name].std() > 0]  # layer norms start at exactly 1 and 0
    assert random_init
    assert all(not torch.equal(first[name], other[name]) for name in random_init)


def test_building_leaves_the_callers_random_stream_untouched(tokenizer):
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    build(tokenizer, init_seed=99)
    assert torch.equal(torch.rand(4), expected)


def test_vocabulary_and_special_ids_come_from_the_tokenizer(tokenizer):
    model = build(tokenizer, config={**TINY_GPT2, "vocab_size": 50257})
    assert model.config.vocab_size == tokenizer.vocab_size == 259
    assert model.get_input_embeddings().weight.shape == (259, 16)
    assert (model.config.eos_token_id, model.config.bos_token_id, model.config.pad_token_id) == (
        tokenizer.eos_id, tokenizer.eos_id, tokenizer.pad_id)


def test_model_config_sizes_are_applied(tokenizer):
    model = build(tokenizer, config={"n_layer": 2, "n_embd": 8, "n_head": 2, "n_positions": 16})
    assert (model.config.n_layer, model.config.n_embd, model.config.n_positions) == (2, 8, 16)
    assert len(model.transformer.h) == 2
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0
    logits = model(torch.tensor([[tokenizer.eos_id, 5, 6]])).logits
    assert logits.shape == (1, 3, 259)


def test_other_causal_architectures_build_too(tokenizer):
    model = build(tokenizer, architecture="llama", config={
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 32})
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 259


def test_unknown_architecture_is_a_usage_error(tokenizer):
    with pytest.raises(UsageError, match=r"model.architecture 'gpt9' is not a transformers model type"):
        build(tokenizer, architecture="gpt9", config={})


def test_architecture_without_a_causal_lm_head_is_a_usage_error(tokenizer):
    with pytest.raises(UsageError, match=r"model.architecture 't5' has no causal-LM head"):
        build(tokenizer, architecture="t5",
              config={"d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32, "d_kv": 8})


def test_model_config_keys_that_are_not_text_are_refused(tokenizer):
    with pytest.raises(ValueError, match=r"config"):
        ModelConfig(architecture="gpt2", config={1: 2})  # the recipe schema refuses it first
    # and build_model refuses it too when handed a config that skipped validation
    unvalidated = ModelConfig.model_construct(architecture="gpt2", config={1: 2}, pretrained=None, revision=None,
                                              init_seed=0)
    with pytest.raises(UsageError, match=r"model.config does not fit 'gpt2'"):
        build_model(unvalidated, vocab_size=tokenizer.vocab_size)


def unvalidated_gpt2(config: dict) -> ModelConfig:
    """A model section that skipped the recipe's checks, as code that builds one by hand could pass it."""
    return ModelConfig.model_construct(architecture="gpt2", config=config, pretrained=None, revision=None,
                                       init_seed=0, pad_vocab_to_multiple_of=None)


def test_model_config_value_of_the_wrong_type_is_a_usage_error_naming_the_key(tokenizer):
    with pytest.raises(ValueError, match=r"config.n_layer\n.*'two' is not a size"):
        build(tokenizer, config={**TINY_GPT2, "n_layer": "two"})  # the recipe schema refuses it first
    with pytest.raises(UsageError, match="n_layer"):
        build_model(unvalidated_gpt2({**TINY_GPT2, "n_layer": "two"}), vocab_size=tokenizer.vocab_size)


def test_sizes_that_do_not_fit_together_are_blamed_on_model_config(tokenizer):
    with pytest.raises(ValueError, match=r"config.n_embd\n.*15 is not a multiple of n_head \(2\)"):
        build(tokenizer, config={"n_layer": 1, "n_embd": 15, "n_head": 2})  # the recipe schema refuses it first
    with pytest.raises(UsageError, match="model.config"):
        build_model(unvalidated_gpt2({"n_layer": 1, "n_embd": 15, "n_head": 2}), vocab_size=tokenizer.vocab_size)


def test_pretrained_checkpoint_is_loaded_with_its_weights(tokenizer, tmp_path):
    saved = build(tokenizer, init_seed=5)
    saved.save_pretrained(tmp_path / "checkpoint")
    loaded = build_model(ModelConfig(pretrained=str(tmp_path / "checkpoint")), vocab_size=tokenizer.vocab_size)
    assert all(torch.equal(saved.state_dict()[name], tensor) for name, tensor in loaded.state_dict().items())


def test_pretrained_model_with_a_smaller_vocabulary_than_the_tokenizer_is_refused(tokenizer, tmp_path):
    small = build_model(ModelConfig(architecture="gpt2", config=TINY_GPT2), vocab_size=100)
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(UsageError, match=r"vocabulary \(100\) is smaller than the tokenizer's \(259\)"):
        build_model(ModelConfig(pretrained=str(tmp_path / "small")), vocab_size=tokenizer.vocab_size)


def test_vocabulary_padding_rounds_the_embedding_and_output_rows_up_and_keeps_the_tokenizers_ids(tokenizer):
    plain = build(tokenizer, init_seed=3)
    padded = build(tokenizer, init_seed=3, pad_vocab_to_multiple_of=64)
    assert plain.config.vocab_size == 259
    assert padded.config.vocab_size == 320
    assert padded.get_input_embeddings().weight.shape == padded.get_output_embeddings().weight.shape == (320, 16)
    assert padded.get_output_embeddings().weight is padded.get_input_embeddings().weight  # still tied
    # every peer pads alike: the same recipe builds the same padded weights
    again = build(tokenizer, init_seed=3, pad_vocab_to_multiple_of=64).state_dict()
    assert all(torch.equal(tensor, again[name]) for name, tensor in padded.state_dict().items())
    batch = torch.tensor([[tokenizer.eos_id, 5, 6, 258]])
    output = padded(input_ids=batch, labels=batch)
    assert output.logits.shape == (1, 4, 320) and torch.isfinite(output.loss)
    output.loss.backward()  # the padding rows learn only to be unlikely: they get gradient from the softmax alone
    assert padded.get_input_embeddings().weight.grad[259:].abs().sum() > 0


def test_vocabulary_that_is_already_a_multiple_is_not_padded(tokenizer):
    assert build(tokenizer, pad_vocab_to_multiple_of=7).config.vocab_size == 259  # 7 x 37
    assert build(tokenizer, pad_vocab_to_multiple_of=1).config.vocab_size == 259
