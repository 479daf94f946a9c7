"""Plays the Gateway in front of an ImageServer on the test bed, with its users behind it.

Traffic goes to the datacenters by the weights of the ImageServer's HTTPRoute, re-read every
second, so a drain moves traffic as a real gateway would (equal weights when there is no
HTTPRoute). Datacenters at weight 0 get a prober's trickle, as a blackbox prober would send
in production: without it a drained datacenter has no traffic, so no SLO data, and could
never show it recovered.

A share of requests are uploads; every acknowledged one is remembered, so `lost()` can check
that each is still served, byte-exact. Outcomes are tallied per second and datacenter.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from testbed.cluster import Cluster
from testbed.pods import Pods


@dataclass
class Tally:
    sent: int = 0
    failed: int = 0  # 5xx, or no answer at all
    unanswered: int = 0  # of those, no answer (no server saw them: none of its metrics count them)


@dataclass(frozen=True)
class Failure:
    at: float  # Unix time
    datacenter: str
    frontend: str  # its pod, or "" when there was none to send to
    what: str  # "GET 503", "PUT no answer: ConnectionRefusedError", ...


class Gateway:
    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        imageserver: str,
        runner: Pods,
        image: Callable[[int], bytes],
        *,
        per_second: float = 20.0,
        probes_per_second: float = 1.0,
        upload_every: int = 10,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.imageserver = imageserver
        self.runner = runner
        self.image = image  # n → the bytes of a new image
        self.per_second = per_second
        self.probe_interval = 1 / probes_per_second
        self.upload_every = upload_every
        self.weights: dict[str, int] = {}
        self.uploaded: dict[str, str] = {}  # id → SHA-256 of the uploaded bytes
        self.tallies: defaultdict[int, defaultdict[str, Tally]] = defaultdict(lambda: defaultdict(Tally))
        self.started = time.monotonic()
        self.started_wall = time.time()  # tallies are per second since then
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._count = itertools.count()
        self.failures: list[Failure] = []  # each failed request: when, where, what

    def start(self) -> Gateway:
        self.refresh()
        for target in (self._follow_route, self._serve, self._probe):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def refresh(self) -> None:
        """Read the HTTPRoute's weights (service `<name>-frontend-<dc>`, as the operator names it)."""
        route = self.cluster.read(
            f"/apis/gateway.networking.k8s.io/v1/namespaces/{self.namespace}/httproutes/{self.imageserver}",
            missing_ok=True,
        )
        prefix = f"{self.imageserver}-frontend-"
        try:
            refs = route["spec"]["rules"][0]["backendRefs"]
            weights = {ref["name"].removeprefix(prefix): int(ref.get("weight", 1)) for ref in refs}
        except (TypeError, ValueError, KeyError, IndexError):
            weights = {r.datacenter: 1 for r in self.runner.frontends()}
        with self._lock:
            self.weights = weights

    def _follow_route(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.refresh()
            except Exception:  # the API server busy for a moment: keep the last weights
                continue

    def _serve(self) -> None:
        """Smooth weighted round robin (nginx's) over datacenters with weight > 0."""
        current: defaultdict[str, int] = defaultdict(int)
        while not self._stop.is_set():
            with self._lock:
                live = {dc: w for dc, w in self.weights.items() if w > 0}
            if live:
                for dc, weight in live.items():
                    current[dc] += weight
                chosen = max(live, key=lambda dc: current[dc])
                current[chosen] -= sum(live.values())
                self._request(chosen)
            self._stop.wait(1 / self.per_second)

    def _probe(self) -> None:
        while not self._stop.wait(self.probe_interval):
            with self._lock:
                drained = [dc for dc, w in self.weights.items() if w == 0]
            for dc in drained:
                self._request(dc, probe=True)

    def _request(self, dc: str, probe: bool = False) -> None:
        frontends = self.runner.frontends(dc)
        if not frontends:  # nowhere to send it: what a user routed here gets is an error
            self._record(dc, failed=True, unanswered=True, why=Failure(time.time(), dc, "", "no frontend"))
            return
        n = next(self._count)
        frontend = frontends[n % len(frontends)]
        with self._lock:
            known = list(self.uploaded)
        failed = unanswered = False
        method = "PUT" if not probe and (not known or n % self.upload_every == 0) else "GET"
        why = ""
        try:
            if method == "PUT":
                data = self.image(n)
                request = urllib.request.Request(
                    f"{frontend.url}/v1/images", data=data, headers={"Content-Type": "image/jpeg"}
                )
                with urllib.request.urlopen(request, timeout=10) as answer:
                    image_id = json.loads(answer.read())["id"]
                with self._lock:
                    self.uploaded[image_id] = hashlib.sha256(data).hexdigest()
            else:
                image_id = known[n % len(known)]
                query = "?w=300&h=300" if n % 2 else ""
                with urllib.request.urlopen(
                    f"{frontend.url}/v1/images/{image_id}{query}", timeout=10
                ) as answer:
                    answer.read()
        except urllib.error.HTTPError as error:
            body = error.read()
            injected = b"injected fault" in body  # the test bed's faults, told apart
            said = "" if injected else f" {body[:160].decode(errors='replace')}"
            failed, why = error.code >= 500, f"{method} {error.code}{' injected' if injected else said}"
        except OSError as error:
            failed = unanswered = True
            why = f"{method} no answer: {type(getattr(error, 'reason', error)).__name__}"
        failure = Failure(time.time(), dc, frontend.pod, why) if failed else None
        self._record(dc, failed=failed, unanswered=unanswered, why=failure)

    def _record(self, dc: str, *, failed: bool, unanswered: bool, why: Failure | None = None) -> None:
        second = int(time.monotonic() - self.started)
        with self._lock:
            if why is not None:
                self.failures.append(why)
            tally = self.tallies[second][dc]
            tally.sent += 1
            tally.failed += failed
            tally.unanswered += unanswered

    def error_ratio(self, last_seconds: int, datacenter: str | None = None) -> float:
        """Failed / sent over the last seconds, in one datacenter or all."""
        now = int(time.monotonic() - self.started)
        sent = failed = 0
        with self._lock:
            for second in range(now - last_seconds, now + 1):
                for dc, tally in self.tallies.get(second, {}).items():
                    if datacenter is None or dc == datacenter:
                        sent, failed = sent + tally.sent, failed + tally.failed
        return failed / sent if sent else 0.0

    def between(self, start: float, end: float) -> Tally:
        """Requests sent and failed between two Unix times."""
        first, last = int(start - self.started_wall), int(end - self.started_wall)
        with self._lock:
            every = [t for s in range(first, last + 1) for t in self.tallies.get(s, {}).values()]
        return Tally(
            sum(t.sent for t in every), sum(t.failed for t in every), sum(t.unanswered for t in every)
        )

    def failed_between(self, start: float, end: float) -> list[Failure]:
        with self._lock:
            return [f for f in self.failures if start <= f.at <= end]

    def series(self, bucket: int = 5) -> dict[str, list[tuple[float, float]]]:
        """Per datacenter: (Unix time, error ratio) every `bucket` seconds, as users saw it."""
        with self._lock:
            tallies = {s: dict(per_dc) for s, per_dc in self.tallies.items()}
        out: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for start in range(0, max(tallies, default=0) + 1, bucket):
            summed: defaultdict[str, Tally] = defaultdict(Tally)
            for second in range(start, start + bucket):
                for dc, tally in tallies.get(second, {}).items():
                    summed[dc].sent += tally.sent
                    summed[dc].failed += tally.failed
            for dc, tally in summed.items():
                if tally.sent:
                    out[dc].append((self.started_wall + start + bucket / 2, tally.failed / tally.sent))
        return dict(out)

    def totals(self) -> Tally:
        with self._lock:
            every = [t for per_dc in self.tallies.values() for t in per_dc.values()]
        return Tally(
            sum(t.sent for t in every), sum(t.failed for t in every), sum(t.unanswered for t in every)
        )

    def lost(self, datacenters: list[str]) -> list[str]:
        """Acknowledged uploads that a frontend of one of these datacenters does not serve
        byte-exact (after retries: a read may race a replica catching up)."""
        with self._lock:
            uploaded = dict(self.uploaded)
        missing = []
        for image_id, digest in uploaded.items():
            for dc in datacenters:
                frontends = self.runner.frontends(dc, routable=False)
                if not any(self._serves(f.url, image_id, digest) for f in frontends):
                    missing.append(f"{image_id} in {dc}")
        return missing

    @staticmethod
    def _serves(url: str, image_id: str, digest: str) -> bool:
        for _ in range(3):
            try:
                with urllib.request.urlopen(f"{url}/v1/images/{image_id}", timeout=10) as answer:
                    if hashlib.sha256(answer.read()).hexdigest() == digest:
                        return True
            except OSError:
                pass
            time.sleep(0.5)
        return False
