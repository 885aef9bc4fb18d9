"""Undo, writing the plan: rows put back parents first, restored, then removed children first.

The tables' own triggers are turned off meanwhile, so that they do not
alter the restored rows; sidecar's capture stays on, which records the undo
as a run of its own.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ..errors import SidecarError
from ..text.describe import plural
from .keys import foreign_keys, keep_referenced, refers
from .plan import Planner
from .tables import TablePlan, key_join, quoted, split_name, temp_table


def apply(planner: Planner) -> dict[str, dict[str, int]]:
    """Write a built plan; rows written per table and step."""
    conn = planner.conn
    conn.execute("SET CONSTRAINTS ALL DEFERRED")
    order = planner.ordered()
    done: dict[str, dict[str, int]] = {p.table: {} for p in order}
    with _user_triggers_disabled(conn, [p.table for p in order]):
        # Rows the run added that no row refers to go first: a row put back or
        # restored may need a unique value one of them holds (the run replaced
        # a user by a new one with the same email). The rest go last, once the
        # rows that referred to them are restored.
        for plan in reversed(order):
            if plan.counts.get("delete"):
                planner.progress(f"removing {plan.counts['delete']:,} rows of {plan.table}")
            done[plan.table]["delete"] = _delete(planner, plan, unreferenced=True)
        # Parents are put back before the rows that refer to them are restored.
        # When that order breaks a unique key (the undo of an undo gives an
        # email back to a new user that a restored user still holds), the
        # restores are tried first.
        try:
            with conn.transaction():  # a savepoint
                _put_back_and_restore(planner, order, done, ("insert", "update"))
        except (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation):
            _put_back_and_restore(planner, order, done, ("update", "insert"))
        for plan in order:
            lost = plan.counts.get("insert", 0) - done[plan.table]["insert"]
            if lost:
                # Someone inserted the same key after the plan was made: a conflict, not an overwrite.
                planner.notes.append(f"{plan.table}: {plural(lost, 'row')} reappeared while undoing and "
                                     f"{'was' if lost == 1 else 'were'} left as {'it is' if lost == 1 else 'they are'}")
                plan.counts["conflict"] = plan.counts.get("conflict", 0) + lost
        left = [p for p in order if p.counts.get("delete", 0) > done[p.table]["delete"]]
        keep_referenced(planner, left)
        for plan in reversed(left):
            done[plan.table]["delete"] += _delete(planner, plan)
        for plan in order:
            kept = plan.counts.get("delete", 0) - done[plan.table]["delete"]
            if kept:  # listed as conflicts by conflicts(kept=True)
                plan.counts["conflict"] = plan.counts.get("conflict", 0) + kept
                plan.counts["kept"] = kept
    return done


def _put_back_and_restore(planner: Planner, order: list[TablePlan], done: dict[str, dict[str, int]],
                          steps: tuple[str, str]) -> None:
    for step in steps:
        for plan in order:
            if plan.counts.get(step):
                what = "putting back" if step == "insert" else "restoring"
                planner.progress(f"{what} {plan.counts[step]:,} rows of {plan.table}")
            done[plan.table][step] = (_insert if step == "insert" else _update)(planner, plan)


def _insert(planner: Planner, plan: TablePlan) -> int:
    if not plan.counts.get("insert"):
        return 0
    cols = sql.SQL(", ").join(quoted(c.name) for c in plan.columns)
    fcols = sql.SQL(", ").join(sql.SQL("f.{}").format(quoted(c.name)) for c in plan.columns)
    # A row whose key reappeared since the plan was made is left as it is (a
    # conflict); any other unique key that refuses a row is an error, which
    # apply() answers by trying the other order.
    pk = conflict_key(planner.conn, plan)
    target = sql.SQL("({})").format(sql.SQL(", ").join(quoted(c) for c in pk)) if pk else sql.SQL("")
    cur = planner.conn.execute(
        sql.SQL(
            "INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE "
            "SELECT {fcols} FROM {first} f JOIN {plan} p ON {pf} WHERE p.step = 'insert' "
            "ON CONFLICT {target} DO NOTHING"
        ).format(
            t=plan.ident, cols=cols, fcols=fcols, first=temp_table("first", plan),
            plan=temp_table("plan", plan), pf=key_join("p", "f", plan), target=target,
        )
    )
    return cur.rowcount


def conflict_key(conn: psycopg.Connection, plan: TablePlan) -> list[str] | None:
    """The table's primary key now, which a put-back row may find taken again (None: it has none)."""
    return conn.execute("SELECT sidecar._pk_columns(%s::regclass)::text[]", (plan.table,)).fetchone()[0]


def _update(planner: Planner, plan: TablePlan) -> int:
    if not plan.counts.get("update"):
        return 0
    settable = [c for c in plan.columns if c.name not in plan.info.pk_columns and not c.identity_always]
    if not settable:
        return 0
    sets = sql.SQL(", ").join(sql.SQL("{c} = f.{c}").format(c=quoted(c.name)) for c in settable)
    if set(plan.counts) - {"forced"} == {"update"}:
        # Every row of the plan is restored (the usual big undo): the
        # plan has nothing to add to the join of images and table.
        rows = "{first} f WHERE {fcur}"
    else:
        rows = "{first} f JOIN {plan} p ON {pf} WHERE {fcur} AND p.step = 'update'"
    cur = planner.conn.execute(
        sql.SQL("UPDATE {t} AS cur SET {sets} FROM " + rows).format(
            t=plan.ident, sets=sets, first=temp_table("first", plan),
            plan=temp_table("plan", plan), pf=key_join("p", "f", plan), fcur=key_join("f", "cur", plan),
        )
    )
    return cur.rowcount


def _delete(planner: Planner, plan: TablePlan, *, unreferenced: bool = False) -> int:
    """Delete the plan's rows to delete (unreferenced: only those no row refers to now)."""
    if not plan.counts.get("delete"):
        return 0
    free = [
        sql.SQL("NOT EXISTS (SELECT FROM {child} ch WHERE {on})").format(
            child=sql.Identifier(*split_name(child)), on=refers("ch", child_cols, parent_cols))
        for child, child_cols, parent_cols in foreign_keys(planner.conn, plan, pointing_at=True)
    ] if unreferenced else []
    cur = planner.conn.execute(
        sql.SQL("DELETE FROM {t} AS cur USING {plan} p WHERE {pcur} AND p.step = 'delete' AND {free}").format(
            t=plan.ident, plan=temp_table("plan", plan), pcur=key_join("p", "cur", plan),
            free=sql.SQL(" AND ").join(free) if free else sql.SQL("true"),
        )
    )
    return cur.rowcount


def user_triggers(conn: psycopg.Connection, tables: list[str]) -> list[tuple[str, str]]:
    """(table, trigger) for the tables' own enabled triggers, which an undo turns off while it restores."""
    return conn.execute(
        "SELECT sidecar._qualname(tgrelid), tgname FROM pg_trigger "
        "WHERE sidecar._qualname(tgrelid) = ANY(%s) AND NOT tgisinternal AND tgenabled <> 'D' "
        "AND tgname NOT LIKE 'sidecar\\_%%' ORDER BY 1, 2",
        (tables,),
    ).fetchall()


class _user_triggers_disabled:
    """Keep the tables' own triggers from altering restored rows (needs table ownership).

    ALTER TABLE ... DISABLE TRIGGER is transactional and holds a lock, so no
    other session ever sees a table without its triggers.
    """

    def __init__(self, conn: psycopg.Connection, tables: list[str]):
        self.conn, self.tables, self.disabled = conn, tables, []

    def __enter__(self):
        for table, trigger in user_triggers(self.conn, self.tables):
            try:
                self.conn.execute(
                    sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(sql.Identifier(*split_name(table)), quoted(trigger))
                )
            except psycopg.errors.InsufficientPrivilege:
                raise SidecarError(
                    f"undo must own table {table} to keep its trigger {trigger} from altering restored rows; "
                    "run it as the table's owner (or a member of that role)"
                ) from None
            self.disabled.append((table, trigger))
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            return False
        for table, trigger in self.disabled:
            self.conn.execute(
                sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(sql.Identifier(*split_name(table)), quoted(trigger))
            )
        return False
