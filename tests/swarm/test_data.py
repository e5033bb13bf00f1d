"""The data pipeline: same documents, identity, split and samples on every peer; disjoint shards per epoch."""

from __future__ import annotations

import json
import logging
import os
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

# Nothing here may reach the Hub: every dataset below is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from swarm import data as data_module  # noqa: E402
from swarm.data import (  # noqa: E402
    PeerSampler,
    StreamingBlocks,
    TokenBlocks,
    build_data,
    check_identity,
    data_copy_note,
    data_identity,
    data_files,
    default_cache_dir,
    epoch_permutation,
    files_layout,
    is_validation,
    iter_documents,
    shard_bounds,
    shard_for_peer,
    stdlib_files,
    validation_batches,
    with_local_data,
)
from swarm.errors import SwarmError, UsageError  # noqa: E402
from swarm.recipe import DataConfig  # noqa: E402
from swarm.tokenizer import ByteTokenizer  # noqa: E402
from small_disk import small_disk  # noqa: E402

TOKENIZER = ByteTokenizer()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _files_cfg(folder: Path, **overrides) -> DataConfig:
    settings = dict(source="files", files=[str(folder / "**" / "*.txt")], seq_len=8, val_fraction=0.0, num_shards=4)
    settings.update(overrides)
    return DataConfig(**settings)


# --- the standard library -----------------------------------------------------------------------------------------


def test_stdlib_listing_skips_tests_installed_packages_and_non_packages(tmp_path, monkeypatch):
    for name in [
        "os.py", "json/__init__.py", "json/decoder.py", "email/__init__.py", "email/mime/__init__.py",
        "email/mime/text.py", "test/__init__.py", "test/test_os.py", "json/tests/__init__.py",
        "site-packages/pkg/__init__.py", "idlelib/__init__.py", "lib2to3/__init__.py", "turtledemo/__init__.py",
        "__pycache__/os.cpython-311.py", "config-3.11-x86_64-linux-gnu/python-config.py", "notes.txt",
    ]:
        _write(tmp_path / name, f"# {name}\n")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    names = [name for name, _ in stdlib_files()]
    assert names == ["email/__init__.py", "email/mime/__init__.py", "email/mime/text.py", "json/__init__.py",
                     "json/decoder.py", "os.py"]
    assert [name for name, _ in stdlib_files(max_files=2)] == names[:2]


def test_real_stdlib_listing_is_sorted_and_has_the_library():
    names = [name for name, _ in stdlib_files()]
    assert names == sorted(names)
    assert {"os.py", "json/__init__.py", "email/mime/text.py", "asyncio/events.py"} <= set(names)
    excluded = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
    assert not any(excluded & set(name.split("/")) for name in names)


def test_real_stdlib_blocks_are_deterministic_and_cached(tmp_path, caplog):
    cfg = DataConfig(source="stdlib", stdlib_max_files=25, seq_len=64, val_fraction=0.2, num_shards=8)
    with caplog.at_level(logging.INFO, logger="swarm.data"):
        first = TokenBlocks(cfg, TOKENIZER, cache_dir=tmp_path)
        second = TokenBlocks(cfg, TOKENIZER, cache_dir=tmp_path)
    assert "Tokenised Python" in caplog.text and "from cache" in caplog.text
    assert first.identity == second.identity == data_identity(cfg, TOKENIZER)
    assert np.array_equal(first.train_tokens, second.train_tokens)
    assert np.array_equal(first.val_tokens, second.val_tokens)
    cache = tmp_path / first.identity.digest
    assert sorted(path.name for path in cache.iterdir()) == ["meta.json", "train.npy", "val.npy"]  # no temp files
    # The cached tokens are those of the documents, in order, each followed by eos.
    documents = [(doc_id, text) for doc_id, text in iter_documents(cfg) if text]
    expected_train = np.concatenate(
        [np.append(TOKENIZER.encode(text), TOKENIZER.eos_id) for doc_id, text in documents
         if not is_validation(doc_id, cfg.seed, cfg.val_fraction)]
    )
    assert np.array_equal(second.train_tokens, expected_train)
    assert second.num_train_blocks == len(expected_train) // 64
    assert TOKENIZER.decode(second.train_blocks[0]).startswith(documents[0][1][:20])
    # A second peer on the same machine reads the cache without touching the source files.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_module, "iter_documents", lambda *args, **kwargs: pytest.fail("cache was not used"))
        third = TokenBlocks(cfg, TOKENIZER, cache_dir=tmp_path)
    assert np.array_equal(third.train_blocks, first.train_blocks)


def test_stdlib_digest_differs_between_pythons_with_different_sources(tmp_path, monkeypatch):
    cfg = DataConfig(source="stdlib")
    for version, body in (("a", "x = 1\n"), ("b", "x = 2\n")):
        _write(tmp_path / version / "os.py", body)
        _write(tmp_path / version / "json" / "__init__.py", "")
    digests = []
    for version in ("a", "b", "a"):
        monkeypatch.setattr(sysconfig, "get_paths", lambda version=version: {"stdlib": str(tmp_path / version)})
        digests.append(data_identity(cfg, TOKENIZER).digest)
    assert digests[0] != digests[1]
    assert digests[0] == digests[2]


def test_corrupt_cache_is_rebuilt(tmp_path):
    cfg = DataConfig(source="stdlib", stdlib_max_files=5, seq_len=16)
    first = TokenBlocks(cfg, TOKENIZER, cache_dir=tmp_path)
    meta_path = tmp_path / first.identity.digest / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["train_tokens"] += 1
    meta_path.write_text(json.dumps(meta))
    rebuilt = TokenBlocks(cfg, TOKENIZER, cache_dir=tmp_path)
    assert np.array_equal(rebuilt.train_tokens, first.train_tokens)
    assert json.loads(meta_path.read_text())["train_tokens"] == len(first.train_tokens)


def _split_sized_files(folder: Path, big_split: str) -> DataConfig:
    """Text files whose `big_split` ("train" or "val") holds ~200 KB of tokens and the other split ~4 KB."""
    cfg = _files_cfg(folder / "corpus", val_fraction=0.3)
    for number in range(40):
        _write(folder / "corpus" / f"doc-{number:02d}.txt", "placeholder")
    for doc_id, _ in list(iter_documents(cfg)):
        split = "val" if is_validation(doc_id, cfg.seed, cfg.val_fraction) else "train"
        _write(folder / "corpus" / doc_id, ("big " * 1250) if split == big_split else ("small " * 20))
    return cfg


@pytest.mark.parametrize("big_split", ["train", "val"], ids=["train-npy-does-not-fit", "only-val-npy-does-not-fit"])
def test_a_cache_on_a_full_disk_is_one_warning_and_no_file(tmp_path, caplog, big_split):
    """The cache is an optimisation: a full disk crashed `swarm join` with a 40-line OSError traceback."""
    cfg = _split_sized_files(tmp_path, big_split)
    with small_disk(tmp_path / "disk", size="64k") as disk, caplog.at_level(logging.INFO, logger="swarm.data"):
        blocks = TokenBlocks(cfg, TOKENIZER, cache_dir=disk / "cache")
        left = sorted(path.relative_to(disk).as_posix() for path in disk.rglob("*"))
    expected = (f"cannot write the data cache in {disk / 'cache' / blocks.identity.digest} (No space left on "
                "device): training on without it; free space or pass --cache-dir")
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warnings == [expected]
    assert "not cached" in caplog.text and "Traceback" not in caplog.text
    assert left == ["cache"]  # neither a temporary nor a complete .npy file holds the space that ran out
    reference = TokenBlocks(cfg, TOKENIZER, cache_dir=tmp_path / "roomy")
    assert np.array_equal(blocks.train_blocks, reference.train_blocks)
    assert np.array_equal(blocks.val_tokens, reference.val_tokens)


def test_a_read_only_default_cache_folder_is_one_warning_and_training_goes_on(tmp_path, monkeypatch, caplog):
    """A read-only HOME (or XDG_CACHE_HOME) crashed `swarm join --identity elsewhere` with a traceback."""
    cfg = DataConfig(source="stdlib", stdlib_max_files=5, seq_len=16)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with small_disk(tmp_path / "read-only", read_only=True) as read_only:
        monkeypatch.setenv("XDG_CACHE_HOME", str(read_only / "cache"))
        with caplog.at_level(logging.WARNING, logger="swarm.data"):
            blocks = TokenBlocks(cfg, TOKENIZER)
    assert [record.getMessage() for record in caplog.records] == [
        f"cannot write the data cache in {read_only / 'cache' / 'swarm' / 'data' / blocks.identity.digest} "
        "(Read-only file system): training on without it; pass --cache-dir with a writable folder"]
    assert blocks.num_train_blocks > 0
    assert not (tmp_path / "home").exists()


def test_the_default_cache_follows_xdg_cache_home_and_ignores_a_relative_one(tmp_path, monkeypatch):
    cfg = DataConfig(source="stdlib", stdlib_max_files=5, seq_len=16)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    blocks = TokenBlocks(cfg, TOKENIZER)
    assert (tmp_path / "xdg-cache" / "swarm" / "data" / blocks.identity.digest / "meta.json").is_file()
    assert default_cache_dir() == tmp_path / "xdg-cache" / "swarm" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid by the XDG specification
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "swarm" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "swarm" / "data"
    assert TokenBlocks(cfg, TOKENIZER, cache_dir=tmp_path / "given").cache_path.parent == tmp_path / "given"


# --- local files ------------------------------------------------------------------------------------------------------


def test_text_files_give_one_document_per_file_with_relative_ids(tmp_path):
    _write(tmp_path / "corpus" / "b.txt", "second")
    _write(tmp_path / "corpus" / "sub" / "a.txt", "first")
    _write(tmp_path / "corpus" / "skip.md", "not matched")
    cfg = _files_cfg(tmp_path / "corpus")
    assert list(iter_documents(cfg)) == [("b.txt", "second"), ("sub/a.txt", "first")]


def test_jsonl_files_give_one_document_per_line(tmp_path):
    path = _write(tmp_path / "docs.jsonl", '{"body": "one"}\n\n{"body": "two", "n": 2}\n')
    cfg = DataConfig(source="files", files=[str(path)], format="jsonl", text_field="body")
    assert list(iter_documents(cfg)) == [("docs.jsonl:1", "one"), ("docs.jsonl:3", "two")]
    assert data_identity(cfg, TOKENIZER).num_documents == 2


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "docs.jsonl", '{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(UsageError, match=r"docs.jsonl, line 2: not valid JSON"):
        list(iter_documents(DataConfig(source="files", files=[str(path)], format="jsonl")))


def test_missing_jsonl_field_names_file_line_and_field(tmp_path):
    path = _write(tmp_path / "docs.jsonl", '{"text": "ok"}\n{"content": "x"}\n')
    with pytest.raises(UsageError, match=r"docs.jsonl, line 2: no field 'text' \(found 'content'\).*data.text_field"):
        list(iter_documents(DataConfig(source="files", files=[str(path)], format="jsonl")))


def test_pattern_that_matches_nothing_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="nothing matches"):
        data_files([str(tmp_path / "*.txt")])


def test_identity_ignores_location_and_creation_order_but_not_content(tmp_path):
    contents = {"a.txt": "alpha", "b.txt": "beta", "c/d.txt": "delta"}
    for name in contents:
        _write(tmp_path / "one" / name, contents[name])
    for name in reversed(list(contents)):
        _write(tmp_path / "two" / "deeper" / name, contents[name])
    one = data_identity(_files_cfg(tmp_path / "one"), TOKENIZER)
    two = data_identity(_files_cfg(tmp_path / "two"), TOKENIZER)
    assert one.digest == two.digest
    assert (one.num_documents, one.num_bytes) == (3, len("alphabetadelta"))
    _write(tmp_path / "two" / "deeper" / "b.txt", "beta!")
    assert data_identity(_files_cfg(tmp_path / "two"), TOKENIZER).digest != one.digest


def test_the_files_layout_is_the_shared_folder_and_each_pattern_below_it():
    assert files_layout(["/srv/run/corpus/a/*.txt", "/srv/run/corpus/b.jsonl"]) == (
        Path("/srv/run/corpus"), ["a/*.txt", "b.jsonl"])
    assert files_layout(["/data/**/*.txt"]) == (Path("/data"), ["**/*.txt"])
    assert files_layout(["/srv/one.txt"]) == (Path("/srv"), ["one.txt"])
    assert files_layout(["/a/x.txt", "/b/y.txt"]) == (Path("/"), ["a/x.txt", "b/y.txt"])


def test_a_volunteers_copy_of_the_data_folder_replaces_the_organisers_paths_and_has_the_same_identity(tmp_path):
    contents = {"corpus/a.txt": "alpha", "corpus/deep/b.txt": "beta", "notes.jsonl": "{}"}
    for name, text in contents.items():
        _write(tmp_path / "organiser" / "run" / name, text)
        _write(tmp_path / "volunteer" / "copy" / name, text)
    organiser = tmp_path / "organiser" / "run"
    published = _files_cfg(organiser, files=[str(organiser / "corpus" / "**" / "*.txt")])
    copy = tmp_path / "volunteer" / "copy" / "corpus"
    local = with_local_data(published, copy)
    assert local.files == [str(copy / "**" / "*.txt")]
    assert data_identity(local, TOKENIZER).digest == data_identity(published, TOKENIZER).digest
    assert with_local_data(published, None) is published  # the organiser's paths exist here: used as they are

    (organiser / "corpus" / "a.txt").unlink()
    (organiser / "corpus" / "deep" / "b.txt").unlink()
    with pytest.raises(UsageError) as missing:
        with_local_data(published, None)
    assert f"the organiser's folder {organiser / 'corpus'}" in str(missing.value)
    assert "--data-dir DIR (DIR must hold **/*.txt)" in str(missing.value)
    with pytest.raises(UsageError, match=r"--data-dir .*: \*\*/\*\.txt matches no file in it"):
        with_local_data(published, _write(tmp_path / "elsewhere" / "notes.md", "").parent)


def test_a_data_folder_for_a_run_that_needs_none_is_refused(tmp_path):
    with pytest.raises(UsageError, match="standard library, which needs no data folder: leave it out"):
        with_local_data(DataConfig(source="stdlib"), tmp_path)
    with pytest.raises(UsageError, match="Hub dataset 'org/corpus', downloaded by name"):
        with_local_data(DataConfig(source="hub", dataset="org/corpus"), tmp_path)


@pytest.mark.parametrize(
    "change", [{"seq_len": 16}, {"val_fraction": 0.1}, {"seed": 1}, {"num_shards": 5}, {"format": "jsonl"}]
)
def test_identity_covers_every_setting_that_changes_samples(tmp_path, change):
    _write(tmp_path / "a.txt", '{"text": "alpha"}')
    base = data_identity(_files_cfg(tmp_path), TOKENIZER)
    assert data_identity(_files_cfg(tmp_path, **change), TOKENIZER).digest != base.digest


def test_identity_covers_the_tokenizer(tmp_path):
    class OtherTokenizer(ByteTokenizer):
        def identity(self) -> str:
            return "other"

    _write(tmp_path / "a.txt", "alpha")
    cfg = _files_cfg(tmp_path)
    assert data_identity(cfg, OtherTokenizer()).digest != data_identity(cfg, TOKENIZER).digest


def test_check_identity_accepts_equal_and_explains_a_difference(tmp_path):
    local = data_identity(DataConfig(source="stdlib", stdlib_max_files=3), TOKENIZER)
    check_identity(local.digest, local.description, local)
    theirs = "Python 3.12.1 standard library: 600 files, 12.0 MB; byte-259 tokens, seq_len 128"
    with pytest.raises(SwarmError) as raised:
        check_identity("0123456789abcdef", theirs, local)
    message = str(raised.value)
    for part in (theirs, "0123456789abcdef", local.description, local.digest, "same Python version"):
        assert part in message


# --- split, shards and sampling -----------------------------------------------------------------------------------


def test_validation_split_is_a_stable_fraction_of_documents():
    ids = [f"doc-{index}" for index in range(20_000)]
    held_out = [doc_id for doc_id in ids if is_validation(doc_id, seed=0, val_fraction=0.1)]
    assert 1_800 < len(held_out) < 2_200
    assert held_out == [doc_id for doc_id in ids if is_validation(doc_id, seed=0, val_fraction=0.1)]
    assert held_out != [doc_id for doc_id in ids if is_validation(doc_id, seed=1, val_fraction=0.1)]
    assert not any(is_validation(doc_id, seed=0, val_fraction=0.0) for doc_id in ids)


def test_epoch_permutation_is_pinned():
    # Changing this order changes which samples every peer reads: bump DATA_PIPELINE_VERSION with it.
    assert epoch_permutation(10, seed=0, epoch=0).tolist() == PINNED_PERMUTATION
    assert epoch_permutation(10, seed=0, epoch=1).tolist() != PINNED_PERMUTATION
    assert epoch_permutation(10, seed=1, epoch=0).tolist() != PINNED_PERMUTATION


PINNED_PERMUTATION = [5, 9, 7, 0, 2, 1, 4, 3, 8, 6]


@pytest.mark.parametrize("num_blocks", [1, 7, 100, 1001])
@pytest.mark.parametrize("num_shards", [1, 3, 16, 1024])
def test_shards_of_an_epoch_are_disjoint_and_cover_every_block(num_blocks, num_shards):
    order = epoch_permutation(num_blocks, seed=3, epoch=5)
    shards = [order[slice(*shard_bounds(num_blocks, num_shards, shard))] for shard in range(num_shards)]
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    assert sorted(np.concatenate(shards).tolist()) == list(range(num_blocks))


def test_peers_land_on_different_shards_for_most_peer_epoch_pairs():
    rng = np.random.default_rng(0)
    num_shards, trials = 16, 4_000
    collisions = 0
    counts = np.zeros(num_shards, dtype=int)
    for trial in range(trials):
        peer_a, peer_b = rng.bytes(32), rng.bytes(32)
        shard_a = shard_for_peer(peer_a, trial, num_shards)
        collisions += shard_a == shard_for_peer(peer_b, trial, num_shards)
        counts[shard_a] += 1
    assert abs(collisions / trials - 1 / num_shards) < 0.02
    assert counts.min() > trials / num_shards * 0.7  # roughly uniform over shards
    assert len({shard_for_peer(b"one peer", epoch, 1024) for epoch in range(50)}) > 40  # it moves every epoch


@pytest.fixture
def small_blocks(tmp_path):
    for index in range(40):
        _write(tmp_path / "corpus" / f"{index:02d}.txt", f"document {index:02d} " * (3 + index % 5))
    cfg = _files_cfg(tmp_path / "corpus", seq_len=8, val_fraction=0.2, num_shards=6)
    return cfg, TokenBlocks(cfg, TOKENIZER, cache_dir=tmp_path / "cache")


def test_same_peer_and_epoch_always_give_the_same_batches(small_blocks):
    cfg, blocks = small_blocks
    one, two = PeerSampler(blocks, b"peer-a", cfg), PeerSampler(blocks, b"peer-a", cfg)
    for epoch in (0, 0, 1, 7):
        assert torch.equal(one.next_batch(epoch, 3), two.next_batch(epoch, 3))
    batch = PeerSampler(blocks, b"peer-a", cfg).next_batch(4, 5)
    assert batch.dtype == torch.long and batch.shape == (5, 8)


def test_sampler_reads_its_shard_then_the_next_ones_and_restarts_each_epoch(small_blocks):
    cfg, blocks = small_blocks
    num_blocks = blocks.num_train_blocks
    sampler = PeerSampler(blocks, b"peer-b", cfg)
    epoch = 2
    order = epoch_permutation(num_blocks, cfg.seed, epoch)
    start = shard_bounds(num_blocks, cfg.num_shards, shard_for_peer(b"peer-b", epoch, cfg.num_shards))[0]
    expected = order[(start + np.arange(num_blocks + 3)) % num_blocks]  # past the end: wraps around
    read = np.concatenate([sampler.next_indices(epoch, 4) for _ in range((num_blocks + 3 + 3) // 4)])
    assert np.array_equal(read[: num_blocks + 3], expected)
    assert torch.equal(blocks.train_batch(expected[:2]), PeerSampler(blocks, b"peer-b", cfg).next_batch(epoch, 2))
    # A new epoch (and a return to an old one) restarts at that epoch's shard.
    fresh = PeerSampler(blocks, b"peer-b", cfg)
    assert np.array_equal(sampler.next_indices(epoch + 1, 4), fresh.next_indices(epoch + 1, 4))
    assert np.array_equal(sampler.next_indices(epoch, 4), expected[:4])


def test_peers_on_different_shards_read_disjoint_samples_within_their_shards(small_blocks):
    cfg, blocks = small_blocks
    epoch, readers = 0, {}
    for index in range(200):
        peer_id = f"peer-{index}".encode()
        readers.setdefault(shard_for_peer(peer_id, epoch, cfg.num_shards), peer_id)
    shard_size = blocks.num_train_blocks // cfg.num_shards
    seen: set[int] = set()
    for peer_id in readers.values():
        indices = set(PeerSampler(blocks, peer_id, cfg).next_indices(epoch, shard_size).tolist())
        assert not indices & seen
        seen |= indices


def test_validation_batches_are_fixed_and_only_from_held_out_documents(small_blocks, tmp_path):
    cfg, blocks = small_blocks
    batches = validation_batches(blocks, num_samples=5, batch_size=2)
    assert [batch.shape[0] for batch in batches] == [2, 2, 1]
    again = validation_batches(TokenBlocks(cfg, TOKENIZER, cache_dir=tmp_path / "elsewhere"), 5, 2)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    held_out = {doc_id for doc_id, _ in iter_documents(cfg) if is_validation(doc_id, cfg.seed, cfg.val_fraction)}
    assert held_out
    text = TOKENIZER.decode(torch.cat(batches).flatten())
    numbers = {int(word) for word in text.split() if word.isdigit()}
    assert numbers and numbers <= {int(doc_id[:2]) for doc_id in held_out}


def test_empty_validation_split_says_what_to_change(tmp_path):
    _write(tmp_path / "a.txt", "some training text " * 10)
    blocks = TokenBlocks(_files_cfg(tmp_path), TOKENIZER, cache_dir=tmp_path / "cache")
    with pytest.raises(SwarmError, match="raise data.val_fraction, add files, or try another data.seed"):
        validation_batches(blocks, 4, 2)


def test_too_little_training_text_says_what_to_change(tmp_path):
    _write(tmp_path / "a.txt", "tiny")
    with pytest.raises(SwarmError, match="lower data.seq_len"):
        TokenBlocks(_files_cfg(tmp_path, seq_len=64), TOKENIZER, cache_dir=tmp_path / "cache")


def test_files_that_are_not_utf8_train_on_replacement_characters_with_one_warning(tmp_path, caplog):
    _write(tmp_path / "a.txt", "plain text " * 4)
    (tmp_path / "b.txt").write_bytes(b"caf\xe9 " * 4)  # Latin-1
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "na\xefve"}\n{"text": "\xff"}\n')  # json.loads raised on these
    cfg = _files_cfg(tmp_path, seq_len=4)
    with caplog.at_level(logging.WARNING, logger="swarm.data"):
        blocks = TokenBlocks(cfg, TOKENIZER, cache_dir=tmp_path / "cache")
        jsonl = TokenBlocks(_files_cfg(tmp_path, files=[str(tmp_path / "c.jsonl")], format="jsonl", seq_len=4),
                            TOKENIZER, cache_dir=tmp_path / "cache")
    assert "caf\ufffd" in TOKENIZER.decode(blocks.train_tokens)
    assert TOKENIZER.decode(jsonl.train_tokens) == "na\ufffdve\ufffd"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"1 data file is not valid UTF-8 (the first: {tmp_path / name}): each invalid byte is read, and trained on, as "
        "U+FFFD (the replacement character); to train on their text, convert them to UTF-8 (such as `iconv -f latin1 "
        "-t utf-8`)" for name in ("b.txt", "c.jsonl")
    ]


def test_a_streamed_dataset_that_holds_every_document_out_stops_instead_of_reading_forever(tmp_path):
    # at data.seed 6 both files' documents (0/0 and 1/0) are held out at val_fraction 0.4: training read on forever
    _write(tmp_path / "texts" / "a.txt", "alpha " * 10)
    _write(tmp_path / "texts" / "b.txt", "beta " * 10)
    data = build_data(_hub_cfg(tmp_path / "texts", seed=6, val_fraction=0.4), TOKENIZER, b"peer-a",
                      hf_cache_dir=tmp_path / "hf")
    with pytest.raises(SwarmError, match="The training split is empty: every document with text is held out "
                                         "for validation .*: lower data.val_fraction, use a larger dataset, or try"):
        data.next_batch(0, 1)


def test_large_vocabularies_are_stored_as_uint32(tmp_path):
    class WideTokenizer(ByteTokenizer):
        vocab_size = 70_000
        eos_id = 69_999

    _write(tmp_path / "a.txt", "some text to tokenise")
    blocks = TokenBlocks(_files_cfg(tmp_path, seq_len=4), WideTokenizer(), cache_dir=tmp_path / "cache")
    assert blocks.train_tokens.dtype == np.uint32
    assert blocks.train_tokens[-1] == 69_999


# --- datasets: local folders, downloaded and streamed -------------------------------------------------------------


@pytest.fixture
def jsonl_dataset(tmp_path):
    folder = tmp_path / "dataset"
    for file_index in range(4):
        rows = [json.dumps({"content": f"<{file_index}/{row}> " * 6}) for row in range(25)]
        _write(folder / f"train-{file_index:02d}.jsonl", "\n".join(rows) + "\n")
    return folder


def _hub_cfg(folder: Path, **overrides) -> DataConfig:
    settings = dict(source="hub", dataset=str(folder), text_field="content", seq_len=16, val_fraction=0.15)
    settings.update(overrides)
    return DataConfig(**settings)


def _doc_ids(batch: torch.Tensor) -> set[str]:
    text = TOKENIZER.decode(batch.flatten())
    return {word[1:-1] for word in text.split() if word.startswith("<") and word.endswith(">")}


def test_downloaded_local_dataset_gives_row_numbered_documents(jsonl_dataset, tmp_path):
    cfg = _hub_cfg(jsonl_dataset, streaming=False)
    documents = list(iter_documents(cfg, hf_cache_dir=tmp_path / "hf"))
    assert len(documents) == 100
    assert documents[0] == ("0", "<0/0> " * 6) and documents[25][0] == "25"
    data = build_data(cfg, TOKENIZER, b"peer-a", cache_dir=tmp_path / "cache", hf_cache_dir=tmp_path / "hf")
    assert isinstance(data.train, PeerSampler)
    assert data.next_batch(0, 4).shape == (4, 16)


def test_local_dataset_identity_follows_content_not_location(jsonl_dataset, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(jsonl_dataset, moved)
    assert data_identity(_hub_cfg(moved), TOKENIZER).digest == data_identity(_hub_cfg(jsonl_dataset), TOKENIZER).digest
    _write(moved / "train-00.jsonl", json.dumps({"content": "changed"}) + "\n")
    assert data_identity(_hub_cfg(moved), TOKENIZER).digest != data_identity(_hub_cfg(jsonl_dataset), TOKENIZER).digest


def test_a_volunteers_copy_of_a_local_dataset_folder_replaces_the_organisers(jsonl_dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(jsonl_dataset, copy)
    published = _hub_cfg(tmp_path / "gone")
    with pytest.raises(UsageError, match=f"dataset folder {tmp_path / 'gone'} of the organiser's machine"):
        with_local_data(published, None)
    local = with_local_data(published, copy)
    assert local.dataset == str(copy)
    assert data_identity(local, TOKENIZER).digest == data_identity(_hub_cfg(jsonl_dataset), TOKENIZER).digest


def test_hub_identity_names_the_revision_without_reading_the_dataset():
    cfg = DataConfig(source="hub", dataset="org/corpus", dataset_config="en", revision="abc123")
    identity = data_identity(cfg, TOKENIZER)
    assert "dataset 'org/corpus', config en, split train, revision abc123, streamed" in identity.description
    other = data_identity(cfg.model_copy(update={"revision": "def456"}), TOKENIZER)
    assert other.digest != identity.digest and identity.num_documents is None


def test_folder_of_text_files_gives_one_document_per_file(tmp_path):
    _write(tmp_path / "texts" / "a.txt", "line one\nline two\n")
    _write(tmp_path / "texts" / "b.txt", "other\n")
    cfg = DataConfig(source="hub", dataset=str(tmp_path / "texts"), streaming=False, text_field="ignored")
    texts = sorted(text for _, text in iter_documents(cfg, hf_cache_dir=tmp_path / "hf"))
    assert texts == ["line one\nline two\n", "other\n"]


def test_streamed_dataset_missing_field_is_a_usage_error(jsonl_dataset, tmp_path):
    cfg = _hub_cfg(jsonl_dataset, text_field="body")
    with pytest.raises(UsageError, match="no field 'body'.*data.text_field"):
        next(iter_documents(cfg, hf_cache_dir=tmp_path / "hf"))


def test_streamed_batches_are_deterministic_per_peer_and_skip_held_out_documents(jsonl_dataset, tmp_path):
    cfg = _hub_cfg(jsonl_dataset)
    held_out = {
        doc_id
        for doc_id, _ in iter_documents(cfg, hf_cache_dir=tmp_path / "hf")
        if is_validation(doc_id, cfg.seed, cfg.val_fraction)
    }
    assert held_out

    def stream(peer_id: bytes) -> StreamingBlocks:
        return StreamingBlocks(cfg, TOKENIZER, peer_id, shuffle_buffer_documents=8, hf_cache_dir=tmp_path / "hf")

    one, two = stream(b"peer-a"), stream(b"peer-a")
    batches = [one.next_batch(epoch, 4) for epoch in (3, 3, 4)]
    assert all(torch.equal(a, two.next_batch(epoch, 4)) for a, epoch in zip(batches, (3, 3, 4)))
    read = set().union(*(_doc_ids(batch) for batch in batches))
    assert read and not read & held_out
    # Peers start in the file their id picks: find two that start apart and check they read different documents.
    starts = {}
    for index in range(40):
        peer_id = f"peer-{index}".encode()
        starts.setdefault(shard_for_peer(peer_id, 3, 4), peer_id)
    assert len(starts) > 1
    first_a, first_b = (stream(peer_id).next_batch(3, 2) for peer_id in list(starts.values())[:2])
    assert _doc_ids(first_a) != _doc_ids(first_b)


def test_streamed_validation_is_the_same_for_every_peer(jsonl_dataset, tmp_path):
    cfg = _hub_cfg(jsonl_dataset, val_samples=6)
    data_a = build_data(cfg, TOKENIZER, b"peer-a", hf_cache_dir=tmp_path / "hf")
    data_b = build_data(cfg, TOKENIZER, b"peer-b", hf_cache_dir=tmp_path / "hf")
    assert isinstance(data_a.train, StreamingBlocks)
    batches_a, batches_b = data_a.validation_batches(4), data_b.validation_batches(4)
    assert [batch.shape for batch in batches_a] == [(4, 16), (2, 16)]
    assert all(torch.equal(a, b) for a, b in zip(batches_a, batches_b))
    held_out = {
        doc_id
        for doc_id, _ in iter_documents(cfg, hf_cache_dir=tmp_path / "hf")
        if is_validation(doc_id, cfg.seed, cfg.val_fraction)
    }
    assert _doc_ids(torch.cat(batches_a)) <= held_out
    assert data_a.identity == data_b.identity


# --- local datasets: save_to_disk folders, unreadable layouts, one-file datasets ----------------------------------


def _rows(tag: str, count: int) -> dict[str, list]:
    return {"content": [f"<{tag}/{row}> " * 6 for row in range(count)], "n": list(range(count))}


@pytest.fixture
def saved_dataset(tmp_path):
    """A folder written by `Dataset.save_to_disk`: two .arrow files, state.json and dataset_info.json."""
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_dict(_rows("s", 60)).save_to_disk(str(folder), num_shards=2)
    return folder


@pytest.fixture
def saved_dataset_dict(tmp_path):
    """A folder written by `DatasetDict.save_to_disk`: dataset_dict.json and one sub-folder per split."""
    import datasets

    folder = tmp_path / "saved-dict"
    splits = {name: datasets.Dataset.from_dict(_rows(name, count)) for name, count in (("train", 40), ("test", 8))}
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def _one_line_usage_error(cfg: DataConfig, tmp_path: Path) -> str:
    with pytest.raises(UsageError) as raised:
        data = build_data(cfg, TOKENIZER, b"peer-a", cache_dir=tmp_path / "cache", hf_cache_dir=tmp_path / "hf")
        data.next_batch(0, 1)  # a streamed dataset is only read here
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("streaming", [False, True])
def test_a_save_to_disk_folder_is_read_with_load_from_disk(saved_dataset, tmp_path, streaming):
    assert sorted(path.name for path in saved_dataset.iterdir()) == [
        "data-00000-of-00002.arrow", "data-00001-of-00002.arrow", "dataset_info.json", "state.json"]
    cfg = _hub_cfg(saved_dataset, streaming=streaming)
    documents = list(iter_documents(cfg))
    assert [text for _, text in documents] == _rows("s", 60)["content"]
    # Row numbers when downloaded; "file/row" when streamed, one file per .arrow file as for other layouts.
    expected_ids = [f"{row // 30}/{row % 30}" if streaming else str(row) for row in range(60)]
    assert [doc_id for doc_id, _ in documents] == expected_ids
    data = build_data(cfg, TOKENIZER, b"peer-a", cache_dir=tmp_path / "cache")
    assert isinstance(data.train, StreamingBlocks if streaming else PeerSampler)
    assert data.next_batch(0, 4).shape == (4, 16)
    assert sum(batch.shape[0] for batch in data.validation_batches(4)) > 0
    assert "local dataset 'saved' (save_to_disk, 2 files" in data.identity.description


def test_a_save_to_disk_folder_has_one_identity_wherever_it_is_and_whatever_datasets_adds_to_it(
        saved_dataset, tmp_path):
    import shutil

    import datasets

    digest = data_identity(_hub_cfg(saved_dataset), TOKENIZER).digest
    copy = tmp_path / "volunteer" / "copy"
    shutil.copytree(saved_dataset, copy)
    assert data_identity(_hub_cfg(copy), TOKENIZER).digest == digest
    # The same rows made another way: state.json holds another fingerprint, but the rows, and the identity, agree.
    again = tmp_path / "saved-again"
    datasets.Dataset.from_dict(_rows("s", 60)).map(lambda row: row).save_to_disk(str(again), num_shards=2)
    assert (again / "state.json").read_text() != (saved_dataset / "state.json").read_text()
    assert data_identity(_hub_cfg(again), TOKENIZER).digest == digest
    # `map` on a dataset loaded from the folder writes a cache file into it, which load_from_disk does not read.
    datasets.load_from_disk(str(copy)).map(lambda row: {"n": row["n"] + 1})
    assert any(path.name.startswith("cache-") for path in copy.iterdir())
    assert data_identity(_hub_cfg(copy), TOKENIZER).digest == digest
    changed = tmp_path / "changed"
    datasets.Dataset.from_dict(_rows("x", 60)).save_to_disk(str(changed), num_shards=2)
    assert data_identity(_hub_cfg(changed), TOKENIZER).digest != digest
    assert data_identity(_hub_cfg(saved_dataset, streaming=False), TOKENIZER).digest != digest


@pytest.mark.parametrize("streaming", [False, True])
def test_a_saved_dataset_dict_gives_the_recipes_split(saved_dataset_dict, tmp_path, streaming):
    assert (saved_dataset_dict / "dataset_dict.json").is_file()
    test_split = list(iter_documents(_hub_cfg(saved_dataset_dict, split="test", streaming=streaming)))
    assert [text for _, text in test_split] == _rows("test", 8)["content"]
    train = list(iter_documents(_hub_cfg(saved_dataset_dict, streaming=streaming)))
    assert [text for _, text in train] == _rows("train", 40)["content"]
    sliced = list(iter_documents(_hub_cfg(saved_dataset_dict, split="train[:3]+test[-1:]", streaming=streaming)))
    assert [text for _, text in sliced] == _rows("train", 3)["content"] + _rows("test", 8)["content"][-1:]
    message = _one_line_usage_error(_hub_cfg(saved_dataset_dict, split="validation", streaming=streaming), tmp_path)
    assert message.startswith("data.split: Unknown split \"validation\"") and "'train', 'test'" in message
    train_digest = data_identity(_hub_cfg(saved_dataset_dict), TOKENIZER).digest
    assert data_identity(_hub_cfg(saved_dataset_dict, split="test"), TOKENIZER).digest != train_digest


def test_a_saved_dataset_is_the_split_it_was_loaded_as(tmp_path):
    import datasets

    folder = tmp_path / "validation-only"
    datasets.Dataset.from_dict(_rows("v", 10), split="validation").save_to_disk(str(folder))
    message = _one_line_usage_error(_hub_cfg(folder), tmp_path)
    assert "data.split: Unknown split \"train\"" in message and "'validation'" in message
    assert len(list(iter_documents(_hub_cfg(folder, split="validation")))) == 10


def test_a_save_to_disk_folder_without_its_text_field_says_so(saved_dataset, tmp_path):
    for streaming in (False, True):
        message = _one_line_usage_error(_hub_cfg(saved_dataset, text_field="body", streaming=streaming), tmp_path)
        assert "'body'" in message and "data.text_field" in message


def test_layouts_swarm_cannot_read_are_one_line_usage_errors_naming_what_works(saved_dataset, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved_dataset, broken)
    (broken / "state.json").unlink()  # .arrow shards and dataset_info.json: once read as JSON, with a traceback
    _write(tmp_path / "notes" / "README.md", "# not data\n")
    _write(tmp_path / "mixed" / "a.jsonl", '{"content": "x"}\n')
    _write(tmp_path / "mixed" / "b.csv", "content\nx\n")
    _write(tmp_path / "arrow.arrow", "")
    lost_shard = tmp_path / "lost-shard"
    shutil.copytree(saved_dataset, lost_shard)
    (lost_shard / "data-00001-of-00002.arrow").unlink()
    cases = {
        broken: "holds .arrow files without the state.json",
        tmp_path / "notes": "holds no data files",
        tmp_path / "mixed": "mixes file kinds (csv, json)",
        tmp_path / "arrow.arrow": "is not a data file",
        lost_shard: "lacks data-00001-of-00002.arrow, which its state.json lists",
    }
    for path, problem in cases.items():
        for streaming in (False, True):
            message = _one_line_usage_error(_hub_cfg(path, streaming=streaming), tmp_path)
            assert message.startswith(f"data.dataset: {str(path)!r} {problem}")
            assert "save_to_disk" in message and ".jsonl, .json, .parquet, .csv, .txt" in message
        with pytest.raises(UsageError):
            data_identity(_hub_cfg(path), TOKENIZER)


def test_a_saved_dataset_dict_missing_a_split_folder_is_a_usage_error(saved_dataset_dict, tmp_path):
    import shutil

    shutil.rmtree(saved_dataset_dict / "test")
    message = _one_line_usage_error(_hub_cfg(saved_dataset_dict), tmp_path)
    assert message.startswith(f"data.dataset: {str(saved_dataset_dict)!r} lacks test/state.json")


def test_other_files_in_a_dataset_folder_are_not_read_as_data(jsonl_dataset, tmp_path):
    _write(jsonl_dataset / "LICENSE", "MIT License\n")
    _write(jsonl_dataset / "test-notes.md", "# about these files\n")  # named like a test split
    _write(tmp_path / "unnamed" / "data.jsonl", json.dumps({"content": "only"}) + "\n")
    _write(tmp_path / "unnamed" / "test-notes.md", "# the only file named like a split\n")
    for streaming in (False, True):
        documents = list(iter_documents(_hub_cfg(jsonl_dataset, streaming=streaming), hf_cache_dir=tmp_path / "hf"))
        assert len(documents) == 100
        unnamed = _hub_cfg(tmp_path / "unnamed", streaming=streaming)
        assert [text for _, text in iter_documents(unnamed, hf_cache_dir=tmp_path / "hf")] == ["only"]


@pytest.mark.parametrize("name, content", [
    ("train.jsonl", '{"content": "ok"}\n{"content": broken\n'),
    ("train.parquet", "not parquet at all"),
    ("train.csv", 'content,n\n"never closed,1\n'),
])
def test_a_local_data_file_that_datasets_cannot_parse_is_a_usage_error(tmp_path, name, content):
    _write(tmp_path / "bad" / name, content)
    for streaming in (False, True):
        message = _one_line_usage_error(_hub_cfg(tmp_path / "bad", streaming=streaming, val_fraction=0.0), tmp_path)
        assert message.startswith(f"data.dataset: {str(tmp_path / 'bad')!r} has a file that `datasets` cannot read")


@pytest.mark.parametrize("files", [{"a.jsonl": ""}, {"a.jsonl": "", "b.jsonl": "\n"}], ids=["empty", "blank-line"])
def test_a_local_jsonl_dataset_without_a_row_is_a_usage_error_not_a_stopiteration(tmp_path, files):
    # `datasets` raised StopIteration reading the first table (a launch ended "RuntimeError: generator raised ..."),
    # or said "Instruction "train" corresponds to no data" (named data.split), or streamed nothing ("check data.split")
    for name, content in files.items():
        _write(tmp_path / "empty" / name, content)
    for streaming in (False, True):
        message = _one_line_usage_error(_hub_cfg(tmp_path / "empty", streaming=streaming), tmp_path)
        assert message == (f"data.dataset: {str(tmp_path / 'empty')!r} has no rows in split 'train': the training "
                           "data would be empty; add rows to its files")


def test_a_volunteer_gives_a_folder_holding_its_copy_of_a_one_file_dataset(tmp_path):
    organiser_file = _write(tmp_path / "organiser" / "ds" / "train.jsonl",
                            "".join(json.dumps({"content": f"<f/{row}> " * 6}) + "\n" for row in range(30)))
    published = _hub_cfg(organiser_file)
    note = data_copy_note(published)
    assert note == (f"The data are the dataset file {organiser_file}: a volunteer on another machine needs a folder "
                    "holding a copy of train.jsonl, passed with --data-dir <that folder>.")
    digest = data_identity(published, TOKENIZER).digest
    assert with_local_data(published, None) is published  # the organiser's machine

    # What the note says works: a folder holding a copy of train.jsonl (next to other files, which are not read).
    copy_folder = tmp_path / "volunteer" / "data"
    _write(copy_folder / "train.jsonl", organiser_file.read_text())
    _write(copy_folder / "other.jsonl", '{"content": "not this run\'s"}\n')
    organiser_file.rename(tmp_path / "moved-away.jsonl")  # the volunteer's machine lacks the organiser's file
    with pytest.raises(UsageError) as missing:
        with_local_data(published, None)
    assert (f"the dataset file {organiser_file} of the organiser's machine" in str(missing.value)
            and "put a copy of train.jsonl in a folder and pass that folder with --data-dir DIR (DIR must hold "
                "train.jsonl)" in str(missing.value))
    local = with_local_data(published, copy_folder)
    assert local.dataset == str(copy_folder / "train.jsonl")
    assert data_identity(local, TOKENIZER).digest == digest
    assert len(list(iter_documents(local, hf_cache_dir=tmp_path / "hf"))) == 30

    with pytest.raises(UsageError, match=r"is a file, not a folder; give a folder holding your copy of train\.jsonl"):
        with_local_data(published, copy_folder / "train.jsonl")
    with pytest.raises(UsageError, match=r"it holds no train\.jsonl; this run's dataset is the file train\.jsonl"):
        with_local_data(published, _write(tmp_path / "empty" / "x.txt", "").parent)


def test_the_data_copy_note_describes_the_folder_that_data_dir_takes(saved_dataset, tmp_path):
    import shutil

    assert data_copy_note(DataConfig(source="stdlib")) is None
    assert data_copy_note(DataConfig(source="hub", dataset="org/corpus")) is None
    assert data_copy_note(_files_cfg(tmp_path / "corpus")) == (
        f"The data are files in {tmp_path / 'corpus'} (**/*.txt): a volunteer on another machine needs a copy of "
        "that folder, passed with --data-dir <the copy>.")
    published = _hub_cfg(saved_dataset)
    assert data_copy_note(published) == (
        f"The data are the dataset folder {saved_dataset}: a volunteer on another machine needs a copy of it, "
        "passed with --data-dir <the copy>.")
    copy = tmp_path / "copy"
    shutil.copytree(saved_dataset, copy)
    local = with_local_data(published, copy)
    assert local.dataset == str(copy)
    assert data_identity(local, TOKENIZER).digest == data_identity(published, TOKENIZER).digest
    # A dataset folder whose name looks like a file's is still a folder, on both machines.
    odd = tmp_path / "organiser" / "corpus.txt"
    _write(odd / "a.txt", "alpha")
    assert data_copy_note(_hub_cfg(odd)).startswith(f"The data are the dataset folder {odd}:")
    odd_copy = tmp_path / "volunteer" / "corpus.txt"
    shutil.copytree(odd, odd_copy)
    shutil.rmtree(odd)
    assert with_local_data(_hub_cfg(odd), odd_copy).dataset == str(odd_copy)


# --- the facade -----------------------------------------------------------------------------------------------------


def test_build_data_over_the_stdlib_gives_a_peer_stream_and_shared_validation(tmp_path):
    cfg = DataConfig(source="stdlib", stdlib_max_files=15, seq_len=32, val_fraction=0.3, val_samples=10)
    peer_a = build_data(cfg, TOKENIZER, b"peer-a", cache_dir=tmp_path)
    peer_b = build_data(cfg, TOKENIZER, b"peer-b", cache_dir=tmp_path)
    assert peer_a.identity == peer_b.identity
    assert peer_a.next_batch(0, 8).shape == (8, 32)
    assert all(torch.equal(a, b) for a, b in zip(peer_a.validation_batches(4), peer_b.validation_batches(4)))
    assert sum(batch.shape[0] for batch in peer_a.validation_batches(4)) == 10


def test_a_file_whose_name_holds_brackets_is_found_by_its_literal_path(tmp_path):
    """`corpus/set[1]/a.txt` was taken for a glob (a character class) that matches nothing."""
    from swarm.recipe import load_recipe

    (tmp_path / "corpus" / "set[1]").mkdir(parents=True)
    (tmp_path / "corpus" / "set[1]" / "a.txt").write_text("hello\n")
    (tmp_path / "corpus" / "set1").mkdir()
    (tmp_path / "corpus" / "set1" / "b.txt").write_text("not this one\n")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text("run: {id: brackets}\ndata: {source: files, files: ['corpus/set[1]/a.txt']}\n")
    recipe = load_recipe(recipe_path)
    assert [name for name, _ in data_files(recipe.data.files)] == ["a.txt"]
    assert data_files([str(tmp_path / "corpus" / "set[1]" / "*.txt")])[0][1] == tmp_path / "corpus" / "set1" / "b.txt"


def test_a_hub_dataset_that_cannot_be_had_is_a_usage_error_naming_the_fix(tmp_path, monkeypatch):
    """A name the Hub could not give (offline here, as with no network) ended launch with a 60-line traceback."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # nothing leaves the machine; what no network gives
    for streaming in (False, True):
        cfg = DataConfig(source="hub", dataset="swarm-tests/no-such-dataset", text_field="text", seq_len=16,
                         streaming=streaming)
        with pytest.raises(UsageError, match=r"data.dataset 'swarm-tests/no-such-dataset': no such dataset here, and "
                                             r"the Hub could not give it .*a folder or file next to the recipe"):
            data = build_data(cfg, TOKENIZER, b"peer", cache_dir=tmp_path)
            list(data.validation_batches(4))  # a streamed dataset is opened when first read
