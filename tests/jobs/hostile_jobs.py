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
