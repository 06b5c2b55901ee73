"""``feedpipe audit`` and ``feedpipe backfill``: the commands that check and build many users' feeds."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from feedpipe.config import Settings
from feedpipe.feeds.repair import AuditSummary


@click.command("audit")
@click.argument("users", nargs=-1)
@click.option("--all", "all_users", is_flag=True, help="Every user in the table (a paged Scan).")
@click.option("--sample", type=click.IntRange(min=1), default=None, help="This many users picked at random.")
@click.option("--repair", is_flag=True, help="Fix what is found, through the feed rules.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable.")
@click.pass_context
def audit_cmd(
    ctx: click.Context, users: tuple[str, ...], all_users: bool, sample: int | None, repair: bool, as_json: bool
) -> None:
    """Compare feeds with the table and report drift by kind; exits 1 while drift is left."""
    from feedpipe.cli import _start

    services = _start(ctx)
    from tqdm import tqdm

    from feedpipe.adapters import user_scan
    from feedpipe.feeds.repair import audit_users

    if sum((bool(users), all_users, sample is not None)) != 1:
        raise click.UsageError("name users, or pass one of --all and --sample N")
    stores = services.stores
    client, table = services.dynamodb, services.settings.table_name
    if all_users:
        targets = list(user_scan.all_users(client, table))
    elif sample is not None:
        targets = user_scan.sample_users(client, table, sample)
    else:
        targets = list(users)
    with tqdm(total=len(targets), unit="user", desc="auditing", file=sys.stderr, disable=as_json) as bar:
        summary = audit_users(stores, targets, repair=repair, progress=lambda _: bar.update())
    click.echo(json.dumps(report_of(summary, repair), indent=2) if as_json else render_audit(summary, repair))
    ctx.exit(1 if summary.unrepaired else 0)


def report_of(summary: AuditSummary, repaired: bool) -> dict[str, object]:
    def by_kind(which: str) -> dict[str, int]:
        return {f"{store}:{kind}": n for (kind, store), n in sorted(summary.counts(which).items())}

    return {
        "users": summary.users,
        "drifted_users": len(summary.drifted),
        "drift": by_kind("found"),
        "repair": repaired,
        "unrepaired": by_kind("left"),
        "results": [u.as_dict() for u in summary.drifted],
    }


def render_audit(summary: AuditSummary, repaired: bool) -> str:
    lines = [f"  {'user':<24} {'store':<9} {'kind':<12} {'count':>6}  {'unrepaired':>10}  example"]
    for user in summary.drifted:
        if user.error:
            lines.append(f"  {user.user_id[:24]:<24} failed: {user.error}")
        rows: dict[tuple[str, str], list[str]] = {}
        for drift in user.found:
            rows.setdefault((drift.store, drift.kind), []).append(drift.ref)
        left = {(d.store, d.kind): 0 for d in user.left}
        for d in user.left:
            left[(d.store, d.kind)] += d.count
        for (store, kind), refs in sorted(rows.items()):
            count = sum(d.count for d in user.found if (d.store, d.kind) == (store, kind))
            lines.append(
                f"  {user.user_id[:24]:<24} {store:<9} {kind:<12} {count:>6}  {left.get((store, kind), 0):>10}  "
                f"{refs[0][:60]}"
            )
    found = sum(summary.counts("found").values())
    left_total = sum(summary.counts("left").values())
    verdict = f"{found - left_total} repaired, {left_total} left" if repaired else f"{found} not repaired"
    lines.append(f"audited {summary.users} users: {len(summary.drifted)} with drift, {found} drift items ({verdict})")
    return "\n".join(lines if summary.drifted else lines[-1:])


@click.command("backfill")
@click.option("--segments", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="Parallel Scan segments, each a task; more segments spread over more workers.")
@click.option("--fresh", is_flag=True, help="Forget an earlier run's progress and start over.")
@click.option("--poll-seconds", type=float, default=1.0, show_default=True, help="Progress refresh period.")
@click.pass_context
def backfill_cmd(ctx: click.Context, segments: int, fresh: bool, poll_seconds: float) -> None:
    """Build every user's feed from the table (first deploy); resumes where a run stopped."""
    from feedpipe.cli import _start

    services = _start(ctx, broker=True)
    settings = services.settings
    import time

    from tqdm import tqdm

    from feedpipe.adapters.backfill_progress import BackfillProgress
    from feedpipe.adapters.celery_app import publisher_app
    from feedpipe.tasks.backfill import send_segment

    client = services.dynamodb
    if not _consumer_pinned(settings, client):
        click.echo("feedpipe: start `feedpipe consume` first and wait until `feedpipe status` shows a checkpoint "
                   "for every shard: the backfill must read the table after the stream's start is fixed", err=True)
        ctx.exit(2)
    progress = BackfillProgress(client, settings.lease_table_name)
    if fresh:
        progress.clear(segments)
    states = progress.start(segments)
    publisher = publisher_app(settings)
    for state in states:
        if not state.done:
            send_segment(publisher, segments, state.segment)  # a second copy of a running one just stops
    started, first = time.monotonic(), sum(s.users for s in states)
    with tqdm(total=segments, unit="segment", desc="backfilling", file=sys.stderr) as bar:
        while True:
            states = progress.all(segments)
            users = sum(s.users for s in states)
            bar.update(sum(s.done for s in states) - bar.n)
            bar.set_postfix(users=users, per_s=f"{(users - first) / max(time.monotonic() - started, 1e-3):.0f}")
            if all(s.done for s in states):
                break
            time.sleep(poll_seconds)
    elapsed = time.monotonic() - started
    click.echo(f"backfilled {users} users in {segments} segments ({users - first} in this run, {elapsed:.1f} s)")


def _consumer_pinned(settings: Settings, client: Any) -> bool:
    """Whether a consumer has started on the stream and fixed where it starts: every record
    after that reaches feeds through the stream, every one before through the backfill."""
    from feedpipe.adapters.leases import LATEST, LeaseTable
    from feedpipe.consumers.build import build_source

    leases = LeaseTable(client, settings.lease_table_name, build_source(settings, client).stream_id).list()
    return bool(leases) and all(lease.checkpoint != LATEST for lease in leases.values())
