"""The recipe: shipped recipes validate, broken ones report every problem at its key path, the CLI never crashes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from swarm.recipe import Recipe, RecipeError, load_recipe, parse_recipe, recipe_from_json
from swarm.recipe_cli import recipe_app

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))
BROKEN_DIR = Path(__file__).resolve().parent / "broken_recipes"
BROKEN = sorted(BROKEN_DIR.glob("*.yaml"))
ROOT_PATH = "<root>"  # how a fixture's `# expect:` line names a problem with the file as a whole

runner = CliRunner()


def _header(path: Path) -> str:
    """The comment block a recipe opens with."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def _expectations(path: Path) -> tuple[set[str], list[str]]:
    """A broken fixture's `# expect: KEY.PATH` and `# expect-message: TEXT` lines."""
    header = _header(path)
    paths = {"" if p == ROOT_PATH else p for p in re.findall(r"^# expect: (\S+)$", header, re.M)}
    return paths, re.findall(r"^# expect-message: (.+)$", header, re.M)


def _problems(path: Path) -> list:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    return caught.value.problems


# --- shipped recipes -------------------------------------------------------------------------------------------


def test_gpt2_small_fineweb_is_shipped():
    # Guards the parametrised tests below against an empty glob (a renamed folder would skip them all).
    assert ROOT / "recipes" / "gpt2-small-fineweb.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.run.id


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_shipped_recipe_header_says_how_to_launch_and_join(path):
    header = _header(path)
    assert header, f"{path.name} must open with a comment: what it trains, what it needs, how to launch and join"
    assert f"swarm launch recipes/{path.name}" in header
    assert "swarm join" in header


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_recipe_json_round_trips_with_a_stable_fingerprint(path):
    recipe = load_recipe(path)
    rebuilt = recipe_from_json(recipe.to_json())
    assert rebuilt == recipe
    assert rebuilt.to_json() == recipe.to_json()
    assert rebuilt.fingerprint == recipe.fingerprint == load_recipe(path).fingerprint


def test_gpt2_small_fineweb_is_gpt2_124m_on_half_a_million_tokens_per_step():
    recipe = load_recipe(ROOT / "recipes" / "gpt2-small-fineweb.yaml")
    assert recipe.model.architecture == "gpt2"
    config = recipe.model.config
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"]) == (12, 12, 768, 1024)
    assert (recipe.tokenizer.kind, recipe.tokenizer.name) == ("pretrained", "gpt2")
    assert (recipe.data.source, recipe.data.dataset, recipe.data.dataset_config) == (
        "hub",
        "HuggingFaceFW/fineweb-edu",
        "sample-10BT",
    )
    assert recipe.data.seq_len == 1024
    tokens_per_step = recipe.collaboration.target_batch_size * recipe.data.seq_len
    assert tokens_per_step == 512 * 1024
    assert recipe.optimizer.lr == pytest.approx(6e-4)
    assert recipe.optimizer.betas == (0.9, 0.95)
    assert recipe.optimizer.schedule.warmup_steps == 700
    # The cosine decay ends where the data does (~10B tokens), so the run does not stop mid-decay.
    assert recipe.optimizer.schedule.total_steps * tokens_per_step == pytest.approx(10e9, rel=0.01)
    assert recipe.limits.max_samples * recipe.data.seq_len == pytest.approx(10e9, rel=0.01)


def test_relative_data_files_are_read_from_the_recipes_folder(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("hello\n")
    recipe_path = tmp_path / "local.yaml"
    recipe_path.write_text("run: {id: local}\ndata: {source: files, files: ['corpus/*.txt']}\n")
    recipe = load_recipe(recipe_path)
    assert recipe.data.files == [str(tmp_path / "corpus" / "*.txt")]


def test_a_relative_local_dataset_is_read_from_the_recipes_folder_whatever_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "run" / "dataset").mkdir(parents=True)
    (tmp_path / "run" / "dataset" / "train.jsonl").write_text('{"text": "hello"}\n')
    recipe_path = tmp_path / "run" / "local.yaml"
    recipe_path.write_text("run: {id: local}\ndata: {source: hub, dataset: ./dataset}\n")
    monkeypatch.chdir(tmp_path)  # validation looked next to the recipe; training read ./dataset here, and failed
    assert load_recipe(recipe_path).data.dataset == str(tmp_path / "run" / "dataset")


def test_a_dataset_named_as_a_file_next_to_the_recipe_is_that_file_not_a_hub_id(tmp_path, monkeypatch):
    """`dataset: data.jsonl` beside the recipe (a one-file dataset, as the README describes it) was taken for a Hub id:
    launched from another folder it retried huggingface.co and died with a traceback, and a volunteer could neither
    pass --data-dir nor join without it (found by a newcomer tester)."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data.jsonl").write_text('{"text": "hello"}\n')
    recipe_path = tmp_path / "run" / "local.yaml"
    recipe_path.write_text("run: {id: local}\ndata: {source: hub, dataset: data.jsonl}\n")
    monkeypatch.chdir(tmp_path)
    assert load_recipe(recipe_path).data.dataset == str(tmp_path / "run" / "data.jsonl")
    recipe_path.write_text("run: {id: local}\ndata: {source: hub, dataset: missing.jsonl}\n")
    with pytest.raises(RecipeError, match=r"data.dataset: 'missing.jsonl' does not exist: fix the path"):
        load_recipe(recipe_path)  # named as a data file: not a Hub id, whatever is next to the recipe


def test_a_bare_name_that_is_a_folder_next_to_the_recipe_is_that_folder_not_a_hub_id(tmp_path, monkeypatch):
    """`pretrained: base` beside a `base/` folder was looked up on the Hub (30 s of retries offline, then an error
    about the Hub); transformers itself prefers a local folder, and the recipe's folder is where paths start."""
    (tmp_path / "run" / "base").mkdir(parents=True)
    (tmp_path / "run" / "org" / "tok").mkdir(parents=True)
    recipe_path = tmp_path / "run" / "local.yaml"
    recipe_path.write_text("run: {id: local}\nmodel: {pretrained: base}\n"
                           "tokenizer: {kind: pretrained, name: org/tok}\n")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(recipe_path)
    assert recipe.model.pretrained == str(tmp_path / "run" / "base")
    assert recipe.tokenizer.name == str(tmp_path / "run" / "org" / "tok")
    (tmp_path / "shared" / "base").mkdir(parents=True)
    recipe_path.write_text("run: {id: up}\nmodel: {pretrained: ../shared/base}\n")
    assert load_recipe(recipe_path).model.pretrained == str(tmp_path / "shared" / "base")  # not run/../shared/base
    recipe_path.write_text("run: {id: hub}\nmodel: {pretrained: gpt2}\ntokenizer: {kind: pretrained, name: org/name}\n")
    recipe = load_recipe(recipe_path)  # no such folders: Hub ids, left as they are
    assert (recipe.model.pretrained, recipe.tokenizer.name) == ("gpt2", "org/name")


# --- broken recipes --------------------------------------------------------------------------------------------


def test_broken_fixtures_cover_the_common_mistakes():
    names = {path.stem for path in BROKEN}
    assert names >= {
        "bad-yaml-syntax",
        "wrong-type-lr",
        "unknown-top-level-key",
        "unknown-nested-key",
        "warmup-not-below-total",
        "micro-batch-above-target",
        "negative-lr",
        "betas-out-of-range",
        "bad-run-id",
        "missing-run-id",
        "missing-data-files",
        "empty-data-files",
        "pretrained-tokenizer-without-name",
        "recipe-is-a-list",
        "empty-recipe",
        "run-is-a-number",
        "many-problems",
        "positions-below-seq-len",
        "model-sizes-not-positive",
        "booleans-are-not-numbers",
        "cross-checks-despite-field-errors",
    }


@pytest.mark.parametrize("path", BROKEN, ids=lambda path: path.name)
def test_broken_recipe_reports_each_problem_at_its_key_path(path):
    expected_paths, expected_messages = _expectations(path)
    assert expected_paths, f"{path.name} must declare its problems with '# expect: KEY.PATH' lines"
    problems = _problems(path)
    assert {problem.path for problem in problems} == expected_paths
    text = "\n".join(problem.message for problem in problems)
    for message in expected_messages:
        assert message in text
    assert all(problem.message for problem in problems)


def test_every_problem_of_a_recipe_is_reported_in_one_run():
    problems = _problems(BROKEN_DIR / "many-problems.yaml")
    paths = [problem.path for problem in problems]
    # Schema problems and on-disk problems together: fixing one must not reveal the next.
    assert len(paths) == len(set(paths)) == 9
    assert "data.files.0" in paths and "optimizer.lr" in paths


def test_cross_checks_run_next_to_a_field_error_and_report_every_problem_they_find():
    # One file, three independent cross-field mistakes and a plain one: all four at once, not one per run.
    problems = _problems(BROKEN_DIR / "cross-checks-despite-field-errors.yaml")
    paths = [problem.path for problem in problems]
    assert {"collaboration.micro_batch_size", "collaboration.delay_updates", "collaboration.diloco.nesterov",
            "optimizer.lr"} <= set(paths)
    assert len(paths) == len(set(paths)) == 9


def test_a_cross_check_is_skipped_when_a_key_it_reads_is_wrong():
    # warmup_steps cannot be compared with a total_steps that is not a number: only the real mistake is reported.
    with pytest.raises(RecipeError) as caught:
        parse_recipe({"run": {"id": "a"}, "optimizer": {"schedule": {"warmup_steps": 5000, "total_steps": "x"}}})
    assert [problem.path for problem in caught.value.problems] == ["optimizer.schedule.total_steps"]


def _sized_recipe(n_positions: int | None, seq_len: int, architecture: str = "gpt2", **config) -> dict:
    sizes = {"gpt2": {"n_layer": 1, "n_head": 2, "n_embd": 16},
             "opt": {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 16, "ffn_dim": 32,
                     "word_embed_proj_dim": 16},
             "gpt_neo": {"num_layers": 1, "num_heads": 2, "hidden_size": 16, "attention_types": [[["global"], 1]]},
             "llama": {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 16, "intermediate_size": 32}}
    key = "n_positions" if architecture == "gpt2" else "max_position_embeddings"
    positions = {} if n_positions is None else {key: n_positions}
    return {"run": {"id": "positions"}, "model": {"architecture": architecture,
                                                  "config": {**sizes[architecture], **positions, **config}},
            "data": {"seq_len": seq_len}}


def _forward_fits(recipe: Recipe) -> bool:
    """Whether a real model built from the recipe takes a whole sample (the validation loss's forward)."""
    from swarm.evaluation import validation_loss
    from swarm.model import build_model

    model = build_model(recipe.model, vocab_size=259, eos_id=1, pad_id=0)
    try:
        validation_loss(model, [torch.randint(3, 259, (1, recipe.data.seq_len))])
    except IndexError:
        return False
    return True


@pytest.mark.parametrize("architecture", ["gpt2", "opt", "gpt_neo"])
def test_position_check_refuses_exactly_the_samples_the_model_cannot_take(architecture):
    seq_len = 24
    fits = parse_recipe(_sized_recipe(seq_len, seq_len, architecture))
    assert _forward_fits(fits)
    too_long = _sized_recipe(seq_len - 1, seq_len, architecture)
    with pytest.raises(RecipeError) as caught:
        parse_recipe(too_long)
    (problem,) = caught.value.problems
    assert problem.path.startswith("model.config.") and f"{seq_len - 1} is shorter than data.seq_len" in str(problem)
    assert f": {seq_len} or lower data.seq_len" in problem.message
    unchecked = fits.model_copy(update={"model": fits.model.model_copy(update={"config": too_long["model"]["config"]})})
    assert not _forward_fits(unchecked), "the model does fail on it: the check must stay"


def test_position_check_counts_gpt2s_default_table_when_n_positions_is_not_set():
    assert parse_recipe(_sized_recipe(None, 1024)).data.seq_len == 1024
    with pytest.raises(RecipeError) as caught:
        parse_recipe(_sized_recipe(None, 1025))
    assert [str(problem) for problem in caught.value.problems] == [
        "model.config.n_positions: not set, and gpt2's default 1024 is shorter than data.seq_len (1025): a sample "
        "would not fit the model's position table; set model.config.n_positions: 1025 or lower data.seq_len"]


def test_rotary_models_may_train_past_max_position_embeddings():
    recipe = parse_recipe(_sized_recipe(8, 24, "llama"))
    assert _forward_fits(recipe)


def test_model_sizes_that_transformers_would_only_refuse_later_are_refused_in_validation():
    problems = _problems(BROKEN_DIR / "model-sizes-not-positive.yaml")
    assert {problem.path for problem in problems} == {f"model.config.{key}" for key in
                                                      ("n_layer", "n_inner", "n_positions", "n_embd")}
    assert parse_recipe(_sized_recipe(32, 16, n_inner=None)).model.config["n_inner"] is None  # null: 4 x n_embd


def test_booleans_are_not_counts_and_numbers_in_strings_are_not_numbers():
    for section, key, value in [("collaboration", "micro_batch_size", True), ("data", "seq_len", True),
                                ("data", "streaming", 1), ("optimizer", "lr", "0.1"), ("run", "id", 5),
                                ("collaboration", "average_state_every", 2.0)]:
        data = {"run": {"id": "strict"}}
        data.setdefault(section, {})[key] = value
        with pytest.raises(RecipeError) as caught:
            parse_recipe(data)
        assert [problem.path for problem in caught.value.problems] == [f"{section}.{key}"], (key, value)
    # what YAML and JSON do give still passes: ints for floats, lists for pairs
    recipe = parse_recipe({"run": {"id": "strict"}, "optimizer": {"lr": 1, "betas": [0, 0.5]}})
    assert recipe.optimizer.lr == 1.0 and recipe.optimizer.betas == (0.0, 0.5)


def test_clip_grad_norm_false_suggests_null():
    with pytest.raises(RecipeError) as caught:
        parse_recipe({"run": {"id": "a"}, "optimizer": {"clip_grad_norm": False}})
    assert [str(problem) for problem in caught.value.problems] == [
        "optimizer.clip_grad_norm: expected a number, or null to turn it off (got False)"]
    assert parse_recipe({"run": {"id": "a"}, "optimizer": {"clip_grad_norm": None}}).optimizer.clip_grad_norm is None


def test_parse_recipe_rejects_what_is_not_a_mapping():
    for data in (None, [], "run: x", 5):
        with pytest.raises(RecipeError) as caught:
            parse_recipe(data)
        assert [problem.path for problem in caught.value.problems] == [""]


def test_infinity_is_refused_because_the_swarm_json_cannot_carry_it():
    with pytest.raises(RecipeError) as caught:
        parse_recipe({"run": {"id": "a"}, "limits": {"max_wall_time_s": float("inf")}})
    assert [problem.path for problem in caught.value.problems] == ["limits.max_wall_time_s"]


def test_model_config_refuses_values_that_change_through_json():
    with pytest.raises(RecipeError) as caught:
        parse_recipe(yaml.safe_load("run: {id: a}\nmodel: {config: {n_layer: 2, created: 2024-01-01}}"))
    assert [problem.path for problem in caught.value.problems] == ["model.config.created"]


# --- the CLI ---------------------------------------------------------------------------------------------------


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_validate_exits_0_and_names_the_run_for_good_files():
    result = runner.invoke(recipe_app, ["validate", *map(str, SHIPPED)])
    assert result.exit_code == 0, result.output
    for path in SHIPPED:
        assert f"ok: {path} (run {load_recipe(path).run.id})" in result.stdout
    assert result.stderr == ""


def test_validate_exits_2_with_every_key_path_on_stderr():
    path = BROKEN_DIR / "many-problems.yaml"
    result = runner.invoke(recipe_app, ["validate", str(path)])
    assert result.exit_code == 2
    _no_traceback(result)
    expected_paths, _ = _expectations(path)
    for key_path in expected_paths:
        assert f"{path}: {key_path}: " in result.stderr
    assert result.stdout == ""


def test_validate_reports_good_and_bad_files_together():
    good, bad = SHIPPED[0], BROKEN_DIR / "negative-lr.yaml"
    result = runner.invoke(recipe_app, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"ok: {good}" in result.stdout
    assert f"{bad}: optimizer.lr: must be greater than 0" in result.stderr
    assert "1 of 2 recipes have problems" in result.stderr


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty-file"),
        pytest.param(bytes(range(256)) * 8, id="binary"),
        pytest.param(b"\x00\x01\x02 run: x", id="control-characters"),
        pytest.param(b"- a\n- b\n", id="yaml-list"),
        pytest.param(b"run: 5\n", id="run-is-a-number"),
        pytest.param(b"just some text\n", id="plain-text"),
        pytest.param(b"run: " + b"[" * 5000 + b"]" * 5000, id="deeply-nested"),
        pytest.param(b"run: {id: a}\nmodel: {config: [1, {2: 3}]}\noptimizer: {betas: [[1], {a: 1}, 3]}", id="shapes"),
        pytest.param(b"!!python/object/apply:os.system [echo hi]\n", id="python-tag"),
        pytest.param(b"? [a, b]\n: c\n", id="complex-key"),
        pytest.param(b"run: {id: a}\n5: 6\n", id="number-key"),
        pytest.param(b"run: {id: a}\nmodel: {config: &a {x: *a}}\n", id="alias-inside-its-anchor"),
    ],
)
def test_validate_never_shows_a_traceback(tmp_path, content):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    result = runner.invoke(recipe_app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    _no_traceback(result)
    assert result.stderr.startswith(f"{path}: ")


def test_validate_refuses_a_folder_and_a_missing_file_without_a_traceback(tmp_path):
    result = runner.invoke(recipe_app, ["validate", str(tmp_path), str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    _no_traceback(result)
    assert f"{tmp_path}: this is a folder" in result.stderr
    assert f"{tmp_path / 'absent.yaml'}: file not found" in result.stderr


def test_validate_json_report_lists_problems_per_file():
    good, bad = SHIPPED[0], BROKEN_DIR / "warmup-not-below-total.yaml"
    result = runner.invoke(recipe_app, ["validate", "--json", str(good), str(bad)])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    first, second = report["files"]
    assert first["valid"] and first["fingerprint"] == load_recipe(good).fingerprint
    assert [problem["path"] for problem in second["problems"]] == ["optimizer.schedule.warmup_steps"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_show_prints_yaml_that_parses_back_to_the_same_recipe(path):
    recipe = load_recipe(path)
    result = runner.invoke(recipe_app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    first_line = result.stdout.splitlines()[0]
    assert first_line.startswith("#") and str(path) in first_line and recipe.fingerprint in first_line
    shown = parse_recipe(yaml.safe_load(result.stdout))
    assert shown == recipe
    assert shown.fingerprint == recipe.fingerprint


def test_show_fills_in_every_default(tmp_path):
    path = tmp_path / "minimal.yaml"
    path.write_text("run: {id: minimal}\n")
    shown = yaml.safe_load(runner.invoke(recipe_app, ["show", str(path)]).stdout)
    assert set(shown) == set(Recipe.model_fields)
    assert shown["optimizer"]["schedule"]["decay"] == "cosine"


def test_show_json_is_the_form_peers_receive():
    path = ROOT / "recipes" / "gpt2-small-fineweb.yaml"
    result = runner.invoke(recipe_app, ["show", "--json", str(path)])
    assert result.exit_code == 0
    assert recipe_from_json(result.stdout) == load_recipe(path)


def test_show_of_a_broken_recipe_exits_2_with_its_problems():
    path = BROKEN_DIR / "wrong-type-lr.yaml"
    result = runner.invoke(recipe_app, ["show", str(path)])
    assert result.exit_code == 2
    _no_traceback(result)
    assert f"{path}: optimizer.lr: expected a number" in result.stderr


def test_schema_is_json_schema_of_every_section():
    result = runner.invoke(recipe_app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["required"] == ["run"]
    assert set(schema["properties"]) == set(Recipe.model_fields)
    assert schema["$defs"]["OptimConfig"]["additionalProperties"] is False


def test_the_installed_command_line_validates_as_a_subprocess():
    good, bad = ROOT / "recipes" / "gpt2-small-fineweb.yaml", BROKEN_DIR / "many-problems.yaml"
    command = [sys.executable, "-m", "swarm.cli", "recipe", "validate", str(good), str(bad)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr
    assert f"ok: {good} (run gpt2-small-fineweb)" in completed.stdout
    assert f"{bad}: optimizer.schedule.warmup_steps: " in completed.stderr


# --- generated reference ---------------------------------------------------------------------------------------


def test_recipe_reference_doc_is_up_to_date():
    spec = importlib.util.spec_from_file_location("gen_recipe_reference", ROOT / "scripts" / "gen_recipe_reference.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    committed = (ROOT / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    assert committed == generator.render(), "docs/recipe-reference.md is stale: run scripts/gen_recipe_reference.py"
    for section in ("run", "model", "optimizer.schedule", "collaboration", "credit"):
        assert f"## `{section}`" in committed


def test_a_float_written_with_an_exponent_and_no_dot_is_a_number(tmp_path):
    """`lr: 3e-4` is how ML configs write it; YAML 1.1 (PyYAML) reads it as a string, which the schema refuses."""
    text = (ROOT / "recipes" / "tiny-stdlib.yaml").read_text()
    assert "  lr: 0.003\n" in text and "  weight_decay: 0.01\n" in text
    path = tmp_path / "exponents.yaml"
    path.write_text(text.replace("  lr: 0.003\n", "  lr: 3e-3\n").replace("  weight_decay: 0.01\n",
                                                                           "  weight_decay: 1E-2\n"))
    recipe = load_recipe(path)
    assert recipe.optimizer.lr == 0.003 and recipe.optimizer.weight_decay == 0.01


def test_recipe_changes_name_the_keys_and_tell_steering_from_training():
    """A relaunch may change how a run is steered (its end, versions, credit) while volunteers train, not what they
    train: the coordinator and the volunteers tell the two apart by these keys."""
    from swarm.recipe import recipe_changes, training_changes

    base = Recipe(run={"id": "r"})
    steered = Recipe(run={"id": "r", "description": "longer"}, limits={"max_epochs": 500},
                     checkpoint={"every_epochs": 10})
    changes = recipe_changes(json.loads(base.to_json()), json.loads(steered.to_json()))
    assert changes == ["checkpoint.every_epochs", "limits.max_epochs", "run.description"]
    assert training_changes(changes) == []
    trained = Recipe(run={"id": "r"}, optimizer={"lr": 0.01}, collaboration={"target_batch_size": 512})
    changes = recipe_changes(json.loads(base.to_json()), json.loads(trained.to_json()))
    assert training_changes(changes) == ["collaboration.target_batch_size", "optimizer.lr"] == changes
    assert training_changes(["run.id", "run.description", "limitsx.y"]) == ["run.id", "limitsx.y"]


def test_a_checkpoint_dir_placeholder_other_than_run_id_is_refused():
    """`runs/{run}/ck` validated, and the coordinator made a literal folder named {run} (newcomer tester)."""
    with pytest.raises(RecipeError, match=r"checkpoint.dir: .*\{run\} is not a placeholder: only \{run_id\} expands"):
        parse_recipe({"run": {"id": "r"}, "checkpoint": {"dir": "runs/{run}/ck"}})
    assert parse_recipe({"run": {"id": "r"}, "checkpoint": {"dir": "runs/{run_id}/ck"}}).checkpoint_dir() == \
        Path("runs/r/ck")


def test_a_whole_number_written_with_an_exponent_is_a_whole_number(tmp_path):
    """`max_samples: 1e6` was refused as "expected a whole number (got 1000000.0)" (newcomer tester); `lr: 3e-4` stays
    the float it was, and a float field takes a whole number."""
    path = tmp_path / "recipe.yaml"
    path.write_text("run: {id: r}\nlimits: {max_samples: 1e6, max_epochs: 2E3}\n"
                    "optimizer: {lr: 3e-4, weight_decay: 1e0}\n")
    recipe = load_recipe(path)
    assert (recipe.limits.max_samples, recipe.limits.max_epochs) == (1_000_000, 2000)
    assert (recipe.optimizer.lr, recipe.optimizer.weight_decay) == (3e-4, 1.0)
    path.write_text("run: {id: r}\nlimits: {max_samples: 1e100}\n")
    assert load_recipe(path).limits.max_samples == 10**100  # exact, not through a float
