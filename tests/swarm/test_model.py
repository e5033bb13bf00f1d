"""Building the recipe's model: the same weights on every peer, the tokenizer's ids, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers

from swarm.errors import UsageError
from swarm.model import build_model, count_parameters, with_local_model
from swarm.recipe import ModelConfig, Recipe, TokenizerConfig
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


def unvalidated(architecture: str, config: dict) -> ModelConfig:
    """A model section that skipped the recipe's checks, as code that builds one by hand could pass it."""
    return ModelConfig.model_construct(architecture=architecture, config=config, pretrained=None, revision=None,
                                       init_seed=0, pad_vocab_to_multiple_of=None)


def test_unknown_architecture_is_refused_by_the_recipe_and_by_the_build(tokenizer):
    with pytest.raises(ValueError, match=r"architecture\n.*'llamma' is not a transformers model type: did you mean "
                                         r"'llama'\?"):
        ModelConfig(architecture="llamma", config={})
    with pytest.raises(UsageError, match=r"model.architecture 'gpt9' is not a transformers model type"):
        build_model(unvalidated("gpt9", {}), vocab_size=tokenizer.vocab_size)


def test_architecture_without_a_causal_lm_head_is_refused_by_the_recipe_and_by_the_build(tokenizer):
    t5 = {"d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32, "d_kv": 8}
    with pytest.raises(ValueError, match=r"architecture\n.*'t5' has no causal-LM head"):
        ModelConfig(architecture="t5", config=t5)
    with pytest.raises(UsageError, match=r"model.architecture 't5' has no causal-LM head"):
        build_model(unvalidated("t5", t5), vocab_size=tokenizer.vocab_size)


def test_a_key_the_architecture_ignores_is_refused_with_the_name_it_has_there():
    """tiny-stdlib's gpt2 keys under llama built llama's default 6.5B-parameter model, the keys kept as attributes."""
    with pytest.raises(ValueError) as refused:
        ModelConfig(architecture="llama", config={"n_layer": 2, "n_embd": 64, "hidden_size": 64, "n_head": 2})
    message = str(refused.value)
    assert re.search(r"config.n_embd\n.*not a setting of llama \(LlamaConfig\), which would ignore it", message)
    assert "config.n_layer" in message and "config.n_head" in message and "config.hidden_size" not in message
    with pytest.raises(ValueError, match=r"config.n_layers\n.*not a setting of gpt2 .*did you mean 'n_layer'\?"):
        ModelConfig(architecture="gpt2", config={"n_layers": 2})


def test_a_config_its_class_refuses_is_refused_by_the_recipe_as_by_the_build_in_one_line(tokenizer):
    """`recipe validate` said ok to a llama whose width is not a multiple of its heads, which launch then refused
    (in a message of two lines)."""
    llama = {"hidden_size": 64, "num_attention_heads": 3, "num_hidden_layers": 1, "intermediate_size": 32}
    expected = "does not fit 'llama': The hidden size (64) is not a multiple of the number of attention heads (3)."
    with pytest.raises(ValueError) as refused:
        ModelConfig(architecture="llama", config=llama)
    assert re.search(r"^config\n.*" + re.escape(expected), str(refused.value), re.MULTILINE), str(refused.value)
    with pytest.raises(UsageError) as built:
        build_model(unvalidated("llama", llama), vocab_size=tokenizer.vocab_size)
    assert str(built.value) == f"model.config {expected}"


def test_old_names_transformers_still_maps_and_the_shipped_recipes_keys_are_accepted():
    ModelConfig(architecture="llama", config={"hidden_size": 64, "rope_theta": 500000.0, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "attn_implementation": "eager"})
    ModelConfig(architecture="gpt2", config={**TINY_GPT2, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})


def test_an_encoder_that_sees_later_tokens_is_refused_unless_it_runs_as_a_decoder(tokenizer, tmp_path):
    """bert built as a causal LM attended to the whole sequence: the logit at position 5 changed with token 10."""
    bert = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    with pytest.raises(UsageError, match=r"model.architecture 'bert' lets each position see the tokens after it .*"
                                         r"needs model.config.is_decoder: true"):
        build(tokenizer, architecture="bert", config=bert)
    decoder = build(tokenizer, architecture="bert", config={**bert, "is_decoder": True})
    decoder.save_pretrained(tmp_path / "bert-decoder")
    decoder.config.is_decoder = False
    decoder.save_pretrained(tmp_path / "bert-encoder")
    with pytest.raises(UsageError, match=r"model.pretrained '.*bert-encoder' \(bert\) lets each position see"):
        build_model(ModelConfig(pretrained=str(tmp_path / "bert-encoder")), vocab_size=tokenizer.vocab_size)
    build_model(ModelConfig(pretrained=str(tmp_path / "bert-decoder")), vocab_size=tokenizer.vocab_size)


@pytest.mark.parametrize("architecture, config", [
    ("gpt2", TINY_GPT2),
    ("llama", {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}),
    ("gpt_neox", {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}),
])
def test_decoders_pass_the_causality_check_with_the_process_random_state_untouched(tokenizer, architecture, config):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build(tokenizer, architecture=architecture, config=config)
    assert torch.equal(torch.rand(3), expected)


def test_a_pretrained_model_takes_no_config():
    with pytest.raises(ValueError, match=r"model.config|config\n.*a pretrained model's config comes with its weights"):
        ModelConfig(pretrained="gpt2", config={"n_layer": 2})


def test_model_config_keys_that_are_not_text_are_refused(tokenizer):
    with pytest.raises(ValueError, match=r"config"):
        ModelConfig(architecture="gpt2", config={1: 2})  # the recipe schema refuses it first
    # and build_model refuses it too when handed a config that skipped validation
    unvalidated = ModelConfig.model_construct(architecture="gpt2", config={1: 2}, pretrained=None, revision=None,
                                              init_seed=0)
    with pytest.raises(UsageError, match=r"model.config does not fit 'gpt2'"):
        build_model(unvalidated, vocab_size=tokenizer.vocab_size)


def unvalidated_gpt2(config: dict) -> ModelConfig:
    return unvalidated("gpt2", config)


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


def test_a_pretrained_model_that_cannot_be_loaded_is_blamed_on_model_pretrained_not_a_traceback(tokenizer, tmp_path):
    with pytest.raises(UsageError, match=r"model.pretrained: the folder '.*/gone' does not exist: fix the path"):
        build_model(ModelConfig(pretrained=str(tmp_path / "gone")), vocab_size=tokenizer.vocab_size)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"model.pretrained: the folder '.*/empty' has no config.json"):
        build_model(ModelConfig(pretrained=str(tmp_path / "empty")), vocab_size=tokenizer.vocab_size)
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "gpt2"}')  # weights missing
    with pytest.raises(UsageError, match=r"model.pretrained: cannot load '.*/empty' \(.*\): set it to a model folder "
                                         r"with config.json and weights"):
        build_model(ModelConfig(pretrained=str(tmp_path / "empty")), vocab_size=tokenizer.vocab_size)


def test_a_pretrained_model_without_a_causal_lm_head_is_refused_by_name(tokenizer, tmp_path):
    import transformers

    encoder = transformers.DistilBertModel(transformers.DistilBertConfig(dim=16, n_layers=1, n_heads=2,
                                                                         hidden_dim=32))
    encoder.save_pretrained(tmp_path / "encoder")
    with pytest.raises(UsageError, match=r"model.pretrained '.*/encoder' has no causal-LM head"):
        build_model(ModelConfig(pretrained=str(tmp_path / "encoder")), vocab_size=tokenizer.vocab_size)


# --- a published recipe on another machine: the organiser's model and tokenizer folders are not there ---------


def _published(model_folder: Path, tokenizer: dict | None = None) -> Recipe:
    """A recipe as a volunteer receives it: the organiser's absolute paths, checked nowhere."""
    return Recipe.model_validate({"run": {"id": "local-model"}, "model": {"pretrained": str(model_folder)},
                                  "tokenizer": tokenizer or {"kind": "byte"}})


@pytest.fixture
def organiser_model(tokenizer, tmp_path) -> Path:
    folder = tmp_path / "organiser" / "model"
    build(tokenizer, init_seed=11).save_pretrained(folder)
    build_tokenizer(TokenizerConfig(kind="byte")).save_pretrained(folder)
    return folder


def test_a_volunteer_without_the_organisers_model_folder_is_told_to_copy_it_and_pass_model_dir(organiser_model):
    recipe = _published(organiser_model.parent / "moved-away")
    with pytest.raises(UsageError, match=r"the model folder .*/moved-away of the organiser's machine, which this "
                                         r"machine does not have: get a copy of that folder and pass it with "
                                         r"--model-dir DIR"):
        with_local_model(recipe, None, None)
    assert with_local_model(_published(organiser_model), None, None).model.pretrained == str(organiser_model)


def test_model_dir_points_the_model_and_a_tokenizer_in_the_same_folder_at_this_machines_copy(
        organiser_model, tokenizer, tmp_path):
    import shutil

    copy = Path(shutil.copytree(organiser_model, tmp_path / "volunteer" / "copy"))
    gone = organiser_model.parent / "moved-away"
    recipe = _published(gone, tokenizer={"kind": "pretrained", "name": str(gone)})
    with pytest.raises(UsageError, match=r"model folder .*moved-away.*--model-dir DIR"):
        with_local_model(recipe, None, None)
    mine = with_local_model(recipe, copy, None)
    assert mine.model.pretrained == mine.tokenizer.name == str(copy.resolve())
    assert (mine.run, mine.data, mine.optimizer) == (recipe.run, recipe.data, recipe.optimizer)
    loaded = build_model(mine.model, vocab_size=tokenizer.vocab_size)
    original = build(tokenizer, init_seed=11).state_dict()
    assert all(torch.equal(original[name], tensor) for name, tensor in loaded.state_dict().items())
    assert build_tokenizer(mine.tokenizer).identity() == build_tokenizer(recipe.tokenizer.model_copy(
        update={"name": str(organiser_model)})).identity()
    with pytest.raises(UsageError, match=r"--tokenizer-dir .*: this run's tokenizer is in its model folder, which "
                                         r"--model-dir gives already"):
        with_local_model(recipe, copy, copy)


def test_a_tokenizer_folder_of_its_own_needs_tokenizer_dir(organiser_model, tmp_path):
    gone = tmp_path / "organiser" / "tokenizer"
    recipe = _published(organiser_model, tokenizer={"kind": "pretrained", "name": str(gone)})
    with pytest.raises(UsageError, match=r"this run's tokenizer is the folder .*/tokenizer of the organiser's "
                                         r"machine, .* pass it with --tokenizer-dir DIR"):
        with_local_model(recipe, None, None)
    assert with_local_model(recipe, None, organiser_model).tokenizer.name == str(organiser_model.resolve())


@pytest.mark.parametrize("model_section, tokenizer_section, flags, refused", [
    ({"architecture": "gpt2"}, {"kind": "byte"}, ("MODEL", None),
     r"--model-dir .*: this run's model comes from model.config \(random weights.*leave it out"),
    ({"pretrained": "gpt2"}, {"kind": "byte"}, ("MODEL", None),
     r"--model-dir .*: this run's model comes from the Hub model 'gpt2', downloaded by name.*leave it out"),
    ({"architecture": "gpt2"}, {"kind": "byte"}, (None, "MODEL"),
     r"--tokenizer-dir .*: this run uses the built-in byte-level tokenizer, which needs no tokenizer folder"),
    ({"architecture": "gpt2"}, {"kind": "pretrained", "name": "gpt2"}, (None, "MODEL"),
     r"--tokenizer-dir .*: this run uses the Hub tokenizer 'gpt2'"),
])
def test_a_folder_flag_the_run_has_no_use_for_is_refused(organiser_model, model_section, tokenizer_section, flags,
                                                         refused):
    recipe = Recipe.model_validate({"run": {"id": "hub"}, "model": model_section, "tokenizer": tokenizer_section})
    model_dir, tokenizer_dir = (organiser_model if flag else None for flag in flags)
    with pytest.raises(UsageError, match=refused):
        with_local_model(recipe, model_dir, tokenizer_dir)


def test_a_model_dir_without_a_config_is_refused_naming_the_organisers_folder(organiser_model, tmp_path):
    (tmp_path / "wrong").mkdir()
    with pytest.raises(UsageError, match=r"--model-dir .*/wrong: no config.json in it; give your copy of the "
                                         r"organiser's model folder .*/organiser/model"):
        with_local_model(_published(organiser_model), tmp_path / "wrong", None)


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


def test_a_pretrained_model_whose_position_table_is_shorter_than_the_samples_is_refused(tmp_path):
    """A published version with n_positions 64 and a recipe with data.seq_len 128: validate said ok, and launch died at
    the validation loss with an IndexError traceback (found by a newcomer tester)."""
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=259, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "short")
    with pytest.raises(UsageError, match=r"data.seq_len \(128\) is longer than model.pretrained '.*short' takes: its "
                                         r"n_positions is 64 .*set data.seq_len to 64 or less"):
        build_model(ModelConfig(pretrained=str(tmp_path / "short")), vocab_size=259, seq_len=128)
    model = build_model(ModelConfig(pretrained=str(tmp_path / "short")), vocab_size=259, seq_len=64)
    assert model(torch.zeros(1, 64, dtype=torch.long)).logits.shape == (1, 64, 259)  # the longest sample fits
