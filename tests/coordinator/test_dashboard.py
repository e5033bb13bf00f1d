"""The coordinator's dashboard: the real HTTP server, its JSON API, /metrics, the configs, and the page in Chromium."""

from __future__ import annotations

import concurrent.futures
import copy
import http.client
import json
import math
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import swarm
from coordinator.dashboard import DashboardServer
from coordinator.metrics import CoordinatorMetrics

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
STARTED_AT = 1_767_000_000.0
EVIL_NAME = "<img src=x onerror=\"document.title='pwned'\">"


def fake_run() -> dict:
    """A coordinator snapshot of a run 48 epochs in: five peers (one departed, one with a hostile name), two teams."""
    epochs = []
    for epoch in range(1, 49):
        epochs.append(dict(
            epoch=epoch, time=STARTED_AT + 300.0 * epoch,
            samples_per_second=150.0 + 45 * (epoch > 10) + 45 * (epoch > 30) - 3 * (epoch % 4),
            alive_peers=2 + (epoch > 10) + (epoch > 30),
            mean_loss=round(2.2 + 7.0 * math.exp(-epoch / 9), 4) if epoch != 3 else None,  # a gap: no report
            val_loss=round(2.35 + 7.0 * math.exp(-epoch / 9), 4) if epoch % 5 == 0 else None,
        ))
    epochs[-1]["samples_per_second"] = 237.25  # the status line below reads the same
    now = STARTED_AT + 300.0 * 48 + 40
    peer = dict(epoch=48, averaged_rounds=0, last_group_size=4, last_seen=now - 3, alive=True)
    peers = [
        dict(peer, peer_id="QmAdaL0velace5qR3bN8wZp2", name="ada", team="eleuther-fans", samples_total=61_440,
             samples_per_second=121.5, loss=2.291, averaged_rounds=47, device="cuda: NVIDIA A100-SXM4-40GB"),
        dict(peer, peer_id="QmGraceH0pper7tY1cM4vXk9", name="grace", team="uni-lab", samples_total=40_960,
             samples_per_second=88.25, loss=2.305, averaged_rounds=40, device="cuda: NVIDIA GeForce RTX 4090"),
        dict(peer, peer_id="QmB0bsLaptop2hJ6dS8nPq3", name="bob's laptop", team="uni-lab", samples_total=9_216,
             samples_per_second=20.0, loss=2.33, averaged_rounds=28, device="cpu: 8 cores"),
        dict(peer, peer_id="QmM4lloryX9fG2kL5sA1wE7", name=EVIL_NAME, team="eleuther-fans", samples_total=4_096,
             samples_per_second=7.5, loss=None, averaged_rounds=3, device="cpu: 4 cores"),
        dict(peer, peer_id="QmCharl1eGone3mN7bV5cX8", name="charlie", team="eleuther-fans", samples_total=12_288,
             samples_per_second=30.0, loss=3.1, averaged_rounds=12, last_group_size=3, device="cuda: Tesla T4",
             epoch=21, last_seen=now - 4000, alive=False),
    ]
    volunteers = [
        dict(peer_id=p["peer_id"], name=p["name"], team=p["team"], claimed_samples=p["samples_total"],
             granted_samples=p["samples_total"] - 512 * (p["name"] == "grace"), compute_s=p["samples_total"] / 9.5,
             epochs=p["averaged_rounds"] + 1)
        for p in peers
    ]
    teams = []
    for team in ("uni-lab", "eleuther-fans"):  # deliberately not sorted by credit: the page sorts
        members = [v for v in volunteers if v["team"] == team]
        teams.append(dict(team=team, claimed_samples=sum(v["claimed_samples"] for v in members),
                          granted_samples=sum(v["granted_samples"] for v in members), volunteers=len(members)))
    root_hash = "9f2c4e1ab07d5c3e8f61a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2"
    key_id = "5e8a0c2d4f6b8a0c2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f2a4b6c8d"
    return {
        "status": dict(run_id="tiny-stdlib", description="A 1.2M-parameter GPT-2 on the Python standard library",
                       status="running", epoch=48, alive_peers=4, samples_per_second=237.25, samples_total=128_000,
                       mean_training_loss=2.2338, last_val_loss=2.3972, last_checkpoint_epoch=45,
                       started_at=STARTED_AT, updated_at=now,
                       join_command="swarm join --initial-peers /ip4/127.0.0.1/tcp/31337/p2p/QmCoordinatorZ8xW"),
        "peers": peers,
        "epochs": epochs,
        "leaderboard": {"volunteers": volunteers, "teams": teams},
        "ledger": {"tree_size": 212, "root_hash": root_hash,
                   "latest_checkpoint": dict(tree_size=212, root_hash=root_hash, timestamp=now - 90,
                                             run_id="tiny-stdlib", key_id=key_id, signature="ab" * 64),
                   "public_key_fingerprint": key_id},
    }


def fresh_run() -> dict:
    """A snapshot seconds after `swarm launch`: nobody has joined, nothing is known yet."""
    return {
        "status": dict(run_id="tiny-stdlib", description="", status="running", epoch=0, alive_peers=0,
                       samples_per_second=0.0, samples_total=0, mean_training_loss=None, last_val_loss=None,
                       last_checkpoint_epoch=-1, started_at=STARTED_AT, updated_at=STARTED_AT + 5,
                       join_command="swarm join --initial-peers /ip4/127.0.0.1/tcp/31337/p2p/QmCoordinatorZ8xW"),
        "peers": [], "epochs": [], "leaderboard": {"volunteers": [], "teams": []},
        "ledger": {"tree_size": 0, "root_hash": None, "latest_checkpoint": None, "public_key_fingerprint": None},
    }


@pytest.fixture(scope="module")
def run_snapshot():
    return fake_run()


@pytest.fixture(scope="module")
def server(run_snapshot):
    with DashboardServer(lambda: run_snapshot) as dashboard:
        yield dashboard


@pytest.fixture
def broken_server():
    def snapshot():
        raise RuntimeError("secret-token-1234 lost the DHT")

    with DashboardServer(snapshot) as dashboard:
        yield dashboard


def request(url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) for any status code."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def strict_json(body: bytes):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(body, parse_constant=refuse)


# ---------------------------------------------------------------------------------------------------------------
# JSON API


@pytest.mark.parametrize("path, section", [
    ("api/status", "status"), ("api/peers", "peers"), ("api/epochs", "epochs"),
    ("api/leaderboard", "leaderboard"), ("api/ledger", "ledger"), ("api/snapshot", None),
])
def test_api_serves_each_snapshot_section_as_uncached_json(server, run_snapshot, path, section):
    status, headers, body = request(server.url + path)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert strict_json(body) == (run_snapshot if section is None else run_snapshot[section])


def test_api_ignores_query_strings(server, run_snapshot):
    status, _, body = request(server.url + "api/status?t=1712345")
    assert status == 200 and strict_json(body)["epoch"] == run_snapshot["status"]["epoch"]


def test_a_trailing_slash_names_the_same_page(server, run_snapshot):
    status, _, body = request(server.url + "api/status/")  # was a 404
    assert status == 200 and strict_json(body) == run_snapshot["status"]


@pytest.mark.parametrize("path", ["nope", "api", "api/", "api/status/extra", "api/STATUS", "index.html",
                                  "metrics/x", "%2e%2e/%2e%2e/etc/passwd"])
def test_unknown_paths_answer_404_json(server, path):
    status, headers, body = request(server.url + path)
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert "error" in strict_json(body)


def test_healthz_answers_ok_even_when_the_snapshot_fails(broken_server):
    status, headers, body = request(broken_server.url + "healthz")
    assert status == 200 and headers["content-type"] == "application/json"
    assert strict_json(body) == {"status": "ok"}


@pytest.mark.parametrize("path", ["api/status", "api/snapshot", "api/leaderboard", "metrics"])
def test_failing_snapshot_answers_503_with_a_short_message_and_no_traceback(broken_server, path):
    status, headers, body = request(broken_server.url + path)
    assert status == 503
    assert headers["content-type"] == "application/json"
    assert set(strict_json(body)) == {"error"}
    assert len(body) < 200
    assert b"Traceback" not in body and b"secret-token" not in body and b"RuntimeError" not in body


def test_malformed_snapshot_answers_json_error_not_a_traceback():
    with DashboardServer(lambda: {"status": {"run_id": "x"}}) as dashboard:
        for path, expected in (("api/peers", 500), ("metrics", 503)):
            status, headers, body = request(dashboard.url + path)
            assert status == expected and headers["content-type"] == "application/json"
            assert b"Traceback" not in body and b"KeyError" not in body


def test_head_sends_the_get_headers_without_a_body(server):
    for path in ("api/status", "metrics", "", "nope"):
        get_status, get_headers, get_body = request(server.url + path)
        connection = http.client.HTTPConnection("127.0.0.1", _port(server), timeout=10)
        connection.request("HEAD", "/" + path)
        response = connection.getresponse()
        assert response.status == get_status
        assert response.getheader("Content-Length") == str(len(get_body))
        assert response.getheader("Content-Type") == get_headers["content-type"]
        assert response.read() == b""
        connection.close()


def test_methods_other_than_get_and_head_are_refused_with_json(server):
    status, headers, body = request(server.url + "api/status", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert strict_json(body) == {"error": "only GET and HEAD"}
    status, headers, body = request(server.url + "api/status", method="BREW")
    assert status == 501 and headers["content-type"] == "application/json"
    assert "error" in strict_json(body)


def test_malformed_request_answers_json_not_html(server):
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\n" + b"X-Padding: 1\r\n" * 101 + b"\r\n")  # over http.client's 100
        reply = b""
        while chunk := connection.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 431") and b"Content-Type: application/json" in head
    assert "error" in strict_json(body)


def test_concurrent_requests_all_succeed(server):
    paths = ["api/snapshot", "metrics", "api/peers", "", "healthz"] * 8
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda path: request(server.url + path)[0], paths))
    assert statuses == [200] * len(paths)


def test_non_finite_losses_are_served_as_null_not_nan(run_snapshot):
    snapshot = copy.deepcopy(run_snapshot)
    snapshot["status"]["mean_training_loss"] = float("nan")
    snapshot["epochs"][-1]["mean_loss"] = float("inf")
    with DashboardServer(lambda: snapshot) as dashboard:
        status, _, body = request(dashboard.url + "api/snapshot")
    data = strict_json(body)
    assert status == 200
    assert data["status"]["mean_training_loss"] is None and data["epochs"][-1]["mean_loss"] is None


def test_server_binds_to_the_given_host_only_and_frees_the_port_on_stop(run_snapshot):
    dashboard = DashboardServer(lambda: run_snapshot, host="127.0.0.1", port=0).start()
    port = _port(dashboard)
    assert dashboard.url == f"http://127.0.0.1:{port}/"
    assert dashboard._httpd.socket.getsockname() == ("127.0.0.1", port)
    dashboard.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    dashboard.stop()  # stopping twice is harmless


def test_a_taken_port_is_reported_with_the_address(server, run_snapshot):
    with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{_port(server)} .*choose another port"):
        DashboardServer(lambda: run_snapshot, port=_port(server)).start()


def test_two_servers_in_one_process_serve_their_own_runs(run_snapshot):
    other = copy.deepcopy(run_snapshot)
    other["status"].update(run_id="other-run", epoch=7)
    with DashboardServer(lambda: run_snapshot) as first, DashboardServer(lambda: other) as second:
        assert first.url != second.url
        families = _scrape(second)
        assert _value(families, "swarm_epoch") == 7
        assert _value(families, "swarm_info", run_id="other-run") == 1
        assert _value(_scrape(first), "swarm_epoch") == 48


def test_page_is_one_self_contained_html_file(server):
    status, headers, body = request(server.url)
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in headers["content-security-policy"]
    page = body.decode()
    external = re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    external += re.findall(r"@import|url\(\s*['\"]?http", page)
    assert external == [], "the page must not load anything from another host (no internet on coordinators)"
    assert 'fetch("api/snapshot"' in page and "innerHTML" not in page


# ---------------------------------------------------------------------------------------------------------------
# Prometheus metrics


def _port(server: DashboardServer) -> int:
    return int(server.url.rsplit(":", 1)[1].strip("/"))


def _scrape(server: DashboardServer) -> dict:
    status, headers, body = request(server.url + "metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def _value(families: dict, family: str, sample: str | None = None, **labels):
    matches = [s.value for s in families[family].samples
               if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (family, labels, families[family].samples)
    return matches[0]


def test_metrics_endpoint_exports_run_gauges_and_counters(server, run_snapshot):
    families = _scrape(server)
    status = run_snapshot["status"]
    expected_types = {
        "swarm_info": "gauge", "swarm_epoch": "gauge", "swarm_alive_peers": "gauge",
        "swarm_samples_per_second": "gauge", "swarm_samples": "counter", "swarm_training_loss": "gauge",
        "swarm_validation_loss": "gauge", "swarm_last_checkpoint_epoch": "gauge", "swarm_ledger_entries": "gauge",
        "swarm_run_started_timestamp_seconds": "gauge", "swarm_last_update_timestamp_seconds": "gauge",
        "swarm_run_finished": "gauge", "swarm_peer_samples": "counter", "swarm_peer_samples_per_second": "gauge",
        "swarm_peer_alive": "gauge", "swarm_peer_epoch": "gauge", "swarm_peer_training_loss": "gauge",
        "swarm_peer_averaged_rounds": "counter", "swarm_peer_last_group_size": "gauge",
        "swarm_peer_last_seen_timestamp_seconds": "gauge", "swarm_granted_samples": "counter",
        "swarm_claimed_samples": "counter", "swarm_team_volunteers": "gauge",
    }
    assert {name: families[name].type for name in families} == expected_types
    assert all(family.documentation for family in families.values())

    assert _value(families, "swarm_info", run_id="tiny-stdlib", version=swarm.__version__) == 1
    assert _value(families, "swarm_epoch") == 48
    assert _value(families, "swarm_alive_peers") == 4
    assert _value(families, "swarm_samples_per_second") == 237.25
    assert _value(families, "swarm_samples", "swarm_samples_total") == 128_000
    assert _value(families, "swarm_training_loss") == pytest.approx(2.2338)
    assert _value(families, "swarm_validation_loss") == pytest.approx(2.3972)
    assert _value(families, "swarm_last_checkpoint_epoch") == 45
    assert _value(families, "swarm_ledger_entries") == 212
    assert _value(families, "swarm_run_started_timestamp_seconds") == STARTED_AT
    assert _value(families, "swarm_last_update_timestamp_seconds") == status["updated_at"]
    assert _value(families, "swarm_run_finished") == 0


def test_metrics_label_peers_and_teams(server):
    families = _scrape(server)
    ada = dict(peer_id="QmAdaL0velace5qR3bN8wZp2", name="ada", team="eleuther-fans")
    assert _value(families, "swarm_peer_samples", "swarm_peer_samples_total", **ada) == 61_440
    assert _value(families, "swarm_peer_samples_per_second", **ada) == 121.5
    assert _value(families, "swarm_peer_averaged_rounds", "swarm_peer_averaged_rounds_total", **ada) == 47
    assert _value(families, "swarm_peer_training_loss", **ada) == pytest.approx(2.291)
    # a hostile name is a label value like any other: escaped by the exposition, intact after parsing
    assert _value(families, "swarm_peer_alive", name=EVIL_NAME) == 1
    assert {s.labels["team"] for s in families["swarm_granted_samples"].samples} == {"uni-lab", "eleuther-fans"}
    granted_uni_lab = _value(families, "swarm_granted_samples", "swarm_granted_samples_total", team="uni-lab")
    assert granted_uni_lab == 40_960 - 512 + 9_216
    assert _value(families, "swarm_claimed_samples", "swarm_claimed_samples_total", team="uni-lab") == 40_960 + 9_216
    assert _value(families, "swarm_team_volunteers", team="eleuther-fans") == 3


def test_metrics_leave_out_what_the_snapshot_does_not_know(server):
    families = _scrape(server)
    charlie = dict(name="charlie")
    assert _value(families, "swarm_peer_alive", **charlie) == 0
    assert _value(families, "swarm_peer_samples", "swarm_peer_samples_total", **charlie) == 12_288
    assert not [s for s in families["swarm_peer_samples_per_second"].samples if s.labels["name"] == "charlie"]
    assert not [s for s in families["swarm_peer_training_loss"].samples if s.labels["name"] == EVIL_NAME]

    metrics = CoordinatorMetrics()
    snapshot = fake_run()
    snapshot["status"].update(mean_training_loss=None, last_val_loss=float("nan"))
    # a peer gone for more than a day has no series left (a run of months would export every volunteer ever seen)
    snapshot["peers"][-1]["last_seen"] = snapshot["status"]["updated_at"] - 25 * 3600
    metrics.update(snapshot)
    parsed = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    assert parsed["swarm_training_loss"].samples == [] and parsed["swarm_validation_loss"].samples == []
    assert not [s for s in parsed["swarm_peer_alive"].samples if s.labels["name"] == "charlie"]
    assert len(parsed["swarm_peer_alive"].samples) == 4
    assert _value(parsed, "swarm_team_volunteers", team="eleuther-fans") == 3  # its credit stays in its team's


def test_metrics_follow_a_fresh_snapshot_on_each_scrape():
    snapshot = fake_run()
    with DashboardServer(lambda: snapshot) as dashboard:
        assert _value(_scrape(dashboard), "swarm_epoch") == 48
        snapshot["status"].update(epoch=49, status="finished")
        families = _scrape(dashboard)
        assert _value(families, "swarm_epoch") == 49 and _value(families, "swarm_run_finished") == 1


def test_metrics_use_their_own_registry_or_the_one_given():
    first, second = CoordinatorMetrics(), CoordinatorMetrics()
    assert first.registry is not second.registry
    registry = CollectorRegistry()
    given = CoordinatorMetrics(registry)
    given.update(fake_run())
    assert given.registry is registry and registry.get_sample_value("swarm_epoch") == 48
    assert first.render() == b""  # nothing to export before the first update


# ---------------------------------------------------------------------------------------------------------------
# Shipped configs

PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "rate", "irate", "increase",
    "delta", "deriv", "resets", "changes", "abs", "time", "timestamp", "vector", "scalar", "sort", "sort_desc",
    "clamp_min", "clamp_max", "last_over_time", "max_over_time", "min_over_time", "avg_over_time",
    "label_values", "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right",
}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana variable query) reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    words = re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()", expr)
    if expr.strip().startswith("label_values("):
        words = words[:1]  # label_values(metric, label): the label is not a metric
    return {word for word in words if word not in PROMQL_WORDS}


def exported_metric_names() -> set[str]:
    metrics = CoordinatorMetrics()
    metrics.update(fake_run())
    families = text_string_to_metric_families(metrics.render().decode())
    return {sample.name for family in families for sample in family.samples}


def test_promql_metric_names_finds_metrics_not_functions_or_labels():
    expr = 'sum by (team) (rate(swarm_samples_total{instance=~"$instance"}[5m])) / on(instance) swarm_alive_peers > 0'
    assert promql_metric_names(expr) == {"swarm_samples_total", "swarm_alive_peers"}
    assert promql_metric_names("label_values(swarm_info, instance)") == {"swarm_info"}


def test_grafana_dashboard_is_importable_and_queries_only_exported_metrics():
    dashboard = json.loads((REPO / "configs" / "grafana-dashboard.json").read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [item["name"] for item in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    exported = exported_metric_names()
    queried, titles = set(), []
    for panel in dashboard["panels"]:
        titles.append(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names and names <= exported, (panel["title"], target["expr"], names - exported)
            queried |= names
    for variable in dashboard["templating"]["list"]:
        names = promql_metric_names(variable["query"]["query"])
        assert names and names <= exported
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    assert {"swarm_epoch", "swarm_alive_peers", "swarm_samples_per_second", "swarm_training_loss",
            "swarm_validation_loss", "swarm_peer_samples_per_second", "swarm_granted_samples_total"} <= queried
    assert "Granted samples per team" in titles


def test_prometheus_example_scrapes_the_metrics_endpoint():
    config = yaml.safe_load((REPO / "configs" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert all(re.fullmatch(r"[\w.-]+:\d+", target) for group in job["static_configs"] for target in group["targets"])


# ---------------------------------------------------------------------------------------------------------------
# The page in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium); page not rendered")


def chromium(url: str, tmp_path: Path, *mode: str) -> str:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", *mode, url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@needs_chromium
def test_page_renders_the_run_leaderboard_and_peers_after_javascript_ran(server, tmp_path):
    dom = chromium(server.url, tmp_path, "--dump-dom")
    assert re.search(r'id="epoch"[^>]*>48<', dom)
    assert re.search(r'id="run-id"[^>]*>tiny-stdlib<', dom)
    assert re.search(r'id="alive-peers"[^>]*>4<', dom)
    volunteers = dom.split('id="volunteers"', 1)[1].split("</table>", 1)[0]
    names = re.findall(r'<td class="name"[^>]*>([^<]*)</td>', volunteers)
    assert names == ["ada", "grace", "charlie", "bob's laptop", "&lt;img src=x onerror=\"document.title='pwned'\"&gt;"]
    teams = dom.split('id="teams"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<td class="name"[^>]*>([^<]*)</td>', teams) == ["eleuther-fans", "uni-lab"]
    peers = dom.split('id="peers"', 1)[1].split("</table>", 1)[0]
    assert "ada" in peers and "charlie" not in peers and "1 departed peer not shown" in dom
    assert "212" in dom.split('id="ledger-size"', 1)[1][:40] and "9f2c4e1ab07d5c3e…" in dom
    assert "swarm ledger verify &lt;url-or-path&gt;" in dom
    assert dom.count("<polyline") == 4  # training, validation, samples/s, alive peers
    assert "pwned" not in dom.split("<title>", 1)[1].split("</title>", 1)[0]  # the hostile name stayed text


@needs_chromium
def test_page_screenshot_is_written_to_artifacts(server, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    chromium(server.url, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,1600")
    header = screenshot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (1280, 1600)


@needs_chromium
def test_page_shows_a_banner_when_the_coordinator_state_is_unavailable(broken_server, tmp_path):
    dom = chromium(broken_server.url, tmp_path, "--dump-dom")
    assert re.search(r'id="banner" role="status" class="shown">The coordinator is up but its state is unavailable', dom)


@needs_chromium
def test_page_renders_a_run_nobody_has_joined_yet(tmp_path):
    with DashboardServer(fresh_run) as dashboard:
        dom = chromium(dashboard.url, tmp_path, "--dump-dom")
    assert re.search(r'id="epoch"[^>]*>0<', dom) and re.search(r'id="training-loss"[^>]*>–<', dom)
    for empty_state in ("No loss reported yet", "No epoch finished yet", "No peer is training right now",
                        "No credit granted yet.", "No team has credit yet."):
        assert empty_state in dom
    assert re.search(r'id="last-checkpoint"[^>]*>none yet<', dom)
    assert re.search(r'id="ledger-checkpoint"[^>]*>none yet<', dom)
    assert 'class="shown"' not in dom  # no error banner: an empty run is not a problem
