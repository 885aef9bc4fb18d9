"""Runs and steps: the automation's side.

`Run` tags a connection's writes with a run (and actions, and idempotent steps,
in `_step`); runs reads runs back (resolve a run id or prefix, list, count) and
names their states (`state_word`); own_run is what an automation may ask about
its own run (held writes, pauses); rerun lists a run's steps and opens a rerun
that redoes only the steps not done.
"""

from .rerun import RerunReport, StepState, step_states
from .own_run import HeldWrite, Pause
from .runs import STATES, Run, RunInfo, Step, count_runs, get, list_runs, resolve, state_word

# rerun.rerun() is reached through its module, whose name it shares.
__all__ = ["STATES", "HeldWrite", "Pause", "RerunReport", "Run", "RunInfo", "Step", "StepState", "count_runs", "get",
           "list_runs", "resolve", "state_word", "step_states"]
