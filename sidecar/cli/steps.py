"""`sidecar steps` and `sidecar rerun`: a run's steps, and redoing only the steps not done."""

from __future__ import annotations

import click

from ..errors import SidecarError
from ..steps import rerun as rerun_mod
from ..text import render
from ._common import connect, dsn_option, handles_errors, json_option


def _step_lines(states) -> list[str]:
    return [f"  {s.state:<13} {s.key}" + (f"  ({s.detail})" if s.detail else "") for s in states]


@click.command("steps")
@dsn_option
@click.argument("run_id")
@json_option
@handles_errors
def steps_cmd(dsn, run_id, as_json):
    """Each step of RUN_ID's lineage: completed, failed, blocked, never started. Opens nothing.

    Example: sidecar steps 3f2a9c
    """
    with connect(dsn) as conn:
        info, states = rerun_mod.steps_of(conn, run_id)
    if as_json:
        click.echo(render.dumps({"run": info.run_id, "state": info.state, "steps": states}))
        return
    click.echo(f"Run {info.run_id} ({info.automation}, {info.state}):")
    click.echo("\n".join(_step_lines(states)) if states else "  no steps recorded")
    left = [s for s in states if s.state != "completed"]
    if left:
        click.echo(f"{len(left)} not done: sidecar rerun {str(info.run_id)[:8]} redoes them")


@click.command()
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
    with connect(dsn) as conn:
        report = rerun_mod.rerun(conn, run_id, steps=list(steps), force=force, reason=reason)
        if as_json:
            click.echo(render.dumps({"rerun": report}))
        else:
            click.echo(f"Run {report.original} ({report.automation}):")
            click.echo("\n".join(_step_lines(report.steps)))
            for key, why in report.blocked:
                click.echo(f"  Step {key} skipped: {why}")
            if report.rerun_id is None:
                click.echo("Nothing left to redo: no rerun opened.")
            else:
                click.echo(f"Rerun {report.rerun_id}: " + ", ".join(report.redo))
                if not command:
                    click.echo(f"Attach the automation with: SET sidecar.run_id = '{report.rerun_id}'")
        if command and report.rerun_id is not None:
            code = rerun_mod.execute(conn, report, command)
            if code:
                raise SidecarError(f"the automation's command exited {code}; the rerun is recorded as failed")
