"""sidecar: capture, pause, undo and rerun the database writes of automations.

    import sidecar
    with sidecar.Run(conn, "ticket-bot", meta={"prompt": "v3"}) as run:
        with run.step("note:ticket-42") as step:
            if not step.skip:
                conn.execute("INSERT INTO billing_notes ...")

`sidecar.AsyncRun` is the same for psycopg's AsyncConnection (`async with`).
"""

from . import errors
from .agents.asyncrun import AsyncRun
from .errors import Held, NotARun, Paused, RunFinished, StepConflict
from .steps.context import row
from .steps.runs import Run

__version__ = "0.1.0"
__all__ = [
    "AsyncRun", "Held", "NotARun", "Paused", "Run", "RunFinished", "StepConflict",
    "__version__", "errors", "row",
]
