"""The failed-job and queue maintenance commands: queue:failed, queue:retry, queue:size, ..."""
from __future__ import annotations

import json

import click

from core.console.base import command, print_table
from core.errors import ConnectionFailed
from core.job import validate_queue_name
from core.queue.contract import QueueAdmin, admin
from core.queue.failed import FailedJob
from core.queue.retry import retry_failed


def _queues(value: str | None) -> list[str] | None:
    if value is None:
        return None
    # A value with no name in it ("", ",") is refused like any other bad name, not read as "every queue".
    return [validate_queue_name(q.strip()) for q in value.split(",") if q.strip()] or [validate_queue_name(value)]


@command("queue:failed")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
async def failed(app, as_json) -> None:
    """List failed jobs: id, connection, queue, class, failed_at and the exception's first line."""
    jobs = await (await app.queue.failed_store()).all()
    if as_json:
        click.echo(json.dumps([j.as_dict() for j in jobs], indent=2))
    else:
        print_failed(jobs)


def print_failed(jobs: list[FailedJob]) -> None:
    if not jobs:
        click.echo("No failed jobs.")
        return
    rows = [(j.uuid, j.connection, j.queue, j.job_class, j.as_dict()["failed_at"], j.summary) for j in jobs]
    print_table(("ID", "Connection", "Queue", "Class", "Failed At", "Exception"), rows)


@command("queue:retry")
@click.argument("ids", nargs=-1, required=True)
@click.option("--queue", default=None, help="With `all`: only the failed jobs of this queue.")
@click.option("--delay", type=click.FloatRange(min=0), default=0, help="Seconds before the jobs are due again.")
async def retry(app, ids, queue, delay) -> int:
    """Push failed jobs back on their own connection and queue with attempts reset.

    IDS are job ids from queue:failed, or `all`. A retried job keeps its id.
    """
    if queue:
        validate_queue_name(queue)
    result = await retry_failed(app, None if list(ids) == ["all"] else list(ids), queue, delay)
    after = f", due in {delay:g}s" if delay else ""
    for job in result.retried:
        click.echo(f"Retried {job.uuid} ({job.job_class}) onto {job.connection}/{job.queue}{after}")
    for job_id in result.missing:
        click.echo(f"No failed job with id {job_id}", err=True)
    if not result.retried and not result.missing:
        click.echo("No failed jobs to retry.")
    return 1 if result.missing else 0


@command("queue:forget")
@click.argument("job_id")
async def forget(app, job_id) -> int:
    """Delete one failed job."""
    if await (await app.queue.failed_store()).forget(job_id):
        click.echo(f"Deleted failed job {job_id}.")
        return 0
    click.echo(f"No failed job with id {job_id}", err=True)
    return 1


@command("queue:flush")
@click.option("--hours", type=click.FloatRange(min=0), default=None,
              help="Only failed jobs older than this many hours.")
async def flush(app, hours) -> None:
    """Delete all failed jobs (or those older than --hours)."""
    count = await (await app.queue.failed_store()).flush(hours)
    click.echo(f"Deleted {count} failed job(s).")


@command("queue:prune-failed")
@click.option("--hours", type=click.FloatRange(min=0), default=24, show_default=True,
              help="Delete failed jobs older than this.")
async def prune_failed(app, hours) -> None:
    """Delete failed jobs older than --hours."""
    count = await (await app.queue.failed_store()).flush(hours)
    click.echo(f"Pruned {count} failed job(s) older than {hours:g} hour(s).")


@command("queue:clear")
@click.argument("connection", required=False)
@click.option("--queue", default="default", show_default=True, help="Queue(s) to clear, comma-separated.")
async def clear(app, connection, queue) -> None:
    """Delete the jobs waiting in a queue: pending (a dead worker's whose reservation lapsed included)
    and delayed; jobs running now are left to finish."""
    conn = await app.queue.connection(connection)
    store = admin(conn, "queue:clear")
    for name in _queues(queue) or []:
        count = await store.clear(name)
        click.echo(f"Cleared {count} job(s) from queue {name} on {conn.name}.")


@command("queue:size")
@click.argument("connection", required=False)
@click.option("--queue", default=None, help="Queue(s) to count, comma-separated (default: every queue with jobs).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
async def size(app, connection, queue, as_json) -> None:
    """Show pending, delayed, reserved and waiting counts per queue."""
    conn = await app.queue.connection(connection)
    sizes = await admin(conn, "queue:size").sizes(_queues(queue))
    if as_json:
        click.echo(json.dumps({"connection": conn.name,
                               "queues": {q: {**s.as_dict(), "waiting": s.waiting} for q, s in sizes.items()}}))
        return
    if not sizes:
        click.echo(f"No jobs on {conn.name}.")
        return
    print_table(("Queue", "Pending", "Delayed", "Reserved", "Waiting"),
                [(q, s.pending, s.delayed, s.reserved, s.waiting) for q, s in sizes.items()])


@command("queue:restart")
@click.argument("connection", required=False)
async def restart(app, connection) -> None:
    """Tell every running worker to finish its current jobs and exit (a supervisor starts new ones).

    Without CONNECTION: every configured connection that keeps jobs (each keeps its own signal, where
    its workers read it). QUEUE_CONNECTION and database must be reachable; another that is not is
    skipped with a line on stderr."""
    if connection:
        await admin(await app.queue.connection(connection), "queue:restart").request_restart()
        signalled = [connection]
    else:
        signalled = await _restart_defaults(app)
    click.echo(f"Restart signal sent to workers on {', '.join(signalled) or 'no connection'}.")


async def _restart_defaults(app) -> list[str]:
    """queue:restart without a name: every configured connection that takes a signal (a sync one runs
    no workers). A worker reads the signal from its own connection's store, so signalling only the
    default missed, say, Redis workers of an app whose QUEUE_CONNECTION is database."""
    required = {app.config.queue.default, "database"}
    signalled = []
    for name in app.config.queue.connections:
        try:
            conn = await app.queue.connection(name)
        except ConnectionFailed as exc:
            if name in required:
                raise
            click.echo(f"queue:restart: skipped {name}: {exc}", err=True)
            continue
        if isinstance(conn, QueueAdmin):
            await conn.request_restart()
            signalled.append(name)
    return signalled


@command("migrate")
async def migrate(app) -> None:
    """Create the jobs and failed_jobs tables in the database of DB_CONNECTION."""
    from core.queue.database import DatabaseQueue

    db = await app.queue.database()
    await DatabaseQueue(db, await app.queue.failed_store(), app.config.queue.visibility_timeout).migrate()
    click.echo(f"Migrated jobs and failed_jobs ({app.config.database.describe()}).")

