"""Install, upgrade and uninstall the shadow schema."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from .. import resources
from ..errors import SidecarError
from . import partitioning

# Many sidecar processes may run against one database: installs take turns.
_INSTALL_LOCK = 7_420_001


@dataclass
class InstallReport:
    migrations: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    rerendered: list[str] = field(default_factory=list)
    shapes_watched: bool = False  # the shape-watching event triggers were created by this install
    statements: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the installing role could not do, and what to ask for
    undo_functions: list[str] = field(default_factory=list)  # tables whose undo function this install made
    undo_missing: list[tuple[str, str]] = field(default_factory=list)  # (table, its owner): not this role's to make
    partitioned: list[str] = field(default_factory=list)  # history tables converted to partitioned ones

    @property
    def changed(self) -> bool:
        return bool(self.migrations or self.functions or self.templates or self.shapes_watched or self.rerendered
                    or self.undo_functions or self.partitioned)


def installed_version(conn: psycopg.Connection) -> int | None:
    """The newest applied migration, or None when sidecar is not installed."""
    row = conn.execute("SELECT to_regclass('sidecar.migrations') IS NOT NULL").fetchone()
    if not row[0]:
        return None
    return conn.execute("SELECT max(version) FROM sidecar.migrations").fetchone()[0]


def _check_schema_is_ours(conn: psycopg.Connection) -> None:
    schema = conn.execute("SELECT to_regnamespace('sidecar') IS NOT NULL").fetchone()[0]
    ours = conn.execute("SELECT to_regclass('sidecar.migrations') IS NOT NULL").fetchone()[0]
    if schema and not ours:
        raise SidecarError(
            'a schema named "sidecar" already exists and was not made by sidecar; '
            "rename or drop it, then run sidecar install again"
        )


def install(conn: psycopg.Connection, *, dry_run: bool = False) -> InstallReport:
    """Apply the migrations, function files and templates not applied yet, in one transaction.

    With dry_run the same work is done and rolled back, so nothing changes and
    report.statements holds the SQL that would run.
    """
    report = InstallReport()
    with conn.transaction(force_rollback=dry_run):
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        _check_schema_is_ours(conn)
        applied: set[int] = set()
        if installed_version(conn) is not None:
            applied = {r[0] for r in conn.execute("SELECT version FROM sidecar.migrations")}
        for version, f in resources.migrations():
            if version in applied:
                continue
            report.migrations.append(f.name)
            report.statements.append(f.text)
            conn.execute(f.text)
            conn.execute("INSERT INTO sidecar.migrations (version, name) VALUES (%s, %s)", (version, f.name))

        known = dict(conn.execute("SELECT file, sha256 FROM sidecar.definitions").fetchall())
        for f in resources.function_files():
            if known.get(f.name) == f.sha256:
                continue
            report.functions.append(f.name)
            report.statements.append(f.text)
            conn.execute(f.text)
            conn.execute(
                "INSERT INTO sidecar.definitions (file, sha256) VALUES (%s, %s) "
                "ON CONFLICT (file) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = now()",
                (f.name, f.sha256),
            )

        stored = dict(conn.execute("SELECT name, body FROM sidecar.templates").fetchall())
        for name, body in resources.templates().items():
            if stored.get(name) == body:
                continue
            report.templates.append(name)
            report.statements.append(body)
            conn.execute(
                "INSERT INTO sidecar.templates (name, body) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body",
                (name, body),
            )
        # Event triggers that keep history in step with ALTER TABLE, where
        # this role may create them; capture then skips its shape check.
        report.shapes_watched = conn.execute("SELECT sidecar._watch_shapes_install()").fetchone()[0]
        if report.shapes_watched:
            report.statements.append("SELECT sidecar._watch_shapes_install();  -- creates the event triggers")
        # A changed template is rendered anew for every tracked table, and a
        # capture function for the other shape-check mode than the event
        # triggers' state now calls for (the hold trigger only exists on tables
        # with rules; it knows which).
        for tracked_id, relid in conn.execute(
            "SELECT tracked_id, sidecar._qualname(relid) FROM sidecar.tracked t "
            "WHERE active AND (%s OR shape_watched <> sidecar._shapes_watched()) "
            "AND EXISTS (SELECT FROM pg_class c WHERE c.oid = t.relid) "  # a tracked table dropped since
            "ORDER BY tracked_id",
            (bool(report.templates),),
        ).fetchall():
            # Columns changed while nothing watched and nothing wrote come first.
            conn.execute("SELECT sidecar._sync_shape(%s)", (tracked_id,))
            conn.execute("SELECT sidecar._render_capture(%s)", (tracked_id,))
            conn.execute("SELECT sidecar._create_triggers(%s)", (tracked_id,))
            conn.execute("SELECT sidecar._render_hold(%s)", (tracked_id,))
            report.rerendered.append(relid)
        # A tracked table without its undo function (tracked before sidecar had
        # them) gets it here, where this role owns the table (else a warning
        # names the owner, who runs `sidecar track TABLE` again).
        for tracked_id, relid, owner in conn.execute(
            "SELECT t.tracked_id, sidecar._qualname(t.relid), pg_get_userbyid(c.relowner) "
            "FROM sidecar.tracked t JOIN pg_class c ON c.oid = t.relid "  # not a table dropped since
            "WHERE to_regprocedure(format('sidecar.%I(text, uuid, jsonb)', 'undo_' || t.tracked_id)) IS NULL "
            "ORDER BY t.tracked_id"
        ).fetchall():
            if conn.execute("SELECT sidecar._render_undo(%s)", (tracked_id,)).fetchone()[0]:
                report.statements.append(f"SELECT sidecar._render_undo({tracked_id});  -- undo function of {relid}")
                report.undo_functions.append(relid)
            else:
                report.undo_missing.append((relid, owner))
        # Grants are re-applied every time: new functions start executable by PUBLIC.
        # What this role may not do (create the group roles) comes back as warnings.
        def keep_warning(notice: psycopg.errors.Diagnostic) -> None:
            if notice.severity_nonlocalized == "WARNING" and (notice.message_primary or "").startswith("sidecar:"):
                hint = f" {notice.message_hint}" if notice.message_hint else ""
                report.warnings.append(f"{notice.message_primary}.{hint}")

        conn.add_notice_handler(keep_warning)
        try:
            conn.execute(resources.privileges())
        finally:
            conn.remove_notice_handler(keep_warning)
    if not dry_run:
        # History tables from before migration 025 become partitioned ones, each in short
        # transactions of its own so that capture writes on (sidecar/capture/partitioning.py).
        conversion = partitioning.convert_history(conn)
        report.partitioned = conversion.converted
        for table, steps in conversion.left:
            report.warnings.append(
                f"sidecar: history table {table} is not partitioned yet (its lock was not granted in time). "
                "Run sidecar install again at a quieter moment, or run these, one transaction each:"
                + "".join(f"\n  {statement}" for statement in steps))
        partitioning.partitions_ahead(conn)
    return report


def uninstall(conn: psycopg.Connection, *, keep_history: bool = False) -> list[str]:
    """Remove every trigger and function sidecar created, and the schema.

    With keep_history the tables of the sidecar schema stay (runs, history,
    events), so a later install picks them up again. Returns the tables whose
    triggers were removed.
    """
    if installed_version(conn) is None:
        raise SidecarError('sidecar is not installed in this database (no "sidecar" schema)')
    untracked = []
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))
        rows = conn.execute(
            "SELECT sidecar._qualname(relid) FROM sidecar.tracked WHERE active ORDER BY tracked_id"
        ).fetchall()
        for (relid,) in rows:
            conn.execute("SELECT sidecar.untrack(%s::regclass)", (relid,))
            untracked.append(relid)
        # First: they would fire on the DROPs below, calling what is gone.
        conn.execute("DROP EVENT TRIGGER IF EXISTS sidecar_watch_alter")
        conn.execute("DROP EVENT TRIGGER IF EXISTS sidecar_watch_drop")
        if keep_history:
            conn.execute(resources.query("drop_functions"))
            conn.execute("DELETE FROM sidecar.definitions")
            conn.execute("DELETE FROM sidecar.templates")
        else:
            conn.execute("DROP SCHEMA sidecar CASCADE")
    return untracked
