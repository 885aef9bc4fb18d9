"""sidecar: capture, pause, undo and rerun the database writes of automations.

    import sidecar
    with sidecar.Run(conn, "ticket-bot", meta={"prompt": "v3"}) as run:
        with run.step("note:ticket-42") as step:
            if not step.skip:
                conn.execute("INSERT INTO billing_notes ...")

`sidecar.AsyncRun` is the same for psycopg's AsyncConnection (`async with`).
`Run`, `AsyncRun` and `row` are imported on first use, so that the `sidecar`
command (an undo, say) does not load the automations' side.
"""

from . import errors
from .errors import Held, NotARun, Paused, RunFinished, StepConflict

__version__ = "0.1.0"
__all__ = [
    "AsyncRun", "Held", "NotARun", "Paused", "Run", "RunFinished", "StepConflict",
    "__version__", "errors", "row",
]


def __getattr__(name: str):
    if name == "Run":
        from .steps.runs import Run

        return Run
    if name == "AsyncRun":
        from .agents.asyncrun import AsyncRun

        return AsyncRun
    if name == "row":
        from .steps.context import row

        return row
    raise AttributeError(f"module 'sidecar' has no attribute {name!r}")
