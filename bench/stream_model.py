"""DynamoDB Streams at the botocore seam, for the consumer benchmark: many closed shards, each
GetRecords call answered after a wait drawn from a uniform latency range.

As in ``bench.dynamo_model``, feedpipe's own clients build and sign every request and parse
every answer; a ``before-send`` hook answers instead of the network, with the JSON body the
service would send. Unlike that model, the wait is real wall-clock time (``time.sleep`` on the
calling thread, which lets go of the GIL as a socket wait does), because what is measured is a
real consumer publishing to a real broker, whose CPU time is real too.

Served: DescribeTable (the stream's ARN), DescribeStream (one page), GetShardIterator
(TRIM_HORIZON, AFTER_SEQUENCE_NUMBER) and GetRecords (``Limit``, a closed shard ends with no
``NextShardIterator``). Every shard holds the same records (sequence numbers
``SEQ_BASE + position``), encoded once: the model costs next to no CPU per call.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from botocore.awsrequest import AWSResponse

from bench.consumer import SEQ_BASE

ARN = "arn:aws:dynamodb:us-east-1:000000000000:table/SocialMediaApp/stream/2024-01-15T00:00:00.000"


class StreamModel:
    def __init__(self, shards: int, records: Sequence[dict[str, Any]], latency: tuple[float, float],
                 seed: int = 1) -> None:
        self.shard_ids = [f"shardId-00000001705314600000-{n:08x}" for n in range(shards)]
        self.encoded = [json.dumps(r, separators=(",", ":")).encode() for r in records]
        self.latency = latency
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.calls = 0
        self.waited = 0.0  # seconds of modelled latency, summed over every GetRecords call

    def attach(self, streams_client: Any, dynamodb_client: Any) -> None:
        streams_client.meta.events.register_first("before-send.dynamodb-streams", self._before_send)
        dynamodb_client.meta.events.register_first("before-send.dynamodb", self._before_send)

    def _before_send(self, request: Any, **_: Any) -> AWSResponse:
        target = request.headers["X-Amz-Target"]
        operation = (target.decode() if isinstance(target, bytes) else target).rsplit(".", 1)[-1]
        params = json.loads(request.body) if request.body else {}
        if operation == "GetRecords":
            body = self._get_records(params["ShardIterator"], int(params.get("Limit", 1000)))
        elif operation in ("DescribeTable", "DescribeStream", "GetShardIterator"):
            body = json.dumps(getattr(self, f"_{operation}")(params)).encode()
        else:
            return _answer(request, 400, json.dumps({"__type": "ValidationException",
                                                      "message": f"{operation} is not modelled"}).encode())
        return _answer(request, 200, body)

    def _get_records(self, iterator: str, limit: int) -> bytes:
        with self._lock:
            wait = self._random.uniform(*self.latency)
            self.calls += 1
            self.waited += wait
        time.sleep(wait)  # the network and the service: no CPU, no GIL
        shard_id, _, raw = iterator.partition("|")
        position = int(raw)
        end = min(position + limit, len(self.encoded))
        records = b"[" + b",".join(self.encoded[position:end]) + b"]"
        after = f',"NextShardIterator":"{shard_id}|{end}"'.encode() if end < len(self.encoded) else b""
        return b'{"Records":' + records + after + b"}"

    def _DescribeTable(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 - the operation's name
        return {"Table": {"TableName": params["TableName"], "TableStatus": "ACTIVE", "LatestStreamArn": ARN,
                          "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}}}

    def _DescribeStream(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        last = str(SEQ_BASE + len(self.encoded) - 1)
        shards = [{"ShardId": s, "SequenceNumberRange": {"StartingSequenceNumber": str(SEQ_BASE),
                                                         "EndingSequenceNumber": last}} for s in self.shard_ids]
        return {"StreamDescription": {"StreamArn": ARN, "StreamStatus": "ENABLED", "Shards": shards}}

    def _GetShardIterator(self, params: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        after = params.get("SequenceNumber")
        position = int(after) - SEQ_BASE + 1 if after else 0
        return {"ShardIterator": f"{params['ShardId']}|{position}"}


def _answer(request: Any, status: int, body: bytes) -> AWSResponse:
    headers = {"Content-Type": "application/x-amz-json-1.0", "Content-Length": str(len(body)),
               "x-amzn-RequestId": "model"}
    return AWSResponse(request.url, status, headers, _Raw(body))


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterable[bytes]:
        yield self.data
