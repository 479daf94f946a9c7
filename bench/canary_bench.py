"""`make bench-canary`: how much a bad revision serves before it is aborted, computed.

Not timed: the same seeded traffic is replayed through three canary policies, and each
reports how many requests the bad revision served and how long after its first 5xx it was
aborted (medians over the seeds). The revision fails 30 % of its requests; the stable one
0.5 %; 1 % of requests are slow on both. Traffic: 20 requests a second in all, Poisson
arrivals. Prometheus' scrape and rule delays are left out for all three alike.

- ours: the first wave is one datacenter of three with equal weights (1/3 of the traffic);
  `canary.judge` every 10 s on cumulative counts of the wave against the stable revision in
  the other two datacenters, with min_requests 50, error and slow margins of 1 pt, the
  page-level ratio of a 99.9 % objective (14.4 x 0.1 % = 1.44 %) and confidence 0.999.
- Flagger, its documented analysis: `interval: 1m`, `threshold: 5`, `stepWeight: 10`,
  `maxWeight: 50`, metric `request-success-rate` with `thresholdRange.min: 99` over 1m.
- Argo Rollouts, its documented background analysis with one-minute steps: setWeight 20,
  pause 1m, setWeight 40, pause 1m, setWeight 60, pause 1m, setWeight 80, pause 1m; an
  AnalysisTemplate with `interval: 1m`, `initialDelay: 1m`, `successCondition: result[0] >=
  0.99` over the last minute and `failureLimit: 3`.

A good revision (0.5 % errors like the stable one) goes through ours with the same
parameters too: how often it is aborted, and when it passes.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from imageserver_operator.core import canary

RATE = 20.0  # requests a second, all revisions together
BAD, STABLE, SLOW = 0.30, 0.005, 0.01
HORIZON = 900.0  # seconds of traffic replayed: longer than any policy takes here
OURS = canary.Analysis(min_requests=50, error_margin=0.01, slow_margin=0.01, page_error_ratio=14.4 * 0.001)


@dataclass(frozen=True)
class Request:
    at: float
    route: float  # uniform draws, shared by the three policies: the same traffic for each
    error: float
    slow: float


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    slow: int = 0

    def add(self, error: bool, slow: bool) -> None:
        self.requests += 1
        self.errors += error
        self.slow += slow

    def counts(self) -> canary.Counts:
        return canary.Counts(float(self.requests), float(self.errors), float(self.slow))


@dataclass
class Policy:
    """The weight on the new revision, and a check every `interval` that may abort or pass."""

    name: str
    interval: float
    share: float
    checks: int = 0
    failures: int = 0
    window: Tally = field(default_factory=Tally)  # the new revision since the last check
    new: Tally = field(default_factory=Tally)  # cumulative, new revision
    old: Tally = field(default_factory=Tally)  # cumulative, stable revision

    def check(self) -> str | None:
        """abort, pass, or None to keep going."""
        raise NotImplementedError


class Ours(Policy):
    def __init__(self, analysis: canary.Analysis) -> None:
        super().__init__("ours (1 of 3 datacenters, judge every 10 s)", 10.0, 1 / 3)
        self.analysis = analysis

    def check(self) -> str | None:
        verdict = canary.judge(self.new.counts(), self.old.counts(), self.analysis)
        return {"fail": "abort", "pass": "pass"}.get(verdict.outcome)


class Flagger(Policy):
    # docs.flagger.app/usage/deployment-strategies (Canary Release): the weight steps up by
    # stepWeight only after a successful check ("halt advancement if any metric is under the
    # specified threshold", "increment the failed checks counter"), and "the time it takes for
    # a canary to be rollback when the metrics or webhook checks are failing: interval *
    # threshold". So the weight stays at 10 % and the rollback comes at the 5th failed check.
    def __init__(self) -> None:
        super().__init__("Flagger (interval 1m, threshold 5, stepWeight 10)", 60.0, 0.10)

    def check(self) -> str | None:
        w = self.window
        # An empty window counts as failed here; at these rates it never happens.
        if w.requests == 0 or 1 - w.errors / w.requests < 0.99:
            self.failures += 1
            return "abort" if self.failures >= 5 else None
        if self.share >= 0.50:
            return "pass"
        self.share = min(0.50, self.share + 0.10)
        return None


class Argo(Policy):
    # argoproj.github.io/argo-rollouts/features/analysis (Background Analysis): the analysis
    # runs beside the steps without blocking them, and a Failed run aborts the rollout (weight
    # back to zero). A metric is Failed when `failed > failureLimit` (analysis/analysis.go,
    # assessMetricFailureInconclusiveOrError): with failureLimit 3, at the 4th failed
    # measurement. `initialDelay: 1m` so every measurement sees a minute of the new revision
    # (without it the first comes at once, before the canary has traffic, and is an Error, not
    # a Failure, so the 4th failure still lands at 4 minutes). Steps and measurements share
    # one clock here: each pause ends as a measurement is taken.
    STEPS = (0.20, 0.40, 0.60, 0.80)

    def __init__(self) -> None:
        super().__init__("Argo Rollouts (setWeight 20/40/60/80, 1m pauses, failureLimit 3)", 60.0, 0.20)

    def check(self) -> str | None:
        w = self.window
        if w.requests == 0 or 1 - w.errors / w.requests < 0.99:
            self.failures += 1
            if self.failures > 3:
                return "abort"
        if self.checks >= len(self.STEPS):
            return "pass"
        self.share = self.STEPS[self.checks]
        return None


@dataclass(frozen=True)
class Run:
    ended: str  # abort, pass, or running at the end of the horizon
    at: float  # seconds after the traffic shift
    served: int  # requests served by the new revision
    first_error: float  # seconds after the shift of its first 5xx (inf: none)


def traffic(seed: int) -> list[Request]:
    rng = random.Random(seed)
    out, at = [], 0.0
    while (at := at + rng.expovariate(RATE)) < HORIZON:
        out.append(Request(at, rng.random(), rng.random(), rng.random()))
    return out


def replay(policy: Policy, requests: Sequence[Request], new_errors: float) -> Run:
    first_error = math.inf
    due = policy.interval
    for r in requests:
        while r.at >= due:
            policy.checks += 1
            ended = policy.check()
            if ended:
                return Run(ended, due, policy.new.requests, first_error)
            policy.window = Tally()
            due += policy.interval
        slow = r.slow < SLOW
        if r.route < policy.share:
            error = r.error < new_errors
            policy.new.add(error, slow)
            policy.window.add(error, slow)
            if error:
                first_error = min(first_error, r.at)
        else:
            policy.old.add(r.error < STABLE, slow)
    return Run("running", HORIZON, policy.new.requests, first_error)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=101, help="traffic replays; medians are reported")
    args = parser.parse_args()
    seeds = range(args.seeds)
    streams = [traffic(seed) for seed in seeds]

    makers = {"ours": lambda: Ours(OURS), "flagger": Flagger, "argo": Argo}
    shares = {"ours": "33 %", "flagger": "10 %", "argo": "20 % → 80 %"}
    rows = []
    for key, make in makers.items():
        runs = [replay(make(), stream, BAD) for stream in streams]
        not_aborted = sum(run.ended != "abort" for run in runs)
        assert not not_aborted, f"{key}: {not_aborted} bad revisions not aborted"
        served = statistics.median(run.served for run in runs)
        seconds = statistics.median(run.at - run.first_error for run in runs)
        rows.append((make().name, shares[key], served, seconds))

    print(f"A revision failing {100 * BAD:g} % of requests, {RATE:g} req/s in all, {args.seeds} seeds:\n")
    columns = (
        "system",
        "share of traffic on the bad revision",
        "requests served by it (median)",
        "seconds from its first 5xx to abort (median)",
        "ratio vs ours (requests, seconds)",
    )
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---:|---:|---|")
    _, _, ours_served, ours_seconds = rows[0]
    for i, (name, share, served, seconds) in enumerate(rows):
        ratio = f"{served / ours_served:.1f} x, {seconds / ours_seconds:.1f} x" if i else ""
        print(f"| {name} | {share} | {served:.0f} | {seconds:.1f} | {ratio} |")

    good = [replay(Ours(OURS), stream, STABLE) for stream in streams]
    aborted = sum(run.ended == "abort" for run in good)
    passed = [run.at for run in good if run.ended == "pass"]
    print(
        f"\nA good revision ({100 * STABLE:g} % errors, like the stable one) through ours, same parameters: "
        f"aborted in {aborted} of {len(good)}, passed in {len(passed)}, "
        f"median time to pass {statistics.median(passed) if passed else math.nan:.0f} s."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
