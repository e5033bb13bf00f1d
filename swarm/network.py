"""Joining the swarm's DHT: addresses, validators and the per-process file-descriptor limit.

>>> dht = create_dht(initial_peers=[], host="127.0.0.1", port=0)   # the first node of a new swarm
>>> join_addresses(dht)[0].startswith("/ip4/127.0.0.1/tcp/")
True
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import re
import resource
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import hivemind
from hivemind.p2p import PeerID
from hivemind.utils.multiaddr import Multiaddr

import swarm.processes  # noqa: F401  (hivemind's child processes must not outlive a killed parent)
from swarm.errors import SwarmError, UsageError
from swarm.identity import Identity
from swarm.records import CachingSignatureValidator

logger = logging.getLogger("swarm.network")


def raise_fd_limit(wanted: int = 4096) -> None:
    """hivemind opens many sockets; its maintainers advise `ulimit -n 4096`. Raise the soft limit if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def parse_initial_peers(addresses: Sequence[str]) -> list[str]:
    """Check multiaddrs early, so a typo gets a clear message instead of a libp2p error much later."""
    peers = []
    for address in addresses:
        for part in address.replace(",", " ").split():
            try:
                maddr = Multiaddr(part)
            except Exception:
                raise UsageError(
                    f"--initial-peers {part!r} is not a multiaddr: copy the whole address that `swarm launch` "
                    f"printed, like /ip4/203.0.113.5/tcp/31337/p2p/QmXyz..."
                ) from None
            if "/p2p/" not in str(maddr):
                raise UsageError(f"--initial-peers {part!r} lacks the /p2p/<peer id> part: copy the whole address")
            peers.append(str(maddr))
    return peers


# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


def listen_addresses(host: str = "0.0.0.0", port: int = 0, announce_host: str | None = None,
                     client_mode: bool = False) -> tuple[list[str], list[str]]:
    """The multiaddrs to listen on and to announce, from the --host, --port and --announce-host flags.

    Checked here, before hivemind sees them: its p2p daemon fails on a malformed address with an error that its
    DHT process cannot hand back, and the caller then waits forever. A host name given as `announce_host` is
    resolved now (volunteers dial addresses, not names), to the addresses of the family `host` listens on.

    >>> listen_addresses("0.0.0.0", 31337, "127.0.0.1")
    (['/ip4/0.0.0.0/tcp/31337'], ['/ip4/127.0.0.1/tcp/31337'])

    `::` listens on every interface of both families, as the kernel's own default for `::` does: the p2p daemon's
    IPv6 socket alone would take no IPv4 volunteer.

    >>> listen_addresses("::", 31337)
    (['/ip6/::/tcp/31337', '/ip4/0.0.0.0/tcp/31337'], [])
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: use a TCP port from 1 to 65535, or 0 for any free port")
    try:
        listen_ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise UsageError(f"--host {host!r} is not an IP address: use 0.0.0.0 to listen on every IPv4 interface (:: "
                         "on every interface, IPv6 and IPv4), or one of this machine's addresses") from None
    listen = [_multiaddr(listen_ip, port)]
    if listen_ip == ipaddress.IPv6Address("::"):
        listen.append(_multiaddr(ipaddress.IPv4Address("0.0.0.0"), port))
    if not announce_host:
        return listen, []
    if client_mode:
        raise UsageError("--announce-host has no effect with --client-mode (a client-mode peer accepts no "
                         "connections): drop one of them")
    if port == 0:
        raise UsageError(f"--announce-host {announce_host} needs a fixed --port, the one forwarded to this machine "
                         "(e.g. --port 31337): with port 0 the node listens on a random port that nothing forwards to")
    announced = [_multiaddr(ip, port) for ip in _announce_ips(announce_host, listen_ip.version)]
    return listen, announced


def _announce_ips(announce_host: str, version: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses of IP `version` that `announce_host` stands for: itself if it is one, else what it resolves to."""
    try:
        ips = [ipaddress.ip_address(announce_host.strip("[]"))]
        flag = f"--announce-host {announce_host}"
    except ValueError:
        ips = _resolve(announce_host)
        flag = f"--announce-host {announce_host} (resolves to {', '.join(map(str, ips))})"
    for ip in ips:
        if ip.is_unspecified or ip.is_multicast:
            raise UsageError(f"{flag}: {ip} is not an address others can dial: pass this machine's public address")
    usable = [ip for ip in ips if ip.version == version]
    if not usable:
        raise UsageError(f"{flag} is IPv{ips[0].version} but --host listens on IPv{version}: pass --host "
                         f"{'::' if version == 4 else '0.0.0.0'}, or an IPv{version} address to announce")
    return usable


def _resolve(host_name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if not _HOST_NAME.fullmatch(host_name) or host_name.replace(".", "").isdigit():
        raise UsageError(f"--announce-host {host_name!r} is neither an IP address nor a host name: pass the public "
                         "address volunteers can reach, e.g. --announce-host 203.0.113.5")
    try:
        found = socket.getaddrinfo(host_name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else "not a valid host name"
        raise UsageError(f"--announce-host {host_name!r} does not resolve ({reason}): check the name, or pass the "
                         "public IP address, e.g. --announce-host 203.0.113.5") from None
    # a link-local IPv6 address comes with its interface ("fe80::1%eth0"), which a multiaddr cannot carry
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))


def _multiaddr(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"/ip{ip.version}/{ip}/tcp/{port}"


# what to do about a taken --port, for `swarm launch` (its default port is fixed) and `swarm join` (any free port)
LAUNCH_PORT_FIX = "pick another port, or --port 0 for any free port"
JOIN_PORT_FIX = "pick another port or leave --port out (any free port)"


def _port_in_use(port: int, fix: str) -> UsageError:
    holder = swarm_command_on_port(port)
    if holder is None:
        return UsageError(f"--port {port} is already in use on this machine (by another program): {fix}")
    return UsageError(f"--port {port} is already in use on this machine by {holder}: stop it first (Ctrl-C in its "
                      f"terminal, or `kill {holder.pid}`), or {fix}")


_SWARM_COMMANDS = {"launch": "a swarm coordinator", "join": "a swarm volunteer", "demo": "swarm demo"}


@dataclass(frozen=True)
class SwarmCommand:
    """A `swarm launch`, `join` or `demo` running on this machine: its main process, and the run it serves if known."""

    pid: int
    command: str
    run_id: str | None = None

    def __str__(self) -> str:
        run = f"run {self.run_id!r}, " if self.run_id else ""
        return f"{_SWARM_COMMANDS[self.command]} ({run}pid {self.pid})"


def swarm_command_on_port(port: int) -> SwarmCommand | None:
    """The swarm command whose node listens on TCP `port` on this machine, or None (another program, or a process
    this user may not inspect). hivemind's p2p daemon holds a node's port, below the DHT process (a fork of the
    command), below the command's own process."""
    try:
        import psutil

        pids = {connection.pid for connection in psutil.net_connections("tcp")
                if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port
                and connection.pid}
        for pid in sorted(pids):
            process = psutil.Process(pid)
            for candidate in [process, *process.parents()]:
                command = _swarm_command(candidate.cmdline())
                if command is None:
                    continue
                parent = candidate.parent()
                while parent is not None and parent.cmdline() == candidate.cmdline():  # up to the command itself
                    candidate, parent = parent, parent.parent()
                if candidate.pid == os.getpid():
                    return None
                name, arguments = command
                return SwarmCommand(candidate.pid, name, _launched_run_id(arguments, candidate.cwd())
                                    if name == "launch" else None)
    except Exception:  # psutil may not see other users' processes (or any, on some systems): say nothing more
        return None
    return None


def _swarm_command(command_line: list[str]) -> tuple[str, list[str]] | None:
    """(`launch`, its arguments) for `.../bin/swarm launch ...` or `python -m swarm.cli launch ...`, else None."""
    for index, argument in enumerate(command_line):
        module = argument == "swarm.cli" and command_line[index - 1:index] == ["-m"]
        if os.path.basename(argument) == "swarm" or module:
            rest = [item for item in command_line[index + 1:] if item not in ("--verbose", "-v")]
            if rest and rest[0] in _SWARM_COMMANDS:
                return rest[0], rest[1:]
    return None


def _launched_run_id(arguments: list[str], cwd: str) -> str | None:
    """The run id in the recipe a `swarm launch` was given (its first argument that is no option or option value)."""
    import yaml

    index = 0
    while index < len(arguments) and arguments[index].startswith("-"):  # every launch option but --verbose has a value
        index += 1 if "=" in arguments[index] or arguments[index] in ("--verbose", "-v") else 2
    if index >= len(arguments):
        return None
    try:
        recipe = yaml.safe_load((Path(cwd) / arguments[index]).read_text(encoding="utf-8"))
        run_id = recipe["run"]["id"]
    except Exception:  # edited or moved since: the run is then not named
        return None
    return run_id if isinstance(run_id, str) else None


def check_listen_port(host: str, port: int, fix: str = LAUNCH_PORT_FIX) -> None:
    """Fail with the flag and the fix when --port is taken: bind it once and let it go, as the p2p daemon will.

    hivemind's p2p daemon binds with SO_REUSEPORT, so on the port of another libp2p node (a coordinator on this
    machine) it starts without a word and then cannot reach that node ("could not reach any initial peer"); on a
    port that any other program holds it fails with "bind: address already in use", naming no flag. A plain bind
    (SO_REUSEADDR only, so connections of an earlier run still in TIME_WAIT do not count) fails in both cases.
    With port 0 it checks only that `host` is an address of this machine.
    """
    listen_addresses(host, port)  # a malformed --host or --port is named as such
    listen_ip = ipaddress.ip_address(host.strip("[]"))
    ips = [listen_ip] + ([ipaddress.IPv4Address("0.0.0.0")] if listen_ip == ipaddress.IPv6Address("::") else [])
    for ip in ips:  # `::` listens on both families (listen_addresses)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # as the daemon (Go) listens on /ip6/: an IPv4 user is no clash
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind((str(ip), port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise _port_in_use(port, fix) from None
            if error.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"--host {host} is not an address of this machine: use 0.0.0.0 to listen on every "
                                 "interface, or one of this machine's own addresses") from None
            if error.errno == errno.EACCES:
                raise UsageError(f"--port {port}: ports below 1024 need administrator rights; {fix}") from None
            # anything else: let the p2p daemon try, and report what it says


class _CommandPipe:
    """The DHT process's end of the pipe its owner sends commands through, reading a command whose sender has exited
    as the ConnectionError hivemind expects.

    A command carries its sender's reply pipe, which the DHT process fetches from the sender as it reads the command
    (multiprocessing's resource sharer). hivemind's loop takes a failed fetch (OSError, ConnectionError) in its stride,
    but not EOFError, which it raises when the sender exited cleanly meanwhile (an averager's last store as its peer
    leaves): the DHT process then died with a 20-line traceback. The original traceback is kept, so the log filter
    for such commands (swarm.logs) recognises it.
    """

    def __init__(self, pipe):
        self._pipe = pipe

    def recv(self):
        try:
            return self._pipe.recv()
        except EOFError as error:
            raise ConnectionError("the process that sent this command exited before it was read").with_traceback(
                error.__traceback__) from None

    def __getattr__(self, name):
        return getattr(self._pipe, name)


class SwarmDHT(hivemind.DHT):
    """hivemind's DHT, whose process outlives a command from a process that has exited (`_CommandPipe`)."""

    def run(self) -> None:
        self._inner_pipe = _CommandPipe(self._inner_pipe)
        super().run()


def create_dht(
    initial_peers: Sequence[str],
    host: str = "0.0.0.0",
    port: int = 0,
    identity: Identity | None = None,
    client_mode: bool = False,
    record_validators: Sequence = (),
    announce_host: str | None = None,
    startup_timeout_s: float = 60.0,
    require_bootstrap: bool = True,
    port_fix: str = LAUNCH_PORT_FIX,
) -> hivemind.DHT:
    """Start this process's DHT node. With `identity`, the peer id and record signatures survive restarts.

    `port_fix` is what the error of a taken `port` tells the user to do (it differs between launch and join)."""
    host_maddrs, announce_maddrs = listen_addresses(host, port, announce_host, client_mode)
    if not client_mode:  # a client-mode node listens on nothing
        check_listen_port(host, port, port_fix)
    raise_fd_limit()
    removed, freed = swarm.processes.remove_orphaned_shared_memory()
    if removed:
        logger.info(f"Freed {freed / 2**20:.0f} MB of shared memory left in /dev/shm by {removed} killed hivemind "
                    "process file(s)")
    sockets = swarm.processes.remove_stale_hivemind_sockets()
    if sockets:
        logger.debug(f"Removed {sockets} stale hivemind socket(s) from /tmp")
    # always a signature validator: without one a node cannot even decode other peers' signed records
    # (its dht.get of a signed key never returns); without an identity the key is per-process
    validators = [CachingSignatureValidator(identity.signing_key if identity is not None else None),
                  *record_validators]
    kwargs = dict(
        initial_peers=list(initial_peers),
        start=True,
        client_mode=client_mode,
        record_validators=validators,
        await_ready=True,
        startup_timeout=startup_timeout_s,
        # remembered peers (a restarting coordinator) may all be gone: then start alone instead of failing
        ensure_bootstrap_success=require_bootstrap,
    )
    if not client_mode:
        kwargs["host_maddrs"] = host_maddrs
        if announce_maddrs:
            kwargs["announce_maddrs"] = announce_maddrs
            logger.info(f"Announcing {', '.join(announce_maddrs)} to other peers (--announce-host {announce_host}; a "
                        "host name is resolved once, at start)")
    if identity is not None:
        kwargs["identity_path"] = str(identity.p2p_key_path)
    try:
        return SwarmDHT(**kwargs)
    except Exception as error:
        text = str(error)
        if "address already in use" in text.lower() and port != 0:  # taken since check_listen_port
            raise _port_in_use(port, port_fix) from None
        if initial_peers and not require_bootstrap:
            # hivemind's p2p daemon refuses to start when no bootstrap peer answers, whatever
            # ensure_bootstrap_success says: remembered peers being gone means starting alone
            logger.warning(f"None of {len(initial_peers)} remembered peer(s) answered; starting as the first node")
            return create_dht([], host, port, identity, client_mode, record_validators, announce_host,
                              startup_timeout_s, port_fix=port_fix)
        if initial_peers and any(word in text.lower() for word in ("failed to connect", "bootstrap", "timeout")):
            reason = text.splitlines()[0] if text else repr(error)
            raise SwarmError(
                f"could not reach any initial peer ({', '.join(initial_peers)}): {reason}.\n"
                "Next steps: 1) check that `swarm launch` is still running; 2) check the address (IP, port and "
                "peer id) was copied whole; 3) check that a firewall lets TCP through to that port."
            ) from None
        if "already taken" in text:
            raise SwarmError(
                f"{text}: another process is using this identity. Stop it, or pass a different --identity DIR."
            ) from None
        raise SwarmError(f"could not start the DHT node: {text or repr(error)}") from None


def join_addresses(dht: hivemind.DHT) -> list[str]:
    """The multiaddrs other machines should use, public-looking ones first, loopback last."""
    addresses = [str(maddr) for maddr in dht.get_visible_maddrs(latest=True)]

    def rank(address: str) -> int:
        parts = address.split("/")
        try:
            ip = ipaddress.ip_address(parts[2])
        except (ValueError, IndexError):
            return 1
        return 3 if ip.is_loopback else 2 if ip.is_private else 0

    return sorted(dict.fromkeys(addresses), key=rank)


async def recontact(_dht, node, addresses: Sequence[str], timeout_s: float = 15.0) -> int:
    """Dial each address (`/ip4/.../tcp/.../p2p/<id>`) again, ping it into the routing table, then re-walk the DHT
    around this node's id; returns how many answered. Run with `dht.run_coroutine(partial(recontact, addresses=...))`.

    A link down for a minute empties a DHT node's routing table (every request to every node fails), and hivemind
    never bootstraps again by itself: once the link is back, the node knows nobody, and nobody's requests tell it
    about the others. The dial goes through the p2p daemon with the addresses themselves, as its own records of them
    may be gone too.
    """
    by_peer: dict[PeerID, list[Multiaddr]] = {}
    for address in addresses:
        try:
            multiaddr = Multiaddr(address)
            peer = PeerID.from_base58(multiaddr["p2p"])
            by_peer.setdefault(peer, []).append(multiaddr.decapsulate(Multiaddr(f"/p2p/{multiaddr['p2p']}")))
        except Exception:  # not a full peer address: nothing to dial
            continue
    if not by_peer:
        return 0

    async def one(peer, multiaddrs) -> bool:
        try:  # hivemind exposes no dial; its daemon client does
            await asyncio.wait_for(node.p2p._client.connect(peer, multiaddrs), timeout_s)
        except Exception as error:
            logger.debug(f"Dialling {peer} failed: {error!r}")
        return await node.protocol.call_ping(peer) is not None

    answered = sum(await asyncio.gather(*(one(peer, multiaddrs) for peer, multiaddrs in by_peer.items())))
    if answered:
        await node.find_nearest_nodes([node.node_id])
    return answered
