"""The SQL dialects (core/dialects.py): each clause does on its real database what it promises."""
from __future__ import annotations

import re

import pytest

from core.config import DatabaseConfig, load_config
from core.database import Database
from core.dialects import MYSQL, PGSQL, SQLITE
from core.errors import ConfigError
from core.queue import database as queue_tables
from core.queue import failed as failed_tables
from tests.conftest import store_env

SCRATCH = ("CREATE TABLE scratch (id {id}, k VARCHAR(64) NOT NULL, n {uint} NOT NULL, "
           "CONSTRAINT scratch_k UNIQUE (k)){table}")


@pytest.fixture(params=["sqlite", "mysql", "pgsql"])
async def db(request):
    store_env(request, request.param)
    database = await Database.connect(load_config().database)
    await database.execute(database.dialect.ddl(SCRATCH))
    yield database
    await database.close()


async def rows(db: Database) -> list[tuple]:
    return [(k, int(n)) for k, n in await db.fetchall("SELECT k, n FROM scratch ORDER BY id")]


async def test_ignore_duplicate_skips_a_taken_key_without_an_error(db):
    insert = "INSERT INTO scratch (k, n) VALUES (?, ?)" + db.dialect.ignore_duplicate("k")
    await db.execute(insert, ("a", 1))
    await db.execute(insert, ("a", 2))
    assert await rows(db) == [("a", 1)]


async def test_upsert_updates_the_row_whose_key_is_taken_with_the_inserted_value(db):
    insert = "INSERT INTO scratch (k, n) VALUES (?, ?)" + db.dialect.upsert("k", "n = excluded.n + scratch.n")
    await db.execute(insert, ("a", 1))
    await db.execute(insert, ("a", 10))
    await db.execute(insert, ("b", 5))
    assert await rows(db) == [("a", 11), ("b", 5)]


async def test_delete_first_removes_only_the_first_rows_in_order(db):
    for k, n in [("a", 3), ("b", 1), ("c", 2), ("d", 9)]:
        await db.execute("INSERT INTO scratch (k, n) VALUES (?, ?)", (k, n))
    deleted = await db.execute(db.dialect.delete_first("scratch", "id", "n < ?", "n"), (5, 2))
    assert deleted == 2 and await rows(db) == [("a", 3), ("d", 9)]


async def test_the_catalog_queries_name_the_columns_and_indexes_and_drop_index_drops_one(db):
    await db.execute("CREATE INDEX scratch_n ON scratch (n)")
    columns = {str(name) for (name,) in await db.fetchall(db.dialect.column_names, ("scratch",))}
    assert columns == {"id", "k", "n"}
    assert "scratch_n" in {str(name) for (name,) in await db.fetchall(db.dialect.index_names, ("scratch",))}
    await db.execute(db.dialect.drop_index("scratch", "scratch_n"))
    assert "scratch_n" not in {str(name) for (name,) in await db.fetchall(db.dialect.index_names, ("scratch",))}


async def test_now_is_the_database_clock_and_due_is_never_early(db):
    ((now, due),) = await db.fetchall("SELECT {now}, {due}", (2.5,))
    assert int(due) >= int(now) + 3 and int(due) <= int(now) + 4


@pytest.mark.parametrize("dialect", [SQLITE, MYSQL, PGSQL], ids=lambda d: d.name)
def test_every_ddl_placeholder_is_filled_in(dialect):
    texts = [*queue_tables.TABLES, *queue_tables.COLUMNS.values(), failed_tables.SCHEMA, SCRATCH]
    for text in texts:
        assert not re.search(r"[{}]", dialect.ddl(text)), dialect.ddl(text)


def test_statements_take_the_drivers_placeholders():
    text = "UPDATE jobs SET available_at = {due} WHERE id = ? AND reserved_at < {now}"
    assert SQLITE.sql(text) == ("UPDATE jobs SET available_at = (CAST((julianday('now') - 2440587.5) * 86400.0 + ? "
                                "AS INTEGER) + 1) WHERE id = ? AND reserved_at < CAST(strftime('%s','now') AS INTEGER)")
    assert MYSQL.sql(text) == "UPDATE jobs SET available_at = CEIL(UNIX_TIMESTAMP(NOW(6)) + %s) WHERE id = %s " \
                              "AND reserved_at < UNIX_TIMESTAMP()"
    assert PGSQL.sql(text) == ("UPDATE jobs SET available_at = CAST(CEIL(CAST(EXTRACT(EPOCH FROM clock_timestamp()) "
                               "AS DOUBLE PRECISION) + CAST($1 AS DOUBLE PRECISION)) AS BIGINT) WHERE id = $2 AND "
                               "reserved_at < CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp())) AS BIGINT)")


async def test_an_unknown_database_driver_is_one_line_naming_the_known_ones():
    with pytest.raises(ConfigError, match="^DB_CONNECTION must be sqlite, mysql or pgsql, got 'oracle'$"):
        await Database.connect(DatabaseConfig(driver="oracle"))


def test_a_database_config_names_its_database_without_the_password():
    assert DatabaseConfig(database="storage/x.sqlite").describe() == "SQLite at storage/x.sqlite"
    mysql = DatabaseConfig(driver="mysql", host="db.local", port=3307, password="s3cret")
    assert mysql.describe() == "MySQL at db.local:3307"
    pgsql = DatabaseConfig(driver="pgsql", host="db.local", port=5433, password="s3cret")
    assert pgsql.describe() == "PostgreSQL at db.local:5433"
