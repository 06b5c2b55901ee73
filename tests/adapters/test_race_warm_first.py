"""Every order of the tasks one post causes, with warm-first writes and split walks, explored.

A post's fan-out is a tree of tasks: the planner (which may split its walk off to more planners,
each writing warm feeds before it hands a chunk out), the chunks, and whatever the app does
meanwhile: delete the post (its retraction planner, split too, and retraction chunks), an
unfollow (its task), a cache rebuild (a regen job). Here every one of those tasks is a step, and
the steps where a check and a write of one task can be pulled apart are two: a planner's
liveness check and the rest of its walk; a chunk's writes and its settle. A depth-first search
runs every order of the pending steps (states already seen are not walked again) on the
in-memory stores (``feeds.memory``, held to the real adapters by ``test_store_contract``), and
checks in every final state what users see: the durable and the cached feed of each follower.

A search may also let one planner die (``crashes``): right after any warm write, before it sends
that chunk, or after the writes of the chunk it delivers itself, before their settle. Its
message then runs again as a second attempt, as Celery redelivers or retries it; the messages
it sent before it died stay sent.

The world: ``alice`` posts to five followers; two are warm. Pages of two followers, chunks of
one, at most four walkers per post, so a planner hands out chunks, splits, and delivers a
remainder itself. Every feed already holds zoe's ``OLD`` post.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import pytest

from feedpipe.config import load_settings
from feedpipe.core.events import Post
from feedpipe.core.follower_segments import Segment
from feedpipe.core.items import feed_items
from feedpipe.core.messages import Resume
from feedpipe.core.planning import unique
from feedpipe.core.records import post_from_image
from feedpipe.feeds import fanout
from feedpipe.feeds.delivery import add_post, post_is_live
from feedpipe.feeds.fanout import Handoffs, fan_out_post, retract_chunk, retract_post, settle_chunk
from feedpipe.feeds.follows import apply_follow, apply_unfollow, recheck_follow, recheck_unfollow
from feedpipe.feeds.memory import MemoryTable, memory_stores
from feedpipe.feeds.memory_cache import MemoryCache
from feedpipe.feeds.rebuild import rebuild_cache
from feedpipe.feeds.stores import Stores
from tests.memory_app import memory_app

from .conftest import APP_TABLE

AUTHOR = "alice"
FOLLOWERS = ["f0", "f1", "f2", "f3", "f4"]
WARM = {"f0", "f3"}
OLD = "z_old"

Step = tuple[Any, ...]  # hashable: ("walk", resume, segment, again), ("chunk", followers), ...


class Crash(Exception):
    """The planner's process dies here."""


@dataclass
class Run:
    """One world and the bookkeeping of one search."""

    stores: Stores
    app: Any
    post: Post
    live_image: dict[str, Any]
    followers: list[str]
    crashes: int = 0  # how many planners may still die
    finals: int = 0
    seen: set[Any] = field(default_factory=set)
    steps: Counter[str] = field(default_factory=Counter)

    # -- the world's state, to branch on ------------------------------------------------------------

    def _data(self) -> tuple[dict[Any, Any], Any]:
        table, cache = self.stores.table, self.stores.cache
        assert isinstance(table, MemoryTable) and isinstance(cache, MemoryCache)
        return table.items, cache.space

    def save(self) -> Any:
        items, space = self._data()
        return _copy(items), _copy(space.zsets), dict(space.strings), dict(space.deadlines), self.crashes

    def load(self, saved: Any) -> None:
        items, space = self._data()
        items_, zsets, strings, deadlines, self.crashes = saved
        items.clear()
        items.update(_copy(items_))
        space.zsets, space.strings, space.deadlines = _copy(zsets), dict(strings), dict(deadlines)

    def key(self, pending: Counter[Step]) -> Any:
        items, space = self._data()
        feeds = sorted((k, v["post_id"]) for k, v in items.items() if k[0].startswith("FEED#"))
        edges = sorted(k for k in items if not k[0].startswith("FEED#"))
        truth = (edges, items[("POST#p1", "METADATA")].get("is_deleted"))
        cached = sorted((k, sorted(v)) for k, v in space.zsets.items())
        return repr((feeds, truth, cached, sorted(space.strings), sorted(pending.items(), key=repr), self.crashes))

    # -- what users see -----------------------------------------------------------------------------

    def durable(self, user: str) -> list[str]:
        return [i["post_id"] for i in self.stores.table.feed_items(user)]

    def cached(self, user: str) -> list[str] | None:
        items, space = self._data()
        if not space.exists(f"feed:{user}") and not space.exists(self.stores.cache.own_keys.warm_marker(user) or ""):
            return None
        return [json.loads(e.member)["postId"] for e in self.stores.cache.members(user)]


def _copy(nested: dict[Any, dict[Any, Any]]) -> dict[Any, dict[Any, Any]]:
    """Two levels deep: what the stores change in place (items' attributes, sorted sets' members)."""
    return {k: dict(v) for k, v in nested.items()}


def world(*, walkers: int = 4, followers: int = len(FOLLOWERS), warm: set[str] = WARM, crashes: int = 0) -> Run:
    settings = load_settings({
        "FEEDPIPE_TABLE_NAME": APP_TABLE, "FEEDPIPE_FANOUT_CHUNK_SIZE": "1", "FEEDPIPE_FOLLOWER_PAGE_SIZE": "2",
        "FEEDPIPE_FANOUT_MAX_WALKERS": str(walkers), "FEEDPIPE_WRITE_CONCURRENCY": "1",
    })  # fmt: skip
    stores = memory_stores(settings)
    assert isinstance(stores.cache, MemoryCache)
    stores.cache.space.clock = lambda: 0.0  # TTLs never run out mid-search, and states compare equal
    app = memory_app(stores, APP_TABLE)
    fans = FOLLOWERS[:followers]
    for user in [AUTHOR, "zoe", *fans]:
        app.create_user(user)
    app.create_post("zoe", "user_zoe", "old", post_id=OLD, created_at="2024-03-01T09:00:00.000Z")
    old = post_from_image(stores.table.post_image(OLD) or {})
    for user in fans:
        app.follow(user, AUTHOR)
        app.follow(user, "zoe")
        stores.table.put_items(feed_items([user], old, stores.format.item_template(old)))
        if user in warm:
            stores.cache.replace_feed(user, [stores.format.entry(old)])
    app.create_post(AUTHOR, "user_alice", "new", post_id="p1", created_at="2024-03-01T10:00:00.000Z")
    image = stores.table.post_image("p1")
    assert image is not None
    return Run(stores, app, post_from_image(image), image, fans, crashes)


# -- the steps -------------------------------------------------------------------------------------


def _freeze(resume: Resume | None) -> Any:
    return None if resume is None else (json.dumps(resume.start, sort_keys=True), resume.walked, resume.segment)


def _thaw(frozen: Any) -> Resume | None:
    return None if frozen is None else Resume(json.loads(frozen[0]), frozen[1], frozen[2])


def run_step(run: Run, step: Step, crash_at: int | None = None) -> list[Step]:
    """Run one step; returns the steps it leaves pending. A planner's step with ``crash_at``
    dies there (``crash_points``), and leaves its own message to run again."""
    s, post, spawned = run.stores, run.post, []
    kind = step[0]
    run.steps[kind] += 1

    def walk_callbacks(chunk_kind: str, walk_kind: str) -> dict[str, Callable[..., None]]:
        return {
            "hand_out": lambda chunk: spawned.append((chunk_kind, tuple(chunk))),
            "hand_on": lambda resume: spawned.append((walk_kind, _freeze(resume), None, False)),
            "split": lambda segment: spawned.append((walk_kind, None, segment, False)),
        }

    def die() -> None:  # the planner's message is delivered again (an inline chunk's: the planner's)
        run.crashes -= 1
        spawned.append(("walk", *(step[2:4] if kind == "inline" else step[1:3]), True))

    if kind == "walk":  # a planner's first read: is the post live?
        if post_is_live(s, post.post_id):
            spawned.append(("walk-rest", *step[1:]))
        elif step[3]:  # a second attempt finds it deleted: the rest of it is one step
            run.steps["sweep" if step[2] is None else "sweep-segment"] += 1
            sweep = Handoffs(**walk_callbacks("retract-chunk", "retract"))
            fan_out_post(s, post, resume=_thaw(step[1]), segment=step[2], sweep=sweep,
                         **walk_callbacks("chunk", "walk"))
    elif kind == "walk-rest":  # the rest of that planner, which found it live; the remainder it
        # delivers itself is a step of its own, so other steps may come between its write and settle
        callbacks, handed = walk_callbacks("chunk", "walk"), itertools.count(1)

        def hand_out(chunk: list[str]) -> None:  # the chunk's warm feeds have the post by now
            if next(handed) == crash_at:
                die()
                raise Crash
            callbacks["hand_out"](chunk)

        remainder = lambda _s, _p, followers: spawned.append(("inline", tuple(followers), *step[1:3]))  # noqa: E731
        with _first_read_live(run), _patched(fanout, "deliver_chunk", remainder), suppress(Crash):
            fan_out_post(s, post, resume=_thaw(step[1]), segment=step[2], **{**callbacks, "hand_out": hand_out})
    elif kind in ("chunk", "inline"):  # a chunk's writes (durable, then cache again) ...
        add_post(s, post, unique(step[1]))
        if kind == "inline" and crash_at == 1:  # the planner dies before settling its own chunk
            die()
        else:
            spawned.append(("settle", step[1]))
    elif kind == "settle":  # ... and its settle
        settle_chunk(s, post, list(step[1]))
    elif kind == "delete":  # ("delete", "revive"): the app then makes the post live again
        run.app.delete_post(post.post_id)
        spawned.append(("retract", None, None, False))
        if step[1:] == ("revive",):
            spawned.append(("revive",))
    elif kind == "revive":  # its stream record publishes the post again
        run.app.dynamodb.update_item(
            TableName=APP_TABLE, Key={"PK": {"S": "POST#p1"}, "SK": {"S": "METADATA"}},
            UpdateExpression="SET is_deleted = :f", ExpressionAttributeValues={":f": {"BOOL": False}},
        )  # fmt: skip
        spawned.append(("walk", None, None, False))
    elif kind == "retract":
        retract_post(s, post, resume=_thaw(step[1]), segment=step[2], **walk_callbacks("retract-chunk", "retract"))
    elif kind == "retract-chunk":
        retract_chunk(s, post, list(step[1]))
    elif kind == "unfollow":
        run.app.unfollow(step[1], AUTHOR)
        spawned.append(("unfollow-task", step[1]))
    elif kind == "unfollow-task":
        apply_unfollow(s, step[1], AUTHOR)
    elif kind == "rebuild":
        rebuild_cache(s, step[1])
    else:
        raise AssertionError(step)
    return spawned


def crash_points(run: Run, step: Step) -> Iterator[int | None]:
    """Where a step may end: done (None), or, while a planner may still die, at each point of a
    planner's that ``run_step`` counts (its hand-outs; its own chunk's settle), until past its last."""
    yield None
    if run.crashes and step[0] in ("walk-rest", "inline"):
        yield from itertools.count(1)


@contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    real = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, real)


class _first_read_live:  # noqa: N801 - used as a statement
    """The planner's first post read answers what its first step read: the post, live."""

    def __init__(self, run: Run) -> None:
        self.table, self.image = run.stores.table, run.live_image

    def __enter__(self) -> None:
        real, image, served = self.table.post_image, self.image, [False]

        def post_image(post_id: str) -> dict[str, Any] | None:
            if not served[0]:
                served[0] = True
                return dict(image)
            return real(post_id)

        self.real = real
        self.table.post_image = post_image  # type: ignore[method-assign]

    def __exit__(self, *_: object) -> None:
        self.table.post_image = self.real  # type: ignore[method-assign]


def explore(run: Run, pending: Counter[Step], check: Callable[[Run], None]) -> None:
    state = run.key(pending)
    if state in run.seen:
        return
    run.seen.add(state)
    if not pending:
        run.finals += 1
        check(run)
        return
    saved = run.save()
    for step in sorted(pending, key=repr):
        for crash_at in crash_points(run, step):
            rest = pending.copy()
            rest[step] -= 1
            rest += Counter(run_step(run, step, crash_at))
            if crash_at is not None and run.crashes == saved[-1]:  # the planner ended before that point
                run.load(saved)
                break
            explore(run, +rest, check)
            run.load(saved)


# -- what must hold at the end, whatever the order -------------------------------------------------


def expect(run: Run, has_post: set[str], warm: set[str]) -> None:
    for user in run.followers:
        want = ["p1", OLD] if user in has_post else [OLD]
        assert run.durable(user) == want, f"durable feed of {user}"
        assert run.cached(user) == (want if user in warm else None), f"cached feed of {user}"


def searched(run: Run, *app_steps: Step, check: Callable[[Run], None]) -> Run:
    explore(run, Counter([("walk", None, None, False), *app_steps]), check)
    assert run.finals > 0
    return run


def test_the_walk_splits_and_a_chunk_goes_out_only_once_its_warm_feeds_have_the_post():
    run = world()
    handed: list[tuple[str, ...]] = []

    def hand_out(chunk: list[str]) -> None:
        for user in set(chunk) & WARM:  # written before the chunk is sent, durable or not
            assert run.cached(user) == ["p1", OLD] and run.durable(user) == [OLD]
        handed.append(tuple(chunk))

    split: list[Segment] = []
    fan_out_post(run.stores, run.post, hand_out, split=split.append)
    assert split and handed and set(handed[0]) & WARM


def test_without_app_actions_every_order_puts_the_post_in_every_feed_once():
    run = searched(world(), check=lambda r: expect(r, set(FOLLOWERS), WARM))
    assert run.steps["walk-rest"] >= 2, "the walk never split"


def test_a_post_deleted_at_any_point_ends_in_no_feed_whatever_the_order():
    run = searched(world(), ("delete",), check=lambda r: expect(r, set(), WARM))
    assert run.steps["retract"] >= 2 and len(run.seen) > 500


@pytest.mark.parametrize("leaver", ["f3", "f4"], ids=["warm", "cold"])
def test_an_unfollow_at_any_point_leaves_the_post_out_of_that_feed_whatever_the_order(leaver):
    searched(world(), ("unfollow", leaver), check=lambda r: expect(r, set(FOLLOWERS) - {leaver}, WARM))


@pytest.mark.parametrize("user", ["f3", "f4"], ids=["warm", "cold"])
def test_a_cache_rebuild_at_any_point_leaves_the_cache_equal_to_the_durable_feed(user):
    searched(world(), ("rebuild", user), check=lambda r: expect(r, set(FOLLOWERS), WARM | {user}))


@pytest.mark.parametrize("user", ["f3", "f2"], ids=["warm", "cold"])
def test_a_delete_and_a_rebuild_at_any_points_end_with_the_post_in_no_feed(user):
    run = world(walkers=2, followers=4)
    searched(run, ("delete",), ("rebuild", user), check=lambda r: expect(r, set(), WARM | {user}))


def test_an_unfollow_and_a_rebuild_of_the_leaver_at_any_points_leave_the_post_out_of_that_feed():
    run = world(walkers=2, followers=4)
    stayers = set(run.followers) - {"f2"}
    searched(run, ("unfollow", "f2"), ("rebuild", "f2"), check=lambda r: expect(r, stayers, WARM | {"f2"}))


# Crashes multiply the orders: three followers, the first planner's hand-out to f0 and the
# split-off planner's own chunk to f2 both warm.
CRASHING = {"walkers": 2, "followers": 3, "warm": {"f0", "f2"}, "crashes": 1}


def test_a_planner_that_dies_anywhere_and_runs_again_still_puts_the_post_in_every_feed_once():
    run = searched(world(**CRASHING), check=lambda r: expect(r, set(FOLLOWERS), CRASHING["warm"]))
    assert run.steps["inline"] >= 2, "no planner delivered a chunk of its own"


def test_a_post_deleted_while_a_planner_that_died_waits_to_run_again_ends_in_no_feed():
    """The planner dies after a warm write (or its own chunk's writes) that the delete's
    retraction had already walked past; its second attempt finds the post deleted, and must
    take out what the first one may have written."""
    run = world(**CRASHING)
    repairs = _repairs(run, "sweep")
    searched(run, ("delete",), check=lambda r: expect(r, set(), CRASHING["warm"]))
    assert run.steps["sweep"] and run.steps["sweep-segment"], "a first or a split-off planner never swept"
    assert _repairs(run, "sweep") == repairs + run.steps["sweep"] + run.steps["sweep-segment"]


def _repairs(run: Run, kind: str) -> float:
    return float(run.stores.metrics.crash_repairs.labels(kind)._value.get())


def test_a_post_revived_after_a_second_attempt_swept_it_ends_in_every_feed_once():
    """The sweep's chunks may run after the post is live again (and its new fan-out done): they
    settle, so they put it back. One page of two followers: a revive multiplies the orders."""
    warm = {"f0", "f1"}
    run = searched(world(followers=2, warm=warm, crashes=1), ("delete", "revive"),
                   check=lambda r: expect(r, set(FOLLOWERS), warm))
    assert run.steps["sweep"] and run.steps["revive"]


def test_with_one_walker_no_walk_splits():
    run = searched(world(walkers=1), check=lambda r: expect(r, set(FOLLOWERS), WARM))
    assert run.steps["walk-rest"] == 1


# -- an unfollow between a planner's page read and its write, then the planner dies ----------------


@contextmanager
def _unfollow_just_before(run: Run, leaver: str, target: Any, write: str) -> Iterator[None]:
    """The leaver unfollows, and the unfollow's task runs, after the planner read the page that
    lists them and just before its ``write`` (of ``target``: the cache's warm write, the table's
    put) first reaches them."""
    real = getattr(target, write)

    def racing(batch: Any, *args: Any) -> Any:
        batch = list(batch)
        if any(leaver in (one if isinstance(one, str) else one["user_id"]["S"]) for one in batch):
            setattr(target, write, real)
            run.app.unfollow(leaver, AUTHOR)
            apply_unfollow(run.stores, leaver, AUTHOR)
        return real(batch, *args)

    with _patched(target, write, racing):
        yield


def _deliver(run: Run, chunks: list[list[str]]) -> None:
    for chunk in chunks:
        fanout.deliver_chunk(run.stores, run.post, chunk)


def _die(*_: object) -> None:
    raise Crash


@pytest.mark.parametrize("leaver, own_chunk", [("f0", False), ("f2", True)],
                         ids=["warm write, chunk never sent", "own chunk written, never settled"])
def test_an_unfollow_inside_a_planner_that_then_dies_is_undone_by_its_check_after_the_walks(leaver, own_chunk):
    """The unfollow's task runs between the planner's read of the follower and its write to them
    (the warm write of a chunk it hands out, or the durable and cached writes of the chunk it
    delivers itself); the planner dies before anything settles that write, and its second
    attempt walks a GSI1 that no longer lists the leaver. What takes the post out is the
    unfollow checked again once no planner can still be writing from a page read before it."""
    run = world(walkers=1, followers=3, warm={"f0", "f2"})  # chunks: [f0], [f1] handed out, [f2] its own
    sent: list[list[str]] = []
    if own_chunk:
        race = _unfollow_just_before(run, leaver, run.stores.table, "put_items")
        with race, _patched(fanout, "settle_chunk", _die), suppress(Crash):
            fan_out_post(run.stores, run.post, hand_out=sent.append)
    else:
        race = _unfollow_just_before(run, leaver, run.stores.cache, "add_to_warm_feeds")
        with race, suppress(Crash):
            fan_out_post(run.stores, run.post, hand_out=_die)
    _deliver(run, sent)  # what it sent before it died runs
    again: list[list[str]] = []
    fan_out_post(run.stores, run.post, hand_out=again.append, sweep=Handoffs(hand_out=_die))
    _deliver(run, again)
    assert "p1" in (run.cached(leaver) or []), "the race was not forced: no stale write to undo"
    repairs = _repairs(run, "unfollow_recheck")

    recheck_unfollow(run.stores, leaver, AUTHOR)

    expect(run, set(run.followers) - {leaver}, {"f0", "f2"})
    assert _repairs(run, "unfollow_recheck") == repairs + 1  # on the dashboard: a crash closed


def test_a_post_deleted_and_a_re_follow_after_that_stale_write_end_with_the_post_in_no_feed():
    """The same stale write, then the post is deleted (its retraction walks without the leaver)
    and the leaver follows again before the unfollow's re-check: the re-follow's backfill, and
    that re-check, must take a post no longer live out of the cached feed too, where nothing
    durable names it."""
    run = world(walkers=1, followers=3, warm={"f0", "f2"})
    with _unfollow_just_before(run, "f0", run.stores.cache, "add_to_warm_feeds"), suppress(Crash):
        fan_out_post(run.stores, run.post, hand_out=_die)
    again: list[list[str]] = []
    fan_out_post(run.stores, run.post, hand_out=again.append, sweep=Handoffs(hand_out=_die))  # at once: live
    _deliver(run, again)
    run.app.delete_post("p1")
    retraction: list[list[str]] = []
    retract_post(run.stores, run.post, hand_out=retraction.append)
    for chunk in retraction:
        retract_chunk(run.stores, run.post, chunk)
    assert "p1" in (run.cached("f0") or []), "the race was not forced: no stale write"
    run.app.follow("f0", AUTHOR)
    apply_follow(run.stores, "f0", AUTHOR)

    expect(run, set(), {"f0", "f2"})  # the re-follow's backfill took it out
    recheck_follow(run.stores, "f0", AUTHOR)
    recheck_unfollow(run.stores, "f0", AUTHOR)
    expect(run, set(), {"f0", "f2"})
