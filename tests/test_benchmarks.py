"""Smoke test of the benchmarks' quick modes: they run end to end and write the JSON the README describes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = {"machine", "versions", "settings", "results"}
MACHINE_FIELDS = {"cpu_model", "cores", "memory_gib", "load_average_at_start"}
VERSION_FIELDS = {"swarm", "python", "torch", "hivemind", "numpy"}
SCALING_ROW_FIELDS = {
    "peers", "link", "mode", "compression", "samples_per_s", "utilisation", "bytes_sent_per_peer_per_sync",
    "time_to_target_s", "simulated",
}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> dict[str, dict]:
    """Both benchmarks' --quick modes, run side by side (each takes ~20-30 s on an idle 2-core machine)."""
    folder = tmp_path_factory.mktemp("benchmarks")
    commands = {
        "overhead": ["benchmarks/overhead.py", "--quick"],
        "scaling": ["benchmarks/scaling.py", "--quick"],
    }
    running = {
        name: subprocess.Popen([sys.executable, *argv, "--results-dir", str(folder)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, argv in commands.items()
    }
    documents = {}
    for name, process in running.items():
        output, _ = process.communicate(timeout=400)
        assert process.returncode == 0, f"{name} --quick failed:\n{output[-3000:]}"
        documents[name] = json.loads((folder / f"{name}.json").read_text())
        assert (folder / f"{name}.md").read_text().startswith("# ")
        plot = documents[name].get("plot")
        assert plot is None and "plot_note" in documents[name] or (folder / plot).stat().st_size > 0
    return documents


def _check_common(document: dict) -> None:
    assert TOP_LEVEL <= set(document)
    assert MACHINE_FIELDS <= set(document["machine"])
    assert VERSION_FIELDS <= set(document["versions"])


@pytest.mark.timeout(420)
def _run_quick(name: str, folder: Path, timeout_s: float, *options: str) -> dict:
    """Run `benchmarks/<name>.py --quick [options]` into `folder`; return its JSON document, common fields checked."""
    process = subprocess.run([sys.executable, f"benchmarks/{name}.py", "--quick", *options, "--results-dir",
                              str(folder)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    document = json.loads((folder / f"{name}.json").read_text())
    _check_common(document)
    return document


def test_a_quick_run_writes_beside_the_committed_results_not_over_them():
    """`python benchmarks/<name>.py --quick`, as the README shows it, replaced benchmarks/results/<name>.json (a
    committed full run; scaling.py reads convergence.json from there)."""
    import argparse

    from benchmarks.common import QUICK_RESULTS_DIR, RESULTS_DIR, add_results_dir_option, parse_benchmark_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    add_results_dir_option(parser)
    assert parse_benchmark_args(parser, []).results_dir == RESULTS_DIR
    assert parse_benchmark_args(parser, ["--quick"]).results_dir == QUICK_RESULTS_DIR != RESULTS_DIR
    assert parse_benchmark_args(parser, ["--quick", "--results-dir", "elsewhere"]).results_dir == Path("elsewhere")
    ignored = subprocess.run(["git", "check-ignore", "-q", str(QUICK_RESULTS_DIR / "overhead.json")], cwd=REPO_ROOT)
    assert ignored.returncode == 0, "quick results are never committed"


@pytest.mark.slow
def test_overhead_quick_mode_reports_the_throughput_ratio_of_both_arms(quick_results):
    document = quick_results["overhead"]
    _check_common(document)
    results = document["results"]
    assert results["device"] == "cpu"
    assert set(results["arms"]) == {"plain", "swarm"}
    for arm in results["arms"].values():
        assert arm["samples_per_s_mean"] > 0
        assert arm["samples_per_s_stdev"] >= 0
    expected = results["arms"]["swarm"]["samples_per_s_mean"] / results["arms"]["plain"]["samples_per_s_mean"]
    assert results["throughput_ratio"] == pytest.approx(expected, rel=1e-3)
    assert results["throughput_ratio_stdev"] >= 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_overhead_in_diloco_mode_compares_a_lone_diloco_peer_with_a_loop_stepping_every_micro_batch(tmp_path):
    # 2 real arms (a DHT on loopback for the peer): ~40 s on an idle 2-core machine
    document = _run_quick("overhead", tmp_path, 280, "--diloco-inner-steps", "4")
    assert document["settings"]["mode"] == "diloco" and document["settings"]["diloco_inner_steps"] == 4
    runs = {run["arm"]: run for run in document["results"]["runs"]}
    assert runs["plain"]["accumulation_steps"] == 1
    assert runs["plain"]["optimizer_steps"] == runs["plain"]["micro_steps"]  # an optimiser step per micro-batch
    swarm = runs["swarm"]
    assert swarm["mode"] == "diloco" and swarm["optimizer_steps"] >= 1
    # a lone DiLoCo peer closes a round after at least 4 inner steps (more while its DHT read of the swarm's progress
    # is under way); the window starts and ends on a round boundary
    assert 4 * swarm["optimizer_steps"] <= swarm["micro_steps"] <= 8 * swarm["optimizer_steps"], swarm
    assert "DiLoCo, a round every 4 micro-steps" in (tmp_path / "overhead.md").read_text()


@pytest.mark.timeout(420)
@pytest.mark.slow
def test_scaling_quick_mode_writes_simulated_rows_with_real_averaging(quick_results):
    document = quick_results["scaling"]
    _check_common(document)
    rows = document["results"]["rows"]
    assert rows
    for row in rows:
        assert SCALING_ROW_FIELDS <= set(row)
        assert row["simulated"] is True and row["time_to_target_s"] is None
        assert row["mode"] == "dedloc" and row["link"] == "loopback"
        assert row["samples_per_s"] > 0 and 0 < row["utilisation"] <= 1
    two = next(row for row in rows if row["peers"] == 2)
    assert two["bytes_sent_per_peer_per_sync"] > 0  # fp16 gradients of 0.84M parameters, x 2(n-1)/n
    # every peer's process tree was found: its DHT and averagers and its p2p daemon did some work in the window
    assert set(two["cpu_cores_in_window"]) == {"training", "hivemind_processes", "p2pd"}
    assert two["cpu_cores_in_window"]["hivemind_processes"] > 0 and two["cpu_cores_in_window"]["p2pd"] > 0
    assert two["cpu_cores_per_peer"] > 0
    assert "model_on_paper" in document["results"]


def test_scaling_refuses_an_unknown_link_or_inner_steps_naming_the_flag():
    for argv, flag in ((["--link", "5gbit-1ms"], "--link"),
                       (["--mode", "diloco", "--inner-steps", "0"], "--inner-steps"),
                       (["--simulate-inner-step"], "--simulate-inner-step"),
                       (["--mode", "diloco", "--average-state-every", "5"], "--average-state-every"),
                       (["--average-state-every", "0"], "--average-state-every")):
        process = subprocess.run([sys.executable, "benchmarks/scaling.py", *argv, "--results-dir", "/nonexistent"],
                                 cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert process.returncode == 2, process.stderr
        assert flag in process.stderr and "Traceback" not in process.stderr


CONVERGENCE_ROW_FIELDS = {
    "mode", "peers", "compression", "inner_steps", "target_loss", "micro_steps_to_target", "samples_to_target",
    "curve", "averaged_rounds", "solo_rounds", "wall_s",
}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_convergence_quick_mode_trains_real_peers_that_average_to_one_model(tmp_path):
    """1 and 2 real DiLoCo peers train the tiny model; the pair averages every round and holds one model."""
    document = _run_quick("convergence", tmp_path, timeout_s=400)
    assert (tmp_path / "convergence.md").read_text().startswith("# ")
    rows = {row["peers"]: row for row in document["results"]["rows"]}
    assert set(rows) == {1, 2}
    for row in rows.values():
        assert CONVERGENCE_ROW_FIELDS <= set(row)
        assert row["mode"] == "diloco"
        assert row["curve"][-1][1] < row["curve"][0][1] - 0.5  # real training: the validation loss falls
    solo, pair = rows[1], rows[2]
    assert solo["target_loss"] == pytest.approx(solo["curve"][-1][1], abs=1e-4)
    assert pair["target_loss"] == solo["target_loss"]
    assert pair["averaged_rounds"] >= 1 and pair["solo_rounds"] <= 1  # the first round may start before they meet
    assert pair["max_val_loss_spread_across_peers"] < 0.01  # after each outer step both peers hold one model


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_convergence_plain_loops_match_the_lone_real_peer_and_show_the_swarm_against_its_perfect_counterpart(tmp_path):
    process = subprocess.run(
        [sys.executable, "benchmarks/convergence.py", "--modes", "dedloc", "diloco", "--peers", "1", "2",
         "--micro-steps", "8", "--target-batch-size", "64", "--inner-steps", "3", "--max-run-s", "60", "--plain-loops",
         "--results-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    rows = {(row["mode"], row["peers"]): row for row in json.loads((tmp_path / "convergence.json").read_text())
            ["results"]["rows"]}
    assert set(rows) == {(mode, peers) for mode in ("dedloc", "diloco", "dedloc-plain-loop", "diloco-plain-loop",
                                                    "synchronous-plain-loop") for peers in (1, 2)}
    lone, plain_lone = rows["dedloc", 1], rows["dedloc-plain-loop", 1]
    # a lone hivemind peer is a plain loop over the same data: the same losses at the same steps
    assert [steps for steps, _ in plain_lone["curve"][:3]] == [steps for steps, _ in lone["curve"][:3]]
    assert [loss for _, loss in plain_lone["curve"][:3]] == pytest.approx([loss for _, loss in lone["curve"][:3]],
                                                                          abs=2e-3)
    plain_pair = rows["dedloc-plain-loop", 2]
    assert plain_pair["micro_batches_per_peer_per_epoch"] == 2 and plain_pair["micro_steps_to_target"] is not None
    pair = rows["dedloc", 2]
    assert pair["plain_loop_micro_steps_to_target"] == plain_pair["micro_steps_to_target"]
    # a swarm given 8 micro-steps may or may not get there (its first rounds can miss each other); when it does, the
    # ratio compares it with its perfect counterpart
    expected = (round(pair["micro_steps_to_target"] / plain_pair["micro_steps_to_target"], 3)
                if pair["micro_steps_to_target"] is not None else None)
    assert pair["step_ratio_vs_plain_loop_same_peers"] == expected
    # DiLoCo's perfect swarm: one replica per peer, a round every 3 micro-steps, evaluated after each outer step
    plain_diloco = rows["diloco-plain-loop", 2]
    assert plain_diloco["inner_steps"] == 3 and [steps for steps, _ in plain_diloco["curve"][:3]] == [0, 3, 6]
    assert plain_diloco["curve"][0][1] == pytest.approx(rows["diloco", 2]["curve"][0][1], abs=1e-4)  # one start
    assert plain_diloco["target_loss"] == rows["diloco", 1]["target_loss"]
    assert rows["diloco", 2]["plain_loop_micro_steps_to_target"] == plain_diloco["micro_steps_to_target"]
    # synchronous data parallelism on the same peers, DiLoCo's target: its ratio also against the real lone peer
    synchronous = rows["synchronous-plain-loop", 2]
    assert synchronous["target_loss"] == plain_diloco["target_loss"] and synchronous["outer_lr"] is None
    assert synchronous["micro_steps_to_target"] is not None  # it runs up to twice the lone peer's micro-steps
    assert synchronous["step_ratio_vs_real_1_peer"] == round(
        synchronous["micro_steps_to_target"] / rows["diloco", 1]["micro_steps_to_target"], 3)
    markdown = (tmp_path / "convergence.md").read_text()
    assert "Plain loops" in markdown and "diloco-plain-loop, 2 peers" in markdown


def test_the_perfect_diloco_swarm_applies_one_nesterov_step_to_the_mean_of_its_replicas_progress(tmp_path):
    """`convergence.py --plain-loops` in mode diloco: one round of two replicas, checked against the paper's formula.

    Each replica takes H AdamW steps (the recipe's clip and schedule) on its own peer's stream from the shared start;
    with the first outer Nesterov step m = g, the outer model is start - lr * (1 + mu) * mean(start - replica).
    """
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.convergence import (
        VALIDATION_BATCH_SIZE,
        bench_recipe,
        run_diloco_plain_loop,
    )
    from swarm.data import build_data
    from swarm.evaluation import validation_loss
    from swarm.model import build_model
    from swarm.optim import build_optimizer_factories, lr_multiplier, parameter_groups
    from swarm.tokenizer import build_tokenizer

    inner_steps, outer_lr, micro_batch = 3, 0.7, 8  # not the default 16: --micro-batch-size reaches the loop
    config = {"mode": "diloco", "peers": 2, "compression": "none", "run_id": "plain-test", "matchmaking_time_s": 1.0,
              "inner_steps": inner_steps, "outer_lr": outer_lr, "max_epochs": 1, "micro_batch_size": micro_batch}
    run_diloco_plain_loop(config, tmp_path / "result.json")
    curve = json.loads((tmp_path / "result.json").read_text())["curve"]
    assert [steps for steps, *_ in curve] == [0, inner_steps]

    torch.set_num_threads(1)
    recipe = bench_recipe(config)
    momentum = recipe.collaboration.diloco.outer_momentum
    tokenizer = build_tokenizer(recipe.tokenizer)

    def make_model():
        return build_model(recipe.model, tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id)

    start = make_model()
    start_state = {name: tensor.clone() for name, tensor in start.state_dict().items()}
    make_optimizer, _ = build_optimizer_factories(recipe.optimizer)
    multiplier = lr_multiplier(recipe.optimizer.schedule)
    trained = []
    for index in range(2):
        stream = build_data(recipe.data, tokenizer, peer_id=f"convergence-peer-{index}".encode())
        replica = make_model()
        optimizer = make_optimizer(parameter_groups(replica, recipe.optimizer.weight_decay))
        peak = [group["lr"] for group in optimizer.param_groups]
        for step in range(inner_steps):
            for group, lr in zip(optimizer.param_groups, peak):
                group["lr"] = lr * multiplier(step / inner_steps)
            batch = stream.next_batch(0, micro_batch)
            replica(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        trained.append(replica.state_dict())
    expected = {name: value - outer_lr * (1 + momentum) * (value - (trained[0][name] + trained[1][name]) / 2)
                for name, value in start_state.items()}
    start.load_state_dict(expected)
    validation = build_data(recipe.data, tokenizer, peer_id=b"any").validation_batches(VALIDATION_BATCH_SIZE)
    moved = validation_loss(start, validation)
    assert curve[1][1] == pytest.approx(moved, abs=1e-4)
    assert abs(curve[1][1] - curve[0][1]) > 0.05  # the round did move the model


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_codecs_quick_mode_measures_every_recipe_wire_format_on_real_gradients(tmp_path):
    document = _run_quick("codecs", tmp_path, timeout_s=280)
    rows = document["results"]["rows"]
    assert {row["step"] for row in rows} == {0, 3}
    by_codec = {row["codec"]: row for row in rows if row["step"] == 3}
    scaled, plain = by_codec["fp16 (swarm: scaled)"], by_codec["plain IEEE fp16"]
    assert scaled["p99_relative_error"] < 1e-3 and scaled["zeroed_fraction"] == 0
    assert plain["p99_relative_error"] > scaled["p99_relative_error"]
    assert 2.0 <= scaled["bytes_per_value"] < 2.01 and by_codec["uint8"]["bytes_per_value"] < 2.0
    assert set(document["results"]["seconds_per_million_values"]) == set(by_codec)


def test_convergence_refuses_peer_counts_without_the_single_peer():
    process = subprocess.run([sys.executable, "benchmarks/convergence.py", "--peers", "2", "4"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert "--peers must include 1" in process.stderr and "Traceback" not in process.stderr


def test_convergence_refuses_plain_only_without_a_target_or_a_plain_lr_scale_without_plain_loops():
    process = subprocess.run([sys.executable, "benchmarks/convergence.py", "--plain-only", "--plain-loops",
                              "--plain-lr-scale", "0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert "--plain-only needs --plain-loops and --targets-from" in process.stderr
    assert "--plain-lr-scale 0.0 must be in (0, 100]" in process.stderr
    process = subprocess.run([sys.executable, "benchmarks/convergence.py", "--plain-lr-scale", "2"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert "--plain-lr-scale changes only the plain loops: add --plain-loops" in process.stderr


def test_convergence_refuses_a_bad_micro_batch_or_targets_measured_at_another_one(tmp_path):
    process = subprocess.run([sys.executable, "benchmarks/convergence.py", "--micro-batch-size", "0"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert "--micro-batch-size 0 must be in [1, 1024]" in process.stderr
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"settings": {"micro_batch_size": 16}, "results": {"rows": [
        {"mode": "diloco", "peers": 1, "target_loss": 2.0}]}}))
    process = subprocess.run([sys.executable, "benchmarks/convergence.py", "--modes", "diloco", "--micro-batch-size",
                              "4", "--targets-from", str(earlier)], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert "was run at --micro-batch-size 16, not 4" in process.stderr


CHURN_ARM_FIELDS = {
    "samples_per_s", "max_stall_s", "averaging_timeout_s", "loss_curve", "memory", "kills", "restarts", "orphans",
    "longest_peer_pause_s", "peer_pauses", "epoch_s_median", "epoch_s_mean_with_state_averaging",
    "epoch_s_mean_without",
}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_churn_quick_mode_kills_and_restarts_a_real_volunteer_and_reports_memory(tmp_path):
    # 2 real `swarm join` processes per arm, both arms at once: ~2 min on an idle 2-core machine, 4-5 under load
    document = _run_quick("churn", tmp_path, timeout_s=580)
    results = document["results"]
    assert set(results["arms"]) == {"no-churn", "churn"} and "throughput_kept" in results
    for name, arm in results["arms"].items():
        assert CHURN_ARM_FIELDS <= set(arm), name
        assert arm["averaging_timeout_s"] == 30.0
        assert arm["memory"]["peak_rss_mb"] > 0 and arm["memory"]["beyond_model_mb_peak"] is not None
        assert "never_killed_pss" in arm["memory"]["slope_mb_per_hour"]
        assert arm["orphans"] == 0 and arm["leftover_processes_after_teardown"] == 0
        # every volunteer incarnation that got to train left its stats: the longest wait for the swarm is known
        assert arm["peer_pauses"] and all(row["longest_pause_s"] >= 0 for row in arm["peer_pauses"]), arm["peer_pauses"]
    churn = results["arms"]["churn"]
    assert churn["kills"] == 1 and churn["restarts"] == 1
    assert churn["kill_events"][0]["processes_in_tree"] >= 3  # training process, DHT process, p2pd at least
    assert results["arms"]["no-churn"]["kills"] == 0
    assert (tmp_path / "churn.md").read_text().startswith("# churn")


def test_churn_splits_epoch_durations_by_whether_the_epoch_began_with_a_state_averaging():
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.churn import epoch_durations

    # epochs 4..11 seen by the poll; 6 was skipped (5 and 6 have no duration of their own); 5 and 10 averaged state
    starts = [(4, 0.0), (5, 4.0), (7, 13.0), (8, 17.0), (9, 21.5), (10, 25.5), (11, 32.5), (12, 36.5)]
    durations = epoch_durations(starts, average_state_every=5)
    assert durations["epochs_with_state_averaging"] == 1  # epoch 10 (7.0 s); epoch 5's successor was not seen
    assert durations["epoch_s_mean_with_state_averaging"] == 7.0
    assert durations["epoch_s_mean_without"] == pytest.approx((4.0 + 4.0 + 4.5 + 4.0 + 4.0) / 5, abs=0.01)
    assert durations["epoch_s_median"] == 4.0
    assert epoch_durations([(3, 1.0)], average_state_every=5)["epoch_s_median"] is None


def test_churn_refuses_a_kill_period_longer_than_the_window_with_a_usage_error():
    process = subprocess.run([sys.executable, "benchmarks/churn.py", "--duration", "60", "--period-s", "90",
                              "--results-dir", "/nonexistent"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=60)
    assert process.returncode == 2
    assert "--period-s" in process.stderr and "Traceback" not in process.stderr
    process = subprocess.run([sys.executable, "benchmarks/churn.py", "--average-state-every", "0"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 2 and "--average-state-every 0: a period of 1 or more epochs" in process.stderr


MEMBER_LOSS_ARM_FIELDS = {"kills", "survivor_rounds", "median_wait_after_kill_s", "max_wait_after_kill_s",
                          "rounds_stalled", "rounds_failed"}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_member_loss_quick_mode_kills_a_real_averager_mid_round_in_both_arms(tmp_path):
    # 3 averager processes per arm, 2 kills each: ~1-2 min on an idle 2-core machine (a stock stall takes 30 s)
    document = _run_quick("member_loss", tmp_path, timeout_s=380)
    arms = document["results"]["arms"]
    assert set(arms) == {"stock", "churn-safe"}
    for name, arm in arms.items():
        assert MEMBER_LOSS_ARM_FIELDS <= set(arm), name
        assert len(arm["kills"]) == 2 and arm["survivor_rounds"] == 4
        assert all(s["after_kill_s"] >= 0 for kill in arm["kills"] for s in kill["survivors"])
    # the fix under test: nobody waits for the dead member's chunks (hivemind's wait is 7.5 s or more)
    assert arms["churn-safe"]["max_wait_after_kill_s"] < 5
    assert document["settings"]["delays_s"] == [kill["delay_into_allreduce_s"] for kill in arms["stock"]["kills"]]


JOIN_ROW_FIELDS = {"model", "parameters", "link", "join_to_first_sample_s", "phases", "state_bytes",
                   "state_bytes_computed", "predicted_s"}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_join_quick_mode_times_a_real_joiner_from_popen_to_its_first_samples(tmp_path):
    # coordinator + 1 volunteer + the joiner, real `swarm` processes on loopback: ~1.5 min on a busy 2-core machine
    document = _run_quick("join", tmp_path, timeout_s=380)
    [row] = document["results"]["rows"]
    assert JOIN_ROW_FIELDS <= set(row), row
    assert row["model"] == "tiny" and row["link"] == "loopback" and row["parameters"] > 800_000
    phases = row["phases"]
    assert all(phases[name] is not None and phases[name] >= 0 for name in phases), phases
    # the phases tile the time from Popen to the first samples
    assert sum(phases.values()) == pytest.approx(row["join_to_first_sample_s"], abs=0.1)
    assert row["loaded_state_epoch"] >= 1  # it downloaded the swarm's state rather than starting from scratch
    # the state travels uncompressed: weights + AdamW's two moments in fp32, and the socket counters see it
    assert row["state_bytes_computed"] == row["parameters"] * 12
    assert row["state_bytes"] >= 0.9 * row["state_bytes_computed"]
    # the joiner's tree did real work in all three kinds of process, and the parts add up
    cpu = row["cpu_seconds_to_first_sample"]
    assert cpu["training_process"] > 1.0 and cpu["hivemind_processes"] > 0 and cpu["p2pd"] > 0, cpu
    assert cpu["total"] == pytest.approx(cpu["training_process"] + cpu["hivemind_processes"] + cpu["p2pd"], abs=0.02)
    assert (tmp_path / "join.md").read_text().startswith("# Joining")


def test_join_refuses_an_unknown_model_or_a_malformed_row_with_a_usage_error():
    for argv, flag in ((["--models", "huge"], "--models"), (["--rows", "tiny"], "--rows")):
        process = subprocess.run([sys.executable, "benchmarks/join.py", *argv, "--results-dir", "/nonexistent"],
                                 cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert process.returncode == 2, process.stderr
        assert flag in process.stderr and "Traceback" not in process.stderr


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_ledger_quick_mode_accounts_signed_records_of_simulated_peers(tmp_path):
    # 5k ledger entries, 50 peers with their own RSA keys x 2 epochs: ~5 s idle, ~15 s at a load of 7 on 2 cores
    document = _run_quick("ledger", tmp_path, timeout_s=110)
    accounting = document["results"]["accounting"]
    assert accounting["peers"] == 50 and accounting["keys"]["rsa_keys"] == 50
    assert accounting["ledger_entries"] == 100 and accounting["ledger_verified"]
    assert 0 < accounting["entries_with_reason"] < 10  # the few implausibly fast claims are not granted
    assert set(accounting["ms_per_epoch"]) == {"validate_on_store", "read_and_decode", "parse_records",
                                               "accounting", "ledger_commit"}
    assert accounting["records_per_s"] > 0
    assert document["results"]["ledger"]["verify"]["checkpoints"] == 50
    reads = document["results"]["record_reads"]["rows"]
    assert [(row["records"], row["validators"]) for row in reads] == [
        (16, "hivemind"), (16, "swarm (caching)"), (100, "hivemind"), (100, "swarm (caching)")]
    assert all(row["first_read_ms"] > 0 and row["repeat_read_ms"] > 0 for row in reads)


@pytest.mark.slow
def test_gpu_step_quick_mode_measures_each_variant_with_its_padded_vocabulary(tmp_path):
    process = subprocess.run([sys.executable, "benchmarks/gpu_step.py", "--quick", "--device", "cpu",
                              "--results-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=240)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    document = json.loads((tmp_path / "gpu-step-quick.json").read_text())
    _check_common(document)
    rows = document["results"]["rows"]
    assert [row["vocab_rows"] for row in rows] == [259, 320, 320]  # the byte tokenizer's 259, then padded to 64s
    assert all(row["tokens_per_s"] > 0 and row["micro_steps"] % 2 == 0 for row in rows)
    assert rows[0]["speed_vs_first"] == 1.0 and rows[0]["mfu"] is None  # no MFU without a known GPU peak


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_step_without_a_gpu_says_so_and_exits_2(tmp_path):
    process = subprocess.run([sys.executable, "benchmarks/gpu_step.py", "--results-dir", str(tmp_path)],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert "no CUDA GPU is visible" in process.stderr and "Traceback" not in process.stderr
    assert not list(tmp_path.iterdir())


def test_time_to_target_comes_only_from_training_with_the_same_batches_and_delayed_updates(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import scaling
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    trained = [
        {"mode": "dedloc", "peers": 4, "target_batch_size": 256, "micro_steps_to_target": 184.1},
        {"mode": "dedloc", "peers": 4, "target_batch_size": 2048, "delay_updates": True,
         "micro_steps_to_target": 400.0},
    ]
    convergence = tmp_path / "convergence.json"
    convergence.write_text(json.dumps({"results": {"rows": trained}}))

    def row(batch, delayed):
        return {"mode": "dedloc", "peers": 4, "link": "x", "target_batch_size": batch,
                "overlap_communication": delayed, "wall_s_per_micro_step": 0.25}

    rows = [row(256, False), row(2048, True), row(2048, False), row(1024, True)]
    scaling.add_time_to_target(rows, convergence)
    assert [r.get("time_to_target_s") for r in rows] == [46.0, 100.0, None, None]
    # training at another micro-batch is another curve: its micro-steps do not apply
    convergence.write_text(json.dumps({"settings": {"micro_batch_size": 4}, "results": {"rows": trained}}))
    rows = [row(256, False), dict(row(256, False), micro_batch_size=4)]
    scaling.add_time_to_target(rows, convergence)
    assert [r.get("time_to_target_s") for r in rows] == [None, 46.0]


def test_the_noise_scale_estimates_recover_a_known_gradient_mean_and_per_sample_variance():
    """Per-sample gradients G + noise of known variance: the two-batch-size estimates find |G|^2 and tr(Sigma)."""
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.noise_scale import jackknife_noise_scale, noise_scale_estimate, predicted_step_ratio

    generator = torch.Generator().manual_seed(0)
    dims, sigma, small, batches = 200, 0.5, 2, 16
    mean = torch.randn(dims, generator=generator, dtype=torch.float64) * 0.1
    true_sq, trace = [], []
    for _ in range(400):
        samples = mean + sigma * torch.randn(batches, small, dims, generator=generator, dtype=torch.float64)
        small_gradients = samples.mean(dim=1)
        estimate = noise_scale_estimate([float((g ** 2).sum()) for g in small_gradients],
                                        float((small_gradients.mean(dim=0) ** 2).sum()), small, small * batches)
        true_sq.append(estimate[0])
        trace.append(estimate[1])
    # |G|^2 = 2.0 and tr(Sigma) = 50 here; a plain |g_small|^2 would read 27 as |G|^2
    assert sum(true_sq) / len(true_sq) == pytest.approx(float((mean ** 2).sum()), rel=0.1)
    assert sum(trace) / len(trace) == pytest.approx(dims * sigma ** 2, rel=0.03)
    # B from the draws averaged before dividing, with a jackknife error that shrinks as the draws add up
    noise, error = jackknife_noise_scale(list(zip(true_sq, trace)))
    assert noise == pytest.approx(sum(trace) / sum(true_sq))
    assert noise == pytest.approx(dims * sigma ** 2 / float((mean ** 2).sum()), rel=0.12)
    _, error_of_fewer = jackknife_noise_scale(list(zip(true_sq, trace))[:25])
    assert 0 < error < error_of_fewer
    assert jackknife_noise_scale([(2.0, 50.0), (2.0, 50.0)]) == (25.0, 0.0)
    # the step ratio of n peers: no gain without noise, 1/n when the noise dominates any batch
    assert predicted_step_ratio(0.0, 16, 4) == 1.0
    assert predicted_step_ratio(1e9, 16, 4) == pytest.approx(0.25, rel=1e-6)
    assert predicted_step_ratio(25.0, 16, 4) == pytest.approx((1 + 25 / 64) / (1 + 25 / 16))


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_noise_scale_quick_mode_measures_a_finite_noise_scale_on_the_real_recipe(tmp_path):
    document = _run_quick("noise_scale", tmp_path, timeout_s=280)
    rows = document["results"]["rows"]
    assert [row["step"] for row in rows] == [0, 20, 40]
    assert rows[-1]["validation_loss"] < rows[0]["validation_loss"] - 0.3  # it trains
    for row in rows:
        assert row["true_gradient_sq_norm"] > 0 and row["noise_scale_samples"] > 0
        assert set(row["predicted_step_ratio"]) == {f"{n} peers x {b}" for n in (4, 8, 16) for b in (4, 16)}
        assert row["noise_scale_standard_error"] is not None
    assert "| step | validation loss | noise scale B (samples, +- s.e.) |" in (tmp_path / "noise_scale.md").read_text()


def test_noise_scale_refuses_a_missing_recipe_or_a_single_probe_batch_with_a_usage_error(tmp_path):
    process = subprocess.run([sys.executable, "benchmarks/noise_scale.py", "--recipe", str(tmp_path / "none.yaml"),
                              "--probe-batches", "1", "--results-dir", str(tmp_path)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert "--probe-batches 2 or more" in process.stderr
    process = subprocess.run([sys.executable, "benchmarks/noise_scale.py", "--recipe", str(tmp_path / "none.yaml"),
                              "--results-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert f"--recipe {tmp_path / 'none.yaml'}" in process.stderr and not list(tmp_path.iterdir())
