"""SPEC 11 commands: queue:status, queue:jobs, queue:cancel, queue:prune-results."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import click

from core.console.base import command, print_table
from core.job import validate_queue_name
from core.queue.contract import admin
from core.queue.status import FINAL, STATES, JobStatus


def _when(at: float | None) -> str:
    return "" if at is None else datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _queue(queue: str | None) -> str | None:
    return validate_queue_name(queue) if queue else None


@command("queue:status")
@click.argument("job_id")
@click.argument("connection", required=False)
@click.option("--queue", default=None, help="The job's queue (Redis looks in every queue without it).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
async def status(app, job_id, connection, queue, as_json) -> int:
    """Show a job's state, attempts, times, last error, progress and kept result. Exit 1 when unknown."""
    conn = await app.queue.connection(connection)
    found = await conn.job_status(_queue(queue), job_id) or JobStatus(state="unknown", id=job_id)
    if as_json:
        click.echo(json.dumps(found.as_dict(), default=str))
    else:
        for name, value in found.as_dict().items():
            if value not in (None, "", {}) or name == "state":
                shown = _when(value) if name.endswith("_at") and isinstance(value, (int, float)) else value
                click.echo(f"{name:14} {json.dumps(shown) if isinstance(shown, (dict, list)) else shown}")
    return 1 if found.state == "unknown" else 0


@command("queue:jobs")
@click.argument("connection", required=False)
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--state", type=click.Choice([s for s in STATES if s != "unknown"]), default=None,
              help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
async def jobs(app, connection, queue, state, limit, as_json) -> None:
    """List jobs (queued, kept results, failed); the cost is bounded by --limit."""
    conn = await app.queue.connection(connection)
    found = await admin(conn, "queue:jobs").jobs(_queue(queue), state, limit)
    if as_json:
        click.echo(json.dumps([j.as_dict() for j in found], default=str))
        return
    if not found:
        click.echo("No jobs.")
        return
    print_table(("ID", "State", "Queue", "Class", "Attempts", "Dispatched At", "Last Error"),
                [(j.id, j.state, j.queue or "", (j.job or "").rpartition(".")[2], j.attempts, _when(j.dispatched_at),
                  j.last_error or "") for j in found])


@command("queue:cancel")
@click.argument("ids", nargs=-1, required=True, metavar="ID... [CONNECTION]")
@click.option("--queue", default=None, help="The jobs' queue.")
async def cancel(app, ids, queue) -> int:
    """Cancel jobs: pending, delayed and waiting ones are removed; running ones are cancelled at their next await.

    The last word names the connection when it is a configured one (default: QUEUE_CONNECTION)."""
    # One variadic argument: click gives an optional CONNECTION after ID... the last word even when
    # it is an id, so `queue:cancel ID` failed with "Missing argument 'IDS...'".
    ids = list(ids)
    connection = ids.pop() if len(ids) > 1 and ids[-1] in app.config.queue.connections else None
    conn = await app.queue.connection(connection)
    code = 0
    for job_id in ids:
        # A job already finished keeps its state; cancel_job answers that state too, and "cancelled"
        # would read as if this call had cancelled it.
        before = await conn.job_status(_queue(queue), job_id)
        if before is not None and before.state in FINAL:
            click.echo(f"Job {job_id} is already {before.state}; nothing changed.")
            continue
        state = await conn.cancel_job(_queue(queue), job_id)
        if state == "cancelled":
            click.echo(f"Cancelled {job_id}.")
        elif state == "reserved":
            click.echo(f"Cancelling {job_id}: it is running; its worker cancels it at its next await.")
        elif state == "unknown":
            click.echo(f"No job with id {job_id}", err=True)
            code = 1
        else:
            click.echo(f"Job {job_id} is already {state}; nothing changed.")
    return code


@command("queue:prune-results")
@click.argument("connection", required=False)
async def prune_results(app, connection) -> None:
    """Delete kept results (and cancelled records) whose time is up."""
    conn = await app.queue.connection(connection)
    count = await admin(conn, "queue:prune-results").prune_results()
    click.echo(f"Pruned {count} expired result(s) on {conn.name}.")
