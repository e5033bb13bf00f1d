"""The tokenizers: byte ids equal ByT5's, pretrained ones load from local folders, identities track content."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from swarm.errors import UsageError
from swarm.recipe import TokenizerConfig, parse_recipe
from swarm.tokenizer import ByteTokenizer, PretrainedTokenizer, build_tokenizer, token_dtype

TEXTS = {
    "ascii": "def add(a, b):\n\treturn a + b  # sum\n",
    "multi_byte": "naïve café, ÿ, Ω, €, 日本語, 😀 and 🇺🇳",
    "empty": "",
    "control": "\x00\x01\x7f line\r\nend",
}


@pytest.fixture(scope="module")
def byt5():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer(extra_ids=0)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_byte_tokenizer_ids_equal_byt5_ids_without_eos(byt5, name):
    text = TEXTS[name]
    reference = byt5(text)["input_ids"]
    assert reference[-1] == byt5.eos_token_id
    ids = ByteTokenizer().encode(text)
    assert ids.dtype == np.uint16
    assert ids.tolist() == reference[:-1]


def test_byte_tokenizer_special_ids_equal_byt5(byt5):
    tokenizer = ByteTokenizer()
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (
        byt5.pad_token_id,
        byt5.eos_token_id,
        byt5.unk_token_id,
    )
    assert tokenizer.vocab_size == len(byt5) == 259


def test_byte_tokenizer_decode_round_trips_and_skips_special_ids():
    tokenizer = ByteTokenizer()
    for text in TEXTS.values():
        assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = [tokenizer.pad_id, *tokenizer.encode("hi").tolist(), tokenizer.eos_id, tokenizer.unk_id]
    assert tokenizer.decode(ids) == "hi"
    assert tokenizer.decode(np.array(ids, dtype=np.int64)) == "hi"


def test_byte_tokenizer_decode_replaces_broken_utf8():
    tokenizer = ByteTokenizer()
    truncated = tokenizer.encode("€")[:2]  # two of the three bytes of one character
    assert tokenizer.decode(truncated) == "\ufffd"


def test_byte_tokenizer_encodes_megabytes_quickly():
    text = "x = 'héllo'\n" * 400_000  # about 5 MB
    started = time.perf_counter()
    ids = ByteTokenizer().encode(text)
    elapsed_s = time.perf_counter() - started
    assert len(ids) == len(text.encode("utf-8"))
    assert elapsed_s < 1.0, f"encoding 5 MB took {elapsed_s:.2f} s: it must be vectorised"


@pytest.mark.parametrize("model_type", [None, "gpt2", "llama", "gpt_neox", "qwen2", "mistral", "phi3"])
def test_byte_tokenizer_checkpoint_loads_with_autotokenizer_next_to_any_model_type(tmp_path, model_type):
    """A checkpoint holds config.json too; AutoTokenizer let qwen2's tokenizer class override a ByT5 folder (every
    text encoded to []) and failed for mistral and phi3."""
    from transformers import AutoTokenizer

    tokenizer = ByteTokenizer()
    tokenizer.save_pretrained(tmp_path)
    if model_type is not None:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(loaded) == tokenizer.vocab_size
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tokenizer.pad_id, tokenizer.eos_id)
    for text in TEXTS.values():
        ids = tokenizer.encode(text).tolist()
        assert loaded(text)["input_ids"] == ids
        assert loaded.decode(ids) == text
    assert loaded.decode([tokenizer.eos_id, 107, 108, tokenizer.pad_id], skip_special_tokens=True) == "hi"


def test_build_tokenizer_defaults_to_bytes():
    tokenizer = build_tokenizer(TokenizerConfig())
    assert isinstance(tokenizer, ByteTokenizer)
    assert tokenizer.identity() == "byte-259"


def test_token_dtype_widens_only_past_65536_ids():
    assert token_dtype(259) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


# --- pretrained tokenizers, built locally: nothing is downloaded -------------------------------------------------


def _save_local_tokenizer(folder: Path, corpus: list[str], eos: str | None = "<eos>", vocab_size: int = 300) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<unk>"] + ([eos] if eos else [])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token="<pad>", unk_token="<unk>")
    wrapped.save_pretrained(str(folder))
    return folder


CORPUS = ["def add(a, b): return a + b", "import os\nprint(os.getcwd())", "naïve café €", "class Foo: pass"]


@pytest.fixture(scope="module")
def local_tokenizer_dir(tmp_path_factory):
    return _save_local_tokenizer(tmp_path_factory.mktemp("bpe"), CORPUS)


def test_pretrained_tokenizer_loads_through_the_recipe(local_tokenizer_dir, tmp_path):
    recipe = parse_recipe(
        {"run": {"id": "t"}, "tokenizer": {"kind": "pretrained", "name": str(local_tokenizer_dir)}},
        base_dir=tmp_path,
    )
    tokenizer = build_tokenizer(recipe.tokenizer)
    assert isinstance(tokenizer, PretrainedTokenizer)
    assert tokenizer.eos_id == tokenizer.hf.convert_tokens_to_ids("<eos>")
    assert tokenizer.pad_id == tokenizer.hf.convert_tokens_to_ids("<pad>")
    assert tokenizer.vocab_size == len(tokenizer.hf)
    text = "def add(a, b): return a + b  # naïve €"
    ids = tokenizer.encode(text)
    assert ids.dtype == np.uint16
    assert tokenizer.eos_id not in ids.tolist()  # no special tokens added
    assert tokenizer.decode(ids) == text
    assert [array.tolist() for array in tokenizer.encode_batch([text, ""])] == [ids.tolist(), []]


def test_pretrained_tokenizer_identity_tracks_content_not_location(local_tokenizer_dir, tmp_path):
    original = PretrainedTokenizer(str(local_tokenizer_dir))
    original.save_pretrained(tmp_path / "copy")
    copy = PretrainedTokenizer(str(tmp_path / "copy"))
    assert copy.identity() == original.identity()
    assert copy.encode("import os").tolist() == original.encode("import os").tolist()
    retrained = PretrainedTokenizer(str(_save_local_tokenizer(tmp_path / "other", CORPUS[:2], vocab_size=280)))
    assert retrained.identity() != original.identity()


def test_pretrained_tokenizer_without_eos_is_refused(tmp_path):
    folder = _save_local_tokenizer(tmp_path / "no-eos", CORPUS, eos=None)
    with pytest.raises(UsageError, match="neither an eos nor a sep token"):
        PretrainedTokenizer(str(folder))


def test_missing_tokenizer_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        build_tokenizer(TokenizerConfig(kind="pretrained", name=str(tmp_path / "missing")))


@pytest.mark.parametrize("name", ["./tok", "assets/tokenizers/bytes"])
def test_a_missing_relative_tokenizer_path_is_named_not_looked_up_on_the_hub(name, tmp_path, monkeypatch):
    # "assets/tokenizers/bytes" cannot be a Hub id (a Hub id has at most one slash): it is a path, as in the recipe.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=rf"tokenizer.name: '{name}' does not exist"):
        PretrainedTokenizer(name)
