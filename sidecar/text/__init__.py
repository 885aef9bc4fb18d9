"""Plain language: how changes, runs and conflicts read for people (describe), and the
text and JSON renderings of library results that the CLI prints (render)."""

from .describe import plural, row_label, table_name
from .render import dumps, to_jsonable

__all__ = ["dumps", "plural", "row_label", "table_name", "to_jsonable"]
