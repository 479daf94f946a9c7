"""A local server that speaks enough of the Slack Web API for slack-sdk, and records calls.

Slack cannot be reached from here; tests and the demo point slack-sdk's `base_url` at this
(`stub.base_url`, ending in /api/). It answers `auth.test`, `chat.postMessage`,
`chat.update` and `chat.getPermalink`, keeps every call in `stub.calls`, and can be told to
fail: `stub.fail(status, count, retry_after)` for the next calls, or `stub.down = True`
for an outage (every call 500) until set back.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from testbed.processes import free_port


def token_secret(name: str = "slack", token: str = "xoxb-test") -> dict[str, Any]:
    """A Secret holding a bot token, as spec.notifications.slack.tokenSecretRef names it."""
    data = {"token": base64.b64encode(token.encode()).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}


@dataclass
class Call:
    method: str
    payload: dict[str, Any]
    at: float
    status: int


@dataclass
class SlackStub:
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"  # another address where pods must reach it (the real nodes' host end)
    calls: list[Call] = field(default_factory=list)
    down: bool = False
    _failures: list[tuple[int, int]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/api/"

    def fail(self, status: int, count: int = 1, retry_after: int = 1) -> None:
        """The next `count` calls answer `status` (429s with Retry-After in whole seconds, as Slack)."""
        with self._lock:
            self._failures += [(status, retry_after)] * count

    def messages(self) -> list[dict[str, Any]]:
        """The messages that were posted (accepted), in order."""
        return [c.payload for c in self.calls if c.method == "chat.postMessage" and c.status == 200]

    def _answer(self, method: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            if self.down:
                return 500, {"ok": False, "error": "internal_error"}, {}
            if self._failures:
                status, retry_after = self._failures.pop(0)
                headers = {"Retry-After": str(retry_after)} if status == 429 else {}
                return (
                    status,
                    {"ok": False, "error": "ratelimited" if status == 429 else "internal_error"},
                    headers,
                )
            ts = f"{int(time.time())}.{next(self._ts):06d}"
        channel = payload.get("channel", "C0STUB")
        if method == "auth.test":
            return 200, {"ok": True, "team": "stub", "user": "imageserver-operator", "bot_id": "B0STUB"}, {}
        if method == "chat.postMessage":
            return (
                200,
                {"ok": True, "channel": channel, "ts": ts, "message": {"text": payload.get("text", "")}},
                {},
            )
        if method == "chat.update":
            return 200, {"ok": True, "channel": channel, "ts": payload.get("ts", ts)}, {}
        if method == "chat.getPermalink":
            stamp = str(payload.get("message_ts", "")).replace(".", "")
            return 200, {"ok": True, "permalink": f"https://slack.invalid/archives/{channel}/p{stamp}"}, {}
        return 200, {"ok": False, "error": "unknown_method"}, {}

    def start(self) -> SlackStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.urlsplit(self.path).query
                self._reply({k: v[0] for k, v in urllib.parse.parse_qs(query).items()})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                if "json" in (self.headers.get("Content-Type") or ""):
                    payload = json.loads(raw or "{}")
                else:
                    payload = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
                    if isinstance(payload.get("blocks"), str):
                        payload["blocks"] = json.loads(payload["blocks"])
                self._reply(payload)

            def _reply(self, payload: dict[str, Any]) -> None:
                method = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
                status, body, headers = stub._answer(method, payload)
                with stub._lock:
                    stub.calls.append(Call(method, payload, time.time(), status))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> SlackStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
