"""E-Maj side by side (`--emaj PATH`): the same writes logged by E-Maj in the same cluster.

E-Maj (github:dalibo/emaj, GPL) logs every write of the tables of a "table group" with
PL/pgSQL row triggers, and rolls a group back to a mark. The suite ships and commits no
part of it: PATH is E-Maj's own psql install script (`sql/emaj-devel.sql` of its
repository, or `emaj--<version>.sql` of a release), run here with psql. Legs:
  W1  emaj         the same bulk write, its table in a started group (mark before the write),
                   then `emaj_rollback_group` to that mark (W3)
      emaj-logged  the same, then `emaj_logged_rollback_group` (a rollback that can itself
                   be rolled back: the counterpart of sidecar's undo, which is a run)
  W2  emaj         pgbench with the four tables in a started group
Each leg creates, starts, stops and drops its group, so no leg sees another's log.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import conninfo

GROUP = "sidecar_bench"
MARK = "before"


def find_psql(bindir: Path | None, pgbench: str | None) -> str:
    """psql next to the server binaries (or pgbench), else from PATH."""
    for d in [bindir, Path(pgbench).parent if pgbench else None]:
        if d and (d / "psql").is_file():
            return str(d / "psql")
    found = shutil.which("psql")
    if not found:
        raise RuntimeError("psql not found: --emaj installs E-Maj with its own psql script")
    return found


def install(dsn: str, script: Path, psql: str) -> str:
    """Run E-Maj's install script in the bench database; return E-Maj's version."""
    params = conninfo.conninfo_to_dict(dsn)
    env = {"PATH": "/usr/bin:/bin"}
    if params.get("password"):
        env["PGPASSWORD"] = str(params.pop("password"))
    proc = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script),
                           conninfo.make_conninfo("", **params)],
                          env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"E-Maj's install script {script} failed:\n{proc.stderr.strip()[-1500:]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT emaj.emaj_get_version()").fetchone()
    return row[0] if row else "?"


def start(conn: psycopg.Connection, tables: list[str]) -> None:
    """A rollbackable group of these (public) tables, logging since mark MARK."""
    conn.execute("SELECT emaj.emaj_create_group(%s, true)", (GROUP,))
    for t in tables:
        conn.execute("SELECT emaj.emaj_assign_table('public', %s, %s)", (t, GROUP))
    conn.execute("SELECT emaj.emaj_start_group(%s, %s)", (GROUP, MARK))


def rollback_sql(logged: bool) -> str:
    """The rollback of the group to MARK, as one statement."""
    func = "emaj_logged_rollback_group" if logged else "emaj_rollback_group"
    return f"SELECT * FROM emaj.{func}('{GROUP}', '{MARK}')"


def stop(conn: psycopg.Connection) -> None:
    """Stop and drop the group, if there is one (its log tables go with it)."""
    if conn.execute("SELECT EXISTS (SELECT FROM emaj.emaj_group WHERE group_name = %s)", (GROUP,)).fetchone()[0]:
        conn.execute("SELECT emaj.emaj_stop_group(%s, NULL, false, true)", (GROUP,))
        conn.execute("SELECT emaj.emaj_drop_group(%s)", (GROUP,))
