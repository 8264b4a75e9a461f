"""The boot step that makes the root read-only, run for real against a stand-in root.

The step is taken from user-data rendered by the ``idra render`` CLI and run by
``sh`` against an ext4 filesystem on a loop device, mounted in a private mount namespace
(``unshare --mount --propagation private``): nothing reaches the host's mounts, and the
namespace's mounts go away with its last process. The loop device is detached whatever
happens. It runs twice: with this machine's tools, and with busybox's applets (the
userland of Alpine, where the step runs on a node).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("lockdown_probe.py")
LOCKDOWN = "/usr/local/sbin/idra-lockdown"
BOOT = "/var/lib/cloud/scripts/per-boot/idra-boot"
BUSYBOX_APPLETS = ("sh", "mount", "umount", "stat", "cp", "mkdir", "cat")


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("render")
    subprocess.run(
        [sys.executable, "-m", "idra.cli", "render", "--stack", "production", "--out", str(out)],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    return (out / "user-data.yaml").read_text()


@pytest.fixture(scope="module")
def files(user_data: str) -> dict[str, str]:
    return {f["path"]: f["content"] for f in yaml.safe_load(user_data)["write_files"]}


@pytest.fixture(scope="module")
def declared(files: dict[str, str]) -> dict[str, str]:
    """The step's own list: path → extra mount options."""
    table = re.search(r"<<'EOF'\n(.*?)\nEOF\n", files[LOCKDOWN], re.DOTALL)
    assert table, "the lockdown step lists its tmpfs paths in a here-document"
    rows = [line.split() for line in table.group(1).splitlines()]
    return {row[0]: row[2] if len(row) > 2 else "" for row in rows}


@pytest.fixture
def device(tmp_path: Path):
    image = tmp_path / "root.img"
    image.write_bytes(b"")
    subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)


def _probe(tmp_path: Path, device: str, files: dict, declared: dict, *extra: str) -> dict:
    script = tmp_path / "idra-lockdown"
    script.write_text(files[LOCKDOWN])
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--",
         sys.executable, str(PROBE), device, str(tmp_path / "root"), str(script), *declared,
         *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(params=["host tools", "busybox"])
def path_prefix(request, tmp_path: Path) -> str:
    if request.param == "host tools":
        return ""
    busybox = shutil.which("busybox")
    assert busybox, "busybox is missing: run scripts/install"
    applets = tmp_path / "busybox"
    applets.mkdir()
    for applet in BUSYBOX_APPLETS:
        (applets / applet).symlink_to(busybox)
    return str(applets)


def test_step_makes_root_read_only_and_keeps_declared_paths_writable(
    tmp_path: Path, device: str, files: dict, declared: dict, path_prefix: str
) -> None:
    report = _probe(tmp_path, device, files, declared, "--path-prefix", path_prefix)
    first, second = report["runs"]
    assert (first["rc"], first["stderr"]) == (0, "")
    assert first["readonly"] is True
    assert first["root_write"] == first["root_append"] == "EROFS"
    assert first["paths"] == dict.fromkeys(declared, "ok")
    mounts = {point: (fstype, set(options.split(","))) for point, fstype, options in
              (entry.split() for entry in first["mounts"])}  # fmt: skip
    assert len(mounts) == len(first["mounts"]), "one mount per path"
    assert set(mounts) == {"/", *declared}, "nothing else mounted"
    assert mounts["/"][0] == "ext4" and "ro" in mounts["/"][1]
    for path, extra in declared.items():
        fstype, options = mounts[path]
        assert fstype == "tmpfs", path
        assert {"rw", "nosuid", "nodev", *filter(None, extra.split(","))} <= options, path
    # What was on the disk is still there, with its owner and mode.
    assert report["seeds"] == {
        "var/lib/cloud/instances/i-0abc/sem/config_write_files": "done\n",
        "var/lib/dhcpcd/eth0.lease": "lease\n",
        "run/node-daemon/token": "not-a-real-token\n",
        "var/log/cloud-init.log": "boot\n",
    }
    assert report["instance_link"] == "instances/i-0abc"
    assert report["state_dir"] == ["0o700", 100, 101]
    assert report["token"] == ["0o600", 100]
    assert report["tmp_mode"] == "0o1777"
    # The second run changes nothing: no tmpfs stacked on another, still read-only.
    assert (second["rc"], second["stderr"]) == (0, "")
    assert second["mounts"] == first["mounts"]
    assert second["root_write"] == "EROFS" and second["paths"] == first["paths"]


def test_step_refuses_while_a_file_is_open_for_writing(
    tmp_path: Path, device: str, files: dict, declared: dict
) -> None:
    (run,) = _probe(tmp_path, device, files, declared, "--hold")["runs"]
    assert run["rc"] == 1
    root = tmp_path / "root"
    message = f"idra-lockdown: cannot make {root}/ read-only (a file open for writing?)"
    assert run["stderr"].splitlines()[-1] == message  # after mount's own reason
    assert run["readonly"] is False, "the boot fails: the agent is never started"


def test_step_refuses_a_directory_larger_than_its_tmpfs(
    tmp_path: Path, device: str, files: dict, declared: dict
) -> None:
    (run,) = _probe(tmp_path, device, files, declared, "--oversize")["runs"]
    assert run["rc"] == 1
    assert run["stderr"].splitlines()[-1] == "idra-lockdown: cannot move /var/lib/chrony to tmpfs"
    assert not [m for m in run["mounts"] if m.startswith("/var/lib/chrony ")], "unmounted"
    assert run["readonly"] is False


def test_boot_locks_down_after_the_agent_is_installed_and_before_it_starts(files) -> None:
    boot = files[BOOT]
    lock = boot.index(f"{LOCKDOWN} /")
    assert boot.index("idra-install-agent") < lock
    assert boot.index("fetch-secret") < lock
    assert boot.index("rc-update add node-daemon default") < lock
    assert lock < boot.index("rc-service node-daemon start")
    assert "set -eu" in boot, "a failed lockdown stops the boot: the agent never starts"


def test_cloud_init_tmpfs_mounts_are_declared(user_data: str, declared: dict) -> None:
    mounts = yaml.safe_load(user_data)["mounts"]
    assert {m[1] for m in mounts if m[0] == "tmpfs"} <= set(declared)
    assert {"/tmp", "/var/tmp", "/var/cache", "/var/lib/cloud", "/run/node-daemon"} <= set(declared)
    # Only cloud-init's own tree runs programs (its per-boot and per-instance scripts).
    assert {path for path, extra in declared.items() if "noexec" not in extra} == {"/var/lib/cloud"}


def test_user_data_fits_the_ec2_limit(user_data: str) -> None:
    """EC2 refuses user-data over 16 KB (before base64); production is the largest."""
    assert len(user_data.encode()) <= 16 * 1024
