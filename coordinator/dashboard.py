"""The coordinator's web dashboard: a live page, a JSON API and Prometheus metrics, from one snapshot function.

Endpoints (GET and HEAD only; anything else answers JSON, never a traceback):

    /                 the dashboard page (polls /api/snapshot every 2 s)
    /api/snapshot     the whole snapshot
    /api/status       /api/peers  /api/epochs  /api/leaderboard  /api/ledger   one section each
    /metrics          Prometheus text format (see coordinator/metrics.py for the names)
    /healthz          {"status": "ok"} while the server answers; it does not call the snapshot

A snapshot function that raises makes the API and /metrics answer 503, so a monitor sees "coordinator busy or
broken" rather than stale numbers; /healthz stays 200 because the server itself is fine.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Callable
from urllib.parse import urlsplit

from coordinator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, CoordinatorMetrics

logger = logging.getLogger("swarm.coordinator.dashboard")

SNAPSHOT_SECTIONS = {
    "/api/status": "status",
    "/api/peers": "peers",
    "/api/epochs": "epochs",
    "/api/leaderboard": "leaderboard",
    "/api/ledger": "ledger",
}
# The page is one inline file: allow its own inline script and style, and fetches to this server only.
PAGE_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                        "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'")


class DashboardServer:
    """Serves the dashboard of one run from a daemon thread.

    >>> server = DashboardServer(coordinator.snapshot, host="127.0.0.1", port=8080)   # doctest: +SKIP
    >>> server.start(); print(server.url)                                             # doctest: +SKIP
    http://127.0.0.1:8080/
    >>> server.stop()                                                                 # doctest: +SKIP

    `snapshot` is called once per request, from the server's threads: it must be cheap and thread-safe.
    `port=0` picks a free port (read it back from `url`). The server binds to `host` only: the default,
    127.0.0.1, keeps it private to this machine; use 0.0.0.0 (or a reverse proxy) to show it to volunteers.
    If the log says "Dashboard snapshot failed", the API answers 503 and the page shows a red "state is
    unavailable" banner until the snapshot works again; the page keeps polling by itself.
    """

    def __init__(self, snapshot: Callable[[], dict], host: str = "127.0.0.1", port: int = 0):
        self.snapshot, self.host, self.port = snapshot, host, port
        self.metrics = CoordinatorMetrics()
        self.page = resources.files("coordinator").joinpath("static/dashboard.html").read_bytes()
        self._metrics_lock = threading.Lock()  # update + render of one scrape must not interleave with another's
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("DashboardServer.url is known once start() has bound the port")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._httpd.server_address[1]}/"

    def start(self) -> "DashboardServer":
        if self._httpd is not None:
            raise RuntimeError("DashboardServer is already started")
        try:
            self._httpd = _Server((self.host, self.port), _Handler, dashboard=self)
        except OSError as error:
            raise OSError(error.errno, f"The dashboard cannot listen on {self.host}:{self.port} ({error.strerror}): "
                                       f"choose another port, or 0 for any free one") from error
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs=dict(poll_interval=0.2),
                                        name="swarm-dashboard", daemon=True)
        self._thread.start()
        logger.info(f"Dashboard at {self.url} (Prometheus metrics at {self.url}metrics)")
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd, self._thread = None, None

    def __enter__(self) -> "DashboardServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def render_metrics(self, snapshot: dict) -> bytes:
        with self._metrics_lock:
            self.metrics.update(snapshot)
            return self.metrics.render()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, dashboard: DashboardServer):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.dashboard = dashboard
        super().__init__(address, handler)

    def handle_error(self, request, client_address) -> None:
        """A browser closing its tab mid-reply is routine: no traceback on the coordinator's console."""
        logger.debug(f"Dashboard connection from {client_address[0]} ended early", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "swarm-dashboard"
    sys_version = ""
    error_content_type = "application/json"

    def do_GET(self) -> None:
        try:
            status, content_type, body, extra_headers = self._route(urlsplit(self.path).path)
        except Exception as error:  # a bug here must cost one 500 answer, not the server thread or a traceback
            logger.exception(f"Dashboard request {self.path!r} failed: {error!r}")
            status, content_type, body, extra_headers = _json(HTTPStatus.INTERNAL_SERVER_ERROR,
                                                              {"error": "internal error"})
        self._reply(status, content_type, body, extra_headers)

    do_HEAD = do_GET

    def _route(self, path: str):
        path = path.rstrip("/") or "/"  # /api/status/ is /api/status
        if path == "/healthz":
            return _json(HTTPStatus.OK, {"status": "ok"})
        if path == "/":
            return HTTPStatus.OK, "text/html; charset=utf-8", self.server.dashboard.page, {
                "Content-Security-Policy": PAGE_SECURITY_POLICY}
        if path not in SNAPSHOT_SECTIONS and path not in ("/api/snapshot", "/metrics"):
            return _json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}", "see": "/"})
        try:
            snapshot = self.server.dashboard.snapshot()
        except Exception as error:
            logger.warning(f"Dashboard snapshot failed: {error!r}")
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the coordinator's state is unavailable right now"})
        if path == "/metrics":
            try:
                body = self.server.dashboard.render_metrics(snapshot)
            except (KeyError, TypeError, ValueError) as error:
                logger.warning(f"Dashboard snapshot does not fit the metrics: {error!r}")
                return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the coordinator's state is incomplete"})
            return HTTPStatus.OK, METRICS_CONTENT_TYPE, body, {}
        if path == "/api/snapshot":
            return _json(HTTPStatus.OK, snapshot)
        return _json(HTTPStatus.OK, snapshot[SNAPSHOT_SECTIONS[path]])

    def _reply(self, status: HTTPStatus, content_type: str, body: bytes, extra_headers: dict) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _method_not_allowed(self) -> None:
        status, content_type, body, _ = _json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only GET and HEAD"})
        self._reply(status, content_type, body, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests and unknown methods (the base class's paths) answer JSON like everything else."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        body = json.dumps({"error": message or phrase}).encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED):
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        logger.debug(f"{self.address_string()} {format % args}")


def _json(status: HTTPStatus, data) -> tuple[HTTPStatus, str, bytes, dict]:
    body = json.dumps(_finite(data), allow_nan=False, separators=(",", ":")).encode()
    return status, "application/json", body, {}


def _finite(value):
    """NaN/inf become null: browsers' JSON.parse rejects the NaN that Python's json writes by default."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
