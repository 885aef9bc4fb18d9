"""Review: what stops or holds an automation's writes, and the people's decisions.

gate pauses and resumes automations or tables (the capture triggers refuse a paused
automation's writes); held lists held writes (the queue) and approves or rejects them; rules
defines the hold rules compiled into each table's hold trigger (import
`sidecar.review.rules` where needed: it loads sqlglot, which the rest does without).
"""

from .gate import Pause, pause, pauses, resume
from .held import Decision, HeldChange, approve, queue, reject

__all__ = ["Decision", "HeldChange", "Pause", "approve", "pause", "pauses", "queue", "reject", "resume"]
