"""A Job subclass defined outside the job packages (tests.jobs), imported into one of its modules."""
from core.job import Job
from tests.jobs.sample_jobs import record


class OutsideJob(Job):
    max_tries = 1

    def __init__(self) -> None:
        super().__init__()
        self.log = ""

    async def handle(self) -> None:
        record(self.log, event="outside", job_id=self.job_id)
