"""Conflicts on every column type the history can hold: a person's later edit is kept by an undo
(and by its `--sql` script), whether or not the type has an equality operator."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

import sidecar

# type: (before the run, what the run wrote, a person's later edit)
TYPES = {
    "json": ('{"a": 1}', '{"a": 2}', '{"a": 2, "b": 3}'),
    "jsonb": ('{"a": 1}', '{"a": 2}', '{"a": 2, "b": 3}'),
    "xml": ("<a>1</a>", "<a>2</a>", "<a>3</a>"),
    "point": ("(1,1)", "(2,2)", "(2,3)"),
    # Boxes of the same area are "equal" to box's = operator: the edit must still count.
    "box": ("(1,1),(0,0)", "(2,2),(0,0)", "(3,3),(1,1)"),
    "line": ("{1,-1,0}", "{1,-1,1}", "{1,-1,2}"),
    "circle": ("<(0,0),1>", "<(0,0),2>", "<(1,1),2>"),
    "int[]": ("{1,2}", "{1,3}", "{1,3,4}"),
    "text[]": ("{a,b}", "{a,c}", "{a,C}"),
    "point[]": ('{"(1,1)"}', '{"(2,2)"}', '{"(2,3)"}'),
    "json[]": ('{"{\\"a\\": 1}"}', '{"{\\"a\\": 2}"}', '{"{\\"a\\": 3}"}'),
    "int4range": ("[1,5)", "[1,6)", "[2,6)"),
    "numrange": ("[1.5,2)", "[1.5,3)", "[1.50,3)"),
    "tstzrange": ("[2026-01-01,2026-02-01)", "[2026-01-01,2026-03-01)", "[2026-01-02,2026-03-01)"),
    "posint": ("1", "2", "3"),        # a domain over int
    "jdoc": ('{"a": 1}', '{"a": 2}', '{"a": 3}'),  # a domain over json
    "mood": ("sad", "ok", "happy"),   # an enum
    "bytea": ("\\x01", "\\x02", "\\x0203"),
    "numeric": ("1.5", "2.5", "2.50"),   # only the scale changed: still a person's edit
    "interval": ("1 day", "2 days", "48:00:00"),  # equal to = , not the same value
    "float8": ("1", "0", "-0"),
    "uuid": ("00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002",
             "00000000-0000-0000-0000-000000000003"),
    "tsvector": ("a b", "a c", "a d"),
}


@pytest.fixture
def types(sc) -> dict[str, tuple[str, str, str]]:
    """Every type above this server has: a server built without libxml has no xml to capture."""
    try:
        sc.execute("SELECT '<a/>'::xml")
    except psycopg.errors.FeatureNotSupported:
        return {t: v for t, v in TYPES.items() if t != "xml"}
    return TYPES


@pytest.fixture
def typed(sc, types):
    sc.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    sc.execute("CREATE DOMAIN jdoc AS json")
    sc.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(_col(t)), sql.SQL(t)) for t in types)
    sc.execute(sql.SQL("CREATE TABLE things (id int PRIMARY KEY, {})").format(columns))
    for n, t in enumerate(types, start=1):
        sc.execute(sql.SQL("INSERT INTO things (id, {c}) VALUES (%s, %s::{t})").format(
            c=sql.Identifier(_col(t)), t=sql.SQL(t)), (n, types[t][0]))
    sidecar.capture.tracking.track(sc, "things")
    return sc


def _col(type_name: str) -> str:
    return "c_" + type_name.replace("[]", "_array")


def _value(conn, n: int, t: str) -> str:
    return conn.execute(sql.SQL("SELECT {}::text FROM things WHERE id = %s").format(sql.Identifier(_col(t))),
                        (n,)).fetchone()[0]


def _run_then_people_edit(sc, run_bot, edit: bool, types):
    """The bot writes each row's column; a person then edits each (or rewrites the bot's value)."""
    statements = [
        (sql.SQL("UPDATE things SET {c} = %s::{t} WHERE id = %s").format(
            c=sql.Identifier(_col(t)), t=sql.SQL(t)).as_string(sc), (types[t][1], n))
        for n, t in enumerate(types, start=1)
    ]
    run_id = run_bot(*statements)
    for n, t in enumerate(types, start=1):
        sc.execute(sql.SQL("UPDATE things SET {c} = %s::{t} WHERE id = %s").format(
            c=sql.Identifier(_col(t)), t=sql.SQL(t)), (types[t][2 if edit else 1], n))
    return run_id


def _expected(sc, index: int, types) -> dict[str, str]:
    """Each type's value number `index` as PostgreSQL prints it."""
    return {t: sc.execute(sql.SQL("SELECT %s::{}::text").format(sql.SQL(t)), (types[t][index],)).fetchone()[0]
            for t in types}


def test_an_edit_of_any_type_after_the_run_is_a_conflict_and_kept(typed, types, run_bot, cli):
    run_id = _run_then_people_edit(typed, run_bot, edit=True, types=types)
    edited = _expected(typed, 2, types)
    assert all(edited[t] != _expected(typed, 1, types)[t] for t in types)

    result = cli("undo", str(run_id), "--yes")

    assert result.exit_code == 3, result.output
    assert f"things: {len(types)} skipped (conflict)" in result.output
    kept = {t: _value(typed, n, t) for n, t in enumerate(types, start=1)}
    assert kept == edited


def test_the_sql_script_keeps_an_edit_of_any_type(typed, types, run_bot, cli, dsn):
    run_id = _run_then_people_edit(typed, run_bot, edit=True, types=types)
    edited = _expected(typed, 2, types)
    script = cli("undo", str(run_id), "--sql")
    assert script.exit_code == 0, script.output
    with psycopg.connect(dsn, autocommit=True) as dba:
        dba.execute(script.output)
    kept = {t: _value(typed, n, t) for n, t in enumerate(types, start=1)}
    assert kept == edited


def test_the_sql_script_guards_each_row_against_edits_made_after_it_was_printed(typed, types, run_bot, cli, dsn):
    """A DBA reviews the script, and runs it later: a row a person edited meanwhile is left alone."""
    statements = [
        (sql.SQL("UPDATE things SET {c} = %s::{t} WHERE id = %s").format(
            c=sql.Identifier(_col(t)), t=sql.SQL(t)).as_string(typed), (types[t][1], n))
        for n, t in enumerate(types, start=1)
    ]
    run_id = run_bot(*statements)
    script = cli("undo", str(run_id), "--sql")
    assert script.exit_code == 0, script.output
    for n, t in enumerate(types, start=1):
        typed.execute(sql.SQL("UPDATE things SET {c} = %s::{t} WHERE id = %s").format(
            c=sql.Identifier(_col(t)), t=sql.SQL(t)), (types[t][2], n))
    with psycopg.connect(dsn, autocommit=True) as dba:
        dba.execute(script.output)
    kept = {t: _value(typed, n, t) for n, t in enumerate(types, start=1)}
    assert kept == _expected(typed, 2, types)


def test_the_same_value_written_again_is_no_conflict(typed, types, run_bot, cli, dsn):
    """A person who writes back exactly what the run wrote changed nothing: every row is restored."""
    run_id = _run_then_people_edit(typed, run_bot, edit=False, types=types)
    result = cli("undo", str(run_id), "--yes")
    assert result.exit_code == 0, result.output
    restored = {t: _value(typed, n, t) for n, t in enumerate(types, start=1)}
    assert restored == _expected(typed, 0, types)


def test_the_sql_script_restores_every_type_when_nothing_changed(typed, types, run_bot, cli, dsn):
    run_id = _run_then_people_edit(typed, run_bot, edit=False, types=types)
    script = cli("undo", str(run_id), "--sql")
    assert script.exit_code == 0, script.output
    with psycopg.connect(dsn, autocommit=True) as dba:
        dba.execute(script.output)
    restored = {t: _value(typed, n, t) for n, t in enumerate(types, start=1)}
    assert restored == _expected(typed, 0, types)
