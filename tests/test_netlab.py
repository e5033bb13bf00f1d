"""The network lab of benchmarks/netlab.py: the delaying relay alone on loopback, and a real 2-host lab."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.netlab import Link, NetLab, NetLabUnavailable, _namespaces, measure_link  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _echo_server(port: int, stop: threading.Event) -> threading.Thread:
    """Echoes every byte back; enough to check both directions of the relay."""
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.2)

    def serve():
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except socket.timeout:
                    continue
                with conn:
                    while data := conn.recv(1 << 16):
                        conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_relay_on_loopback_delays_each_direction_and_keeps_bytes_intact():
    delay_ms = 40
    target_port, relay_port = _free_port(), _free_port()
    stop = threading.Event()
    _echo_server(target_port, stop)
    relay = subprocess.Popen([sys.executable, str(REPO_ROOT / "benchmarks" / "netlab.py"), "--relay",
                              f"127.0.0.1:{relay_port}", f"127.0.0.1:{target_port}", "--delay-ms", str(delay_ms)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert relay.stdout.readline().startswith("ready")
        with socket.create_connection(("127.0.0.1", relay_port)) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(b"hello")
            assert conn.recv(16) == b"hello"  # the connection is up (handshake RTT included)
            round_trips = []
            for _ in range(5):
                began = time.perf_counter()
                conn.sendall(b"ping")
                assert conn.recv(16) == b"ping"
                round_trips.append(time.perf_counter() - began)
            # one delay each way
            assert 2 * delay_ms * 0.9 / 1000 <= sorted(round_trips)[2] <= 2 * delay_ms * 1.6 / 1000
            payload = os.urandom(4 << 20)
            received = bytearray()
            sender = threading.Thread(target=conn.sendall, args=(payload,))
            sender.start()
            while len(received) < len(payload):
                received += conn.recv(1 << 18)
            sender.join()
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    finally:
        stop.set()
        relay.terminate()
        relay.wait(timeout=10)


@pytest.fixture
def lab_or_skip():
    try:
        lab = NetLab(hosts=2, link=Link(rate_mbit=20, delay_ms=25))
        lab.start()
    except NetLabUnavailable as error:
        pytest.skip(f"no network lab here: {error}")
    except RuntimeError as error:
        pytest.skip(f"no network lab here (tc or veth failed): {error}")
    try:
        yield lab
    finally:
        lab.close()


@pytest.mark.netns
def test_lab_link_has_the_rtt_and_rate_asked_and_hosts_talk_only_through_relays(lab_or_skip):
    lab = lab_or_skip
    tag = lab.tag
    assert any(name.startswith(tag) for name in _namespaces())

    result = measure_link(lab, sender=0, receiver=1, megabytes=4, pings=8)
    assert result["received"] == result["bytes"]
    assert 45 <= result["rtt_ms_median"] <= 70, result  # 25 ms one way, each direction
    assert 14 <= result["mbit_per_s"] <= 20.5, result  # goodput under a 20 Mbit/s tbf (headers take ~5%)
    assert result["wire_bytes_sent"] >= result["bytes"]

    # a direct dial of the other host's own address fails at once: nothing but the relays joins hosts
    probe = ("import socket, sys\n"
             "try:\n    socket.create_connection((sys.argv[1], 9), timeout=3)\n"
             "except OSError as error:\n    print(type(error).__name__, error.errno)\n")
    direct = lab.run(0, [sys.executable, "-c", probe, lab.host_ip(1)], capture_output=True, text=True)
    assert direct.stdout.strip() and "timeout" not in direct.stdout.lower(), direct.stdout + direct.stderr
    counters = lab.bytes(0)
    assert counters["sent"] > 4 << 20 and counters["received"] > 0

    lab.close()
    assert not any(name.startswith(tag) for name in _namespaces())


def test_link_names_parse_and_hosts_out_of_range_are_refused():
    assert Link.parse("100mbit-25ms") == Link(rate_mbit=100, delay_ms=25)
    assert Link.parse("1gbit-5ms").name == "1gbit-5ms"
    with pytest.raises(ValueError, match="100mbit-25ms"):
        Link.parse("fast")
    lab = NetLab(hosts=2)
    with pytest.raises(IndexError):
        lab.host_ip(2)


@pytest.mark.netns
@pytest.mark.slow
def test_scaling_quick_runs_diloco_peers_on_a_shaped_link(tmp_path):
    """~80 s: two DiLoCo peers in a 100 Mbit/s, 25 ms lab; bytes come from the veth counters."""
    try:
        from benchmarks.netlab import check_requirements

        check_requirements()
    except NetLabUnavailable as error:
        pytest.skip(f"no network lab here: {error}")
    process = subprocess.run(
        [sys.executable, "benchmarks/scaling.py", "--quick", "--link", "100mbit-25ms", "--mode", "diloco",
         "--inner-steps", "20", "--seconds", "15", "--results-dir", str(tmp_path), "--name", "lab"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-2000:]
    document = json.loads((tmp_path / "lab.json").read_text())
    assert document["settings"]["link"] == "100mbit-25ms" and document["settings"]["link_emulation"]
    row = document["results"]["rows"][0]
    assert "error" not in row, row
    assert row["mode"] == "diloco" and row["inner_steps"] == 20 and row["link"] == "100mbit-25ms"
    assert row["simulated"] is True and 0 < row["utilisation"] <= 1
    assert row["measured_bytes_source"].startswith("veth")
    if row["epochs_in_window"]:
        assert row["measured_bytes_sent_per_peer_per_sync"] > 0
