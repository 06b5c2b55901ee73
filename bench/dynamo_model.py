"""A capacity and latency model of DynamoDB, in memory, behind a real botocore client.

The seam is botocore's ``before-send`` event: feedpipe's own client (``make_client``, its
pre-built BatchWriteItem serializer, its retry configuration) builds and signs each request as
for AWS, and the model answers it instead of the network, with the status, headers and JSON body
DynamoDB would send. Throttles are 400 ``ProvisionedThroughputExceededException`` responses, so
botocore's retries, feedpipe's ``UnprocessedItems`` loop and its throttle metric all run for real.

It serves what feedpipe's fan-out calls: Query (base table and GSIs, key conditions ``=``,
``<``, ``<=``, ``>``, ``>=``, ``BETWEEN``, ``begins_with``; ``Limit``, ``ExclusiveStartKey``,
``ScanIndexForward``, ``ProjectionExpression``; pages capped at 1 MB as moto caps them),
GetItem, PutItem, DeleteItem, BatchGetItem (<= 100 keys) and BatchWriteItem (<= 25 requests);
CreateTable and DescribeTable for set-up. Anything else (condition and filter expressions,
updates, transactions, streams) is refused with a ValidationException naming it, never
answered wrongly. Capacity and latency: ``bench.dynamo_capacity``. Items are kept as compact
JSON strings: a million-follower world fits in a few GB.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from botocore.awsrequest import AWSResponse

from bench import dynamo_ops
from bench.dynamo_capacity import DEFAULT_LATENCY, ZERO_LATENCY, Capacity, Latency, Limits, Usage
from bench.dynamo_query import Index, ModelError, item_size, key_of

BATCH_WRITE_LIMIT = 25
BATCH_GET_LIMIT = 100
MEGABYTE = 1_000_000


class Clock(Protocol):
    def now(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class WallClock:
    """Real time, no waiting: for contract tests, where latency is zero."""

    def now(self) -> float:
        import time

        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        return None


class Table:
    def __init__(self, spec: dict[str, Any], limits: Limits, clock: Clock) -> None:
        self.name = spec["TableName"]
        self.base = Index.from_schema("", spec["KeySchema"])
        self.indexes = {g["IndexName"]: Index.from_schema(g["IndexName"], g["KeySchema"])
                        for g in spec.get("GlobalSecondaryIndexes", [])}
        self.items: dict[tuple[str, str], tuple[str, int]] = {}
        self.capacity = Capacity(limits, clock.now)
        self.spec = spec

    def index(self, name: str | None) -> Index:
        if not name:
            return self.base
        if name not in self.indexes:
            raise ModelError("ValidationException", f"The table does not have the specified index: {name}")
        return self.indexes[name]

    def key(self, key: dict[str, Any]) -> tuple[str, str]:
        expected = {self.base.hash_attr} | ({self.base.range_attr} if self.base.range_attr else set())
        if set(key) != expected:
            raise ModelError("ValidationException", "The provided key element does not match the schema")
        return key_of(self.base, key)

    def get(self, base_key: tuple[str, str]) -> tuple[str, int] | None:
        return self.items.get(base_key)

    def put(self, item: dict[str, Any], encoded: str, size: int) -> None:
        base_key = self.key({a: item[a] for a in self.base.attrs if a in item})
        self.delete(base_key)
        self.items[base_key] = (encoded, size)
        for index in (self.base, *self.indexes.values()):
            index.add(item, base_key)

    def delete(self, base_key: tuple[str, str]) -> tuple[str, int] | None:
        old = self.items.pop(base_key, None)
        if old is not None:
            item = json.loads(old[0])
            for index in (self.base, *self.indexes.values()):
                index.remove(item, base_key)
        return old

    def write_parts(self, item: dict[str, Any], units: float) -> list[tuple[str, str, float]]:
        """Where a write of ``item`` spends capacity: the base partition and each GSI holding it."""
        parts = [("", _plain(item[self.base.hash_attr]), units)]
        parts += [(i.name, _plain(item[i.hash_attr]), units) for i in self.indexes.values() if i.holds(item)]
        return parts


def _plain(value: dict[str, Any]) -> str:
    return str(next(iter(value.values())))


class DynamoModel:
    """Tables in memory, with capacity and latency; ``attach`` it to a botocore client."""

    def __init__(self, clock: Clock | None = None, limits: Limits | None = None,
                 latency: dict[str, Latency] | None = None, seed: int = 0) -> None:
        self.clock: Clock = clock or WallClock()
        self.limits = limits or Limits()
        self.latency = DEFAULT_LATENCY if latency is None else latency
        self.rng = random.Random(seed)
        self.tables: dict[str, Table] = {}
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ops: dict[str, Callable[[DynamoModel, dict[str, Any]], dict[str, Any]]] = dynamo_ops.OPERATIONS

    # -- set-up -------------------------------------------------------------------------------

    def create_table(self, spec: dict[str, Any]) -> Table:
        if spec["TableName"] in self.tables:
            raise ModelError("ResourceInUseException", f"Table already exists: {spec['TableName']}")
        table = self.tables[spec["TableName"]] = Table(spec, self.limits, self.clock)
        return table

    def load(self, table_name: str, items: Iterable[dict[str, Any]]) -> int:
        """Put items directly, spending no capacity and no time (benchmark set-up)."""
        table = self.table(table_name)
        count = 0
        for item in items:
            table.put(item, json.dumps(item, separators=(",", ":")), item_size(item))
            count += 1
        return count

    def table(self, name: str) -> Table:
        if name not in self.tables:
            raise ModelError("ResourceNotFoundException", "Requested resource not found")
        return self.tables[name]

    def usage(self, table_name: str) -> Usage:
        return self.table(table_name).capacity.usage

    # -- serving --------------------------------------------------------------------------------

    def handle(self, operation: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Answer one call: (HTTP status, JSON body), after the call's modelled latency."""
        op = self._ops.get(operation)
        self.calls[operation] += 1
        with self._lock:
            try:
                if op is None:
                    raise ModelError("ValidationException", f"{operation} is not modelled")
                status, body = 200, op(self, params)
            except ModelError as error:
                status, body = 400, error.body()
        megabytes = body.pop("_bytes", 0) / MEGABYTE
        self.clock.sleep(self.latency.get(operation, ZERO_LATENCY).draw(self.rng, megabytes))
        return status, body

    def attach(self, client: Any) -> Any:
        """Answer every call of ``client`` (a botocore DynamoDB client) from this model."""
        client.meta.events.register_first("before-send.dynamodb", self._before_send)
        return client

    def _before_send(self, request: Any, **_: Any) -> AWSResponse:
        target = request.headers["X-Amz-Target"]
        operation = (target.decode() if isinstance(target, bytes) else target).rsplit(".", 1)[-1]
        params = json.loads(request.body) if request.body else {}
        status, answer = self.handle(operation, params)
        raw = json.dumps(answer, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/x-amz-json-1.0", "Content-Length": str(len(raw)),
                   "x-amzn-RequestId": "model"}
        return AWSResponse(request.url, status, headers, _Raw(raw))


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterable[bytes]:
        yield self.data


__all__ = ["DynamoModel", "Latency", "Limits", "ModelError", "Table", "WallClock"]
