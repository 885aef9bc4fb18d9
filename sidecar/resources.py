"""The SQL shipped inside the package: migrations, function files and trigger templates."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

_MIGRATION = re.compile(r"^(\d{3})_(\w+)\.sql$")
_FUNCTIONS = re.compile(r"^fn_(\w+)\.sql$")


@dataclass(frozen=True)
class SqlFile:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _read(folder: Traversable, pattern: re.Pattern[str]) -> list[SqlFile]:
    found = [
        SqlFile(entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if pattern.match(entry.name)
    ]
    return sorted(found, key=lambda f: f.name)


def migrations() -> list[tuple[int, SqlFile]]:
    """Versioned schema migrations (sql/migrations/NNN_name.sql), in order; each is applied once."""
    found = _read(files("sidecar.sql") / "migrations", _MIGRATION)
    return [(int(_MIGRATION.match(f.name).group(1)), f) for f in found]


def function_files() -> list[SqlFile]:
    """Function definitions (sql/functions/fn_*.sql): CREATE OR REPLACE, re-applied when changed.

    Recorded in sidecar.definitions by file name alone, so moving the folder changes nothing installed.
    """
    return _read(files("sidecar.sql") / "functions", _FUNCTIONS)


def privileges() -> str:
    """Roles and grants (sql/functions/privileges.sql), re-applied at the end of every install."""
    return (files("sidecar.sql") / "functions" / "privileges.sql").read_text(encoding="utf-8")


def templates() -> dict[str, str]:
    """Trigger function templates (triggers/NAME.sql), by NAME."""
    return {f.name.removesuffix(".sql"): f.text for f in _read(files("sidecar.triggers"), re.compile(r"^\w+\.sql$"))}


def query(name: str) -> str:
    """A named read-only query from sidecar/queries/NAME.sql."""
    return (files("sidecar") / "queries" / f"{name}.sql").read_text(encoding="utf-8")
