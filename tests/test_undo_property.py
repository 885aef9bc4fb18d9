"""Property: whatever a run and people write, interleaved, undo puts back exactly the run's rows.

Two related tables, parent and child (child.parent_id references parent). Hypothesis
generates a starting state and an interleaving of the bot's writes (in one run) with
untagged writes by a person. After `undo`:

- a row the run changed and nobody touched since is back as it was before the run;
- a row someone changed since the run's last write of it is reported as a conflict and
  left exactly as it is;
- a row the run left as it found it (net effect nothing) and rows the run never touched
  are left exactly as they are;
- a row may also be reported because of a foreign key (a row the run added that a person's
  row now refers to, or a row whose parent a person deleted); it is then left as it is.

Then people write again, the undo itself is undone, and the same must hold.
"""

from __future__ import annotations

import os

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sidecar.steps.runs
from tests.fix_sidecar import track, undo

# Few keys and values, so that the bot and the person often meet on the same rows.
IDS = st.integers(min_value=1, max_value=3)
VALUES = st.integers(min_value=0, max_value=2)

OPS = st.one_of(
    st.tuples(st.just("ins_parent"), IDS, VALUES),
    st.tuples(st.just("upd_parent"), IDS, VALUES),
    st.tuples(st.just("del_parent"), IDS),
    st.tuples(st.just("bump_parents")),
    st.tuples(st.just("rekey_parent"), IDS, IDS),
    st.tuples(st.just("ins_child"), IDS, IDS, VALUES),
    st.tuples(st.just("upd_child"), IDS, IDS, VALUES),
    st.tuples(st.just("del_child"), IDS),
    st.tuples(st.just("bump_children")),
    st.tuples(st.just("rekey_child"), IDS, IDS),
)
SQL = {
    "ins_parent": ("INSERT INTO parent (id, v) VALUES (%s, %s) ON CONFLICT DO NOTHING", lambda o: (o[1], o[2])),
    "upd_parent": ("UPDATE parent SET v = %s WHERE id = %s", lambda o: (o[2], o[1])),
    "del_parent": ("DELETE FROM parent WHERE id = %s", lambda o: (o[1],)),
    "bump_parents": ("UPDATE parent SET v = v + 1", lambda o: ()),
    # A new key for a row (an undo sees the old key go and the new one come).
    "rekey_parent": ("UPDATE parent SET id = %s WHERE id = %s", lambda o: (o[2], o[1])),
    "ins_child": ("INSERT INTO child (id, parent_id, v) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                  lambda o: (o[1], o[2], o[3])),
    "upd_child": ("UPDATE child SET parent_id = %s, v = %s WHERE id = %s", lambda o: (o[2], o[3], o[1])),
    "del_child": ("DELETE FROM child WHERE id = %s", lambda o: (o[1],)),
    "bump_children": ("UPDATE child SET v = v + 1 WHERE id %% 2 = 1", lambda o: ()),
    "rekey_child": ("UPDATE child SET id = %s WHERE id = %s", lambda o: (o[2], o[1])),
}


@st.composite
def starting_state(draw):
    parents = draw(st.dictionaries(IDS, VALUES, max_size=3))
    children = {}
    if parents:
        children = draw(st.dictionaries(IDS, st.tuples(st.sampled_from(sorted(parents)), VALUES), max_size=3))
    return parents, children


WHO_AND_OP = st.tuples(st.sampled_from(["bot", "person"]), OPS)


@pytest.fixture
def world(sc, make_conn):
    sc.execute("CREATE TABLE parent (id int PRIMARY KEY, v int NOT NULL)")
    sc.execute("CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent, v int NOT NULL)")
    # One table captures only the bot's writes, the other everybody's: undo must not care.
    track(sc, "parent")
    track(sc, "child", capture="all")
    return sc, make_conn(application_name="sync-bot"), make_conn(application_name="psql")


def _state(conn) -> dict[tuple[str, int], tuple]:
    rows = {("parent", r[0]): r for r in conn.execute("SELECT id, v FROM parent")}
    rows.update({("child", r[0]): r for r in conn.execute("SELECT id, parent_id, v FROM child")})
    return rows


def _write(conn, op) -> None:
    query, args = SQL[op[0]]
    try:
        conn.execute(query, args(op))
    except psycopg.errors.IntegrityError:
        pass  # a write the database refuses (foreign key) is simply not made


def _check_undo(first_by_run: dict, last_by_run: dict, before_undo: dict, after_undo: dict, result) -> None:
    """The property, for one undo. Per row the run changed: first_by_run, its state before the run's first
    write of it; last_by_run, its state after the run's last write of it."""
    reported = {(c.table.removeprefix("public."), c.key[next(iter(c.key))]) for c in result.conflicts}
    assert result.conflict_count == len(reported), "every conflicting row is listed"
    assert reported <= set(last_by_run), f"conflicts {reported} on rows the run never wrote"
    for key in set(before_undo) | set(after_undo):
        now, then, after = before_undo.get(key), first_by_run.get(key), after_undo.get(key)
        if key not in last_by_run or last_by_run[key] == then:
            assert after == now, f"{key}: untouched by the run's net effect, yet changed by the undo"
        elif now == then:
            assert after == then and key not in reported, f"{key}: already as before the run"
        elif now != last_by_run[key]:
            assert key in reported, f"{key}: changed since the run ({last_by_run[key]} -> {now}), not reported"
            assert after == now, f"{key}: a conflict must be left as it is"
        elif key in reported:
            assert after == now, f"{key}: reported as a conflict, yet changed"
            assert _fk_explains(key, then, after_undo), f"{key}: reported as a conflict for no reason"
        else:
            assert after == then, f"{key}: not back to its state before the run"


def _fk_explains(key, then, after_undo) -> bool:
    table, ident = key
    if table == "parent":  # added by the run, and a row that stays refers to it
        return then is None and any(t == "child" and row[1] == ident for (t, _), row in after_undo.items())
    # restoring it would refer to a parent that is gone
    return then is not None and ("parent", then[1]) not in after_undo


def _run(conn, bot, person, ops) -> tuple[object, dict, dict]:
    """The bot's run, interleaved with the person's writes: run id, first and last images of its rows."""
    first_by_run: dict = {}
    last_by_run: dict = {}
    with sidecar.steps.runs.Run(bot, "sync-bot") as run:
        for who, op in ops:
            if who == "person":
                _write(person, op)
                continue
            before = _state(conn)
            _write(bot, op)
            after = _state(conn)
            for key in set(before) | set(after):
                if before.get(key) != after.get(key):
                    first_by_run.setdefault(key, before.get(key))
                    last_by_run[key] = after.get(key)
    return run.run_id, first_by_run, last_by_run


@settings(max_examples=int(os.environ.get("SIDECAR_PROPERTY_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(start=starting_state(), ops=st.lists(WHO_AND_OP, min_size=1, max_size=12),
       later=st.lists(st.tuples(st.just("person"), OPS), max_size=4))
# Stories found worth keeping: the bot moves a child away and a person deletes its old parent;
# the person adds a child under the bot's new parent; the bot's child is re-parented by the person.
@example(start=({1: 0, 2: 0}, {1: (1, 0)}), ops=[("bot", ("upd_child", 1, 2, 0)), ("person", ("del_parent", 1))],
         later=[])
@example(start=({}, {}), ops=[("bot", ("ins_parent", 1, 0)), ("person", ("ins_child", 1, 1, 0))], later=[])
@example(start=({1: 0}, {}), ops=[("bot", ("ins_parent", 2, 0)), ("bot", ("ins_child", 1, 2, 0)),
                                  ("person", ("upd_child", 1, 1, 1))],
         later=[("person", ("del_parent", 2))])
def test_undo_and_undo_of_the_undo_restore_exactly_the_runs_rows(world, start, ops, later):
    conn, bot, person = world
    conn.execute("TRUNCATE child, parent")  # untagged: allowed, and not captured
    parents, children = start
    for ident, v in parents.items():
        conn.execute("INSERT INTO parent VALUES (%s, %s)", (ident, v))
    for ident, (parent_id, v) in children.items():
        conn.execute("INSERT INTO child VALUES (%s, %s, %s)", (ident, parent_id, v))

    run_id, first_by_run, last_by_run = _run(conn, bot, person, ops)
    before_undo = _state(conn)
    result = undo(conn, run_id)
    after_undo = _state(conn)
    _check_undo(first_by_run, last_by_run, before_undo, after_undo, result)

    # The undo is a run too: people write again, then the undo is undone.
    undo_changed = {k: after_undo.get(k) for k in set(before_undo) | set(after_undo)
                    if before_undo.get(k) != after_undo.get(k)}
    for _, op in later:
        _write(person, op)
    before_redo = _state(conn)
    redo = undo(conn, result.undo_run_id)
    _check_undo({k: before_undo.get(k) for k in undo_changed}, undo_changed, before_redo, _state(conn), redo)
