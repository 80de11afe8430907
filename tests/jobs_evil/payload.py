"""A real Job subclass outside the job packages: were it run, it would leave an event."""
from core.job import Job
from tests.jobs.sample_jobs import record


class EvilJob(Job):
    max_tries = 1

    def __init__(self) -> None:
        super().__init__()
        self.log = ""

    async def handle(self) -> None:
        record(self.log, event="evil", job_id=self.job_id)
