"""Row-mode statements made from their heads before history is read (migration 027).

A row-mode capture trigger writes only row images; the first image of each statement carries
what its row in ``sidecar.statements`` holds, and ``sidecar._settle()`` (sql/functions/
fn_settle.sql) writes those rows. Every reader of history calls :func:`settle` first: each CLI
command and console request does, and so does every library function that reads history.
"""

from __future__ import annotations

import psycopg


def settle(conn: psycopg.Connection) -> int:
    """Write the statement rows of row-mode history captured since the last call; returns how
    many. Cheap when there is nothing new (one row read). In a connection in autocommit mode it
    commits at once, so that other readers do not wait for this one's transaction; inside the
    caller's transaction it runs in a savepoint, so that a failure leaves that transaction usable."""
    if conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return conn.execute("SELECT sidecar._settle()").fetchone()[0]
    with conn.transaction():
        return conn.execute("SELECT sidecar._settle()").fetchone()[0]


def keep_settled(conn: psycopg.Connection) -> None:
    """:func:`settle`, best effort: a database without sidecar (or one older than migration 027),
    a hot standby or a role that may not call it is read as it is."""
    try:
        settle(conn)
    except (psycopg.errors.UndefinedFunction, psycopg.errors.InsufficientPrivilege,
            psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InvalidSchemaName):
        pass
