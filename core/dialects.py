"""SQL dialects: what differs between the databases, one object per database.

The statements stay beside their use, written once: `?` for parameters, `{now}` for the
database's clock (whole unix seconds), `{due}` for "now plus ? seconds" rounded up, and in DDL
`{id}`, `{uint}`, `{flag}`, `{longtext}`, `{double}`, `{table}`, `{keyed_table}` for types and
table options. A dialect fills those in and supplies the few clauses each database spells its
own way. PostgreSQL is one more subclass here (and one entry in DIALECTS, the map from
DB_CONNECTION), beside one more Database module.

A leaf module: it imports nothing of ours.
"""
from __future__ import annotations

import functools
import itertools
import re
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar


class Dialect:
    """Standard SQL where the databases agree (SQLite's and PostgreSQL's spelling); a database
    overrides what it writes differently."""

    name: ClassVar[str] = "sql"
    label: ClassVar[str] = "SQL"       # for messages: "SQLite at storage/database.sqlite"
    embedded: ClassVar[bool] = False   # a file in this process (DB_DATABASE is its path), not a server
    database: ClassVar[str] = ""       # "module:Class" of its Database, imported on first use
    now: ClassVar[str] = ""          # the database's clock, in whole unix seconds
    clock: ClassVar[str] = ""        # the database's clock in seconds, with its fraction (job middleware state)
    due: ClassVar[str] = ""          # the first whole second at or after now + ? seconds: never early
    skip_locked: ClassVar[str] = ""  # ends a SELECT whose rows a reserve takes: rows others hold are skipped
    for_update: ClassVar[str] = ""   # ends a SELECT of rows the same transaction changes next
    column_names: ClassVar[str] = ""  # one table's column names (parameter: the table's name)
    index_names: ClassVar[str] = ""   # one table's index names (parameter: the table's name)
    types: ClassVar[MappingProxyType[str, str]] = MappingProxyType({})   # the DDL placeholders
    # UPDATE ... WHERE id IN (SELECT ... LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING ...: a reserve is
    # one statement, which needs no transaction around it.
    returning: ClassVar[bool] = False
    # Begins a WHERE whose statement's commit need not wait for the disk (a reserve: if a server
    # crash forgets it, its job runs again, at least once, never lost).
    relaxed_commit: ClassVar[str] = ""
    # A secondary index's entries end with the primary key, in its order (InnoDB; SQLite's rowid), so
    # an index (a, b) serves "ORDER BY a, b, id".
    index_ends_with_key: ClassVar[bool] = True
    default_port: ClassVar[int] = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def describe(self, config: Any) -> str:
        """The database a DatabaseConfig points at, for messages; never a password."""
        return f"{self.label} at {config.database if self.embedded else f'{config.host}:{config.port}'}"

    def sql(self, text: str) -> str:
        """This database's form of a statement (cached: see translate)."""
        return translate(self, text)

    def _translate(self, text: str) -> str:
        return self.placeholders(text.replace("{now}", self.now).replace("{due}", self.due))

    def placeholders(self, text: str) -> str:
        """`?` parameters as the driver wants them."""
        return text

    def ddl(self, text: str) -> str:
        """A CREATE or ALTER statement with its type and table-option placeholders filled in."""
        return text.format_map(self.types)

    counts_found_rows = False     # an INSERT that ignore_duplicate skipped counts 0 rows

    def ignore_duplicate(self, key: str) -> str:
        """Ends an INSERT: a row whose unique `key` is taken already is skipped, without an error."""
        return f" ON CONFLICT({key}) DO NOTHING"

    def upsert(self, key: str, assignments: str) -> str:
        """Ends an INSERT: a row whose unique `key` is taken updates that row instead. In
        `assignments`, `excluded.<column>` is the value the insert brought."""
        return f" ON CONFLICT({key}) DO UPDATE SET {assignments}"

    def delete_first(self, table: str, key: str, where: str, order: str) -> str:
        """DELETE the first rows of `table` matching `where` in `order`; the statement's last
        parameter is how many at most (bounded work in a busy transaction)."""
        return f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {where} ORDER BY {order} LIMIT ?)"

    def drop_index(self, table: str, index: str) -> str:
        return f"DROP INDEX IF EXISTS {index}"

    def timestamp(self, value: datetime) -> Any:
        """A TIMESTAMP parameter (UTC), as the driver takes it: text here, a datetime for asyncpg."""
        return value.strftime("%Y-%m-%d %H:%M:%S")


class SqliteDialect(Dialect):
    name = "sqlite"
    label = "SQLite"
    embedded = True
    database = "core.database:SqliteDatabase"
    now = "CAST(strftime('%s','now') AS INTEGER)"
    due = "(CAST((julianday('now') - 2440587.5) * 86400.0 + ? AS INTEGER) + 1)"
    clock = "((julianday('now') - 2440587.5) * 86400.0)"     # seconds, sub-second
    column_names = "SELECT name FROM pragma_table_info(?)"
    index_names = "SELECT name FROM pragma_index_list(?)"
    # No row locks: a transaction (BEGIN IMMEDIATE) holds the whole database, so skip_locked and
    # for_update stay empty. A table keyed by text needs no rowid beside its key.
    types = MappingProxyType({"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "uint": "INTEGER", "flag": "SMALLINT",
                              "longtext": "TEXT", "double": "DOUBLE", "table": "", "keyed_table": " WITHOUT ROWID"})


class MysqlDialect(Dialect):
    """MySQL and MariaDB."""

    name = "mysql"
    label = "MySQL"
    default_port = 3306
    database = "core.database:MysqlDatabase"
    now = "UNIX_TIMESTAMP()"
    due = "CEIL(UNIX_TIMESTAMP(NOW(6)) + ?)"
    clock = "UNIX_TIMESTAMP(NOW(6))"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"
    column_names = ("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_NAME = ?")
    index_names = ("SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS "
                   "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?")
    _TABLE = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    types = MappingProxyType({"id": "BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY", "uint": "INT UNSIGNED",
                              "flag": "TINYINT UNSIGNED", "longtext": "LONGTEXT", "double": "DOUBLE",
                              "table": _TABLE, "keyed_table": _TABLE})

    def placeholders(self, text: str) -> str:
        return text.replace("?", "%s")

    # Connections are opened with FOUND_ROWS (core.database): an INSERT whose duplicate changed nothing
    # counts 1 row, as one that inserted does.
    counts_found_rows = True

    def ignore_duplicate(self, key: str) -> str:
        return f" ON DUPLICATE KEY UPDATE {key} = {key}"    # assigning a column itself changes nothing

    def upsert(self, key: str, assignments: str) -> str:
        return " ON DUPLICATE KEY UPDATE " + _EXCLUDED.sub(r"VALUES(\1)", assignments)

    def delete_first(self, table: str, key: str, where: str, order: str) -> str:
        # MySQL takes no LIMIT in an IN subquery, nor a subquery on the table it deletes from.
        return f"DELETE FROM {table} WHERE {where} ORDER BY {order} LIMIT ?"

    def drop_index(self, table: str, index: str) -> str:
        return f"DROP INDEX {index} ON {table}"


class PgsqlDialect(Dialect):
    """PostgreSQL. Its clock is clock_timestamp(): now() stays at the transaction's start. A
    parameter added to the clock is cast to double precision: asyncpg types each parameter from
    its place, and an integer one would refuse a fractional delay."""

    name = "pgsql"
    label = "PostgreSQL"
    default_port = 5432
    database = "core.pgsql:PgsqlDatabase"
    now = "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp())) AS BIGINT)"
    clock = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    due = f"CAST(CEIL({clock} + CAST(? AS DOUBLE PRECISION)) AS BIGINT)"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"
    returning = True
    index_ends_with_key = False    # they end with the row's place in the table
    relaxed_commit = "(SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL AND "
    column_names = ("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = ?")
    index_names = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ?"
    # BIGINT for unix seconds (no unsigned types; INTEGER ends in 2038).
    types = MappingProxyType({"id": "BIGSERIAL PRIMARY KEY", "uint": "BIGINT", "flag": "SMALLINT",
                              "longtext": "TEXT", "double": "DOUBLE PRECISION", "table": "", "keyed_table": ""})

    def placeholders(self, text: str) -> str:
        """`?` -> $1, $2, ... in order (no statement of ours has a `?` inside a literal)."""
        count = itertools.count(1)
        return _MARK.sub(lambda _: f"${next(count)}", text)

    def timestamp(self, value: datetime) -> Any:
        return value.replace(tzinfo=None)


_EXCLUDED = re.compile(r"\bexcluded\.(\w+)")
_MARK = re.compile(r"\?")


@functools.lru_cache(maxsize=4096)
def translate(dialect: Dialect, text: str) -> str:
    """`dialect`'s form of a statement, cached: the hot statements are few and translating each on
    every call cost more than running some of them. A function, not a cached method: a method
    lookup per statement was half the cost of a cache hit."""
    return dialect._translate(text)

SQLITE = SqliteDialect()
MYSQL = MysqlDialect()
PGSQL = PgsqlDialect()
# DB_CONNECTION -> its dialect.
DIALECTS = {"sqlite": SQLITE, "mysql": MYSQL, "pgsql": PGSQL}
