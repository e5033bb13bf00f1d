"""A small network lab: hosts in Linux network namespaces behind shaped links with emulated delay.

    sudo .venv/bin/python benchmarks/netlab.py --measure 1gbit-5ms   # throughput and RTT through one lab link
    sudo .venv/bin/python benchmarks/netlab.py --cleanup             # remove labs left by dead processes

Layout. One "hub" namespace (IP forwarding off) and one namespace per host, each host joined to the hub by its
own veth pair, addressed point to point:

    host i  eth0 10.1.a.b  <--- veth, tbf both ways --->  hub  v<i> 10.2.a.b     (a.b = i // 256 . i % 256)
                                                           hub  lo   10.3.0.1     (services: a bootstrap node)

A host routes 10.0.0.0/8 to the hub and has an `unreachable` route for 10.1.0.0/16: it reaches every hub
address (relays, services) and never another host directly (a direct dial fails at once). Because forwarding is
off in the hub, every host-to-host byte goes through a relay: for each (host, port) that others must dial, a
small asyncio TCP relay runs in the hub, listens on the host's hub-side address `hub_ip(i)` and forwards to the
host's real address `host_ip(i)`, delaying every chunk by the one-way delay in each direction (order preserved).
A process on host i therefore listens on `host_ip(i)` (or 0.0.0.0) at a fixed port and announces
`dial_address(i, port)`; hivemind: `create_dht(..., host=lab.host_ip(i), port=P, announce_host=lab.dial_address(i, P))`.

Conventions (say them in results):
- A `Link(rate_mbit, delay_ms)` is a host's access link: `rate_mbit` shapes its uplink (tbf on the host's eth0) and
  its downlink (tbf on the hub's v<i>), so a byte from i to j crosses i's uplink and j's downlink.
- `delay_ms` is one way, per path: the relay of the host being dialled adds it once in each direction, so a
  request/response between two hosts takes 2 x delay_ms (the issue's "100 Mbit/s 25 ms" = 50 ms RTT). Connection
  set-up adds one more RTT before the first bytes flow, as TCP's handshake would.
- The delay is emulated in user space (this kernel has no netem): the relay splits each TCP connection into two
  local legs joined by a delay line, so TCP's congestion window never sees the RTT (a real 50 ms path would need
  its window to grow; with Linux's autotuning that costs a few RTTs per connection, not steady-state rate).
- Traffic to the hub's services (10.3.0.1) is shaped by the host's link but not delayed.
- `bytes(i)` reads the host's eth0 counters: every byte on the wire (TCP/IP headers, DHT, retransmits included).

API:

    from benchmarks.netlab import Link, NetLab
    with NetLab(hosts=4, link=Link(rate_mbit=100, delay_ms=25)) as lab:
        boot = lab.popen_hub([python, "bootstrap.py", "--host", lab.service_ip, "--port", "31000"])
        peer = lab.popen(0, [python, "peer.py", "--host", lab.host_ip(0), "--port", "31337",
                             "--announce", lab.dial_address(0, 31337)], stdout=log)  # starts host 0's relay
        before = lab.bytes(0); ...; after = lab.bytes(0)   # {"sent": ..., "received": ...}
    # on exit: the lab's processes are stopped and its namespaces deleted

`NetLab(hosts, link, links={i: Link(...)})` gives host i its own link (e.g. one joining peer on a slow line);
`link=None` leaves links unshaped and undelayed (relays still in the path). Names start with `swl<pid>x<tag>-`
so that `remove_stale_labs()` (also run at every start) can delete labs whose process has died. Needs root and
`ip`/`tc` (iproute2); `NetLabUnavailable` says what is missing. Stdlib only: relays start without torch.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST_NET = "10.1"  # hosts' own addresses: unreachable from other hosts
HUB_NET = "10.2"  # hub-side addresses, one per host link: where that host's relays listen
SERVICE_IP = "10.3.0.1"  # on the hub's loopback: bootstrap nodes and other unshaped services
NAME_PREFIX = "swl"
_NAME = re.compile(rf"^{NAME_PREFIX}(\d+)x([0-9a-f]+)-(hub|h\d+)$")
RELAY_CHUNK_BYTES = 256 * 1024
# what a relay sees when one end of a connection goes away (uvloop raises RuntimeError on a closed transport)
_CLOSED = (ConnectionError, OSError, RuntimeError)


class NetLabUnavailable(RuntimeError):
    """This machine cannot host a lab (not root, no iproute2, no namespaces or no tbf)."""


@dataclasses.dataclass(frozen=True)
class Link:
    """A host's access link: `rate_mbit` each way (None: unshaped), `delay_ms` one way per path."""

    rate_mbit: float | None
    delay_ms: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Link":
        """'100mbit-25ms', '1gbit-5ms', '20mbit-50ms' (rate, then one-way delay)."""
        match = re.fullmatch(r"(\d+(?:\.\d+)?)(gbit|mbit)-(\d+(?:\.\d+)?)ms", text.strip().lower())
        if not match:
            raise ValueError(f"link {text!r}: expected RATE-DELAY like 100mbit-25ms or 1gbit-5ms")
        rate = float(match.group(1)) * (1000 if match.group(2) == "gbit" else 1)
        return cls(rate_mbit=rate, delay_ms=float(match.group(3)))

    @property
    def name(self) -> str:
        if self.rate_mbit is None:
            return f"unshaped-{self.delay_ms:g}ms"
        rate = f"{self.rate_mbit / 1000:g}gbit" if self.rate_mbit >= 1000 else f"{self.rate_mbit:g}mbit"
        return f"{rate}-{self.delay_ms:g}ms"


def _run(argv: list[str], check: bool = True, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    try:
        process = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:  # seen with a 124M-parameter run saturating both cores
        raise RuntimeError(f"{' '.join(argv)} did not answer within {timeout_s:.0f} s (machine overloaded?)") from None
    if check and process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {(process.stderr or process.stdout).strip()}")
    return process


def check_requirements() -> None:
    """Raise NetLabUnavailable with the fix when this process cannot build a lab."""
    if os.geteuid() != 0:
        raise NetLabUnavailable("network namespaces need root: run as root (or sudo)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetLabUnavailable(f"`{tool}` not found: install iproute2 (apt-get install iproute2)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    output = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in output.splitlines() if line.strip()]


def _delete_namespace(name: str) -> None:
    """Kill what still runs in the namespace (only lab namespaces reach here), then delete it."""
    for pid in _run(["ip", "netns", "pids", name], check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _run(["ip", "netns", "delete", name], check=False)


def remove_stale_labs() -> list[str]:
    """Delete the namespaces of labs whose creating process is gone; returns their names."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return []
    removed = []
    for name in _namespaces():
        match = _NAME.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(name)
            removed.append(name)
    return removed


class NetLab:
    """Hosts in network namespaces behind shaped, delayed links; see the module docstring.

    >>> with NetLab(hosts=2, link=Link.parse("20mbit-25ms")) as lab:          # doctest: +SKIP
    ...     lab.popen(1, ["python", "-m", "http.server", "--bind", lab.host_ip(1), "8000"])
    ...     url = f"http://{lab.dial_address(1, 8000)}:8000/"                 # what host 0 must dial
    """

    def __init__(self, hosts: int, link: Link | None = None, links: dict[int, Link] | None = None,
                 python: str = sys.executable):
        if not 1 <= hosts <= 4096:
            raise ValueError(f"hosts={hosts}: a lab holds 1 to 4096 hosts")
        self.hosts = hosts
        self.link = link
        self.links = {i: (links or {}).get(i, link) for i in range(hosts)}
        self.python = python
        self.tag = f"{NAME_PREFIX}{os.getpid()}x{secrets.token_hex(2)}"
        self.hub = f"{self.tag}-hub"
        self.service_ip = SERVICE_IP
        self._processes: list[subprocess.Popen] = []
        self._relays: dict[tuple[int, int], subprocess.Popen] = {}
        self._started = False

    # ------------------------------------------------------------------------------------------- addresses
    def namespace(self, host: int) -> str:
        self._check_host(host)
        return f"{self.tag}-h{host}"

    def host_ip(self, host: int) -> str:
        """Host's own address: listen here (or on 0.0.0.0); other hosts cannot reach it directly."""
        self._check_host(host)
        return f"{HOST_NET}.{host // 256}.{host % 256}"

    def hub_ip(self, host: int) -> str:
        """The hub's end of the host's link: its relays listen here."""
        self._check_host(host)
        return f"{HUB_NET}.{host // 256}.{host % 256}"

    def dial_address(self, host: int, port: int) -> str:
        """The IP other hosts dial to reach `port` on `host` (through its delaying relay, started on first use)."""
        self.relay(host, port)
        return self.hub_ip(host)

    def maddr(self, host: int, port: int) -> str:
        return f"/ip4/{self.dial_address(host, port)}/tcp/{port}"

    # ------------------------------------------------------------------------------------------- life cycle
    def __enter__(self) -> "NetLab":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        check_requirements()
        remove_stale_labs()
        atexit.register(self.close)
        self._started = True
        try:
            self._build()
        except Exception:
            self.close()
            raise

    def _build(self) -> None:
        hub = self.hub
        try:
            _run(["ip", "netns", "add", hub])
        except RuntimeError as error:  # e.g. a container without CAP_SYS_ADMIN
            raise NetLabUnavailable(f"cannot create a network namespace: {error}") from None
        _run(["ip", "-n", hub, "link", "set", "lo", "up"])
        _run(["ip", "-n", hub, "addr", "add", f"{SERVICE_IP}/32", "dev", "lo"])
        _run(["ip", "netns", "exec", hub, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
        for host in range(self.hosts):
            ns, hub_if = self.namespace(host), f"v{host}"
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", hub, "link", "add", hub_if, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "-n", hub, "addr", "add", f"{self.hub_ip(host)}/32", "peer", f"{self.host_ip(host)}/32",
                  "dev", hub_if])
            _run(["ip", "-n", ns, "addr", "add", f"{self.host_ip(host)}/32", "peer", f"{self.hub_ip(host)}/32",
                  "dev", "eth0"])
            _run(["ip", "-n", hub, "link", "set", hub_if, "up"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "route", "add", "10.0.0.0/8", "via", self.hub_ip(host), "dev", "eth0"])
            _run(["ip", "-n", ns, "route", "add", "unreachable", f"{HOST_NET}.0.0/16"])
            link = self.links[host]
            if link is not None and link.rate_mbit is not None:
                self._shape(ns, "eth0", link.rate_mbit)  # uplink
                self._shape(hub, hub_if, link.rate_mbit)  # downlink

    @staticmethod
    def _shape(ns: str, interface: str, rate_mbit: float) -> None:
        """tbf at `rate_mbit`: a 4 ms burst (at least 32 KiB) and a queue of at most 25 ms at the rate."""
        rate_bytes_s = rate_mbit * 1e6 / 8
        burst = max(32 * 1024, int(rate_bytes_s * 0.004))
        _run(["tc", "-n", ns, "qdisc", "replace", "dev", interface, "root", "tbf", "rate", f"{rate_mbit:g}mbit",
              "burst", str(burst), "latency", "25ms"])

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        for process in [*self._processes, *self._relays.values()]:
            if process.poll() is None:
                process.terminate()
        deadline = time.time() + 5
        for process in [*self._processes, *self._relays.values()]:
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for name in _namespaces():
            if name.startswith(self.tag + "-"):
                _delete_namespace(name)
        try:
            atexit.unregister(self.close)
        except Exception:
            pass

    # ------------------------------------------------------------------------------------------- processes
    def popen(self, host: int, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start `argv` in host's namespace (subprocess.Popen keywords pass through); stopped on close."""
        return self._popen(self.namespace(host), argv, **popen_kwargs)

    def popen_hub(self, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start `argv` in the hub (e.g. a bootstrap node listening on `service_ip`); stopped on close."""
        return self._popen(self.hub, argv, **popen_kwargs)

    def run(self, host: int | None, argv: list[str], timeout_s: float = 120, **kwargs) -> subprocess.CompletedProcess:
        """Run `argv` to completion on `host` (None: the hub)."""
        ns = self.hub if host is None else self.namespace(host)
        return subprocess.run(["ip", "netns", "exec", ns, *argv], timeout=timeout_s, **kwargs)

    def _popen(self, ns: str, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        if not self._started:
            raise RuntimeError("the lab is not started: use `with NetLab(...) as lab:`")
        process = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **popen_kwargs)
        self._processes.append(process)
        return process

    def relay(self, host: int, port: int) -> subprocess.Popen:
        """Start (once) the relay from hub_ip(host):port to host_ip(host):port, delaying by host's link."""
        key = (host, port)
        if key in self._relays and self._relays[key].poll() is None:
            return self._relays[key]
        link = self.links[host]
        delay_ms = link.delay_ms if link is not None else 0.0
        process = self._popen(self.hub, [self.python, str(Path(__file__).resolve()), "--relay",
                                         f"{self.hub_ip(host)}:{port}", f"{self.host_ip(host)}:{port}",
                                         "--delay-ms", str(delay_ms)],
                              stdout=subprocess.PIPE, text=True)
        self._processes.remove(process)
        line = process.stdout.readline()  # "ready" once listening
        if not line.startswith("ready"):
            process.kill()
            raise RuntimeError(f"relay for host {host} port {port} did not start (exit code {process.wait()})")
        self._relays[key] = process
        return process

    # ------------------------------------------------------------------------------------------- counters
    def bytes(self, host: int) -> dict[str, int]:
        """Bytes host's eth0 has sent and received so far (on the wire: headers and every protocol included)."""
        output = _run(["ip", "-n", self.namespace(host), "-s", "-j", "link", "show", "dev", "eth0"], timeout_s=120).stdout
        stats = json.loads(output)[0]["stats64"]
        return {"sent": int(stats["tx"]["bytes"]), "received": int(stats["rx"]["bytes"])}

    def _check_host(self, host: int) -> None:
        if not 0 <= host < self.hosts:
            raise IndexError(f"host {host}: this lab has hosts 0..{self.hosts - 1}")


# ------------------------------------------------------------------------------------------------- the relay
async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float,
                max_buffered_bytes: int) -> None:
    """Copy reader to writer, each chunk leaving `delay_s` after it arrived; half-close on EOF."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    room = asyncio.Event()
    room.set()
    buffered = 0

    async def receive() -> None:
        nonlocal buffered
        while True:
            try:
                data = await reader.read(RELAY_CHUNK_BYTES)
            except _CLOSED:
                data = b""
            queue.put_nowait((loop.time() + delay_s, data))
            if not data:
                return
            buffered += len(data)
            if buffered > max_buffered_bytes:  # keep the delay line bounded: the sender's TCP waits meanwhile
                room.clear()
                await room.wait()

    async def send() -> None:
        nonlocal buffered
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
            except _CLOSED:  # the other side went away: drop what is left, as a broken path would
                return
            buffered -= len(data)
            if buffered <= max_buffered_bytes:
                room.set()

    receiver = asyncio.ensure_future(receive())
    try:
        await send()
    finally:
        receiver.cancel()


async def _serve_relay(listen: tuple[str, int], target: tuple[str, int], delay_s: float) -> None:
    # the delay line holds at most ~0.5 s at 1 Gbit/s, far more than any link's bandwidth x delay here
    max_buffered = 64 * 1024 * 1024

    async def handle(client_reader, client_writer):
        try:
            await asyncio.sleep(2 * delay_s)  # the TCP handshake's round trip before the first bytes
            server_reader, server_writer = await asyncio.open_connection(*target, limit=4 * RELAY_CHUNK_BYTES)
        except OSError:
            client_writer.close()
            return
        for writer in (client_writer, server_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(_pump(client_reader, server_writer, delay_s, max_buffered),
                                 _pump(server_reader, client_writer, delay_s, max_buffered))
        except _CLOSED:
            pass
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    server = await asyncio.start_server(handle, *listen, limit=4 * RELAY_CHUNK_BYTES, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def run_relay(listen: str, target: str, delay_ms: float) -> None:
    """Serve one relay until killed (this process runs in the lab's hub)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def split(address: str) -> tuple[str, int]:
        host, _, port = address.rpartition(":")
        return host, int(port)

    try:
        asyncio.run(_serve_relay(split(listen), split(target), delay_ms / 1000))
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------------------------------------- measuring
_SINK = r"""
import socket, sys, time
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2]))); server.listen(8); print("listening", flush=True)
while True:
    conn, _ = server.accept()
    mode = conn.recv(1)
    if mode == b"e":          # echo: answer each message of up to 64 bytes
        while True:
            data = conn.recv(64)
            if not data: break
            conn.sendall(data)
    else:                     # sink: read until EOF, then answer with the byte count
        total = 0
        while True:
            data = conn.recv(1 << 18)
            if not data: break
            total += len(data)
        conn.sendall(str(total).encode())
    conn.close()
"""

_CLIENT = r"""
import json, socket, sys, time
host, port, megabytes, pings = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
out = {}
begun = time.perf_counter(); conn = socket.create_connection((host, port)); conn.sendall(b"e")
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
conn.sendall(b"x"); conn.recv(64); out["first_reply_s"] = time.perf_counter() - begun
rtts = []
for _ in range(pings):
    began = time.perf_counter(); conn.sendall(b"ping"); got = b""
    while len(got) < 4: got += conn.recv(64)
    rtts.append(time.perf_counter() - began)
conn.close(); out["rtt_s"] = rtts
payload = b"\0" * (1 << 20); total = int(megabytes * (1 << 20))
conn = socket.create_connection((host, port)); conn.sendall(b"s")
began = time.perf_counter(); sent = 0
while sent < total:
    chunk = payload[: min(len(payload), total - sent)]; conn.sendall(chunk); sent += len(chunk)
conn.shutdown(socket.SHUT_WR); answer = conn.recv(64)
elapsed = time.perf_counter() - began
out.update(bytes=total, received=int(answer), transfer_s=elapsed, mbit_per_s=total * 8 / elapsed / 1e6)
print(json.dumps(out), flush=True)
"""


def measure_link(lab: NetLab, sender: int, receiver: int, megabytes: float, port: int = 5201,
                 pings: int = 10) -> dict:
    """RTT (echo through the receiver's relay) and goodput of one bulk TCP transfer from `sender` to `receiver`."""
    sink = lab.popen(receiver, [lab.python, "-c", _SINK, lab.host_ip(receiver), str(port)],
                     stdout=subprocess.PIPE, text=True)
    try:
        if not sink.stdout.readline().startswith("listening"):
            raise RuntimeError("the sink did not start")
        address = lab.dial_address(receiver, port)
        counters = lab.bytes(sender)
        client = lab.run(sender, [lab.python, "-c", _CLIENT, address, str(port), str(megabytes), str(pings)],
                         capture_output=True, text=True, timeout_s=300)
        if client.returncode != 0:
            raise RuntimeError(f"the client failed: {client.stderr.strip()[-500:]}")
        result = json.loads(client.stdout)
        after = lab.bytes(sender)
        result["wire_bytes_sent"] = after["sent"] - counters["sent"]
        result["rtt_ms_median"] = sorted(result["rtt_s"])[len(result["rtt_s"]) // 2] * 1000
        return result
    finally:
        sink.kill()
        sink.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Network namespaces with shaped, delayed links (see module doc).")
    parser.add_argument("--relay", nargs=2, metavar=("LISTEN", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--cleanup", action="store_true", help="Remove labs whose process has died.")
    parser.add_argument("--measure", metavar="LINK", help="Measure RTT and throughput of a 2-host lab, e.g. 1gbit-5ms "
                        "(or 'unshaped' for the relay alone).")
    parser.add_argument("--megabytes", type=float, default=None, help="Bulk transfer size for --measure.")
    args = parser.parse_args(argv)
    if args.relay:
        run_relay(*args.relay, args.delay_ms)
        return 0
    if args.cleanup:
        print("\n".join(remove_stale_labs()) or "no stale labs")
        return 0
    if args.measure:
        try:
            link = Link(rate_mbit=None) if args.measure == "unshaped" else Link.parse(args.measure)
        except ValueError as error:
            print(f"--measure: {error}", file=sys.stderr)
            return 2
        megabytes = args.megabytes or (max(2.0, link.rate_mbit / 8 * 3) if link.rate_mbit else 300.0)
        try:
            with NetLab(hosts=2, link=link) as lab:
                result = measure_link(lab, 0, 1, megabytes)
        except NetLabUnavailable as error:
            print(f"netlab: {error}", file=sys.stderr)
            return 2
        result.pop("rtt_s")
        print(json.dumps({"link": link.name, **{k: round(v, 4) if isinstance(v, float) else v
                                               for k, v in result.items()}}))
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
