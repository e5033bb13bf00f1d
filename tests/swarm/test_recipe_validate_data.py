"""`swarm recipe validate` looks at the data a recipe names where it is on this machine: a wrong text field, a
missing split or empty data exits 2 at the key to fix, instead of minutes into `swarm launch`; a Hub dataset is left
for the launch, without a network call."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest
import yaml
from typer.testing import CliRunner

from swarm import data as data_module
from swarm.recipe_cli import recipe_app

runner = CliRunner()


def _recipe(folder: Path, **data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"run": {"id": "data-check"}, "data": {"seq_len": 16, **data}}))
    return path


def _validate(*arguments: str):
    result = runner.invoke(recipe_app, ["validate", *arguments])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _refused(recipe: Path, key: str, *fragments: str, arguments: tuple[str, ...] = ()) -> str:
    """The problem line at `key` of a recipe that validate refuses (exit 2), checked for `fragments`."""
    result = _validate(*arguments, str(recipe))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{recipe}: {key}: ")]
    assert lines, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _ok(recipe: Path, *fragments: str) -> str:
    result = _validate(str(recipe))
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith(f"ok: {recipe} (run data-check); data checked: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


ROWS = [{"content": f"document {index} " * 4, "id": index} for index in range(30)]


# --- good data ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["jsonl-folder", "jsonl-file", "csv", "parquet", "save_to_disk", "txt-folder"])
def test_a_local_dataset_that_launch_can_read_prints_ok_with_what_was_checked(tmp_path, layout):
    folder = tmp_path / "run"
    if layout == "jsonl-folder":
        _jsonl(folder / "corpus" / "train-00.jsonl", ROWS[:15])
        _jsonl(folder / "corpus" / "train-01.jsonl", ROWS[15:])
        dataset, shown = "corpus", "(json files, 2 files)"
    elif layout == "jsonl-file":
        _jsonl(folder / "train.jsonl", ROWS)
        dataset, shown = "train.jsonl", "(json files, 1 file)"
    elif layout == "csv":
        folder.mkdir()
        (folder / "train.csv").write_text("id,content\n" + "".join(f"{row['id']},{row['content']}\n" for row in ROWS))
        dataset, shown = "train.csv", "(csv files, 1 file)"
    elif layout == "parquet":
        folder.mkdir()
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(ROWS), folder / "train.parquet")
        dataset, shown = "train.parquet", "(parquet files, 1 file)"
    elif layout == "save_to_disk":
        import datasets

        datasets.Dataset.from_list(ROWS).save_to_disk(str(folder / "saved"), num_shards=2)
        dataset, shown = "saved", "(save_to_disk, 2 files)"
    else:
        for index in range(30):
            (folder / "texts" / f"{index}.txt").parent.mkdir(parents=True, exist_ok=True)
            (folder / "texts" / f"{index}.txt").write_text(f"text {index} " * 4)
        dataset, shown = "texts", "(text files, 30 files)"
    # 30 documents, a tenth held out: both splits fill a sample of seq_len 16, as a launch needs
    recipe = _recipe(folder, source="hub", dataset=dataset, text_field="content", val_fraction=0.1)
    _ok(recipe, f"local dataset {Path(dataset).name!r} {shown}, split 'train'")


@pytest.mark.parametrize("data_format", ["text", "jsonl"])
def test_local_data_files_that_launch_can_read_print_ok(tmp_path, data_format):
    folder = tmp_path / "run"
    if data_format == "jsonl":
        _jsonl(folder / "data" / "a.jsonl", ROWS[:15])
        _jsonl(folder / "data" / "b.jsonl", ROWS[15:])
    else:
        for index in range(40):
            (folder / "data").mkdir(parents=True, exist_ok=True)
            (folder / "data" / f"{index}.txt").write_text(f"text {index}")
    recipe = _recipe(folder, source="files", files=[f"data/*.{'jsonl' if data_format == 'jsonl' else 'txt'}"],
                     format=data_format, text_field="content", val_fraction=0.1)
    _ok(recipe, f"data checked: {40 if data_format == 'text' else 2} {data_format} files")


def test_the_stdlib_default_prints_ok_with_the_python_and_its_files(tmp_path):
    _ok(_recipe(tmp_path), "standard library", "files")


def test_relative_data_paths_start_at_the_recipes_folder_wherever_validate_runs(tmp_path, monkeypatch):
    _jsonl(tmp_path / "run" / "corpus" / "train.jsonl", ROWS)
    recipe = _recipe(tmp_path / "run", source="hub", dataset="corpus", text_field="content")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    _ok(recipe, "local dataset 'corpus'")


# --- problems ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["jsonl", "csv", "parquet", "save_to_disk"])
def test_a_text_field_the_rows_lack_names_the_columns_they_have(tmp_path, layout):
    folder = tmp_path / "run"
    folder.mkdir()
    if layout == "jsonl":
        _jsonl(folder / "train.jsonl", ROWS)
    elif layout == "csv":
        (folder / "train.csv").write_text("id,content\n1,hello\n")
    elif layout == "parquet":
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(ROWS), folder / "train.parquet")
    else:
        import datasets

        datasets.Dataset.from_list(ROWS).save_to_disk(str(folder / "train"))
    name = "train" if layout == "save_to_disk" else f"train.{layout}"
    recipe = _recipe(folder, source="hub", dataset=name, text_field="text")
    _refused(recipe, "data.text_field", "no field 'text'", "'content'", "'id'", "set data.text_field")


def test_a_jsonl_file_without_the_text_field_names_the_file_line_and_fields(tmp_path):
    _jsonl(tmp_path / "run" / "a.jsonl", ROWS)
    recipe = _recipe(tmp_path / "run", source="files", files=["a.jsonl"], format="jsonl", text_field="body")
    _refused(recipe, "data.text_field", "a.jsonl, line 1: no field 'body'", "'content'", "set data.text_field")


@pytest.mark.parametrize("layout", ["files", "save_to_disk"])
def test_a_split_the_dataset_lacks_names_the_splits_it_has(tmp_path, layout):
    folder = tmp_path / "run"
    if layout == "files":
        _jsonl(folder / "corpus" / "train.jsonl", ROWS)
        _jsonl(folder / "corpus" / "test.jsonl", ROWS[:3])
    else:
        import datasets

        splits = {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:3])}
        datasets.DatasetDict(splits).save_to_disk(str(folder / "corpus"))
    recipe = _recipe(folder, source="hub", dataset="corpus", text_field="content", split="validation")
    _refused(recipe, "data.split", "validation", "train", "test", "set data.split")


@pytest.mark.parametrize("name, content", [
    ("train.jsonl", ""), ("train.csv", "id,content\n"), ("corpus/train.jsonl", ""),
], ids=["empty-jsonl", "csv-header-only", "folder-of-an-empty-file"])
def test_a_dataset_with_no_rows_is_refused_as_empty(tmp_path, name, content):
    (tmp_path / "run" / name).parent.mkdir(parents=True)
    (tmp_path / "run" / name).write_text(content)
    recipe = _recipe(tmp_path / "run", source="hub", dataset=name.split("/")[0], text_field="content")
    _refused(recipe, "data.dataset", "has no rows in split 'train'", "the training data would be empty", "add rows")


def test_a_column_with_no_text_in_any_row_is_refused(tmp_path):
    _jsonl(tmp_path / "run" / "train.jsonl", [{"content": "", "title": f"t{index}"} for index in range(5)])
    recipe = _recipe(tmp_path / "run", source="hub", dataset="train.jsonl", text_field="content")
    _refused(recipe, "data.text_field", "'content' is empty in every row of the data (5 in all)")


def test_a_folder_of_empty_text_files_is_refused(tmp_path):
    (tmp_path / "run" / "texts").mkdir(parents=True)
    (tmp_path / "run" / "texts" / "a.txt").write_text("")
    recipe = _recipe(tmp_path / "run", source="hub", dataset="texts")
    _refused(recipe, "data.dataset", "are all empty", "put text in them")


def test_empty_data_files_are_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "a.txt").write_text("")
    (tmp_path / "run" / "b.jsonl").write_text("\n")
    _refused(_recipe(tmp_path / "run", source="files", files=["*.txt"]), "data.files", "every file it matches is empty")
    _refused(_recipe(tmp_path / "run", source="files", files=["*.jsonl"], format="jsonl"), "data.files",
             "no file it matches holds a row", "one JSON object per line")


def test_a_data_glob_matching_nothing_and_a_missing_dataset_name_the_path(tmp_path):
    _refused(_recipe(tmp_path / "a", source="files", files=["corpus/*.txt"]), "data.files.0", "no file matches",
             "fix the path")
    _refused(_recipe(tmp_path / "b", source="hub", dataset="./corpus"), "data.dataset", "does not exist",
             "fix the path")


def test_a_data_file_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    # root (as in CI containers) reads any file whatever its mode: the refusal is simulated where the check opens it
    _jsonl(tmp_path / "run" / "corpus" / "train.jsonl", ROWS)
    locked = str(tmp_path / "run" / "corpus" / "train.jsonl")
    real_open = os.open

    def refusing_open(path, *arguments, **keywords):
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *arguments, **keywords)

    monkeypatch.setattr(os, "open", refusing_open)
    recipe = _recipe(tmp_path / "run", source="hub", dataset="corpus", text_field="content")
    _refused(recipe, "data.dataset", f"{locked!r} cannot be read (Permission denied)", "chmod a+r")


def test_validation_splits_that_would_be_empty_are_refused(tmp_path):
    # val_fraction 0 holds out nothing; the first stdlib file alone is not held out at 0.02; a launch fails on both
    _refused(_recipe(tmp_path / "a", val_fraction=0), "data.val_fraction", "set it above 0")
    _refused(_recipe(tmp_path / "b", stdlib_max_files=1), "data.val_fraction",
             "The validation split is empty (0 tokens", "raise data.val_fraction, raise data.stdlib_max_files")


def test_a_python_without_its_standard_library_sources_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "stdlib_files", lambda max_files=None: [])
    _refused(_recipe(tmp_path), "data.source", "holds none", "set data.source to files or hub")


def test_every_problem_of_a_recipe_is_reported_at_once_and_in_the_json_report(tmp_path):
    _jsonl(tmp_path / "run" / "train.jsonl", ROWS)
    recipe = _recipe(tmp_path / "run", source="hub", dataset="train.jsonl", text_field="text", val_fraction=0)
    result = _validate("--json", str(recipe))
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    (entry,) = report["files"]
    assert [problem["path"] for problem in entry["problems"]] == ["data.val_fraction", "data.text_field"]
    assert entry["data"]["checked"] is True


@pytest.fixture
def no_network(monkeypatch):
    """Any socket use fails the test: validate must never reach the Hub."""
    def refuse(*arguments, **keywords):
        raise AssertionError("recipe validate must not use the network")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# --- what is not checked -----------------------------------------------------------------------------------------


def test_a_hub_dataset_is_not_fetched_and_the_ok_line_says_so(tmp_path, no_network):
    recipe = _recipe(tmp_path, source="hub", dataset="swarm-tests/no-such-dataset", text_field="text")
    started = time.monotonic()
    result = _validate(str(recipe))
    assert time.monotonic() - started < 5
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"ok: {recipe} (run data-check); data not checked: Hub dataset "
                             "'swarm-tests/no-such-dataset', read at launch\n")
    report = json.loads(_validate("--json", str(recipe)).stdout)["files"][0]
    assert report["valid"] and report["data"] == {
        "checked": False, "note": "data not checked: Hub dataset 'swarm-tests/no-such-dataset', read at launch"}


def test_no_data_checks_the_recipe_alone(tmp_path):
    _jsonl(tmp_path / "run" / "train.jsonl", ROWS)
    recipe = _recipe(tmp_path / "run", source="hub", dataset="train.jsonl", text_field="text")
    _refused(recipe, "data.text_field", "no field 'text'")
    result = _validate("--no-data", str(recipe))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"ok: {recipe} (run data-check); data not checked: --no-data\n"
    # the schema is still checked
    _refused(_recipe(tmp_path / "bad", source="files", files=[]), "data.files", "empty", arguments=("--no-data",))


# --- split sizes: what a launch would refuse ---------------------------------------------------------------------
# At the default val_fraction 0.02 and data.seed 0, none of the documents a.jsonl:1..34, 0/0..52/0 (the first rows of
# streamed files) is held out, a.jsonl:35 is: data of these sizes passed validate and then stopped `swarm launch`.


def _launch_refusal(recipe: Path) -> str:
    """What `swarm launch` stops with for `recipe`'s data: the coordinator builds it and reads its validation set."""
    from swarm.data import build_data
    from swarm.errors import SwarmError
    from swarm.recipe import load_recipe
    from swarm.tokenizer import ByteTokenizer

    with pytest.raises(SwarmError) as refused:
        data = build_data(load_recipe(recipe).data, ByteTokenizer(), peer_id=b"coordinator",
                          cache_dir=recipe.parent / "cache", hf_cache_dir=recipe.parent / "hf")
        data.validation_batches(batch_size=16)
    return str(refused.value)


def test_jsonl_rows_that_hold_none_out_are_refused_in_the_words_launch_stops_with(tmp_path):
    _jsonl(tmp_path / "run" / "a.jsonl", [{"text": f"document {index} " * 20} for index in range(25)])
    recipe = _recipe(tmp_path / "run", source="files", files=["a.jsonl"], format="jsonl", seq_len=128)
    line = _refused(recipe, "data.val_fraction", "The validation split is empty (0 tokens, less than one sample of "
                    "seq_len 128): raise data.val_fraction, add rows or files, or try another data.seed")
    assert line == f"{recipe}: data.val_fraction: {_launch_refusal(recipe)}"


def test_a_streamed_folder_of_text_files_that_holds_none_out_is_refused(tmp_path):
    for index in range(25):
        (tmp_path / "run" / "texts").mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / "texts" / f"{index:02d}.txt").write_text(f"text {index} " * 40)
    recipe = _recipe(tmp_path / "run", source="hub", dataset="texts", seq_len=128)
    folder = str(tmp_path / "run" / "texts")
    line = _refused(recipe, "data.val_fraction", f"The validation split of {folder!r} is empty (no held-out document "
                    "fills a sample of seq_len 128): raise data.val_fraction or use a larger dataset")
    assert line == f"{recipe}: data.val_fraction: {_launch_refusal(recipe)}"


def test_a_training_split_shorter_than_one_sample_is_refused_with_a_fix_for_jsonl(tmp_path):
    _jsonl(tmp_path / "run" / "a.jsonl", [{"text": "hello world"}])
    recipe = _recipe(tmp_path / "run", source="files", files=["a.jsonl"], format="jsonl", seq_len=128)
    result = _validate(str(recipe))
    assert result.exit_code == 2
    assert f"{recipe}: data.seq_len: The training split has 12 tokens, less than one sample of seq_len 128: add rows " \
           "or files, or lower data.seq_len\n" in result.stderr
    assert f"{recipe}: data.val_fraction: The validation split is empty (0 tokens" in result.stderr
    assert "stdlib_max_files" not in result.stderr


def test_data_just_big_enough_for_one_sample_in_each_split_passes_and_one_byte_less_does_not(tmp_path):
    # a.jsonl:1 trains and a.jsonl:35 is held out: 15 bytes and an eos fill one sample of seq_len 16 in each split
    rows = [{"text": "t" * 15}] + [{"text": ""}] * 33 + [{"text": "v" * 15}]
    _jsonl(tmp_path / "fits" / "a.jsonl", rows)
    recipe = _recipe(tmp_path / "fits", source="files", files=["a.jsonl"], format="jsonl")
    _ok(recipe, "splits checked as a launch makes them (byte-259 tokens)")
    _jsonl(tmp_path / "short" / "a.jsonl", rows[:-1] + [{"text": "v" * 14}])
    short = _recipe(tmp_path / "short", source="files", files=["a.jsonl"], format="jsonl")
    line = _refused(short, "data.val_fraction", "The validation split is empty (15 tokens, less than one sample")
    assert line == f"{short}: data.val_fraction: {_launch_refusal(short)}"


def test_data_over_the_whole_read_limit_is_checked_from_its_first_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "_WHOLE_DATA_CHECK_BYTES", 100)
    _jsonl(tmp_path / "run" / "a.jsonl", [{"text": f"document {index} " * 20} for index in range(25)])
    recipe = _recipe(tmp_path / "run", source="files", files=["a.jsonl"], format="jsonl", seq_len=128)
    _ok(recipe, "in the first rows; the split sizes are checked at launch (the data are 6.1 kB; validate reads data "
                "up to 0.1 kB whole)")


def test_files_that_are_not_utf8_get_a_note_and_still_pass(tmp_path):
    folder = tmp_path / "run" / "texts"
    folder.mkdir(parents=True)
    for index in range(20):
        (folder / f"{index:02d}.txt").write_bytes(f"text {index} ".encode() * 4)
    (folder / "03.txt").write_bytes(b"caf\xe9 au lait " * 4)  # Latin-1
    (folder / "07.txt").write_bytes(b"\xff\xfe" + "utf-16".encode("utf-16-le"))
    recipe = _recipe(tmp_path / "run", source="files", files=["texts/*.txt"], val_fraction=0.2)
    _ok(recipe, f"; note: 2 data files are not valid UTF-8 (the first: {folder / '03.txt'}): each invalid byte is "
                "read, and trained on, as U+FFFD")


def test_a_hub_tokenizer_is_not_fetched_and_the_splits_are_checked_by_documents(tmp_path, no_network):
    _jsonl(tmp_path / "run" / "a.jsonl", [{"text": f"document {index} " * 20} for index in range(40)])
    path = _recipe(tmp_path / "run", source="files", files=["a.jsonl"], format="jsonl")
    recipe = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**recipe, "tokenizer": {"kind": "pretrained", "name": "swarm-tests/no-such"}}))
    _ok(path, "the split sizes in tokens are checked at launch (tokenizer 'swarm-tests/no-such' is not on this "
              "machine, and validate downloads nothing)")
    _jsonl(tmp_path / "run" / "a.jsonl", [{"text": "one document"}])
    _refused(path, "data.val_fraction", "no document is held out for validation (1 in all", "add rows or files")
