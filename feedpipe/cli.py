"""``feedpipe`` command line: thin commands over the package. Settings are built once here, and
each command's services (``services.Services``) from them, handed down explicitly."""

from __future__ import annotations

import json
import logging
import signal
import sys
from typing import Any

import click

from feedpipe.config import ConfigError, Settings, load_settings
from feedpipe.logs import setup_logging
from feedpipe.services import Services

log = logging.getLogger("feedpipe")


class _Commands(click.Group):
    """A bad setting, or a table or stream that is not there, ends a command with one line and
    exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        from feedpipe.adapters.streams import StreamError

        try:
            return super().invoke(ctx)
        except (ConfigError, StreamError) as exc:
            click.echo(f"feedpipe: {exc}", err=True)
            ctx.exit(2)


def _start(ctx: click.Context, redis: bool = True, broker: bool = False) -> Services:
    """This command's services, on settings built once and validated (nothing connects until a
    service is first used). The Redis it uses (and the broker, when ``broker``) is logged in to
    once, so a wrong password or certificate is one line."""
    if ctx.obj is None:
        settings = load_settings()
        setup_logging(settings)
        if redis:
            from feedpipe.adapters.redis_client import check_redis

            settings = check_redis(settings, broker=broker)  # with the cluster mode resolved
        ctx.obj = Services(settings)
    services: Services = ctx.obj
    return services


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="feedpipe")
def main() -> None:
    """feedpipe keeps the app's home feeds right from the table's change stream."""


@main.command("create-tables")
@click.pass_context
def create_tables_cmd(ctx: click.Context) -> None:
    """Create the app table (as the seed does) and feedpipe's lease and dead-letter tables, idempotently."""
    settings = _start(ctx, redis=False).settings
    from feedpipe.adapters.dynamo import make_client
    from feedpipe.adapters.tables import create_tables

    outcome = create_tables(
        make_client("dynamodb"), settings.table_name, settings.lease_table_name, settings.dead_letter_table_name
    )
    for name, what in outcome.items():
        click.echo(f"{name}: {what}")


@main.command()
@click.option("--stop-when-idle", is_flag=True, help="Return once every shard is drained and dispatched.")
@click.pass_context
def consume(ctx: click.Context, stop_when_idle: bool) -> None:
    """Run the stream consumer."""
    settings = _start(ctx, broker=True).settings
    from feedpipe.consumers.build import build_consumer
    from feedpipe.consumers.collector import tuned_collector
    from feedpipe.health import ConsumerProbe, consumer_stall_seconds

    registry, metrics = _process_metrics()
    consumer = build_consumer(settings, metrics)
    probe = ConsumerProbe(consumer.loop_heartbeat, consumer.round_heartbeat, consumer.leases,
                          consumer_stall_seconds(settings))
    _serve(settings, "consume", registry, probe)

    def stop(signum: int, _: Any) -> None:
        log.info("signal %s: finishing the batch in hand, then stopping", signum)
        consumer.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("consuming %s with settings %s", settings.table_name, settings.describe())
    with tuned_collector():
        totals = consumer.run(stop_when_idle=stop_when_idle)
    click.echo(json.dumps({"consumed": totals.__dict__}))


def _process_metrics() -> tuple[Any, Any]:
    """This process's metrics, on a registry of its own (consumer and beat; the worker serves
    the sum of its children itself)."""
    from prometheus_client import CollectorRegistry

    from feedpipe.metrics import Metrics

    registry = CollectorRegistry()
    return registry, Metrics.create(registry)


def _serve(settings: Settings, role: str, registry: Any, probe: Any) -> None:
    """``/metrics``, ``/healthz`` and ``/readyz`` on the role's port."""
    from feedpipe.endpoints import serve

    serve(registry, settings.metrics_port_for(role), settings.metrics_addr, probe)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a Celery worker for every feedpipe queue; extra options go to Celery."""
    settings = _start(ctx, broker=True).settings
    from feedpipe.worker import WorkerApp

    argv = ["worker", *ctx.args]
    if not any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") for a in ctx.args):
        argv += ["--loglevel", logging.getLevelName(logging.getLogger().level)]
    WorkerApp(settings).worker_main(argv)


@main.command()
@click.option("--demo", is_flag=True, help="Also drive the app's write paths and show feeds filling.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--concurrency", type=int, default=2, show_default=True, help="Worker processes.")
def up(demo: bool, duration: float | None, concurrency: int) -> None:
    """Run the whole pipeline; on embedded local backends when nothing is configured."""
    from feedpipe.dev.up import run_up

    sys.exit(run_up(demo=demo, duration=duration, concurrency=concurrency))


@main.command()
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run the scheduler of periodic jobs (regen drain, trims, rebuilds); one at a time."""
    settings = _start(ctx, broker=True).settings
    import threading

    from feedpipe.beat import run_beat
    from feedpipe.health import BeatProbe, Heartbeat, beat_stall_seconds

    registry, _ = _process_metrics()
    probe = BeatProbe(Heartbeat(), beat_stall_seconds(settings))
    _serve(settings, "beat", registry, probe)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sys.exit(run_beat(settings, stop, probe))


@main.command()
@click.argument("users", nargs=-1)
@click.option("--all-active", is_flag=True, help="Every user with a warm cached feed.")
@click.option("--cache-only", is_flag=True, help="Rebuild only the cached feeds from the durable ones.")
@click.pass_context
def rebuild(ctx: click.Context, users: tuple[str, ...], all_active: bool, cache_only: bool) -> None:
    """Rebuild feeds: the durable feed from follows and posts, then the cache from it."""
    services = _start(ctx)
    from tqdm import tqdm

    from feedpipe.ops import active_users, rebuild_users

    stores = services.stores
    targets = list(users) + (active_users(stores) if all_active else [])
    if not targets:
        raise click.UsageError("name users to rebuild, or pass --all-active")
    with tqdm(total=len(targets), unit="user", desc="rebuilding", file=sys.stderr) as bar:
        summary = rebuild_users(stores, targets, durable=not cache_only, progress=lambda _: bar.update())
    click.echo(
        f"rebuilt {summary.users} of {len(targets)} users: {summary.cached_members} cached posts, "
        f"{summary.posts_backfilled} backfilled, {summary.authors_unmerged} unfollowed authors removed"
    )
    for user, error in summary.failures.items():
        click.echo(f"failed {user}: {error}", err=True)
    ctx.exit(1 if summary.failures else 0)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Shards, checkpoints, lag, queue depths and dead letters."""
    services = _start(ctx)
    from feedpipe.ops import gather_status

    report = gather_status(services.settings, services.stores, services.redis)
    click.echo(json.dumps(report, indent=2) if as_json else _render_status(report))


def _render_status(report: dict[str, Any]) -> str:
    stream = report["stream"]
    lines = [f"stream   {stream.get('id', stream.get('error'))}"]
    header = f"  {'shard':<40} {'owner':<24} {'checkpoint':<24} {'ckpt age':>9} {'lag':>7}"
    lines.append(header)
    for row in stream.get("shards", []):
        checkpoint = "SHARD_END (done)" if row["finished"] else str(row["checkpoint"])[:24]
        lines.append(
            f"  {row['shard'][:40]:<40} {str(row['owner'] or '-')[:24]:<24} {checkpoint:<24} "
            f"{_secs(row['checkpoint_age_seconds']):>9} {_secs(row['last_record_age_seconds']):>7}"
        )
    lines.append("queues")
    lines += [f"  {name:<22} {depth:>8}" for name, depth in report["queues"].items()]
    lines.append(f"dead letters {report['dead_letters']:>11}")
    ttl = report["beat_lock_ttl_seconds"]
    lines.append(f"beat     {'running (lock ttl ' + str(ttl) + 's)' if ttl > 0 else 'not running'}")
    return "\n".join(lines)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s"


@main.group()
def dlq() -> None:
    """Inspect and purge dead letters."""


@dlq.command("list")
@click.option("--limit", type=int, default=20, show_default=True, help="Newest first; 0 lists every letter.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.pass_context
def dlq_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Show the newest dead letters with their reasons, a page at a time."""
    letters = _start(ctx).stores.dead_letters
    shown = 0
    for page in letters.pages(newest_first=True):
        for entry in page[: limit - shown if limit else None]:
            click.echo(json.dumps(entry) if as_json else _render_letter(entry))
            shown += 1
        if limit and shown >= limit:
            break
    if not as_json:
        click.echo(f"{letters.count()} dead letters in all")


def _render_letter(entry: dict[str, Any]) -> str:
    line = f"{entry['at']}  {entry['source']:<28} {entry['reason']}"
    if entry.get("truncated"):
        line += f"  [cut: {entry['original_bytes']} bytes, sha256 {entry['sha256'][:12]}]"
    if entry.get("replay_reason"):
        line += f"  [replay failed: {entry['replay_reason']}]"
    return line


@dlq.command("replay")
@click.option("--limit", type=int, default=0, show_default=True, help="Oldest letters first; 0 replays all.")
@click.pass_context
def dlq_replay(ctx: click.Context, limit: int) -> None:
    """Send dead letters back through the normal path (once the cause is fixed)."""
    services = _start(ctx, broker=True)
    from feedpipe.consumers.build import build_pipeline
    from feedpipe.ops import replay_dead_letters

    result = replay_dead_letters(services.stores, build_pipeline(services.settings), limit)
    by_source = ", ".join(f"{n} {kind}" for kind, n in sorted(result.sources.items())) or "nothing"
    click.echo(f"replayed {result.replayed} dead letters ({by_source}); {result.failed_again} failed again; "
               f"{result.kept} kept (gap markers, unknown sources); "
               f"{result.truncated} cut when stored (too large to resend; kept)")


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_context
def dlq_purge(ctx: click.Context, yes: bool) -> None:
    """Delete every dead letter."""
    services = _start(ctx)
    if yes or click.confirm("Delete every dead letter?"):
        click.echo(f"purged {services.stores.dead_letters.purge()} dead letters")


def _add_feed_commands() -> None:
    from feedpipe.cli_feeds import audit_cmd, backfill_cmd

    main.add_command(audit_cmd)
    main.add_command(backfill_cmd)


_add_feed_commands()
