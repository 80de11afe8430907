"""PostgreSQL for the benchmark: 127.0.0.1:5432, user postgres, trust auth (PG_* to change).

Every target on PostgreSQL gets a database of its own, bench_<name>, dropped and made anew before
it runs and dropped after, so nothing collides with the tests (db `test`) or another target. The
statements go through whichever driver the running venv has: psycopg (the peers' venvs) or asyncpg
(the project's, with DB_CONNECTION=pgsql).
"""
from __future__ import annotations

import os

HOST = os.environ.get("PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("PG_PORT", "5432"))
USER = os.environ.get("PG_USER", "postgres")
PASSWORD = os.environ.get("PG_PASSWORD", "")


def dsn(database: str) -> str:
    auth = f"{USER}:{PASSWORD}" if PASSWORD else USER
    return f"postgresql://{auth}@{HOST}:{PORT}/{database}"


def recreate(database: str) -> None:
    """Drop the database (closing whatever is still connected to it) and make it anew."""
    execute("postgres", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', f'CREATE DATABASE "{database}"')


def drop(database: str) -> None:
    execute("postgres", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def execute(database: str, *statements: str) -> None:
    """Run each statement in autocommit (CREATE DATABASE cannot run in a transaction)."""
    try:
        import psycopg
    except ImportError:
        _execute_asyncpg(database, statements)
        return
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[call-overload]


def _execute_asyncpg(database: str, statements: tuple[str, ...]) -> None:
    import asyncio

    import asyncpg  # type: ignore[import-not-found]

    async def go() -> None:
        conn = await asyncpg.connect(dsn(database))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(go())


def server_version() -> str:
    """The server's version, for the report (psql where the venv has no driver)."""
    import subprocess

    try:
        out = subprocess.run(["psql", dsn("postgres"), "-Atc", "SHOW server_version"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"
    return out.stdout.strip() or f"unavailable ({out.stderr.strip()[:100]})"
