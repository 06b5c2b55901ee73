"""A moto server whose global secondary indexes lag and whose stream delivers late, for end-to-end
tests where ``consume``, ``worker`` and ``beat`` are separate processes (moto's GSIs are strongly
consistent, and its one stream shard is in write order).

    python -m tests.e2e.lagging_moto -p PORT     # a moto server, no lag until told

The lag lives in the server, so every process sees the same GSI. Test-only: it patches moto's
DynamoDB model classes in this process, and feedpipe knows nothing of it.

- **GSI lag.** Every write (put, update, delete; single, batch or transactional) to a table with
  a stream gives the item's new version a time at which its global indexes show it: now plus a
  lag drawn per write, uniform in ``[gsi_min, gsi_max]`` seconds, never before the item's
  previous version shows (DynamoDB applies one item's changes to an index in order). Until then
  a Query on a global index sees the previous version: an insert is invisible, a delete still
  shows the old image, an update shows the old attributes. Base-table reads are untouched.
- **Stream records of different items late and out of order.** With ``stream_max`` above 0,
  each record is held back a time drawn uniform in ``[0, stream_max]``, again never before the
  same item's previous record: records of one item stay in order, as DynamoDB promises, while
  records of different items may overtake each other (on DynamoDB they sit on different shards,
  read in parallel).

``POST /_lag`` with a JSON body ``{"gsi_min", "gsi_max", "stream_max", "seed"}`` sets the lag
(from then on); ``GET /_lag`` answers the settings and ``{"gsi_pending", "stream_pending"}``:
item versions no index shows yet and records not yet in the stream. A test waits for both to be
0 before it judges the feeds.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moto.dynamodb.models.table import Item, StreamRecord, StreamShard, Table
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
from werkzeug.wrappers import Request, Response

from feedpipe.dev.local import START_TIMEOUT_SECONDS, MotoServer, wait_for
from tests.e2e.fast_moto import lighten_serving

CONTROL_PATH = "/_lag"
ROOT = Path(__file__).resolve().parents[2]
ItemKey = tuple[Any, Any]  # (hash key, range key) as moto's DynamoTypes


@dataclass
class Lag:
    gsi_min: float = 0.0
    gsi_max: float = 0.0
    stream_max: float = 0.0
    seed: int | None = None
    lagged_queries: int = 0  # GSI Queries answered while some item version was not shown yet
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def gsi(self) -> float:
        return self.rng.uniform(self.gsi_min, self.gsi_max)

    def stream(self) -> float:
        return self.rng.uniform(0.0, self.stream_max) if self.stream_max else 0.0


LAG = Lag()
LOCK = threading.RLock()  # the werkzeug server answers each request in a thread of its own
_IN_GSI_QUERY = threading.local()


@dataclass
class Versions:
    """One item's versions not yet shown by every global index: (shows at, image or None)."""

    shown: Item | None  # what the indexes show now
    pending: list[tuple[float, Item | None]] = field(default_factory=list)

    def advance(self, now: float) -> bool:
        """Show what is due; True when nothing is left pending."""
        while self.pending and self.pending[0][0] <= now:
            self.shown = self.pending.pop(0)[1]
        return not self.pending


def _gsi_state(table: Table) -> dict[ItemKey, Versions]:
    state: dict[ItemKey, Versions] | None = getattr(table, "_lag_versions", None)
    if state is None:
        state = {}
        table._lag_versions = state  # type: ignore[attr-defined]
    return state


def _record_write(table: Table, old: Item | None, new: Item | None) -> None:
    """Called for every write of the table (moto adds a stream record for each)."""
    now, item = time.monotonic(), old if old is not None else new
    assert item is not None
    key = (item.hash_key, item.range_key)
    lag = LAG.gsi()
    state = _gsi_state(table)
    versions = state.get(key)
    if versions is None:
        if lag <= 0:
            return
        versions = state[key] = Versions(shown=copy.deepcopy(old))
    after = versions.pending[-1][0] if versions.pending else now
    versions.pending.append((max(now + lag, after), copy.deepcopy(new)))


def _gsi_view(table: Table, items: list[Item]) -> list[Item]:
    """``items`` (the table as it is) with each lagging item as the indexes show it."""
    now, state = time.monotonic(), _gsi_state(table)
    for key in [k for k, v in state.items() if v.advance(now)]:
        del state[key]
    lagging = {key: v.shown for key, v in state.items()}
    LAG.lagged_queries += bool(lagging)
    view = [i for i in items if (i.hash_key, i.range_key) not in lagging]
    view += [shown for shown in lagging.values() if shown is not None]
    return view


# -- the patches ---------------------------------------------------------------------------


def _patch_table() -> None:
    query, all_items = Table.query, Table.all_items

    signature = inspect.signature(query)  # moto's backend passes index_name by position

    def lagging_query(self: Table, *args: Any, **kwargs: Any) -> Any:
        index = signature.bind(self, *args, **kwargs).arguments.get("index_name")
        if index and index in {i.name for i in self.global_indexes or []}:
            _IN_GSI_QUERY.on = True
            try:
                with LOCK:
                    return query(self, *args, **kwargs)
            finally:
                _IN_GSI_QUERY.on = False
        return query(self, *args, **kwargs)

    def lagging_all_items(self: Table) -> list[Item]:
        items = all_items(self)
        if getattr(_IN_GSI_QUERY, "on", False):
            return sorted(_gsi_view(self, items),
                          key=lambda x: (x.hash_key, x.range_key) if x.range_key else x.hash_key)
        return items

    Table.query = lagging_query  # type: ignore[method-assign]
    Table.all_items = lagging_all_items  # type: ignore[method-assign]


@dataclass
class HeldRecord:
    due: float
    old: Item | None
    new: Item | None


def _held(shard: StreamShard) -> list[HeldRecord]:
    held: list[HeldRecord] | None = getattr(shard, "_lag_held", None)
    if held is None:
        held = []
        shard._lag_held = held  # type: ignore[attr-defined]
    return held


def _release(shard: StreamShard, now: float) -> None:
    """Records due go into the shard, soonest due first (each item's in its write order)."""
    held = _held(shard)
    due = sorted((r for r in held if r.due <= now), key=lambda r: r.due)  # stable: ties keep order
    if not due:
        return
    held[:] = [r for r in held if r.due > now]
    stream_type = shard.table.stream_specification["StreamViewType"]  # type: ignore[index]
    for record in due:
        event = "INSERT" if record.old is None else "REMOVE" if record.new is None else "MODIFY"
        seq = len(shard.items) + shard.starting_sequence_number
        shard.items.append(StreamRecord(shard.table, stream_type, event, record.old, record.new, seq))


def _patch_stream() -> None:
    add, get = StreamShard.add, StreamShard.get

    def lagging_add(self: StreamShard, old: Item | None, new: Item | None) -> None:
        with LOCK:
            _record_write(self.table, old, new)
            delay, held = LAG.stream(), _held(self)
            if delay <= 0 and not held:
                add(self, old, new)
                return
            now = time.monotonic()
            item = old if old is not None else new
            assert item is not None
            key = (item.hash_key, item.range_key)
            after = max((r.due for r in held if _key(r) == key), default=now)
            held.append(HeldRecord(max(now + delay, after), copy.deepcopy(old), copy.deepcopy(new)))

    def lagging_get(self: StreamShard, start: int, quantity: int) -> list[dict[str, Any]]:
        with LOCK:
            _release(self, time.monotonic())
            return get(self, start, quantity)

    StreamShard.add = lagging_add  # type: ignore[method-assign]
    StreamShard.get = lagging_get  # type: ignore[method-assign]


def _key(record: HeldRecord) -> ItemKey:
    item = record.old if record.old is not None else record.new
    assert item is not None
    return (item.hash_key, item.range_key)


def pending() -> dict[str, int]:
    """What the indexes and the stream have not caught up with yet, over every table."""
    from moto.dynamodb.models import dynamodb_backends

    now, gsi, stream = time.monotonic(), 0, 0
    with LOCK:
        for account in dynamodb_backends.values():
            for backend in account.values():
                for table in backend.tables.values():
                    gsi += sum(1 for v in _gsi_state(table).values() if not v.advance(now))
                    if table.stream_shard is not None:
                        _release(table.stream_shard, now)
                        stream += len(_held(table.stream_shard))
    return {"gsi_pending": gsi, "stream_pending": stream}


# -- the server ----------------------------------------------------------------------------


def with_control(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != CONTROL_PATH:
            return app(environ, start_response)
        request = Request(environ)
        if request.method == "POST":
            body = json.loads(request.get_data() or b"{}")
            with LOCK:
                for name in ("gsi_min", "gsi_max", "stream_max"):
                    setattr(LAG, name, float(body.get(name, getattr(LAG, name))))
                LAG.seed, LAG.lagged_queries = body.get("seed"), 0
                LAG.rng = random.Random(LAG.seed)
        settings = {k: v for k, v in asdict(LAG).items() if k != "rng"}
        return Response(json.dumps({**settings, **pending()}), mimetype="application/json")(environ, start_response)

    return wsgi


@dataclass
class LaggingMotoServer(MotoServer):
    """``MotoServer`` (start, reset, stop) running this module; ``set_lag`` and ``pending``
    talk to its control path."""

    def start(self, log: Path | None = None) -> LaggingMotoServer:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.lagging_moto", "-p", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
        )
        wait_for(lambda: self._answers(), START_TIMEOUT_SECONDS, "lagging moto server")
        return self

    def reset(self) -> None:
        """Every table gone, and no lag until a test sets one."""
        super().reset()
        self.set_lag()

    def _answers(self) -> bool:
        try:
            self.pending()
        except OSError:
            return False
        return True

    def set_lag(self, gsi_min: float = 0.0, gsi_max: float = 0.0, stream_max: float = 0.0,
                seed: int | None = None) -> dict[str, Any]:
        body = json.dumps({"gsi_min": gsi_min, "gsi_max": gsi_max, "stream_max": stream_max, "seed": seed})
        return self._call(urllib.request.Request(f"{self.url}{CONTROL_PATH}", data=body.encode(), method="POST"))

    def pending(self) -> dict[str, Any]:
        return self._call(urllib.request.Request(f"{self.url}{CONTROL_PATH}"))

    def caught_up(self) -> bool:
        state = self.pending()
        return state["gsi_pending"] == 0 and state["stream_pending"] == 0

    @staticmethod
    def _call(request: urllib.request.Request) -> dict[str, Any]:
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    lighten_serving()  # the same per-request savings as the narrowed moto's
    _patch_table()
    _patch_stream()
    app = with_control(DomainDispatcherApplication(create_backend_app))
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
