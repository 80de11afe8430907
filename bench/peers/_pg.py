"""What the PostgreSQL peers share: a database of their own (bench.pg), made anew for every fill,
with the peer's schema, and a client opened once per database on one event loop."""
from __future__ import annotations

import asyncio

from bench import pg
from bench.harness import Target


class PgTarget(Target):
    database = ""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self._open = False

    async def open(self) -> None:
        """Open the peer's client (its connection pool)."""

    async def close(self) -> None:
        """Close what open() opened."""

    async def prepare(self) -> None:
        """Create the peer's tables in the fresh database (its migrations or schema)."""

    def clear(self) -> None:
        """The Redis db of the latency probe flushed, the database made anew with the peer's tables."""
        super().clear()
        self._close()
        pg.recreate(self.database)
        self.connect()
        self._runner.run(self.prepare())

    def teardown(self) -> None:
        super().clear()
        self._close()
        self._runner.close()
        pg.drop(self.database)

    def connect(self) -> None:
        if not self._open:
            self._runner.run(self.open())
            self._open = True

    def _close(self) -> None:
        if self._open:
            self._runner.run(self.close())
            self._open = False
