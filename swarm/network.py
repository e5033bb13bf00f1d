"""Joining the swarm's DHT: addresses, validators and the per-process file-descriptor limit.

>>> dht = create_dht(initial_peers=[], host="127.0.0.1", port=0)   # the first node of a new swarm
>>> join_addresses(dht)[0].startswith("/ip4/127.0.0.1/tcp/")
True
"""

from __future__ import annotations

import ipaddress
import logging
import resource
from typing import Sequence

import hivemind
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
                    f"printed, like /ip4/203.0.113.5/tcp/31337/p2p/12D3KooW..."
                ) from None
            if "/p2p/" not in str(maddr):
                raise UsageError(f"--initial-peers {part!r} lacks the /p2p/<peer id> part: copy the whole address")
            peers.append(str(maddr))
    return peers


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
) -> hivemind.DHT:
    """Start this process's DHT node. With `identity`, the peer id and record signatures survive restarts."""
    raise_fd_limit()
    removed, freed = swarm.processes.remove_orphaned_shared_memory()
    if removed:
        logger.info(f"Freed {freed / 2**20:.0f} MB of shared memory left in /dev/shm by {removed} killed hivemind "
                    "process file(s)")
    if host != "0.0.0.0":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(f"--host {host!r} is not an IP address (use 0.0.0.0 to listen on every interface)") from None
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
        kwargs["host_maddrs"] = [f"/ip4/{host}/tcp/{port}"]
        if announce_host and port:
            # announced addresses with port 0 make hivemind 1.1.12 raise, so only announce a fixed port
            kwargs["announce_maddrs"] = [f"/ip4/{announce_host}/tcp/{port}"]
    if identity is not None:
        kwargs["identity_path"] = str(identity.p2p_key_path)
    try:
        return hivemind.DHT(**kwargs)
    except Exception as error:
        text = str(error)
        if initial_peers and not require_bootstrap:
            # hivemind's p2p daemon refuses to start when no bootstrap peer answers, whatever
            # ensure_bootstrap_success says: remembered peers being gone means starting alone
            logger.warning(f"None of {len(initial_peers)} remembered peer(s) answered; starting as the first node")
            return create_dht([], host, port, identity, client_mode, record_validators, announce_host,
                              startup_timeout_s)
        if initial_peers and ("failed to connect" in text.lower() or "bootstrap" in text.lower() or "timeout" in text.lower()):
            raise SwarmError(
                f"could not reach any initial peer ({', '.join(initial_peers)}): {text.splitlines()[0] if text else error!r}.\n"
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
