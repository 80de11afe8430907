"""Names in a job module that a forged payload may point at; only DangerousJob is a job defined here,
and a forged payload must not be able to run even that one."""
from __future__ import annotations

from core.job import Job
from tests.jobs.sample_jobs import RecordingJob, record
from tests.outside_job import OutsideJob  # noqa: F401  a Job subclass defined elsewhere, imported here

AliasJob = RecordingJob          # the same class under a second name


class DangerousJob(Job):
    """Stands for the job an attacker wants: it records every run, and counts instances."""
    max_tries = 1
    instances = 0

    def __init__(self) -> None:
        super().__init__()
        DangerousJob.instances += 1
        self.log = ""
        self.value = None

    async def handle(self) -> None:
        record(self.log, event="dangerous", job_id=self.job_id, value=self.value)


class LeakyJob(Job):
    """Job code careless with secrets: it logs and raises with every password and the APP_KEY in the text.
    Nothing the framework writes about it (log lines, failed_jobs) may repeat them."""
    max_tries = 2

    async def handle(self) -> None:
        import logging
        import os

        secrets = {name: os.environ.get(name, "") for name in ("DB_PASSWORD", "REDIS_PASSWORD", "MQTT_PASSWORD",
                                                               "APP_KEY")}
        logging.getLogger("app.jobs").warning("connecting with %s", secrets)
        raise RuntimeError(f"cannot connect to mysql://app:{secrets['DB_PASSWORD']}@db/app, "
                           f"redis://:{secrets['REDIS_PASSWORD']}@cache, mqtt password {secrets['MQTT_PASSWORD']}, "
                           f"key {secrets['APP_KEY']}")

    async def failed(self, exception: BaseException) -> None:
        import logging

        logging.getLogger("app.jobs").error("LeakyJob gave up", exc_info=exception)
