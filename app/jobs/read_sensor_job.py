from core.job import Job


class ReadSensorJob(Job):
    """Reads a sensor and returns the reading: a caller may `await ref.wait()` for it (SPEC 11)."""

    keep_result = 300     # seconds the completed job's record (state and return value) is kept
    queue = "default"

    def __init__(self) -> None:
        super().__init__()
        self.device_id: str | None = None

    async def handle(self) -> dict:
        await self.progress(0.5, "reading")
        return {"device_id": self.device_id, "temp": 21.5}
