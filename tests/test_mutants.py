"""The mutation check (scripts/mutants): every list in the repository parses and each
pattern still matches its guard exactly once; and the tool itself, on a small project of
its own: a killed mutant names its test, a surviving or stale one fails the run, and the
file is restored every time, also when the run is interrupted."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from idra.config import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "mutants.py"
GUARD = "def allowed(port: int) -> bool:\n    return port in (22, 51820)\n"
TESTS = """from guard import allowed

def test_ssh_allowed():
    assert allowed(22)

def test_telnet_refused():
    assert not allowed(23)

def test_slow():
    import time
    time.sleep(60)
"""

SLOW = """
- name: slow
  file: guard.py
  from: "(22, 51820)"
  to: "(22, 23, 51820)"
  tests: [test_guard.py::test_slow]
"""


def _run(root: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=120, **kw)  # fmt: skip


def _project(tmp_path: Path, mutants: str) -> Path:
    (tmp_path / "guard.py").write_text(GUARD)
    (tmp_path / "test_guard.py").write_text(TESTS)
    (tmp_path / "mutants.yaml").write_text(mutants)
    return tmp_path


def _kill_processes_in(root: Path) -> None:
    """Kill the processes working in ``root`` (what a killed run left: its pytest)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "cwd").resolve() == root.resolve():
                    os.kill(int(proc.name), signal.SIGKILL)


def test_every_list_in_the_repository_applies() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "every pattern matches once" in result.stdout


def test_killed_survived_and_stale_mutants(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        """
- name: telnet-allowed
  file: guard.py
  from: "(22, 51820)"
  to: "(22, 23, 51820)"
  tests: [test_guard.py::test_ssh_allowed, test_guard.py::test_telnet_refused]
- name: wireguard-closed
  file: guard.py
  from: "(22, 51820)"
  to: "(22,)"
  tests: [test_guard.py::test_ssh_allowed]
""",
    )
    result = _run(root)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("telnet-allowed") and "killed by test_guard.py::test_telnet_refused" in line
        for line in lines
    ), result.stdout
    assert any(line.startswith("wireguard-closed") and "SURVIVED" in line for line in lines)
    assert "2 mutants: 1 killed, 1 survived" in result.stdout
    assert (root / "guard.py").read_text() == GUARD

    (root / "guard.py").write_text(GUARD.replace("(22, 51820)", "{22, 51820}"))  # refactored
    stale = _run(root, "telnet-allowed")
    assert stale.returncode == 1
    assert "mutants.yaml: telnet-allowed: pattern no longer matches guard.py" in stale.stderr


def test_interrupted_run_restores_the_file(tmp_path: Path) -> None:
    root = _project(tmp_path, SLOW)
    for signum in (signal.SIGINT, signal.SIGTERM):
        command = [sys.executable, str(SCRIPT), "--root", str(root)]
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while (root / "guard.py").read_text() == GUARD:  # the mutant is applied
                assert time.monotonic() < deadline and run.poll() is None, run.stderr
                time.sleep(0.05)
            run.send_signal(signum)
            _, err = run.communicate(timeout=60)  # its pytest's teardown, at most 15 s
        finally:
            run.kill()
            run.wait()
        assert run.returncode == 130, err
        assert (root / "guard.py").read_text() == GUARD, signum
        assert not (root / ".mutants-journal.json").exists()


def test_a_killed_run_is_undone_by_the_next(tmp_path: Path) -> None:
    root = _project(tmp_path, SLOW)
    run = subprocess.Popen([sys.executable, str(SCRIPT), "--root", str(root)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while (root / "guard.py").read_text() == GUARD:
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.05)
    finally:  # SIGKILL: no finally runs, the journal holds the original
        run.kill()
        run.wait()
        _kill_processes_in(root)  # its pytest, in a session of its own
    assert (root / "guard.py").read_text() != GUARD
    listed = _run(root, "--check")
    assert "restored guard.py (a mutant from an interrupted run)" in listed.stdout
    assert (root / "guard.py").read_text() == GUARD
