"""The `sidecar` command: a thin layer over the library. Exit codes:
0 done; 1 failed and nothing changed; 2 usage or bad input; 3 undo done but
conflicting rows were skipped (each listed)."""

from __future__ import annotations

import functools
import sys
from datetime import datetime, timedelta, timezone

import click
import psycopg

from . import db, history, render, restore, runs, schema, tracking
from .errors import SidecarError, UsageError

EXIT_CONFLICTS = 3


def dsn_option(f):
    return click.option(
        "--dsn", envvar="SIDECAR_DSN", default=None, show_envvar=True,
        help="Database to work on (else DATABASE_URL, else libpq's PG* variables).",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout, for scripts.")(f)


def handles_errors(f):
    """Library errors become one clear line on stderr and their exit code."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except SidecarError as exc:
            click.echo(f"sidecar: {exc}", err=True)
            sys.exit(exc.exit_code)
        except psycopg.errors.UndefinedTable as exc:
            if "sidecar." in str(exc):
                click.echo("sidecar: sidecar is not installed in this database; run: sidecar install", err=True)
                sys.exit(1)
            click.echo(f"sidecar: {exc.diag.message_primary}", err=True)
            sys.exit(1)
        except psycopg.errors.InvalidSchemaName:
            click.echo("sidecar: sidecar is not installed in this database; run: sidecar install", err=True)
            sys.exit(1)
        except psycopg.Error as exc:
            message = exc.diag.message_primary or str(exc).strip()
            hint = f" ({exc.diag.message_hint})" if exc.diag.message_hint else ""
            click.echo(f"sidecar: {message.removeprefix('sidecar: ')}{hint}; nothing was changed", err=True)
            sys.exit(1)

    return wrapper


def _connect(dsn):
    return db.connect(dsn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rollback-sidecar")
def cli():
    """Capture, pause, undo and safely rerun the database writes of automations.

    Quick start on a throwaway database: sidecar demo
    """


@cli.command()
@dsn_option
@click.option("--dry-run", is_flag=True, help="Print the SQL that would run; change nothing.")
@handles_errors
def install(dsn, dry_run):
    """Create or upgrade the shadow schema (idempotent).

    Example: sidecar install --dsn postgresql://admin@db/app
    """
    with _connect(dsn) as conn:
        report = schema.install(conn, dry_run=dry_run)
    if dry_run:
        if not report.changed:
            click.echo("-- sidecar is up to date: nothing would run")
        for text in report.statements:
            click.echo(text)
        return
    if not report.changed:
        click.echo("sidecar is already installed and up to date: nothing changed.")
        return
    for name in report.migrations:
        click.echo(f"applied migration {name}")
    for name in report.functions:
        click.echo(f"applied functions {name}")
    for name in report.templates:
        click.echo(f"stored trigger template {name}")
    if report.shapes_watched:
        click.echo("created event triggers sidecar_watch_alter and sidecar_watch_drop: "
                   "ALTER TABLE on a tracked table updates its history columns at once")
    for table in report.rerendered:
        click.echo(f"re-rendered capture of {table}")
    click.echo("sidecar is installed.")


@cli.command()
@dsn_option
@click.option("--yes", is_flag=True, help="Confirm: remove every trigger and function sidecar created.")
@click.option("--keep-history", is_flag=True, help="Keep the captured history (runs, changes, events).")
@handles_errors
def uninstall(dsn, yes, keep_history):
    """Remove sidecar's triggers, functions and schema."""
    if not yes:
        raise UsageError("uninstall removes sidecar's triggers and schema; add --yes to confirm")
    with _connect(dsn) as conn:
        untracked = schema.uninstall(conn, keep_history=keep_history)
    for table in untracked:
        click.echo(f"removed capture triggers from {table}")
    click.echo("sidecar is uninstalled" + (" (history kept in schema sidecar)." if keep_history else "."))


@cli.command()
@dsn_option
@click.argument("tables", nargs=-1, required=True)
@click.option("--capture", type=click.Choice(["tagged", "all"]), default="tagged", show_default=True,
              help="tagged: only writes of runs; all: untagged writes too.")
@click.option("--label-column", help="Column that names a row for people, e.g. name.")
@click.option("--display-name", help="What people call a row of this table, e.g. ticket.")
@click.option("--owner", metavar="NAME", help="Inventory: the team or person who answers for this table.")
@click.option("--risk", type=click.Choice(["low", "medium", "high"]), help="Inventory: harm a bad write does.")
@click.option("--kind", type=click.Choice(["draft", "final"]), help="Inventory: drafts people review, or final records.")
@handles_errors
def track(dsn, tables, capture, label_column, display_name, owner, risk, kind):
    """Capture writes to TABLES (schema-qualified, '"Mixed Case"' quoted).

    Example: sidecar track tickets customers --label-column name
    Example: sidecar track invoices --owner billing-team --risk high --kind final
    """
    inventory = ", ".join(f"{k} {v}" for k, v in (("owner", owner), ("risk", risk), ("kind", kind)) if v)
    with _connect(dsn) as conn:
        for table in tables:
            t = tracking.track(conn, table, capture=capture, label_column=label_column, display_name=display_name,
                               owner=owner, risk=risk, kind=kind)
            click.echo(f"tracking {t.table} (capture {t.capture}, key {', '.join(t.pk_columns)}"
                       + (f"; {inventory}" if inventory else "") + ")")


@cli.command()
@dsn_option
@click.argument("tables", nargs=-1, required=True)
@handles_errors
def untrack(dsn, tables):
    """Stop capturing TABLES; their history is kept."""
    with _connect(dsn) as conn:
        for table in tables:
            tracking.untrack(conn, table)
            click.echo(f"stopped tracking {table} (history kept)")


def _parse_since(value: str | None) -> datetime | None:
    if not value:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if value[:-1].isdigit() and value[-1] in units:
        return datetime.now(timezone.utc) - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--since {value!r} is not a time; use e.g. 2h, 3d or 2026-11-01T09:00") from None
    return parsed if parsed.tzinfo else parsed.astimezone()


@cli.command("runs")
@dsn_option
@click.option("--automation", help="Only runs of this automation.")
@click.option("--since", help="Only runs started since: 30m, 2h, 3d, or an ISO time.")
@click.option("--limit", default=50, show_default=True)
@json_option
@handles_errors
def runs_cmd(dsn, automation, since, limit, as_json):
    """List runs, newest first, with rows changed per table."""
    since_at = _parse_since(since)
    with _connect(dsn) as conn:
        found = runs.list_runs(conn, automation=automation, since=since_at, limit=limit)
    click.echo(render.dumps({"runs": found}) if as_json else render.runs_table(found))


@cli.command()
@dsn_option
@click.argument("run_id")
@click.option("--limit", default=200, show_default=True, help="Changes shown per action.")
@click.option("--actions", "actions_max", default=100, show_default=True, type=click.IntRange(min=0),
              help="Actions shown, the first ones (0: all).")
@json_option
@handles_errors
def show(dsn, run_id, limit, actions_max, as_json):
    """A run's actions and changes in plain language."""
    with _connect(dsn) as conn:
        info = runs.get(conn, run_id)
        actions, more_actions = history.changes_by_action(conn, info.run_id, limit=limit,
                                                          actions=actions_max or None)
        events = conn.execute(
            "SELECT at, actor, summary FROM sidecar.events WHERE run_id = %s ORDER BY at", (info.run_id,)
        ).fetchall()
    if as_json:
        click.echo(render.dumps({
            "run": info,
            "actions": [{"key": k, "changes": [dict(render.to_jsonable(c), text=render.describe.change_line(c))
                                               for c in ch], "more": m} for k, ch, m in actions],
            "more_actions": more_actions,
            "events": [{"at": a, "actor": b, "summary": s} for a, b, s in events],
        }))
    else:
        click.echo(render.show_run(info, actions, events, more_actions))


@cli.command()
@dsn_option
@click.argument("run_id")
@click.option("--action", "actions", multiple=True, metavar="KEY", help="Undo only this action (repeatable).")
@click.option("--row", "rows", multiple=True, metavar="TABLE:PK",
              help='Undo only this row (repeatable): tickets:42, order_items:{"order_id":1,"line":2}.')
@click.option("--preview", is_flag=True, help="Change nothing; list each row to restore and each conflict.")
@click.option("--sql", "as_sql", is_flag=True, help="Print the restore SQL that would run; change nothing.")
@click.option("--force", is_flag=True, help="Restore conflicting rows too (overwrites later edits).")
@click.option("--cascade", is_flag=True,
              help="First undo the later runs that wrote the same rows, newest first, in the same transaction.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--reason", help="Why, for the event trail.")
@click.option("--lock-timeout", default="30s", show_default=True, help="How long to wait for the locks of the rows (or table) to restore.")
@json_option
@handles_errors
def undo(dsn, run_id, actions, rows, preview, as_sql, force, cascade, yes, reason, lock_timeout, as_json):
    """Restore the rows RUN_ID changed to how they were before it.

    RUN_ID is a full run id or a unique prefix of 6+ characters.
    Exit 3 when conflicting rows (changed since by someone else) were skipped.

    Example: sidecar undo 3f2a9c --preview
    """
    with _connect(dsn) as conn:
        scope = restore.make_scope(conn, run_id, actions, rows)
        if cascade and (actions or rows):
            raise UsageError("--cascade undoes whole runs; leave out --action and --row")
        if preview or as_sql or not yes:
            with conn.transaction(force_rollback=True):
                first = []
                if cascade:
                    # The later runs are undone for real inside this rolled-back
                    # transaction, so the preview below shows what would be left.
                    from .cascade import undo_later_runs

                    first = undo_later_runs(conn, scope.run_id, force=force)
                planner, planned = restore.preview(conn, scope, force=force)
                if as_sql:
                    from .restore_sql import script

                    for chunk in script(conn, planner):
                        click.echo(chunk, nl=False)
                    return
                text = "".join(f"First, a later run that wrote the same rows:\n{render.undo_result(r, would=True)}\n"
                               for r in first) + render.preview(planner, planned)
            if preview:
                click.echo(render.dumps({"preview": planned}) if as_json else text)
                return
            click.echo(text)
            if not sys.stdin.isatty():
                raise UsageError("not undoing without confirmation; add --yes (or --preview to only look)")
            if not click.confirm("Undo these changes?", default=False):
                click.echo("Nothing was changed.")
                return
        if cascade:
            from .cascade import undo_cascade

            results = undo_cascade(conn, scope, force=force, reason=reason, lock_timeout=lock_timeout)
        else:
            results = [restore.undo(conn, scope, force=force, reason=reason, lock_timeout=lock_timeout,
                                    progress=_progress_line())]
    if as_json:
        click.echo(render.dumps({"undo": results[-1], "cascade": results[:-1]}))
    else:
        click.echo("\n".join(render.undo_result(r) for r in results))
    if any(sum(t.get("conflict", 0) for t in r.tables.values()) for r in results):
        sys.exit(EXIT_CONFLICTS)


def _progress_line():
    """On a terminal, each step of a long undo as it starts, with the time since the first."""
    if not sys.stderr.isatty():
        return None
    started = datetime.now()

    def say(step: str) -> None:
        click.echo(f"  [{(datetime.now() - started).total_seconds():6.1f}s] {step}…", err=True)

    return say


@cli.command()
@dsn_option
@json_option
@handles_errors
def status(dsn, as_json):
    """Tracked tables, automations and their pause state, recent runs."""
    from .status import gather

    with _connect(dsn) as conn:
        report = gather(conn)
    click.echo(render.dumps(report) if as_json else report.text())


@cli.command()
@dsn_option
@click.argument("automation", required=False)
@click.option("--table", help="Pause every automation's writes to this table instead.")
@click.option("--reason", required=True, help="Why: people read it in the error the automation gets.")
@handles_errors
def pause(dsn, automation, table, reason):
    """Pause AUTOMATION ('*' pauses every automation), or --table TABLE.

    Example: sidecar pause ticket-bot --reason "matching wrong customers"
    """
    from . import gate

    if bool(automation) == bool(table):
        raise UsageError("name one automation ('*' for all) or --table TABLE")
    with _connect(dsn) as conn:
        click.echo(gate.pause(conn, automation=automation, table=table, reason=reason))


@cli.command()
@dsn_option
@click.argument("automation", required=False)
@click.option("--table", help="Resume automations' writes to this table.")
@handles_errors
def resume(dsn, automation, table):
    """Resume AUTOMATION ('*' lifts the pause of every automation), or --table TABLE."""
    from . import gate

    if bool(automation) == bool(table):
        raise UsageError("name one automation ('*' for all) or --table TABLE")
    with _connect(dsn) as conn:
        click.echo(gate.resume(conn, automation=automation, table=table))


@cli.command()
@dsn_option
@click.argument("run_id")
@click.option("--step", "steps", multiple=True, metavar="KEY", help="Redo only this step (repeatable).")
@click.option("--force", is_flag=True, help="Also redo steps whose rows a person changed since; rerun a live run.")
@click.option("--reason", help="Why, for the rerun log.")
@click.option("--exec", "command", metavar="COMMAND",
              help="Run the automation's command with SIDECAR_RUN_ID, SIDECAR_RERUN_OF and SIDECAR_STEPS set.")
@json_option
@handles_errors
def rerun(dsn, run_id, steps, force, reason, command, as_json):
    """Open a rerun of RUN_ID that redoes only the steps not done.

    Example: sidecar rerun 3f2a9c --exec "python bot.py"
    """
    from . import rerun as rerun_mod

    with _connect(dsn) as conn:
        report = rerun_mod.rerun(conn, run_id, steps=list(steps), force=force, reason=reason)
        if as_json:
            click.echo(render.dumps({"rerun": report}))
        else:
            click.echo(f"Run {report.original} ({report.automation}):")
            for s in report.steps:
                click.echo(f"  {s.state:<13} {s.key}" + (f"  ({s.detail})" if s.detail else ""))
            for key, why in report.blocked:
                click.echo(f"  Step {key} skipped: {why}")
            click.echo(f"Rerun {report.rerun_id}: " + (", ".join(report.redo) if report.redo else "nothing to redo"))
            if not command:
                click.echo(f"Attach the automation with: SET sidecar.run_id = '{report.rerun_id}'")
        if command:
            code = rerun_mod.execute(conn, report, command)
            if code:
                raise SidecarError(f"the automation's command exited {code}; the rerun is recorded as failed")


@cli.command()
@dsn_option
@click.option("--before", required=True, help="Purge runs started before this time: 90d, 2026-01-01, ...")
@click.option("--automation", help="Only runs of this automation.")
@click.option("--yes", is_flag=True, help="Confirm: captured history of these runs is removed for good.")
@handles_errors
def purge(dsn, before, automation, yes):
    """Remove old captured history (runs and events stay, marked purged).

    Runs still running, with held items, or being undone are kept.
    Example: sidecar purge --before 90d --yes
    """
    from . import retention

    cutoff = _parse_since(before)
    if not yes:
        raise UsageError("purge removes captured history for good; add --yes to confirm")
    with _connect(dsn) as conn:
        with click.progressbar(length=1, label="purging", file=sys.stderr) as bar:
            def progress(done, total):
                bar.length = total
                bar.update(1)

            report = retention.purge(conn, cutoff, automation=automation, progress=progress)
    click.echo(report.text())


@cli.command()
@click.option("--keep", is_flag=True, help="Leave the throwaway server running and print its DSN.")
@handles_errors
def demo(keep):
    """The seed scenario on a throwaway PostgreSQL this command starts itself."""
    from .demo import run_demo

    run_demo(echo=click.echo, keep=keep)


from .cli_review import register as _register_review  # noqa: E402
_register_review(cli)


from .console.cli import register as _register_console  # noqa: E402

_register_console(cli)


from .cli_inventory import register as _register_inventory  # noqa: E402

_register_inventory(cli)


def main() -> None:
    cli(prog_name="sidecar")


if __name__ == "__main__":
    main()
