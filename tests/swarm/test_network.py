"""Joining the DHT: address checks with messages that say what to copy, start-up failures that say what to do."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from hivemind.utils import get_dht_time

from swarm.errors import SwarmError, UsageError
from swarm.identity import Identity
from swarm.network import (JOIN_PORT_FIX, check_listen_port, create_dht, join_addresses, listen_addresses,
                           parse_initial_peers, raise_fd_limit, recontact)

PEER_ID = "QmYgMpCT1p8dQ5dCJxfaQZutoNA9Dp2wZYhTQa3RFr6JMu"
PEER_ID_ED25519 = "12D3KooWGzh2yCMkP9vBj3R3n1GNLy9aT7rW6bQxZ5pA8cdEfUvX"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def first_node(tmp_path_factory):
    identity = Identity.load_or_create(tmp_path_factory.mktemp("first") / "id")
    dht = create_dht([], host="127.0.0.1", identity=identity)
    try:
        yield dht, identity
    finally:
        dht.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# parse_initial_peers


@pytest.mark.parametrize(
    "address",
    [
        f"/ip4/203.0.113.5/tcp/31337/p2p/{PEER_ID}",
        f"/ip4/203.0.113.5/tcp/31337/p2p/{PEER_ID_ED25519}",
        f"/ip6/2001:db8::1/tcp/31337/p2p/{PEER_ID}",
        f"/dns4/swarm.example.org/tcp/31337/p2p/{PEER_ID}",
        f"/ip4/203.0.113.5/udp/31337/quic/p2p/{PEER_ID}",
    ],
    ids=["ip4", "ed25519-peer-id", "ip6", "dns4", "quic"],
)
def test_real_multiaddrs_are_accepted_unchanged(address):
    assert parse_initial_peers([address]) == [address]


def test_addresses_may_be_separated_by_commas_spaces_or_given_as_several_flags():
    a, b, c = (f"/ip4/10.0.0.{n}/tcp/3133{n}/p2p/{PEER_ID}" for n in (1, 2, 3))
    assert parse_initial_peers([f"{a},{b} {c}"]) == [a, b, c]
    assert parse_initial_peers([f" {a} ,  {b}", c]) == [a, b, c]
    assert parse_initial_peers([]) == [] and parse_initial_peers(["", " , "]) == []


@pytest.mark.parametrize(
    "garbage",
    ["garbage", "203.0.113.5:31337", "http://203.0.113.5:31337", f"/ip4/999.0.0.1/tcp/1/p2p/{PEER_ID}",
     "/ip4/203.0.113.5/tcp/31337/p2p/not-a-peer-id", "/ip4/203.0.113.5/tcp/port/p2p/" + PEER_ID],
    ids=["word", "host-port", "url", "bad-ip", "bad-peer-id", "bad-port"],
)
def test_garbage_is_refused_with_an_example_of_what_to_copy(garbage):
    with pytest.raises(UsageError) as error:
        parse_initial_peers([f"/ip4/10.0.0.1/tcp/1/p2p/{PEER_ID}", garbage])
    message = str(error.value)
    assert repr(garbage) in message
    assert "swarm launch" in message and "/ip4/203.0.113.5/tcp/31337/p2p/" in message


def test_an_address_without_a_peer_id_is_refused_with_what_is_missing():
    with pytest.raises(UsageError, match=r"lacks the /p2p/<peer id> part: copy the whole address"):
        parse_initial_peers(["/ip4/203.0.113.5/tcp/31337"])


# ---------------------------------------------------------------------------------------------------------------
# create_dht


def test_unreachable_initial_peer_fails_with_next_steps():
    address = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{PEER_ID}"
    with pytest.raises(SwarmError) as error:
        create_dht([address], host="127.0.0.1", startup_timeout_s=10)
    message = str(error.value)
    assert address in message
    assert "Next steps" in message and "swarm launch" in message and "firewall" in message
    assert type(error.value) is SwarmError  # a runtime problem (exit 1), not a usage error


def test_without_require_bootstrap_an_unreachable_peer_means_starting_alone():
    address = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{PEER_ID}"
    dht = create_dht([address], host="127.0.0.1", startup_timeout_s=10, require_bootstrap=False)
    try:
        assert join_addresses(dht)
    finally:
        dht.shutdown()


def test_host_that_is_not_an_ip_is_a_usage_error():
    with pytest.raises(UsageError, match=r"--host .localhost. is not an IP address: use 0.0.0.0"):
        create_dht([], host="localhost")


def test_join_addresses_name_the_peer_and_work_for_joining(first_node, tmp_path):
    assert type(first_node[0]).__name__ == "SwarmDHT"  # whose process survives commands of exited senders (below)
    dht, _ = first_node
    addresses = join_addresses(dht)
    assert addresses
    assert all(f"/p2p/{dht.peer_id.to_base58()}" in address for address in addresses)
    assert addresses[0].startswith("/ip4/127.0.0.1/tcp/")
    assert parse_initial_peers(addresses) == addresses  # what we print is what the next volunteer can paste
    second = create_dht(parse_initial_peers(addresses[:1]), host="127.0.0.1",
                        identity=Identity.load_or_create(tmp_path / "second"))
    try:
        assert second.peer_id != dht.peer_id
        second.store("network-test", "hello", expiration_time=get_dht_time() + 30)
        assert dht.get("network-test", latest=True).value == "hello"
    finally:
        second.shutdown()


async def _forget_every_node(_dht, node) -> int:
    """What a link down for a minute does to a DHT node: every request fails, and every node is dropped."""
    table = node.protocol.routing_table
    for node_id in list(table.uid_to_peer_id):
        del table[node_id]
    return len(table.uid_to_peer_id)


def test_a_node_that_forgot_every_other_finds_the_swarm_again_by_recontacting_its_initial_peers(first_node, tmp_path):
    dht, _ = first_node
    second = create_dht(join_addresses(dht)[:1], host="127.0.0.1", identity=Identity.load_or_create(tmp_path / "b"))
    try:
        # as after a cut: each side dropped the other (else the first node's store would reach the second)
        assert second.run_coroutine(_forget_every_node) == 0 and dht.run_coroutine(_forget_every_node) == 0
        dht.store("after-the-cut", "hello", expiration_time=get_dht_time() + 30)
        assert second.get("after-the-cut", latest=True) is None  # it knows nobody, and hivemind leaves it so
        unreachable = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{PEER_ID}"
        assert second.run_coroutine(partial(recontact, addresses=[unreachable], timeout_s=5.0)) == 0
        assert second.run_coroutine(partial(recontact, addresses=join_addresses(dht)[:1] + [unreachable],
                                            timeout_s=5.0)) == 1
        assert second.get("after-the-cut", latest=True).value == "hello"
    finally:
        second.shutdown()


def test_joining_with_an_identity_already_in_the_swarm_says_to_use_another(first_node):
    dht, identity = first_node
    with pytest.raises(SwarmError) as error:
        create_dht(join_addresses(dht), host="127.0.0.1", identity=identity, startup_timeout_s=15)
    message = str(error.value)
    assert "another process is using this identity" in message and "--identity DIR" in message


def test_join_addresses_list_loopback_last_when_listening_everywhere():
    dht = create_dht([], host="0.0.0.0")
    try:
        addresses = join_addresses(dht)
    finally:
        dht.shutdown()
    hosts = [address.split("/")[2] for address in addresses]
    assert "127.0.0.1" in hosts
    if set(hosts) == {"127.0.0.1"}:
        pytest.skip("this machine has no interface besides loopback")
    assert hosts[0] != "127.0.0.1"
    assert hosts.index("127.0.0.1") > max(i for i, host in enumerate(hosts) if not host.startswith("127."))


def test_join_addresses_rank_public_before_private_before_loopback():
    class StandIn:  # a real node here can only show private and loopback addresses, so hand it a public one
        def get_visible_maddrs(self, latest):
            return [f"/ip4/127.0.0.1/tcp/1/p2p/{PEER_ID}", f"/ip4/192.168.1.5/tcp/1/p2p/{PEER_ID}",
                    f"/ip4/8.8.8.8/tcp/1/p2p/{PEER_ID}", f"/ip4/127.0.0.1/tcp/1/p2p/{PEER_ID}"]

    ranked = join_addresses(StandIn())
    assert [address.split("/")[2] for address in ranked] == ["8.8.8.8", "192.168.1.5", "127.0.0.1"]


def test_raise_fd_limit_lifts_the_soft_limit_within_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        target = 512 if hard == resource.RLIM_INFINITY else min(512, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        raise_fd_limit(target)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (target, hard)
        raise_fd_limit(300)  # never lowers it
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == target
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------------------------------------------------
# --host, --port and --announce-host


@pytest.mark.parametrize("announce_host", ["notanip.invalid", "my.host.invalid"])
def test_announce_host_that_does_not_resolve_is_refused_before_hivemind_starts(announce_host):
    # hivemind used to get /ip4/notanip/tcp/18779: its DHT process failed with an error it could not send back
    # (StringParseError) and create_dht waited forever
    with pytest.raises(UsageError) as error:
        create_dht([], host="127.0.0.1", port=free_port(), announce_host=announce_host, startup_timeout_s=10)
    message = str(error.value)
    assert f"--announce-host {announce_host!r} does not resolve" in message
    assert "e.g. --announce-host 203.0.113.5" in message


@pytest.mark.parametrize("announce_host", ["999.1.1.1", "two words", "/ip4/203.0.113.5", "host:31337", "-x.org"])
def test_announce_host_that_is_neither_an_address_nor_a_name_is_refused(announce_host):
    with pytest.raises(UsageError, match=r"is neither an IP address nor a host name: pass the public address"):
        create_dht([], host="127.0.0.1", port=free_port(), announce_host=announce_host)


@pytest.mark.parametrize("announce_host", ["0.0.0.0", "::", "224.0.0.1"])
def test_announce_host_that_nobody_can_dial_is_refused(announce_host):
    with pytest.raises(UsageError, match=r"is not an address others can dial"):
        listen_addresses("::" if ":" in announce_host else "0.0.0.0", 31337, announce_host)


@pytest.mark.parametrize("port", [-5, 65536, 70000])
def test_port_outside_0_to_65535_is_refused(port):
    # -5 used to listen on 65531, 70000 to fail in the p2p daemon
    with pytest.raises(UsageError, match=rf"--port {port}: use a TCP port from 1 to 65535, or 0 for any free port"):
        create_dht([], host="127.0.0.1", port=port)


def test_a_port_another_program_listens_on_is_named_with_the_fix():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        message = rf"--port {port} is already in use on this machine \(by another program\): "
        with pytest.raises(UsageError, match=message + r"pick another port, or --port 0 for any free port"):
            create_dht([], host="0.0.0.0", port=port)  # the wildcard address clashes with 127.0.0.1 too
        with pytest.raises(UsageError, match=message + r"pick another port or leave --port out \(any free port\)"):
            check_listen_port("127.0.0.1", port, JOIN_PORT_FIX)
        check_listen_port("127.0.0.1", 0)  # any free port
    check_listen_port("127.0.0.1", port)  # free again


def test_the_port_of_another_hivemind_node_is_named_as_in_use(first_node):
    # hivemind's p2p daemon binds with SO_REUSEPORT: on another node's port it started, then could not reach that
    # node and said "could not reach any initial peer ... check that `swarm launch` is still running"
    dht, _ = first_node
    address = next(a for a in join_addresses(dht) if a.startswith("/ip4/127.0.0.1/"))
    port = int(address.split("/")[4])
    with pytest.raises(UsageError, match=rf"--port {port} is already in use on this machine"):
        create_dht([address], host="127.0.0.1", port=port, startup_timeout_s=10)


def test_a_host_that_is_not_this_machine_s_address_is_named_before_hivemind_starts():
    # 203.0.113.0/24 is reserved for documentation: no machine has it
    with pytest.raises(UsageError, match=r"--host 203.0.113.5 is not an address of this machine: use 0.0.0.0"):
        create_dht([], host="203.0.113.5", port=0)


def test_launch_refuses_a_taken_port_before_it_builds_anything(tmp_path):
    root = Path(__file__).resolve().parents[2]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        completed = subprocess.run(
            [sys.executable, "-m", "swarm.cli", "launch", str(root / "recipes" / "tiny-stdlib.yaml"), "--host",
             "127.0.0.1", "--port", str(port), "--dashboard-port", "-1", "--state-dir", str(tmp_path / "state")],
            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True, timeout=120)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert (f"error: --port {port} is already in use on this machine (by another program): pick another port, or "
            "--port 0 for any free port") in output, output
    assert "Traceback" not in output and list(tmp_path.iterdir()) == [], output


def test_announce_host_needs_a_fixed_port():
    # with port 0 it used to be dropped without a word
    with pytest.raises(UsageError, match=r"--announce-host 203.0.113.5 needs a fixed --port"):
        create_dht([], host="127.0.0.1", port=0, announce_host="203.0.113.5")


def test_announce_host_is_refused_in_client_mode():
    with pytest.raises(UsageError, match=r"--announce-host has no effect with --client-mode"):
        listen_addresses("0.0.0.0", 31337, "203.0.113.5", client_mode=True)


def test_an_ip_v6_announce_host_needs_an_ip_v6_listener():
    with pytest.raises(UsageError, match=r"is IPv6 but --host listens on IPv4: pass --host ::"):
        listen_addresses("0.0.0.0", 31337, "2001:db8::1")
    assert listen_addresses("::", 31337, "[2001:db8::1]") == (["/ip6/::/tcp/31337", "/ip4/0.0.0.0/tcp/31337"],
                                                               ["/ip6/2001:db8::1/tcp/31337"])


def _a_node_joining_through(address: str, host: str, reaches) -> None:
    """A node that joins through `address` stores a value, and the node `reaches` reads it."""
    second = create_dht(parse_initial_peers([address]), host=host)
    try:
        second.store(f"joined-through-{address}", "hello", expiration_time=get_dht_time() + 30)
        assert reaches.get(f"joined-through-{address}", latest=True).value == "hello"
    finally:
        second.shutdown()


def test_a_host_name_is_announced_as_the_address_it_resolves_to(tmp_path):
    port = free_port()
    dht = create_dht([], host="127.0.0.1", port=port, announce_host="localhost")
    try:
        announced = f"/ip4/127.0.0.1/tcp/{port}/p2p/{dht.peer_id.to_base58()}"
        assert announced in join_addresses(dht)
        _a_node_joining_through(announced, "127.0.0.1", reaches=dht)
    finally:
        dht.shutdown()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_ip_v6_addresses_listen_announce_and_join_as_ip6():
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    dht = create_dht([], host="::1", port=port, announce_host="::1")
    try:
        address = f"/ip6/::1/tcp/{port}/p2p/{dht.peer_id.to_base58()}"
        assert address in join_addresses(dht)
        _a_node_joining_through(address, "::1", reaches=dht)
    finally:
        dht.shutdown()


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_a_node_on_host_double_colon_takes_ip_v4_and_ip_v6_peers():
    """`--host ::` listened on IPv6 alone: its banner showed only /ip6/ addresses, and IPv4 volunteers could not
    reach it, though `::` means every interface of both families to the kernel."""
    dht = create_dht([], host="::", port=free_port())
    try:
        addresses = join_addresses(dht)
        for family, loopback in (("/ip4/", "127.0.0.1"), ("/ip6/", "::1")):
            address = next(a for a in addresses if a.startswith(f"{family}{loopback}/"))
            _a_node_joining_through(address, loopback, reaches=dht)
    finally:
        dht.shutdown()


def test_a_command_whose_sender_exited_reads_as_the_connection_error_hivemind_takes_in_its_stride():
    """hivemind's DHT loop survives OSError and ConnectionError while reading a command, not EOFError: a volunteer's
    Ctrl-C printed the DHT process's traceback (an averager's last store, its sender gone) and the process died."""
    import multiprocessing
    import traceback

    from swarm.network import _CommandPipe

    reader, writer = multiprocessing.Pipe(duplex=False)
    writer.send(("get", [], {}))
    pipe = _CommandPipe(reader)
    assert pipe.poll() and pipe.recv() == ("get", [], {})
    writer.close()  # the sender is gone
    with pytest.raises(ConnectionError) as raised:
        pipe.recv()
    # the frames where the read failed are kept: swarm.logs recognises the resource sharer's among them
    assert [frame.f_code.co_name for frame, _ in traceback.walk_tb(raised.value.__traceback__)][-1] == "_recv"
