"""Errors a user can hit, each naming the thing and the way out."""


class SidecarError(Exception):
    """A failure the CLI reports as one line, exiting 1 (nothing changed)."""

    exit_code = 1


class UsageError(SidecarError):
    """Bad input: unknown run id, malformed --row, table not tracked... (exit 2)."""

    exit_code = 2
