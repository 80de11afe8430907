"""queue:work"""
from __future__ import annotations

import logging
import os

import click

from core.console.base import command
from core.job import validate_queue_name
from core.worker.supervisor import supervise
from core.worker import Worker, WorkerOptions


@command("queue:work")
@click.argument("connection", required=False)
@click.option("--queue", "queues", default="default", show_default=True,
              help="Queues to work, comma-separated, highest priority first.")
@click.option("--concurrency", default=1, show_default=True, help="Jobs run at once in this process.")
@click.option("--sleep", default=1.0, show_default=True,
              help="Seconds an idle worker waits before it looks again; a push wakes it at once on Redis and, "
                   "unless DB_WAKE=off, on the databases (so this bounds a missed wake-up).")
@click.option("--tries", type=int, default=None, help="Attempts per job, overriding the job class's max_tries.")
@click.option("--timeout", type=float, default=None,
              help="Seconds one attempt may run, overriding the job class's timeout; must leave room below "
                   "QUEUE_VISIBILITY_TIMEOUT for a reservation renewal (86.95 at the default 90; the refusal "
                   "names the limit).")
@click.option("--max-jobs", default=0, show_default=True, help="Stop after this many jobs (0: no limit).")
@click.option("--max-time", default=0.0, show_default=True, help="Stop after this many seconds (0: no limit).")
@click.option("--memory", default=128, show_default=True,
              help="Stop after a job once resident memory passes this many MB (0: no limit).")
@click.option("--stop-when-empty", is_flag=True, help="Stop once no job can be taken right now.")
@click.option("--once", is_flag=True, help="Run a single job (if one is due), then stop.")
@click.option("--processes", default=1, show_default=True,
              help="Worker processes to run, each with these options, under a supervisor that starts "
                   "again one that dies and passes SIGTERM/SIGINT on (1: this process is the worker).")
async def work(app, connection, queues, concurrency, sleep, tries, timeout, max_jobs, max_time, memory,
               stop_when_empty, once, processes) -> int:
    """Process jobs from the queues.

    CONNECTION is a name of config/queue.py's connections (default: QUEUE_CONNECTION). Each job logs a
    RUNNING line and a DONE, RETRY or FAIL line. SIGTERM or SIGINT stops taking jobs, lets the
    running ones finish (bounded by their timeout) and exits 0; a SIGINT after that (Ctrl-C twice)
    releases the running jobs to the queue at once and exits 130.

    With --processes N, N such workers run under a supervisor; with --stop-when-empty or --once it
    exits when all are done, and on queue:restart it exits like a single worker.

    Example: python main.py queue:work --queue high,default --concurrency 4
    """
    names = tuple(q.strip() for q in queues.split(",") if q.strip()) or (validate_queue_name(queues),)  # "," or ""
    options = WorkerOptions(connection=connection, queues=names,
                            concurrency=concurrency, sleep=sleep, tries=tries, timeout=timeout, max_jobs=max_jobs,
                            max_time=max_time, memory=memory, stop_when_empty=stop_when_empty, once=once)
    if processes != 1:
        return await supervise(app, options, processes, worker_arguments(click.get_current_context()))
    worker = Worker(app, options)
    code = await worker.run()
    if worker.left_behind:          # job code that ignores cancellation: only ending the process stops it
        await app.close()
        logging.shutdown()
        os._exit(code)
    return code


def worker_arguments(ctx: click.Context) -> list[str]:
    """This command line as given, minus --processes: what each supervised worker is started with."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name == "processes" or value is None \
                or ctx.get_parameter_source(param.name) == click.core.ParameterSource.DEFAULT:
            continue
        if isinstance(param, click.Argument):
            args.append(str(value))
        elif getattr(param, "is_flag", False):
            args += [param.opts[0]] if value else []
        else:
            args += [param.opts[0], str(value)]
    return args
