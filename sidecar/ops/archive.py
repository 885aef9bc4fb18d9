"""Archive: the history of finished runs written to files before a purge, and read back.

`archive(conn, before, to=DIR)` writes one gzip'd JSON-lines file per run (the run, its
actions, statements, captured row images per table, row counts and events) and a
manifest (runs, tables, row counts, SHA-256 of each file). It changes nothing in the
database: `sidecar purge` removes the history afterwards, as it always has. `restore(conn,
FILE)` checks the file against its checksum and loads a purged run's history back, so that
`sidecar show` tells it again and `sidecar undo` can undo it if its rows still match.
Rows are stored as PostgreSQL's own JSON of each row (row_to_json) and read back with
jsonb_populate_record, so every column type round-trips through its text form.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..capture import settle
from ..capture.history import TableInfo, history_from
from ..errors import SidecarError, UsageError
from ..text.describe import plural

FORMAT = "sidecar-archive/1"
MANIFEST = "manifest.json"


@dataclass
class ArchivedRun:
    run_id: uuid.UUID
    automation: str
    started_at: datetime
    file: str
    sha256: str
    rows: dict[str, int]  # per part: statements, actions, events, and each table's images


@dataclass
class ArchiveReport:
    directory: str
    runs: list[ArchivedRun] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def text(self) -> str:
        if not self.runs:
            lines = [f"No finished run to archive ({self.directory} unchanged)."]
        else:
            images = sum(n for r in self.runs for k, n in r.rows.items() if k.startswith("table:"))
            lines = [f"Archived {plural(len(self.runs), 'run')} ({plural(images, 'row image')}) to {self.directory}; "
                     f"the manifest is {Path(self.directory) / MANIFEST}.",
                     "The database is unchanged: remove the history with sidecar purge --before ... --yes."]
        lines += [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)


def _lines(conn: psycopg.Connection, run_id: uuid.UUID) -> Iterator[tuple[str, dict[str, Any]]]:
    """The run's history as (part, row) pairs, parents before children."""
    simple = [("run", "runs", "run_id = %s", ""), ("action", "actions", "run_id = %s", "ORDER BY action_id"),
              ("statement", "statements", "run_id = %s", "ORDER BY stmt_id"),
              ("counts", "run_counts", "run_id = %s", ""), ("event", "events", "run_id = %s", "ORDER BY event_id")]
    for part, table, where, order in simple:
        query = sql.SQL("SELECT row_to_json(x) FROM sidecar.{} x WHERE {} {}").format(
            sql.Identifier(table), sql.SQL(where), sql.SQL(order))
        for (row,) in conn.execute(query, (run_id,)):
            if part == "statement" and row.get("images_of") is not None:
                # An undo's statement that points at the images it reversed is archived with
                # those images as its own (below): the file needs no other run's history.
                row["images_of"] = row["images_swapped"] = None
            yield part, row
    tables = conn.execute(
        "SELECT t.tracked_id, t.log_table, sidecar._qualname(t.relid), min(s.stmt_id), max(s.stmt_id) "
        "FROM sidecar.statements s JOIN sidecar.tracked t USING (tracked_id) WHERE s.run_id = %s "
        "GROUP BY 1, 2, 3 ORDER BY 1", (run_id,)).fetchall()
    for tracked_id, log_table, name, lo, hi in tables:
        source = history_from(conn, TableInfo(tracked_id, name, log_table, [], None, None, (lo, hi)))
        query = sql.SQL("SELECT row_to_json(l) FROM {} l WHERE l._stmt BETWEEN %s AND %s AND EXISTS "
                        "(SELECT FROM sidecar.statements s WHERE s.stmt_id = l._stmt AND s.run_id = %s) "
                        "ORDER BY l._stmt").format(source)
        for (row,) in conn.execute(query, (lo, hi, run_id)):
            yield f"table:{name}", {"tracked_id": tracked_id, "log_table": log_table, "row": row}


def _write_run(conn: psycopg.Connection, run_id: uuid.UUID, path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    tmp = path.with_suffix(path.suffix + ".part")
    with gzip.open(tmp, "wt", encoding="utf-8") as out:
        out.write(json.dumps({"format": FORMAT, "run_id": str(run_id)}) + "\n")
        for part, row in _lines(conn, run_id):
            counts[part] = counts.get(part, 0) + 1
            out.write(json.dumps({"part": part, "row": row}, separators=(",", ":")) + "\n")
        out.write(json.dumps({"end": counts}) + "\n")
    tmp.replace(path)  # a file is whole or absent: an interrupted archive leaves no half file
    return counts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def archive(conn: psycopg.Connection, before: datetime, to: str | Path, *, automation: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> ArchiveReport:
    """Write each finished, unpurged run started before `before` to `to`; change nothing in the database."""
    settle.keep_settled(conn)  # row-mode statements first (capture/settle.py)
    directory = Path(to)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--to {directory} is a file; name a directory (it is created if missing)")
    directory.mkdir(parents=True, exist_ok=True)
    report = ArchiveReport(str(directory))
    runs = conn.execute(
        "SELECT run_id, automation, started_at FROM sidecar.runs WHERE started_at < %s AND status <> 'running' "
        "AND purged_at IS NULL AND (%s::text IS NULL OR automation = %s) ORDER BY started_at",
        (before, automation, automation)).fetchall()
    manifest_path = directory / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"format": FORMAT, "runs": []}
    known = {r["run_id"] for r in manifest["runs"]}
    for i, (run_id, name, started_at) in enumerate(runs, 1):
        file = f"run-{run_id}.jsonl.gz"
        # One snapshot per run: its history as of one moment, whatever writes meanwhile.
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            counts = _write_run(conn, run_id, directory / file)
        entry = ArchivedRun(run_id, name, started_at, file, _sha256(directory / file), counts)
        report.runs.append(entry)
        manifest["runs"] = [r for r in manifest["runs"] if r["run_id"] != str(run_id)]
        manifest["runs"].append({"run_id": str(run_id), "automation": name, "started_at": started_at.isoformat(),
                                 "file": file, "sha256": entry.sha256, "rows": counts,
                                 "archived_at": datetime.now(timezone.utc).isoformat()})
        if str(run_id) in known:
            report.skipped.append(f"{run_id}: archived before; its file was written again")
        if progress:
            progress(i, len(runs))
    tmp = manifest_path.with_suffix(".json.part")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(manifest_path)
    return report


@dataclass
class RestoreReport:
    run_id: uuid.UUID
    rows: dict[str, int]

    def text(self) -> str:
        images = sum(n for k, n in self.rows.items() if k.startswith("table:"))
        return (f"Restored run {self.run_id}: {plural(self.rows.get('statement', 0), 'statement')}, "
                f"{plural(images, 'row image')}. sidecar show {str(self.run_id)[:8]} tells it again; "
                "sidecar undo can undo it where its rows still match.")


def _read(path: Path) -> tuple[uuid.UUID, list[tuple[str, dict[str, Any]]]]:
    manifest = path.parent / MANIFEST
    if manifest.exists():
        entries = {r["file"]: r for r in json.loads(manifest.read_text()).get("runs", [])}
        entry = entries.get(path.name)
        if entry and entry["sha256"] != _sha256(path):
            raise SidecarError(f"{path} does not match the checksum in its manifest: the file changed since it "
                               "was archived; nothing was restored")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            header = json.loads(f.readline())
            body = [json.loads(line) for line in f]
    except (OSError, EOFError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not a sidecar archive file ({exc}); nothing was restored") from None
    if header.get("format") != FORMAT or not body or "end" not in body[-1]:
        raise UsageError(f"{path} is not a whole sidecar archive file (format {FORMAT}); nothing was restored")
    lines = [(b["part"], b["row"]) for b in body[:-1]]
    counted: dict[str, int] = {}
    for part, _ in lines:
        counted[part] = counted.get(part, 0) + 1
    if counted != body[-1]["end"]:
        raise UsageError(f"{path} is cut short (its rows do not add up to what it says); nothing was restored")
    return uuid.UUID(header["run_id"]), lines


def restore(conn: psycopg.Connection, path: str | Path) -> RestoreReport:
    """Load an archived run's history back, in one transaction. The run must have been purged here."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no archive file {path}; name a run-<id>.jsonl.gz file that sidecar archive wrote")
    run_id, lines = _read(path)
    counts: dict[str, int] = {}
    with conn.transaction():
        state = conn.execute("SELECT purged_at IS NOT NULL FROM sidecar.runs WHERE run_id = %s FOR UPDATE",
                             (run_id,)).fetchone()
        if state is not None and not state[0]:
            raise UsageError(f"run {run_id} still has its history here (it was not purged); nothing to restore")
        # Counts read after the purge (zero rows) are derived data: the archived ones replace them.
        conn.execute("DELETE FROM sidecar.run_counts WHERE run_id = %s", (run_id,))
        for part, row in lines:
            if part == "run" and state is None:
                _insert(conn, "runs", row)
            elif part == "action" and state is None:
                _insert(conn, "actions", row, identity=True)
            elif part == "action":
                # The action stayed; the purge took its context (the model's why and what it read).
                conn.execute("UPDATE sidecar.actions a SET context = r.context "
                             "FROM jsonb_populate_record(NULL::sidecar.actions, %s) r "
                             "WHERE a.action_id = r.action_id AND a.context IS NULL", (Jsonb(row),))
            elif part == "event" and state is None:
                _insert(conn, "events", row, identity=True)
            elif part in ("statement", "counts"):
                _insert(conn, {"statement": "statements", "counts": "run_counts"}[part], row)
            elif part.startswith("table:"):
                _insert_image(conn, row)
            else:
                continue
            counts[part] = counts.get(part, 0) + 1
        conn.execute("UPDATE sidecar.runs SET purged_at = NULL WHERE run_id = %s", (run_id,))
        conn.execute("INSERT INTO sidecar.events (kind, run_id, summary, detail) VALUES ('archive', %s, %s, %s)",
                     (run_id, f"history restored from the archive file {path.name}", Jsonb({"rows": counts})))
    return RestoreReport(run_id, counts)


def _insert(conn: psycopg.Connection, table: str, row: dict[str, Any], *, identity: bool = False) -> None:
    ident = sql.Identifier("sidecar", table)
    conn.execute(sql.SQL("INSERT INTO {t} {over} SELECT * FROM jsonb_populate_record(NULL::{t}, %s)").format(
        t=ident, over=sql.SQL("OVERRIDING SYSTEM VALUE" if identity else "")), (Jsonb(row),))


def _insert_image(conn: psycopg.Connection, item: dict[str, Any]) -> None:
    log_table = conn.execute("SELECT log_table FROM sidecar.tracked WHERE tracked_id = %s",
                             (item["tracked_id"],)).fetchone()
    if log_table is None:
        raise SidecarError(f"the archive holds rows of tracked table #{item['tracked_id']}, which this database "
                           "no longer knows (sidecar was uninstalled since?); nothing was restored")
    # Columns added since are NULL in old images, as in history; columns gone since are ignored.
    ident = sql.Identifier("sidecar", log_table[0])
    conn.execute(sql.SQL("INSERT INTO {t} SELECT * FROM jsonb_populate_record(NULL::{t}, %s)").format(t=ident),
                 (Jsonb(item["row"]),))
