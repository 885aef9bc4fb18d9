"""sidecar: capture, pause, undo and rerun the database writes of automations."""

__version__ = "0.1.0"
