"""A fault-injecting HTTP proxy between imagesmith and a real registry (tests only).

``FaultProxy(upstream)`` listens on loopback and forwards every request to ``upstream``
(``host:port``, plain http), rewriting ``Location`` headers that point at the upstream so
the client keeps talking to the proxy. ``rules`` decide faults: each :class:`Rule` matches a
method and a path regex and fires on chosen occurrences (1-based, counted per rule), with an
action:

* ``status``: answer ``status`` (e.g. 500, 429 with ``headers={"Retry-After": "1"}``)
  and ``body`` (empty by default) without forwarding;
* ``drop_request``: read half the request body, then close the connection (nothing
  forwarded);
* ``drop_response``: forward, then send the headers and half the body and close;
* ``stall``: sleep ``seconds`` (past the client's timeout), then close;
* ``corrupt``: forward, and flip one byte in the middle of the response body;
* ``callback``: call ``callback()`` (e.g. kill a client process), then behave as
  ``drop_request``.

``log`` records ``(method, path, status-or-action)`` for every request.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "content-length",
    }
)


@dataclass
class Rule:
    method: str
    path: str
    action: str
    on: frozenset[int] = frozenset({1})
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    body: bytes = b""
    callback: Callable[[], None] | None = None
    seen: int = 0
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.search(self.path, path) is not None


class FaultProxy:
    def __init__(self, upstream: str, rules: list[Rule] | None = None) -> None:
        self.upstream = upstream
        self.rules: list[Rule] = rules or []
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                proxy._serve(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self, method: str, path_regex: str = "") -> int:
        return sum(1 for m, p, _ in self.log if m == method and re.search(path_regex, p))

    def _rule_for(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.seen += 1
                    if rule.seen in rule.on:
                        rule.fired += 1
                        return rule
            return None

    def _record(self, method: str, path: str, what: str) -> None:
        with self._lock:
            self.log.append((method, path, what))

    @staticmethod
    def _hang_up(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        try:
            h.wfile.flush()
        except OSError:
            pass
        h.connection.close()

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        method, target = h.command, h.path
        path = target.split("?")[0]
        length = int(h.headers.get("Content-Length") or 0)
        rule = self._rule_for(method, path)
        action = rule.action if rule else "forward"
        if rule is not None and action == "callback" and rule.callback is not None:
            rule.callback()
            action = "drop_request"
        if action == "drop_request":
            h.rfile.read(length // 2)
            self._record(method, path, action)
            self._hang_up(h)
            return
        body = h.rfile.read(length) if length else b""
        if rule is not None and action == "status":
            self._record(method, path, str(rule.status))
            h.send_response(rule.status)
            for k, v in rule.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(rule.body)))
            h.end_headers()
            h.wfile.write(rule.body)
            return
        if rule is not None and action == "stall":
            self._record(method, path, action)
            time.sleep(rule.seconds)
            self._hang_up(h)
            return
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
            headers["Host"] = self.upstream
            if body or method in ("PUT", "PATCH", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read() if method != "HEAD" else b""
            out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            status, reason = resp.status, resp.reason
            announced = resp.getheader("Content-Length")
        finally:
            conn.close()
        self._record(method, path, action if rule else str(status))
        if action == "drop_response" and not data:
            self._hang_up(h)  # the upstream did the work; the client never hears of it
            return
        h.send_response(status, reason)
        for k, v in out_headers:
            if k.lower() == "location":
                v = v.replace(f"//{self.upstream}", f"//{self.host}")
            h.send_header(k, v)
        h.send_header("Content-Length", announced if method == "HEAD" and announced else str(len(data)))
        h.end_headers()
        if method == "HEAD":
            return
        if action == "corrupt" and data:
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
        if action == "drop_response":
            h.wfile.write(data[: len(data) // 2])
            self._hang_up(h)
            return
        try:
            h.wfile.write(data)
        except OSError:
            pass
