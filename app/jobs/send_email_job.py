import logging

from core.job import Job

log = logging.getLogger("app.jobs")


class SendEmailJob(Job):
    max_tries = 3
    timeout = 30
    retry_after = 10
    queue = "emails"

    def __init__(self) -> None:
        super().__init__()
        self.to: str | None = None
        self.subject: str | None = None
        self.body: str = ""

    async def handle(self) -> None:
        if not self.to or "@" not in self.to:
            raise ValueError(f"cannot send to {self.to!r}: not an email address")
        # A real app would talk to its mail service here.
        log.info("email to %s: %s", self.to, self.subject)
