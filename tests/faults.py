"""Fault injection into real feedpipe processes, through botocore's event hooks.

    FEEDPIPE_TEST_FAULTS='{"seed": 7, "throttle_share": 0.3, ...}' python -m tests.faults worker -c 2

reads the plan, hooks every boto3 session the process makes (``make_client`` makes a new
``boto3.session.Session`` per client, so the hooks go on each new session's event emitter),
then runs ``feedpipe.cli.main`` exactly as ``python -m feedpipe`` would. Prefork children are
forked from it and keep the hooks.

The plan (JSON):

- ``throttle_share``: that share of BatchWriteItem attempts is answered with a 400
  ``ProvisionedThroughputExceededException`` before it leaves the process (``before-send``);
  botocore retries those itself, as it would on AWS.
- ``unprocessed_share``: that share of BatchWriteItem calls of two or more items forwards only
  a random part of its items to moto (``before-call`` rewrites the body) and reports the rest
  as ``UnprocessedItems`` (``after-call``), as DynamoDB does under load.
- ``outage_file``: while this file exists, every DynamoDB and DynamoDB Streams request is
  answered with HTTP 500 (moto "down"); the test creates and removes the file mid-run.
- ``counts_dir``: each process writes what it injected to ``faults-{pid}.json`` there, after
  every injection, so a test can prove the faults really happened (``injected_counts``).
- ``throttle_backoff_base``: seconds botocore's standard retry mode scales its backoff after a
  throttle by (``rand() * base * 2**i``; its own base is 1 s, as the AWS SDKs'). A test that
  throttles a third of its writes sets it lower so its run is not spent asleep: the throttles
  are still retried by botocore, each attempt counted against the same limits, only sooner.

Nothing here is imported by feedpipe; this module and its plan exist only for the tests.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PLAN_ENV = "FEEDPIPE_TEST_FAULTS"
ENTRY = ("-m", "tests.faults")  # Processes(entry=ENTRY) starts feedpipe through this module
ROOT = Path(__file__).resolve().parents[1]

THROTTLE_BODY = {
    "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
    "message": "injected: the level of configured provisioned throughput for the table was exceeded",
}
OUTAGE_BODY = {"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError", "message": "injected: 500"}
OUTAGE_SERVICES = ("dynamodb", "dynamodb-streams")


@dataclass(frozen=True)
class FaultPlan:
    seed: int = 0
    throttle_share: float = 0.0
    unprocessed_share: float = 0.0
    outage_file: str = ""
    counts_dir: str = ""
    throttle_backoff_base: float | None = None  # None: botocore's own (1 s)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with this plan, and this repository importable by the child processes."""
        path = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH", "")) if p)
        return {**base, PLAN_ENV: json.dumps(asdict(self)), "PYTHONPATH": path}


def injected_counts(counts_dir: Path) -> Counter[str]:
    """What every process of a test injected, summed (a process killed with -9 keeps what it
    wrote up to its last injection)."""
    total: Counter[str] = Counter()
    for path in counts_dir.glob("faults-*.json"):
        try:
            total.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced this instant; the next read sees it
    return total


class _Raw:
    """The ``raw`` of a botocore response made up here: a body to stream."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


def _response(request: Any, status: int, body: dict[str, str]) -> Any:
    from botocore.awsrequest import AWSResponse

    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/x-amz-json-1.0", "Content-Length": str(len(data)),
               "x-amzn-RequestId": "injected"}
    return AWSResponse(request.url, status, headers, _Raw(data))


class Injector:
    """The hooks of one plan, and what they injected in this process."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._lock = threading.Lock()
        self._rng: tuple[int, random.Random] | None = None
        self._counts: tuple[int, Counter[str]] | None = None

    def register(self, events: Any) -> None:
        if self.plan.throttle_share:
            events.register("before-send.dynamodb.BatchWriteItem", self.throttle)
        if self.plan.unprocessed_share:
            events.register("before-call.dynamodb.BatchWriteItem", self.withhold)
            events.register("after-call.dynamodb.BatchWriteItem", self.report_withheld)
        if self.plan.outage_file:
            for service in OUTAGE_SERVICES:
                events.register_first(f"before-send.{service}", self.outage)

    # -- the hooks -----------------------------------------------------------------------------

    def in_outage(self) -> bool:
        return bool(self.plan.outage_file) and os.path.exists(self.plan.outage_file)

    def outage(self, request: Any, **_: Any) -> Any:
        if not self.in_outage():
            return None
        self._count(http_500=1)
        return _response(request, 500, OUTAGE_BODY)

    def throttle(self, request: Any, **_: Any) -> Any:
        if self.in_outage() or self._draw() >= self.plan.throttle_share:
            return None  # botocore calls the specific hook first; in an outage moto is down
        self._count(throttled=1)
        return _response(request, 400, THROTTLE_BODY)

    def withhold(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if self._draw() >= self.plan.unprocessed_share:
            return
        body = json.loads(params["body"])
        ((table, requests),) = body["RequestItems"].items()
        if len(requests) < 2:
            return
        with self._lock:
            kept = self._rng_here().randint(1, len(requests) - 1)
        body["RequestItems"][table], withheld = requests[:kept], requests[kept:]
        params["body"] = json.dumps(body, separators=(",", ":")).encode()
        context["faults_withheld"] = (table, withheld)

    def report_withheld(self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        withheld = context.pop("faults_withheld", None)
        if withheld is None or http_response.status_code >= 300:
            return  # the call failed as a whole: the caller retries every item anyway
        table, requests = withheld
        parsed.setdefault("UnprocessedItems", {}).setdefault(table, []).extend(requests)
        self._count(unprocessed_calls=1, unprocessed_items=len(requests))

    # -- bookkeeping ---------------------------------------------------------------------------

    def _rng_here(self) -> random.Random:
        """This process's generator: prefork children must not all draw the same sequence."""
        pid = os.getpid()
        if self._rng is None or self._rng[0] != pid:
            self._rng = (pid, random.Random(f"{self.plan.seed}:{pid}"))
        return self._rng[1]

    def _draw(self) -> float:
        with self._lock:
            return self._rng_here().random()

    def _count(self, **kinds: int) -> None:
        pid = os.getpid()
        with self._lock:
            if self._counts is None or self._counts[0] != pid:
                self._counts = (pid, Counter())  # a forked child counts its own
            counts = self._counts[1]
            counts.update(kinds)
            if self.plan.counts_dir:
                path = Path(self.plan.counts_dir) / f"faults-{pid}.json"
                temp = path.with_name(path.name + ".tmp")  # written whole, then renamed
                temp.write_text(json.dumps(dict(counts)))
                temp.replace(path)


def scale_throttle_backoff(base: float) -> None:
    """botocore's standard retry mode waits ``rand() * min(base * 2**i, 20)`` s before retry
    ``i`` of a throttled call, ``base`` a class constant (1 s); set it for this process."""
    from botocore.retries.standard import ExponentialBackoff

    config = ExponentialBackoff._DEFAULT_BACKOFF_CONFIG
    if "throttling_base_scale" not in config:  # botocore changed: say so, rather than run slow
        raise RuntimeError(f"botocore's backoff has no throttling_base_scale any more: {config}")
    ExponentialBackoff._DEFAULT_BACKOFF_CONFIG = {**config, "throttling_base_scale": base}


def install(plan: FaultPlan) -> Injector:
    """Hook every boto3 session made from now on in this process."""
    import boto3.session

    if plan.throttle_backoff_base is not None:
        scale_throttle_backoff(plan.throttle_backoff_base)
    injector = Injector(plan)
    original = boto3.session.Session.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        injector.register(self.events)

    boto3.session.Session.__init__ = init  # type: ignore[method-assign]
    return injector


def main() -> None:
    plan = FaultPlan(**json.loads(os.environ.get(PLAN_ENV) or "{}"))
    install(plan)
    from feedpipe.cli import main as feedpipe_main

    sys.argv = ["feedpipe", *sys.argv[1:]]
    feedpipe_main()


if __name__ == "__main__":
    main()
