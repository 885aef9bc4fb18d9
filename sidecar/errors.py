"""Errors a user can hit, each naming the thing and the way out."""


class SidecarError(Exception):
    """A failure the CLI reports as one line, exiting 1 (nothing changed).

    shell: the way out as a command (`sidecar runs lists the runs`), which the CLI adds to
    the message and the console leaves out (it offers a link or a button instead).
    """

    exit_code = 1

    def __init__(self, message: str = "", *, shell: str | None = None):
        super().__init__(f"{message}; {shell}" if shell else message)
        self.message = message
        self.shell = shell


class UsageError(SidecarError):
    """Bad input: unknown run id, malformed --row, table not tracked... (exit 2)."""

    exit_code = 2
