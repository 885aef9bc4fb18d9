"""History partitioned by statement-id ranges: converting an install from before migration 025,
and making partitions ahead (the SQL is in sql/functions/fn_partitions.sql)."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

# How long a conversion step waits for its instant of ACCESS EXCLUSIVE: capture
# writes queue behind a waiting lock, so this is also the longest they wait.
_LOCK_WAIT = "2s"


@dataclass
class Conversion:
    converted: list[str] = field(default_factory=list)
    # Tables left unpartitioned, each with the SQL a DBA runs to finish it (one transaction each).
    left: list[tuple[str, list[str]]] = field(default_factory=list)


def _first_bound(conn: psycopg.Connection) -> int:
    """The upper bound of the first partition (the old table): a partition's width clear of
    the statement sequence, so that writes during the conversion stay below it."""
    return conn.execute(
        "SELECT (s.last_value / p.width + 2) * p.width FROM sidecar.stmt_seq s, sidecar.partitioning p"
    ).fetchone()[0]


def manual_steps(table: str, relname: str, key: str, bound: int) -> list[str]:
    """The SQL a DBA runs, one statement per transaction, to convert one history table by hand
    (table: its qualified, quoted name; relname: the bare name)."""
    check = sql.Identifier(f"{relname[:40]}_p0_bound").as_string()
    return [f"SELECT sidecar._partition_prepare({sql.Literal(table).as_string()}, "
            f"{sql.Literal(key).as_string()}, {bound});",
            f"ALTER TABLE {table} VALIDATE CONSTRAINT {check};",
            f"SELECT sidecar._partition_convert({sql.Literal(table).as_string()}, "
            f"{sql.Literal(key).as_string()}, {bound});"]


def convert_history(conn: psycopg.Connection) -> Conversion:
    """Partition every history table still unpartitioned, one table at a time, in three short
    transactions each: a NOT VALID bound (an instant's lock), its validation (a scan while writes go
    on), then the swap (an instant's lock; the old table becomes the first partition, not rewritten).
    A table whose lock is not granted in time is put back as it was and listed with the SQL to run."""
    report = Conversion()
    tables = conn.execute(
        "SELECT h.tbl::text, c.relname, h.key FROM sidecar._history_tables() h "
        "JOIN pg_class c ON c.oid = h.tbl WHERE NOT h.partitioned"
    ).fetchall()
    if not tables:
        return report
    bound = _first_bound(conn)
    for table, relname, key in tables:
        ident = sql.Identifier("sidecar", relname)
        check = None
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_LOCK_WAIT)))
                check = conn.execute("SELECT sidecar._partition_prepare(%s::regclass, %s, %s)",
                                     (table, key, bound)).fetchone()[0]
            with conn.transaction():
                conn.execute(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(ident, sql.Identifier(check)))
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_LOCK_WAIT)))
                conn.execute("SELECT sidecar._partition_convert(%s::regclass, %s, %s)", (table, key, bound))
            report.converted.append(table)
        except psycopg.errors.LockNotAvailable:
            if check is not None:
                _drop_bound(conn, ident, check)
            report.left.append((table, manual_steps(table, relname, key, bound)))
    if report.converted:
        partitions_ahead(conn)
    return report


def _drop_bound(conn: psycopg.Connection, table: sql.Identifier, check: str) -> None:
    """Take the NOT VALID bound off again: left in place, it would refuse writes past it."""
    try:
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '30s'")
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(table, sql.Identifier(check)))
    except psycopg.errors.LockNotAvailable:
        pass  # the table is named in the report; the DBA's steps finish the conversion


def partitions_ahead(conn: psycopg.Connection) -> int:
    """Make the partitions due ahead of the statement sequence; returns how many were made.
    Commands look at every history table's partitions (a few catalog reads each), not only at
    sidecar.partitioning.refill_at as capture does: they also repair what capture could not do."""
    with conn.transaction():
        return conn.execute("SELECT sidecar._partitions_ahead()").fetchone()[0]


@dataclass(frozen=True)
class Partition:
    table: str
    partition: str
    lo: int | None  # None: from the lowest id
    hi: int | None  # None: the DEFAULT partition
    rows: int  # the planner's estimate


def list_partitions(conn: psycopg.Connection) -> list[Partition]:
    """Every history partition, statements first, then each history table, by range."""
    return [Partition(*row) for row in conn.execute(
        """
        SELECT h.tbl::text, i.inhrelid::regclass::text, b.lo, b.hi, greatest(c.reltuples, 0)::bigint
        FROM sidecar._history_tables() h
        JOIN pg_inherits i ON i.inhparent = h.tbl
        JOIN pg_class c ON c.oid = i.inhrelid
        LEFT JOIN sidecar._partition_bounds(h.tbl) b ON b.part = i.inhrelid
        ORDER BY h.tbl = 'sidecar.statements'::regclass DESC, h.tbl::text, b.hi NULLS LAST
        """
    ).fetchall()]


def keep_ahead(conn: psycopg.Connection) -> None:
    """What every sidecar command does first: partitions ahead when due. Best effort: a database
    without sidecar, or a hot standby (read-only), is left alone; the DEFAULT partition takes what
    no partition covers until a command or a run's first write makes more."""
    try:
        if conn.execute("SELECT to_regclass('sidecar.partitioning') IS NOT NULL "
                        "AND NOT pg_is_in_recovery()").fetchone()[0]:
            partitions_ahead(conn)
    except psycopg.Error:
        if not conn.autocommit:
            conn.rollback()
