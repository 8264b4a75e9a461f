"""The mutation check: break each guard that matters on purpose and require a test to fail.

Every ``mutants.yaml`` in the repository (kept next to the code it mutates) lists named
mutants: in ``file`` (relative to the list's folder), the text ``from`` (found exactly
once) becomes ``to``; at least one of ``tests`` (pytest node ids, fastest first) must
then fail (``timeout``: seconds each may take, for a mutant that makes one hang). For
each mutant this prints "killed by <test>" or "SURVIVED"; it exits 1 if any survives,
or if a ``from`` no longer matches its file exactly once (a refactor that moved a guard
must update its mutant).

Mutants are applied in place, one at a time, and always restored: on success, failure,
Ctrl-C or SIGTERM. The original text is first written to a journal, so even a killed
run is undone by the next one (which says so).

    scripts/mutants                 every mutant
    scripts/mutants NAME...         these (shell-style patterns: 'fw-*')
    scripts/mutants --list          names, files and tests; nothing run
    scripts/mutants --check         only that every list parses and every pattern matches
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]  # --root changes it (the tool's own tests)
LIST_NAME = "mutants.yaml"
JOURNAL_NAME = ".mutants-journal.json"  # the original text while a mutant is applied
LOCK_NAME = ".mutants.lock"  # held by the run that applies mutants
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist"}
TIMEOUT_S = 300  # one mutant's tests; a hang counts as a kill, reported as such
STOP_WAIT_S = 15  # an interrupted pytest's teardown (namespaces, agents), then SIGKILL
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class ListError(ValueError):
    """A mutant list that does not parse, or a mutant that no longer applies."""


@dataclass(frozen=True)
class Mutant:
    name: str
    path: Path  # the file mutated
    find: str
    replace: str
    tests: tuple[str, ...]
    source: Path  # the list it comes from
    timeout: int | None = None  # seconds a test may take (a mutant that makes it hang)

    def where(self) -> str:
        return f"{self.source.relative_to(REPO)}: {self.name}"


def find_lists() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        if LIST_NAME in files:
            found.append(Path(folder) / LIST_NAME)
    return found


def load(source: Path) -> list[Mutant]:
    """The mutants of one list; :class:`ListError` naming the list and entry."""
    where = source.relative_to(REPO)
    try:
        entries = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise ListError(f"{where}: not YAML: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise ListError(f"{where}: must be a non-empty list of mutants")
    mutants = []
    for index, entry in enumerate(entries):
        label = f"{where}: entry {index + 1}"
        if not isinstance(entry, dict):
            raise ListError(f"{label}: not a mapping")
        unknown = set(entry) - {"name", "file", "from", "to", "tests", "why", "timeout"}
        missing = {"name", "file", "from", "to", "tests"} - set(entry)
        if unknown or missing:
            raise ListError(f"{label}: unknown keys {sorted(unknown)}, missing {sorted(missing)}")
        name, tests = entry["name"], entry["tests"]
        if not isinstance(name, str) or not NAME.match(name):
            raise ListError(f"{label}: name must be lower-case words joined by '-'")
        if not (isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests)):
            raise ListError(f"{label} ({name}): tests must be a non-empty list of node ids")
        if not all(isinstance(entry[k], str) for k in ("file", "from", "to")):
            raise ListError(f"{label} ({name}): file, from and to must be strings")
        timeout = entry.get("timeout")
        if timeout is not None and not (isinstance(timeout, int) and timeout > 0):
            raise ListError(f"{label} ({name}): timeout must be a positive whole number")
        if entry["from"] == entry["to"]:
            raise ListError(f"{label} ({name}): from and to are the same")
        path = (source.parent / entry["file"]).resolve()
        if not path.is_relative_to(REPO) or not path.is_file():
            raise ListError(f"{label} ({name}): no file {entry['file']}")
        mutants.append(
            Mutant(name, path, entry["from"], entry["to"], tuple(tests), source, timeout)
        )
    return mutants


def load_all(lists: list[Path]) -> tuple[list[Mutant], list[str]]:
    """Every mutant, and every problem: unparsable lists, duplicate names, and patterns
    that do not occur exactly once in their file."""
    mutants, problems, seen = [], [], set()
    for source in lists:
        try:
            mutants += load(source)
        except ListError as exc:
            problems.append(str(exc))
    for mutant in mutants:
        if mutant.name in seen:
            problems.append(f"{mutant.where()}: the name is used twice")
        seen.add(mutant.name)
        count = mutant.path.read_text().count(mutant.find)
        if count != 1:
            what = "no longer matches" if count == 0 else f"matches {count} times in"
            problems.append(
                f"{mutant.where()}: pattern {what} {mutant.path.relative_to(REPO)}: "
                "update the mutant with the guard"
            )
    return mutants, problems


def restore_journal() -> bool:
    """Undo a mutant a killed run left applied; True if there was one."""
    journal = REPO / JOURNAL_NAME
    if not journal.exists():
        return False
    entry = json.loads(journal.read_text())
    path = Path(entry["path"])
    path.write_text(entry["text"])
    os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]))
    journal.unlink()
    print(f"restored {path.relative_to(REPO)} (a mutant from an interrupted run)")
    return True


def take_lock() -> object | None:
    """The lock file, held (until exit); None if another run holds it."""
    handle = (REPO / LOCK_NAME).open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt a pytest run still going (its fixtures tear down: namespaces, agents),
    then kill what is left of its process group."""
    if proc.poll() is not None:
        return  # it finished by itself
    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_WAIT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what the interrupted run left behind
    proc.wait()


def run_one(mutant: Mutant, pytest_args: list[str]) -> tuple[str, str, float]:
    """Apply, run the mutant's tests, restore. Returns (verdict, detail, seconds)."""
    original = mutant.path.read_text()
    mtime = mutant.path.stat().st_mtime_ns
    journal = REPO / JOURNAL_NAME
    journal.write_text(json.dumps({"path": str(mutant.path), "text": original,
                                   "mtime_ns": mtime}))  # fmt: skip
    started = time.monotonic()
    proc = None
    try:
        mutant.path.write_text(original.replace(mutant.find, mutant.replace, 1))
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "--no-header",
                   "-p", "no:cacheprovider", *pytest_args, *mutant.tests]  # fmt: skip
        if mutant.timeout:
            command.insert(-len(mutant.tests), f"--timeout={mutant.timeout}")
        env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}  # no mutated bytecode kept
        # its own session: a Ctrl-C reaches us, and we stop it after restoring the file;
        # a signal while it starts waits until ``proc`` is known (nothing left orphaned)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
                # the child inherits the blocked mask and an ignored SIGINT: it must
                # take SIGINT itself (pytest tears down on it)
                preexec_fn=lambda: (
                    signal.signal(signal.SIGINT, signal.SIG_DFL),
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked),
                ),
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            out, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return "killed", f"a hang (over {TIMEOUT_S} s)", time.monotonic() - started
    finally:
        mutant.path.write_text(original)
        os.utime(mutant.path, ns=(mtime, mtime))
        journal.unlink(missing_ok=True)
        if proc is not None:
            _stop(proc)
    seconds = time.monotonic() - started
    if proc.returncode == 0:
        return "SURVIVED", "", seconds
    failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", out, re.MULTILINE)
    if proc.returncode == 1 and failed:
        return "killed", failed[0], seconds
    tail = "\n".join(out.strip().splitlines()[-15:])
    return "ERROR", f"pytest exit {proc.returncode}:\n{tail}", seconds


def main(argv: list[str] | None = None) -> int:
    global REPO  # one run, one tree
    parser = argparse.ArgumentParser(
        prog="scripts/mutants", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("names", nargs="*", help="mutants to run (shell patterns); all if none")
    parser.add_argument("--list", action="store_true", help="show the mutants, run nothing")
    parser.add_argument("--check", action="store_true", help="only check lists and patterns")
    parser.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                        help="passed on to each pytest run (repeatable)")  # fmt: skip
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    REPO = args.root.resolve()
    if not REPO.is_dir():
        print(f"error: --root {args.root}: no such folder", file=sys.stderr)
        return 2

    # every stop signal, SIGINT too: a shell without job control starts background
    # commands with SIGINT ignored, and Python then installs no handler of its own
    for signum in STOP_SIGNALS:
        signal.signal(signum, _terminate)
    lock = take_lock()
    if lock is None:
        print("error: another scripts/mutants run is applying mutants here", file=sys.stderr)
        return 1
    restore_journal()
    mutants, problems = load_all(find_lists())
    if args.names:
        chosen = [m for m in mutants if any(fnmatch.fnmatch(m.name, p) for p in args.names)]
        unknown = [p for p in args.names if not any(fnmatch.fnmatch(m.name, p) for m in mutants)]
        problems += [f"no mutant named {p!r}" for p in unknown]
        mutants = chosen
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if args.list:
        for m in mutants:
            print(f"{m.name}\t{m.path.relative_to(REPO)}\t{' '.join(m.tests)}")
    if args.list or args.check:
        if not problems:
            print(f"{len(mutants)} mutants, every pattern matches once")
        return 1 if problems else 0
    if problems:
        return 1

    started, survived, errors = time.monotonic(), [], []
    for mutant in mutants:
        verdict, detail, seconds = run_one(mutant, args.pytest_arg)
        shown = {"killed": f"killed by {detail}", "SURVIVED": "SURVIVED"}.get(verdict, verdict)
        print(f"{mutant.name:<48} {shown} ({seconds:.1f} s)", flush=True)
        if verdict == "SURVIVED":
            survived.append(mutant)
            print(f"    {mutant.where()}: no test in {', '.join(mutant.tests)} failed")
        elif verdict == "ERROR":
            errors.append(mutant)
            print("    " + detail.replace("\n", "\n    "))
    total = time.monotonic() - started
    print(f"{len(mutants)} mutants: {len(mutants) - len(survived) - len(errors)} killed, "
          f"{len(survived)} survived, {len(errors)} errors ({total:.0f} s)")  # fmt: skip
    return 1 if survived or errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the mutant was restored", file=sys.stderr)
        sys.exit(130)
