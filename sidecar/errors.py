"""Errors a user can hit, each naming the thing and the way out.

Two families:

- `SidecarError`: what the library and the CLI report as one line (`UsageError`: bad input).
- `SidecarDatabaseError`: an error sidecar raised in PostgreSQL (SQLSTATE `SC0xx`, see
  docs/errors.md), or its Python twin. Each kind has its own class, registered with psycopg
  for its SQLSTATE, so `conn.execute(...)` itself raises `sidecar.errors.Paused` when the
  automation is paused; they are still `psycopg.DatabaseError`s, so older `except` clauses
  keep working. Each carries `sqlstate`, `message` (one line), `hint`, and the fields an agent
  needs (`Paused.paused_by`, `.reason`, `.since` ...).

This module is the one place that maps SQLSTATEs to classes (`_register` below).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg


class SidecarError(Exception):
    """A failure the CLI reports as one line, exiting 1 (nothing changed).

    shell: the way out as a command (`sidecar runs lists the runs`), which the CLI adds to
    the message and the console leaves out (it offers a link or a button instead).
    """

    exit_code = 1
    shell: str | None = None

    def __init__(self, *args: Any, shell: str | None = None, **kwargs: Any):
        if shell and args:
            args = (f"{args[0]}; {shell}", *args[1:])
        super().__init__(*args, **kwargs)
        self.shell = shell

    def without_shell(self) -> str:
        """The message without the command the CLI adds (for the console)."""
        text = str(self)
        return text.removesuffix(f"; {self.shell}") if self.shell else text


class UsageError(SidecarError):
    """Bad input: unknown run id, malformed --row, table not tracked... (exit 2)."""

    exit_code = 2


class SidecarDatabaseError(SidecarError, psycopg.errors.DatabaseError):
    """An error of sidecar's, raised by the database (or by the library, with the same SQLSTATE).

    Raised by the library: ``Paused("sidecar: ...", hint=..., details={...})``.
    """

    sqlstate: str | None = None

    def __init__(self, *args: Any, hint: str | None = None, details: dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._hint = hint
        self._details = details

    @property
    def message(self) -> str:
        """One line: what happened (the database's primary message, without CONTEXT or HINT)."""
        primary = self.diag.message_primary if self.pgresult is not None else None
        text = primary or (str(self.args[0]) if self.args else type(self).__name__)
        return text.strip().splitlines()[0] if text.strip() else type(self).__name__

    @property
    def hint(self) -> str | None:
        return self._hint if self._hint is not None else (self.diag.message_hint if self.pgresult is not None else None)

    @property
    def details(self) -> dict:
        """The structured DETAIL sidecar's database errors carry (JSON), else {}."""
        if self._details is not None:
            return self._details
        raw = self.diag.message_detail if self.pgresult is not None else None
        try:
            found = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}

    def __reduce__(self):  # psycopg's own pickling expects its constructor
        return (type(self), self.args)


class Paused(SidecarDatabaseError, code="SC001"):
    """The automation (or every automation, '*', or a table) is paused: nothing of the write landed.

    `scope` 'automation' or 'table'; `target` the automation's name, '*', or the table;
    `paused_by`, `reason`, `since` (a datetime): who paused it, why, since when.
    """

    @property
    def scope(self) -> str | None:
        return self.details.get("scope")

    @property
    def target(self) -> str | None:
        return self.details.get("target")

    @property
    def paused_by(self) -> str | None:
        return self.details.get("paused_by")

    @property
    def reason(self) -> str | None:
        return self.details.get("reason")

    @property
    def since(self) -> datetime | None:
        at = self.details.get("paused_at")
        return datetime.fromisoformat(at) if at else None


class TruncateRefused(SidecarDatabaseError, code="SC002"):
    """TRUNCATE of a tracked table by a run: it cannot be undone row by row."""


class BadRunId(SidecarDatabaseError, code="SC003"):
    """sidecar.run_id is not a uuid."""


class NotTracked(SidecarDatabaseError, code="SC004"):
    """A table cannot be tracked, or is not tracked."""


class NotARun(SidecarDatabaseError, code="SC005"):
    """No run is active (or the run is unknown, or start_run/finish_run got bad arguments)."""


class PauseRefused(SidecarDatabaseError, code="SC006"):
    """A pause without a reason."""


class StepMisuse(SidecarDatabaseError, code="SC007"):
    """No step open, a step without a key, a bad plan."""


class UndoRefused(SidecarDatabaseError, code="SC008"):
    """An undo refused: unknown run, already undone, purged."""


class RunUndone(SidecarDatabaseError, code="SC009"):
    """A write tagged with a run that was undone whole: start a new run."""


class ContextRefused(SidecarDatabaseError, code="SC010"):
    """An action's context refused (sidecar.set_context: why, read, confidence); the message names the field."""


class RunFinished(SidecarDatabaseError, code="SC011"):
    """A write or step through a `Run` that has finished (or not started): it would not be captured."""

    @property
    def run_id(self) -> str | None:
        return self.details.get("run_id")

    @property
    def status(self) -> str | None:
        return self.details.get("status")


class StepConflict(SidecarDatabaseError, code="SC012"):
    """One step key for two different pieces of work (say `same_work=True` if they are the same).

    `key`: the step key; `run_id`, `done_at`: who did it first, and when (when known).
    """

    @property
    def key(self) -> str | None:
        return self.details.get("key")

    @property
    def run_id(self) -> str | None:
        return self.details.get("run_id")


class TransactionAborted(SidecarDatabaseError):
    """A statement of a step (or of a run's transaction) failed and its error was caught: the
    transaction could not commit, so it was rolled back and the step recorded as failed."""

    sqlstate = "25P02"


class RuleRefused(SidecarDatabaseError, code="SC020"):
    """A hold rule refused."""


class DecisionRefused(SidecarDatabaseError, code="SC021"):
    """A review decision refused."""


class ApprovalConflict(SidecarDatabaseError, code="SC022"):
    """An approval conflict: the row changed since it was held."""


class CascadeHeld(SidecarDatabaseError, code="SC023"):
    """A hold rule matches a row a foreign key's action changes: the statement is refused."""


class Held(SidecarDatabaseError, code="SC024"):
    """Writes of the run wait for review (raised by the library: `run.raise_if_held()`).

    `held`: the waiting writes (`sidecar.steps.runs.HeldWrite`: pending_id, action, table,
    op, key, status, reason); a person approves or rejects them (`sidecar queue`).
    """

    def __init__(self, *args: Any, held: list | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.held = held or []

    @property
    def pending_ids(self) -> list[int]:
        return [h.pending_id for h in self.held]


def one_line(exc: BaseException, limit: int = 500) -> str:
    """The text a run or step stores for a failure: one line, `Type: message`.

    A database error gives its primary message only (no CONTEXT with a trigger's SQL, no HINT);
    the full diagnostics are `full_text(exc)`.
    """
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
    else:
        text = str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def full_text(exc: BaseException) -> str | None:
    """Every diagnostic of a database error (message, detail, hint, context), for operators; None
    when one_line already says it all."""
    if not isinstance(exc, psycopg.Error):
        text = str(exc)
        return text if "\n" in text.strip() else None
    d = exc.diag
    parts = [f"{k}: {v}" for k, v in (("sqlstate", exc.sqlstate),
                                      ("message", getattr(exc, "message", None) or d.message_primary),
                                      ("detail", d.message_detail or (json.dumps(exc.details, default=str)
                                                                      if getattr(exc, "_details", None) else None)),
                                      ("hint", getattr(exc, "hint", None) or d.message_hint),
                                      ("context", d.context)) if v]
    return "\n".join(parts) or str(exc) or None
