"""One agent's database session: its reads, its writes as explained actions of one run, its status.

This is the library under `sidecar mcp` (and usable without MCP): every write call is one
action of the session's run with the model's why, what it read and how sure it was; a paused
automation's call stops with the reason; held rows come back with their queue ids; a step
done already in the run's lineage is skipped. Results are plain dicts whose `message` is a
sentence written for a model to act on.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .. import db
from ..errors import UsageError
from . import sqlguard

ROW_CAP = 200
STATEMENT_TIMEOUT = "10s"
MAX_STATEMENTS = 20
PAUSED = "SC001"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _rows(cur: psycopg.Cursor, cap: int) -> tuple[list[str], list[list[Any]], bool]:
    if cur.description is None:
        return [], [], False
    fetched = cur.fetchmany(cap + 1)
    return [c.name for c in cur.description], [_jsonable(list(r)) for r in fetched[:cap]], len(fetched) > cap


def _serialized(method):
    """One call at a time on the session's connection (a server may run tool calls in threads)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


def _db_message(exc: psycopg.Error) -> str:
    return (exc.diag.message_primary or str(exc).strip().splitlines()[0]).removeprefix("sidecar: ")


@dataclass
class AgentSession:
    """The database side of one agent session (one MCP session): one connection, one run."""

    dsn: str | None
    automation: str
    run_id: uuid.UUID | None = None  # set: attach to this run (a rerun opened by `sidecar rerun`)
    read_only: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    row_cap: int = ROW_CAP
    statement_timeout: str = STATEMENT_TIMEOUT
    calls: int = 0
    started: bool = False
    last_error: str | None = None

    def __post_init__(self) -> None:
        if not self.automation or not self.automation.strip():
            raise UsageError("--automation needs the name the agent's runs go under, e.g. --automation support-agent")
        self.conn = db.connect(self.dsn)
        self._lock = threading.RLock()

    # -- reads ----------------------------------------------------------------
    @_serialized
    def query(self, sql: str, params: list | dict | None = None) -> dict[str, Any]:
        try:
            checked = sqlguard.check(sql, kind="read")
        except sqlguard.Refused as exc:
            return {"status": "refused", "message": f"refused: {exc}. Nothing was run."}
        try:
            with self.conn.transaction():
                self.conn.execute("SET TRANSACTION READ ONLY")
                self.conn.execute("SELECT set_config('statement_timeout', %s, true)", (self.statement_timeout,))
                cur = self.conn.execute(checked.sql, params or None)
                columns, rows, more = _rows(cur, self.row_cap)
        except psycopg.Error as exc:
            return {"status": "error", "message": f"the query failed: {_db_message(exc)}"}
        message = f"{len(rows)} row{'s' if len(rows) != 1 else ''}"
        if more:
            message += f"; more rows exist (only the first {self.row_cap} are shown: narrow the query)"
        return {"status": "ok", "message": message, "columns": columns, "rows": rows, "more_rows": more}

    # -- writes ---------------------------------------------------------------
    @_serialized
    def execute(self, sql: str | list[str], params: list | dict | None = None, *, why: str,
                read: list | None = None, confidence: float | None = None, step: str | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.read_only:
            return {"status": "refused", "message": "refused: this tool is read-only (query and status only). "
                                                    "Nothing was run."}
        statements = [sql] if isinstance(sql, str) else list(sql or [])
        if not why or not str(why).strip():
            return {"status": "refused", "message": "refused: why is required: say in one sentence why this write "
                                                    "is right (people review and undo from it). Nothing was run."}
        if not statements or len(statements) > MAX_STATEMENTS:
            return {"status": "refused", "message": f"refused: pass 1 to {MAX_STATEMENTS} statements. Nothing was run."}
        if len(statements) > 1 and params:
            return {"status": "refused", "message": "refused: params go with a single statement; write a list of "
                                                    "statements with their values inline, or call once per statement. "
                                                    "Nothing was run."}
        try:
            checked = [sqlguard.check(s, kind="write") for s in statements]
        except sqlguard.Refused as exc:
            return {"status": "refused", "message": f"refused: {exc}. Nothing was run."}
        try:
            self._ensure_run()
        except psycopg.Error as exc:
            return self._failed(exc)
        self.calls += 1
        action = step or f"mcp-call-{self.calls}"
        held_before = self._held_ids()
        changed = 0
        returned: list[dict[str, Any]] = []
        try:
            with self.conn.transaction():
                if step:
                    # A call with the same step key is the agent retrying the same work (same_work).
                    if not self.conn.execute("SELECT sidecar.begin_step(%s, true)", (step,)).fetchone()[0]:
                        return self._skipped(step)
                else:
                    self.conn.execute("SELECT set_config('sidecar.action', %s, true)", (action,))
                self.conn.execute("SELECT sidecar.set_context(%s, %s, %s, %s)",
                                  (why, Jsonb(read) if read is not None else None, confidence,
                                   Jsonb(extra) if extra else None))
                self.conn.execute("SELECT set_config('statement_timeout', %s, true)", (self.statement_timeout,))
                for c in checked:
                    cur = self.conn.execute(c.sql, params or None)
                    changed += max(cur.rowcount, 0)
                    columns, rows, _ = _rows(cur, self.row_cap)
                    returned += [dict(zip(columns, r)) for r in rows]
                if step:
                    self.conn.execute("SELECT sidecar.end_step()")
        except psycopg.Error as exc:
            if step:
                # Recorded after the rollback, so that a rerun knows this step is left to redo.
                self.conn.execute("SELECT sidecar.fail_step(%s, %s)", (step, _db_message(exc)))
            return self._failed(exc)
        self.last_error = None
        held = [h for h in self._held() if h["pending_id"] not in held_before]
        result: dict[str, Any] = {"status": "held" if held else "done", "action": action, "rows_changed": changed,
                                  "run_id": str(self.run_id)}
        if returned:
            result["returned"] = returned
        words = f"done: {changed} row{'s' if changed != 1 else ''} changed as action {action} of run {self.run_id}"
        if held:
            result["held"] = held
            ids = ", ".join(f"#{h['pending_id']}" for h in held)
            words += (f"; {len(held)} row{'s' if len(held) != 1 else ''} held for review ({ids}): do not retry, "
                      "a person decides; the status tool shows each decision")
        result["message"] = words
        return result

    def _skipped(self, step: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT run_id, completed_at FROM sidecar.step_done(%s)", (step,)).fetchone()
        done = f" by run {row[0]} at {row[1]:%Y-%m-%d %H:%M:%S %Z}" if row else ""
        return {"status": "skipped", "step": step,
                "message": f"skipped: step {step} was done already{done}; nothing was written again. "
                           "Do not retry it; go on with the next step."}

    def _failed(self, exc: psycopg.Error) -> dict[str, Any]:
        text = _db_message(exc)
        self.last_error = text
        if exc.sqlstate == PAUSED:
            pauses = self._pauses()
            why = "; ".join(f"{p['target']} paused by {p['paused_by']} because {p['reason']}" for p in pauses) or text
            return {"status": "paused", "pauses": pauses,
                    "message": f"stop: {why}. Nothing of this call was written. Do not retry: stop work and "
                               "report; a person resumes the automation."}
        if exc.sqlstate and exc.sqlstate.startswith("SC"):
            return {"status": "refused", "message": f"refused: {text}. Nothing of this call was written."}
        return {"status": "error", "message": f"failed: {text}. Nothing of this call was written."}

    # -- the run --------------------------------------------------------------
    def _ensure_run(self) -> None:
        if self.started:
            return
        meta = {"via": "sidecar mcp", **self.meta}
        if self.run_id is not None:
            self.conn.execute("SELECT sidecar.attach_run(%s, %s)", (self.run_id, self.automation))
        else:
            self.run_id = self.conn.execute("SELECT sidecar.start_run(%s, %s)",
                                            (self.automation, Jsonb(meta))).fetchone()[0]
        self.started = True

    def _held_ids(self) -> set[int]:
        return {h["pending_id"] for h in self._held()} if self.started else set()

    def _held(self) -> list[dict[str, Any]]:
        if not self.started:
            return []
        cur = self.conn.execute("SELECT pending_id, action, table_name, op, key, status, reason, decided_by, "
                                "decided_why FROM sidecar.run_held()")
        return [_jsonable(dict(zip([c.name for c in cur.description], r))) for r in cur.fetchall()]

    def _pauses(self) -> list[dict[str, Any]]:
        with self.conn.transaction(force_rollback=True):
            if not self.started:
                # No run yet: ask as the run this session would start (nothing is registered: rolled back).
                self.conn.execute("SELECT set_config('sidecar.run_id', %s, true), "
                                  "set_config('sidecar.automation', %s, true)", (str(uuid.uuid4()), self.automation))
            cur = self.conn.execute("SELECT scope, target, reason, paused_by, paused_at FROM sidecar.run_paused()")
            return [_jsonable(dict(zip([c.name for c in cur.description], r))) for r in cur.fetchall()]

    @_serialized
    def status(self) -> dict[str, Any]:
        pauses = self._pauses()
        held = self._held()
        waiting = [h for h in held if h["status"] in ("pending", "conflict")]
        parts = [f"automation {self.automation}: " + ("PAUSED (" + "; ".join(
            f"{p['target']} by {p['paused_by']}: {p['reason']}" for p in pauses) + "): stop writing"
            if pauses else "active")]
        parts.append(f"run {self.run_id}" if self.started else "no run yet (it starts at the first write)")
        if held:
            parts.append(f"{len(held)} held write{'s' if len(held) != 1 else ''}, {len(waiting)} waiting for a person")
        return {"automation": self.automation, "paused": bool(pauses), "pauses": pauses,
                "run_id": str(self.run_id) if self.started else None, "held": held,
                "message": "; ".join(parts)}

    @_serialized
    def close(self) -> None:
        """Finish the run (failed when the session's last write failed) and close the connection."""
        try:
            if self.started and not self.conn.closed:
                if self.last_error:
                    self.conn.execute("SELECT sidecar.finish_run('failed', %s)", (self.last_error,))
                else:
                    self.conn.execute("SELECT sidecar.finish_run()")
        finally:
            self.conn.close()


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, separators=(",", ":"), default=str)
