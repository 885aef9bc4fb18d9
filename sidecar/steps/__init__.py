"""Runs and steps: the automation's side.

`Run` tags a connection's writes with a run (and actions, and idempotent steps);
runs reads runs back (resolve a run id or prefix, list, count); rerun opens a rerun
that redoes only the steps not done.
"""

from .rerun import RerunReport, StepState, step_states
from .runs import Run, RunInfo, Step, count_runs, get, list_runs, resolve

# rerun.rerun() is reached through its module, whose name it shares.
__all__ = ["RerunReport", "Run", "RunInfo", "Step", "StepState", "count_runs", "get", "list_runs", "resolve",
           "step_states"]
