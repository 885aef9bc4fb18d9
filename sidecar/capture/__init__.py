"""Capture: the shadow schema and what it records.

Installing and upgrading the schema (schema), choosing the tables whose writes are
captured (tracking), and reading captured history back (history), after settling
row-mode statements (settle). The capture triggers themselves are SQL:
triggers/capture.sql and triggers/capture_row.sql, rendered per table in the database.
"""

from .history import (
    Change,
    TableInfo,
    changes,
    changes_by_action,
    row_counts,
    tables_of_run,
)
from .schema import InstallReport, install, installed_version, uninstall
from .tracking import (
    TrackedTable,
    get,
    list_tracked,
    regclass,
    track,
    untrack,
    untracked_followers,
)

__all__ = [
    "Change", "InstallReport", "TableInfo", "TrackedTable", "changes", "changes_by_action", "get", "install",
    "installed_version", "list_tracked", "regclass", "row_counts", "tables_of_run", "track", "uninstall",
    "untrack", "untracked_followers",
]
