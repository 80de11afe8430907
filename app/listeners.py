"""Event listeners, discovered when the application boots (queue:work, run, a dispatching script).

Each listener runs in the process where its event happens, in the order listeners were registered,
and is cut after 5 seconds; one that raises or overruns is logged in one line and changes nothing
about the job. Events are at most once: what must happen belongs in the job's failed() instead.
Every event is a frozen dataclass from core.events (connection, queue, job_id, job_class, attempts,
and where it applies duration, outcome, exception); `listen(JobEvent)` hears every job event.

Uncomment to try:

    import logging

    from core.events import JobFailed, JobQueued, listen

    log = logging.getLogger("app.listeners")

    @listen(JobQueued)
    async def note_queued(event: JobQueued) -> None:
        log.info("queued %s [%s] on %s:%s", event.job_class, event.job_id, event.connection, event.queue)

    @listen(JobFailed)
    async def page_oncall(event: JobFailed) -> None:
        log.error("%s [%s] failed for good: %s", event.job_class, event.job_id, event.exception)
"""
