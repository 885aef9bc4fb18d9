"""The pytest plugin users put in their CI, run with pytester as a user's project would run it."""

from __future__ import annotations

import pytest

BOT = '''
import psycopg
import sidecar


def ticket_bot(dsn, then=None):
    """The user's automation: resolves ticket 42 and adds a note, in a run."""
    with psycopg.connect(dsn, autocommit=True) as conn, sidecar.Run(conn, "ticket-bot") as run:
        conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
        conn.execute("INSERT INTO notes (ticket_id, body) VALUES (42, 'refund sent')")
    if then:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(then)


def setup(db, track):
    db.execute("CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL)")
    db.execute("CREATE TABLE notes (id serial PRIMARY KEY, ticket_id int NOT NULL, body text)")
    db.execute("INSERT INTO tickets VALUES (41, 'open'), (42, 'open')")
    track("tickets", "notes")
'''


@pytest.fixture
def project(pytester, monkeypatch, server_dsn):
    """A user's project whose tests get their server from SIDECAR_TEST_DSN (the suite's own server)."""
    monkeypatch.setenv("SIDECAR_TEST_DSN", server_dsn)
    monkeypatch.delenv("SIDECAR_PYTEST", raising=False)
    monkeypatch.delenv("SIDECAR_TEST_SERVER", raising=False)
    pytester.makepyfile(bot=BOT)
    return pytester


def test_a_run_that_can_be_undone_passes(project):
    project.makepyfile(test_bot='''
from bot import setup, ticket_bot

def test_ticket_bot_can_be_undone(sidecar_db, sidecar_dsn, sidecar_track, sidecar_undoable):
    setup(sidecar_db, sidecar_track)
    with sidecar_undoable() as proof:
        ticket_bot(sidecar_dsn)
    assert len(proof.runs) == 1
    assert sidecar_db.execute("SELECT status FROM tickets WHERE id = 42").fetchone() == ("open",)
''')
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_what_cannot_be_undone_fails_with_a_readable_diff(project):
    project.makepyfile(test_bot='''
from bot import setup, ticket_bot

def test_a_write_outside_the_run(sidecar_db, sidecar_dsn, sidecar_track, sidecar_undoable):
    setup(sidecar_db, sidecar_track)
    with sidecar_undoable():
        ticket_bot(sidecar_dsn, then="UPDATE tickets SET status = 'closed' WHERE id = 41")

def test_a_row_changed_after_the_run(sidecar_db, sidecar_dsn, sidecar_track, sidecar_undoable):
    setup(sidecar_db, sidecar_track)
    with sidecar_undoable():
        ticket_bot(sidecar_dsn, then="UPDATE tickets SET status = 'reopened' WHERE id = 42")

def test_writes_outside_any_run(sidecar_db, sidecar_track, sidecar_undoable):
    setup(sidecar_db, sidecar_track)
    with sidecar_undoable():
        sidecar_db.execute("UPDATE tickets SET status = 'resolved' WHERE id = 42")
''')
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "*_ test_a_write_outside_the_run _*",
        "the automation's writes cannot be undone exactly (runs undone: *); after the undo:",
        "  tickets #41: status was 'open', is 'closed'",
        "*_ test_a_row_changed_after_the_run _*",
        "the automation's writes cannot be undone exactly (runs undone: *); after the undo:",
        "  run *: tickets #42 was not restored: it changed after the run, outside it",
        "  tickets #42: status was 'open', is 'reopened'",
        "*_ test_writes_outside_any_run _*",
        "*no run was started: do the automation's writes go through sidecar.Run*",
    ])


def test_the_plugin_stays_off_when_turned_off(project, monkeypatch):
    monkeypatch.setenv("SIDECAR_PYTEST", "0")
    project.makepyfile(test_bot='''
def test_needs_it(sidecar_db):
    pass
''')
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'sidecar_db' not found*"])


def test_without_a_dsn_it_starts_local_server_binaries(project, monkeypatch):
    monkeypatch.delenv("SIDECAR_TEST_DSN")
    monkeypatch.setenv("SIDECAR_TEST_SERVER", "local")
    project.makepyfile(test_bot='''
from bot import setup, ticket_bot

def test_ticket_bot_can_be_undone(sidecar_db, sidecar_dsn, sidecar_track, sidecar_undoable):
    setup(sidecar_db, sidecar_track)
    with sidecar_undoable():
        ticket_bot(sidecar_dsn)
''')
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["sidecar fixtures ran on a PostgreSQL server: local (*)"])
