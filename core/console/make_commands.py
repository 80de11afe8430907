"""make:job, and the demo that `make run` shows a new user."""
from __future__ import annotations

import asyncio
import keyword
import re

import click

from core.config import ROOT
from core.console.base import command
from core.errors import FrameworkError
from core.queue.contract import admin

TEMPLATE = '''import logging

from core.job import Job

log = logging.getLogger("app.jobs")


class {name}(Job):
    max_tries = 3        # attempts in total, the first run included
    timeout = 60         # seconds one attempt may run
    retry_after = 10     # seconds before a retry; a list gives one delay per retry: [5, 30, 120]
    queue = "{queue}"

    def __init__(self) -> None:
        super().__init__()
        # Public attributes are serialized at dispatch and restored before handle().
        self.example: str | None = None

    async def handle(self) -> None:
        log.info("{name} %s running (attempt %d): %s", self.job_id, self.attempts, self.example)

    async def failed(self, exception: BaseException) -> None:
        """Called once, when every attempt has failed."""
        log.error("{name} %s failed: %s", self.job_id, exception)
'''


def snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def class_name(name: str) -> str:
    """The job class NAME stands for: SendSmsJob as given; send_sms_job and sendSmsJob as SendSmsJob."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or keyword.iskeyword(name) or keyword.iskeyword(
            snake_case(name)):      # app/jobs/class.py could not be imported
        raise FrameworkError(f"job name {name!r} must be a class name such as SendSmsJob (or send_sms_job): "
                             "letters, digits and underscores, starting with a letter, and not a Python keyword")
    return "".join(part[0].upper() + part[1:] for part in name.split("_") if part)


@command("make:job")
@click.argument("name")
@click.option("--queue", default="default", show_default=True, help="The queue the job goes to.")
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
async def make_job(app, name, queue, force) -> None:
    """Write app/jobs/<snake_name>.py with a Job class NAME (SendSmsJob; send_sms_job is taken as SendSmsJob)."""
    from core.job import validate_queue_name

    name = class_name(name)
    validate_queue_name(queue)
    path = ROOT / "app" / "jobs" / f"{snake_case(name)}.py"
    if path.exists() and not force:
        raise FrameworkError(f"{path.relative_to(ROOT)} already exists (use --force to overwrite)")
    path.write_text(TEMPLATE.format(name=name, queue=queue))
    click.echo(f"Created {path.relative_to(ROOT)}: dispatch it with `await {name}.dispatch(example=...)`")


@command("demo")
async def demo(app) -> None:
    """Dispatch the example jobs of app/jobs/ and work them until none is left (what `make run` does)."""
    from app.jobs.always_failing_job import AlwaysFailingJob
    from app.jobs.generate_report_job import GenerateReportJob
    from app.jobs.process_data_job import ProcessDataJob
    from app.jobs.send_email_job import SendEmailJob
    from app.jobs.send_notification_job import SendNotificationJob
    from core.console.queue_commands import print_failed
    from core.worker import Worker, WorkerOptions

    conn = await app.queue.connection()
    store = admin(conn, "demo")     # it waits for the queues to empty
    click.echo(f"Dispatching the example jobs onto the {conn.name} connection ({app.queue.describe(conn.name)}):")
    dispatched = [
        ("SendEmailJob", await SendEmailJob.dispatch(to="ada@example.com", subject="Welcome")),
        ("SendNotificationJob", await SendNotificationJob.dispatch(user_id=42, message="Your device is online",
                                                                   channels=["push", "sms"])),
        ("ProcessDataJob", await ProcessDataJob.dispatch(device_id="sensor-7", readings=[21.5, 22.1, 23.4, 22.8],
                                                         meta={"unit": "C", "site": "lab"})),
        ("GenerateReportJob", await GenerateReportJob.dispatch(report="monthly", period=("2026-10-01", "2026-10-31"))),
        ("AlwaysFailingJob", await AlwaysFailingJob.dispatch(reason="the upstream service is down")),
    ]
    for name, job_id in dispatched:
        click.echo(f"  {name:<20} {job_id}")
    queues = ("emails", "notifications", "data", "reports", "default")
    click.echo(f"\nWorking queues {','.join(queues)} (AlwaysFailingJob retries after 1s, twice):")
    # One worker, stopped once nothing is left: --stop-when-empty would stop while a retry waits.
    worker = Worker(app, WorkerOptions(queues=queues, concurrency=4, sleep=0.2))
    running = asyncio.create_task(worker.run())
    while not running.done():
        await asyncio.sleep(0.3)
        sizes = await store.sizes(list(queues))
        if not any(s.pending or s.delayed or s.reserved for s in sizes.values()):
            worker.stop("every example job is done or failed")
            break
    await running
    failed_id = dispatched[-1][1]
    store = await app.queue.failed_store()
    if await store.find(failed_id):
        click.echo(f"\nAlwaysFailingJob {failed_id} used its 3 tries and is in failed_jobs.")
    click.echo("\n$ python main.py queue:failed")
    print_failed(await store.all())
    click.echo("\nRetry it with `python main.py queue:retry all`, then `python main.py queue:work --queue default`.")
