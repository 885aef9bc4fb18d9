"""The SQL shipped inside the package: migrations, function files and trigger templates."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files

_MIGRATION = re.compile(r"^(\d{3})_(\w+)\.sql$")
_FUNCTIONS = re.compile(r"^fn_(\w+)\.sql$")


@dataclass(frozen=True)
class SqlFile:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _read(package: str, pattern: re.Pattern[str]) -> list[SqlFile]:
    found = [
        SqlFile(entry.name, entry.read_text(encoding="utf-8"))
        for entry in files(package).iterdir()
        if pattern.match(entry.name)
    ]
    return sorted(found, key=lambda f: f.name)


def migrations() -> list[tuple[int, SqlFile]]:
    """Versioned schema migrations (sql/NNN_name.sql), in order."""
    return [(int(_MIGRATION.match(f.name).group(1)), f) for f in _read("sidecar.sql", _MIGRATION)]


def function_files() -> list[SqlFile]:
    """Function definitions (sql/fn_*.sql): CREATE OR REPLACE, re-applied when changed."""
    return _read("sidecar.sql", _FUNCTIONS)


def privileges() -> str:
    """Roles and grants (sql/privileges.sql), re-applied at the end of every install."""
    return (files("sidecar.sql") / "privileges.sql").read_text(encoding="utf-8")


def templates() -> dict[str, str]:
    """Trigger function templates (triggers/NAME.sql), by NAME."""
    return {f.name.removesuffix(".sql"): f.text for f in _read("sidecar.triggers", re.compile(r"^\w+\.sql$"))}


def query(name: str) -> str:
    """A named read-only query from sidecar/queries/NAME.sql."""
    return (files("sidecar") / "queries" / f"{name}.sql").read_text(encoding="utf-8")
