"""The mutation check: plant each deliberate bug of tests/mutation/mutations.py in a scratch copy of
the repository, run the tests that must catch it, and print which bugs survived.

    python -m tests.mutation.run                 # every mutation (about 20 minutes on 2 cores)
    python -m tests.mutation.run --area pause    # one area: pause, hold, capture, steps, conflict,
                                                 # purge, privileges
    python -m tests.mutation.run --list          # what would be planted, and where
    python -m tests.mutation.run -k "pause '*'"  # mutations whose name contains this text

The working tree is never changed: the files git tracks (as they are now, edits included) are
copied to a temporary directory, and a small virtualenv there reuses this environment's installed
packages but imports sidecar from the copy. Exit status: 0 when every mutation was caught, 1 when
one survived (or its text is no longer in the file: the list needs updating), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from tests.mutation.mutations import MUTATIONS, Mutation

ROOT = Path(__file__).resolve().parents[2]
TEST_TIMEOUT = 900  # seconds for one mutation's tests
NO_TESTS, USAGE_ERROR = 5, 4  # pytest's exit codes when nothing ran


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


def make_copy(where: Path) -> Path:
    """The repository's tracked files, as they are in the working tree, under where/repo."""
    repo = where / "repo"
    for name in _tracked_files():
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree
            continue
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    # The wheel maps sidecar.sql and sidecar.triggers to sql/ and triggers/: the same, by symlink.
    for package, folder in (("sql", "sql"), ("triggers", "triggers")):
        (repo / "sidecar" / package).symlink_to(Path("..") / folder, target_is_directory=True)
    return repo


def make_venv(where: Path, repo: Path) -> Path:
    """A virtualenv that sees this one's packages (not its editable sidecar) and the copy's sidecar."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Lines of a .pth file are added to sys.path without running the .pth files found there,
    # so this environment's editable install of sidecar (a .pth hook) does not come along.
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "sidecar_mutation.pth").write_text("\n".join([str(repo), *sorted(ours)]) + "\n")
    found = subprocess.run([str(python), "-c", "import sidecar.resources as r; print(r.__file__); "
                            "print(r.files('sidecar.sql'))"],
                           cwd=repo, capture_output=True, text=True)
    if found.returncode != 0 or not all(line.startswith(str(repo)) for line in found.stdout.split()):
        raise SystemExit(f"mutation check: the scratch copy does not import its own sidecar:\n"
                         f"{found.stdout}{found.stderr}")
    return python


def _apply(repo: Path, m: Mutation) -> str | None:
    """Plant the mutation; the original text of the file to put back, or None when its text is gone."""
    path = repo / m.file
    text = path.read_text()
    count = text.count(m.old)
    if count == 0 or m.nth > count:
        return None
    if m.nth == 0:
        mutated = text.replace(m.old, m.new)
    else:
        at = -1
        for _ in range(m.nth):
            at = text.index(m.old, at + 1)
        mutated = text[:at] + m.new + text[at + len(m.old):]
    path.write_text(mutated)
    return text


def _run_tests(python: Path, repo: Path, tests: tuple[str, ...]) -> tuple[bool | None, str]:
    """(passed, the tail of pytest's output); passed is None when no test ran."""
    cmd = [str(python), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", *tests]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=TEST_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {TEST_TIMEOUT} s (counted as caught: the tests did not pass)"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode in (NO_TESTS, USAGE_ERROR):  # nothing ran: nothing can be caught either
        return None, f"pytest exit {proc.returncode}, no test ran: " + "\n".join(lines[-3:])
    return proc.returncode == 0, "\n".join(lines[-3:])


def check(mutations: list[Mutation], baseline: bool, out=functools.partial(print, flush=True)) -> list[tuple[Mutation, str]]:
    """Run the check; returns the mutations not caught, each with what happened."""
    survived: list[tuple[Mutation, str]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sidecar-mutation-") as tmp:
        repo = make_copy(Path(tmp))
        python = make_venv(Path(tmp), repo)
        if baseline:
            selections = sorted({m.tests for m in mutations})
            for tests in selections:
                passed, tail = _run_tests(python, repo, tests)
                if passed is not True:
                    raise SystemExit(f"mutation check: the tests fail without any mutation: {' '.join(tests)}\n"
                                     f"{tail}")
            out(f"baseline: {len(selections)} test selections pass unmutated "
                f"({time.monotonic() - started:.0f} s)")
        for i, m in enumerate(mutations, 1):
            t0 = time.monotonic()
            original = _apply(repo, m)
            if original is None:
                survived.append((m, f"its text is no longer in {m.file}: update tests/mutation/mutations.py"))
                out(f"[{i}/{len(mutations)}] GONE      {m.area}: {m.name}")
                continue
            try:
                passed, tail = _run_tests(python, repo, m.tests)
            finally:
                (repo / m.file).write_text(original)
            verdict = "caught" if passed is False else "SURVIVED"
            if passed is not False:
                survived.append((m, f"{' '.join(m.tests)} passed with it ({tail.splitlines()[-1] if tail else ''})"))
            out(f"[{i}/{len(mutations)}] {verdict:<9} {m.area}: {m.name} ({time.monotonic() - t0:.0f} s)")
    out("")
    out(f"{len(mutations) - len(survived)} of {len(mutations)} mutations caught, {len(survived)} survived, "
        f"in {time.monotonic() - started:.0f} s")
    for m, why in survived:
        out(f"  survived: {m.area}: {m.name} ({m.file}): {why}")
    return survived


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--area", action="append", help="only this area (repeatable)")
    parser.add_argument("-k", dest="name", help="only mutations whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the first run of each test selection without mutations")
    args = parser.parse_args(argv)
    areas = sorted({m.area for m in MUTATIONS})
    if args.area and not set(args.area) <= set(areas):
        parser.error(f"unknown area {sorted(set(args.area) - set(areas))}; the areas are {', '.join(areas)}")
    chosen = [m for m in MUTATIONS if (not args.area or m.area in args.area)
              and (not args.name or args.name.lower() in m.name.lower())]
    if not chosen:
        parser.error("no mutation matches")
    if args.list:
        for m in chosen:
            where = f"{m.file}" + (f" (occurrence {m.nth})" if m.nth else "")
            print(f"{m.area:<10} {m.name}\n           {where}; tests: {' '.join(m.tests)}")
        return 0
    survived = check(chosen, baseline=not args.no_baseline)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
