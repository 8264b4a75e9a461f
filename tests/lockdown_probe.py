"""Run inside a private mount namespace by tests/test_lockdown.py (never on its own).

Mounts DEVICE (a fresh ext4) on a stand-in root, lays out a small node tree, runs the
rendered lockdown step against it and prints what happened as JSON: the step's exit code
and stderr per run, the errno of a write under the root and in every declared path, the
seeded content found afterwards and the mounts under the root. With ``--hold`` a file on
the root stays open for writing while the step runs (as a stray writer would);
with ``--oversize`` one directory holds more than its tmpfs may.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

SEEDS = {  # files a real node has in these places before the lockdown
    "var/lib/cloud/instances/i-0abc/sem/config_write_files": "done\n",
    "var/lib/dhcpcd/eth0.lease": "lease\n",
    "run/node-daemon/token": "not-a-real-token\n",
    "var/log/cloud-init.log": "boot\n",
}


def write_errno(path: Path) -> str:
    """'ok' when a new file can be written at ``path``, else the errno's name."""
    try:
        path.write_text("x")
        path.unlink()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def append_errno(path: Path) -> str:
    """'ok' when the existing file at ``path`` can be appended to, else the errno's name."""
    try:
        with path.open("a") as file:
            file.write("x")
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


def mounts_under(root: Path) -> list[str]:
    """'point fstype options' for each mount at or under root (point relative to root)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4]
        if point == str(root) or point.startswith(f"{root}/"):
            rest = fields[fields.index("-") + 1 :]
            found.append(f"/{point[len(str(root)) :].lstrip('/')} {rest[0]} {fields[5]},{rest[2]}")
    return found


def layout(root: Path) -> None:
    for name in ("etc", "usr/bin", "tmp", "var/tmp", "var/cache/apk", "var/lib/cloud/scripts"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "var/tmp").chmod(0o1777)
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    for name, text in SEEDS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "var/lib/cloud/instance").symlink_to("instances/i-0abc")
    state = root / "run/node-daemon"
    state.chmod(0o700)
    os.chown(state, 100, 101)
    (state / "token").chmod(0o600)
    os.chown(state / "token", 100, 101)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("device")
    parser.add_argument("root", type=Path)
    parser.add_argument("script", type=Path)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--path-prefix", default="", help="PATH entries to put first")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--oversize", action="store_true", help="more in chrony's dir than fits")
    args = parser.parse_args()
    root: Path = args.root
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "ext4", args.device, str(root)], check=True)
    layout(root)
    if args.oversize:
        (root / "var/lib/chrony").mkdir(parents=True)
        (root / "var/lib/chrony/big").write_bytes(bytes(2 << 20))
    env = dict(os.environ)
    if args.path_prefix:
        env["PATH"] = f"{args.path_prefix}:{env['PATH']}"
    held = (root / "etc/held").open("w") if args.hold else None
    report: dict = {"runs": [], "before": mounts_under(root)}
    for _ in range(1 if args.hold or args.oversize else 2):
        step = subprocess.run(
            ["sh", str(args.script), str(root)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        report["runs"].append(
            {
                "rc": step.returncode,
                "stderr": step.stderr,
                "mounts": mounts_under(root),
                "root_write": write_errno(root / "etc/new"),
                "root_append": append_errno(root / "usr/bin/tool"),
                "paths": {p: write_errno(root / p.lstrip("/") / "probe") for p in args.paths},
                "readonly": bool(os.statvfs(root).f_flag & os.ST_RDONLY),
            }
        )
    if held:
        held.close()
    token = root / "run/node-daemon/token"
    report["seeds"] = {
        name: (root / name).read_text() if (root / name).exists() else None for name in SEEDS
    }
    report["instance_link"] = str((root / "var/lib/cloud/instance").readlink())
    state = (root / "run/node-daemon").stat()
    report["state_dir"] = [oct(state.st_mode & 0o7777), state.st_uid, state.st_gid]
    report["token"] = [oct(token.stat().st_mode & 0o777), token.stat().st_uid]
    report["tmp_mode"] = oct((root / "tmp").stat().st_mode & 0o7777)
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
