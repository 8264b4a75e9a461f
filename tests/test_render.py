"""Rendered node files pass the real validators and hold what the node needs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from idra.config import REPO_ROOT, ConfigError, load_stack
from idra.netns import run
from idra.render import NODE_FILES, render_node_files, render_ops_files, write_node_files

STACKS = ["staging", "production"]


@pytest.fixture(scope="module", params=STACKS)
def rendered(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(request.param) / "node"
    write_node_files(load_stack(request.param), out)
    return out


def test_writes_exactly_the_four_files(rendered: Path) -> None:
    assert sorted(p.name for p in rendered.iterdir()) == sorted(NODE_FILES)


def test_nftables_passes_nft_check(rendered: Path) -> None:
    result = run(["nft", "-c", "-f", str(rendered / "nftables.nft")], check=False)
    assert result.returncode == 0, result.stderr


def test_user_data_passes_cloud_init_schema(rendered: Path) -> None:
    result = run(["cloud-init", "schema", "--config-file", str(rendered / "user-data.yaml")])
    assert "Valid cloud-config" in result.stdout


def test_user_data_carries_the_rendered_files(rendered: Path) -> None:
    text = (rendered / "user-data.yaml").read_text()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    files = {f["path"]: f["content"] for f in data["write_files"]}
    assert files["/etc/sysctl.d/90-idra.conf"] == (rendered / "sysctl.conf").read_text()
    assert files["/etc/nftables.nft"] == (rendered / "nftables.nft").read_text()
    assert files["/etc/init.d/node-daemon"] == (rendered / "node-daemon.initd").read_text()
    assert data["ssh_pwauth"] is False and data["disable_root"] is True
    assert {"wireguard-tools", "nftables", "python3"} <= set(data["packages"])
    assert not {"package_update", "package_upgrade", "apt_update"} & set(data), "once, no upgrade"
    tmpfs = {m[1]: m for m in data["mounts"] if m[0] == "tmpfs"}
    assert {"/var/log", "/etc/wireguard"} <= set(tmpfs)
    boot = files["/var/lib/cloud/scripts/per-boot/idra-boot"]
    assert "idra-install-agent" in boot and "fetch-secret" in boot
    assert boot.index("idra-install-agent") < boot.index("rc-service node-daemon start")


def test_no_packet_logging(rendered: Path) -> None:
    ruleset = (rendered / "nftables.nft").read_text()
    rules = [line for line in ruleset.splitlines() if not line.strip().startswith("#")]
    assert not [line for line in rules if re.search(r"\blog\b", line)]
    assert "net.ipv4.conf.all.log_martians = 0" in (rendered / "sysctl.conf").read_text()


def test_seed_corrections_in_sysctl(rendered: Path) -> None:
    sysctl = (rendered / "sysctl.conf").read_text()
    assert "udp_mem" not in sysctl.replace("net.ipv4.udp_mem is left", "")
    assert re.search(r"net\.ipv6\.conf\.eth0\.accept_ra = 2", sysctl)
    assert "net.ipv4.conf.all.rp_filter = 2" in sysctl
    for key in ("accept_redirects", "accept_source_route"):
        assert f"net.ipv6.conf.all.{key} = 0" in sysctl
        assert f"net.ipv4.conf.all.{key} = 0" in sysctl


def test_initd_is_openrc_supervised(rendered: Path) -> None:
    initd = (rendered / "node-daemon.initd").read_text()
    assert initd.startswith("#!/sbin/openrc-run\n")
    assert 'supervisor="supervise-daemon"' in initd
    assert re.search(r"need net nftables", initd)
    # a crash loop stops and shows (rc-status: crashed) instead of respawning forever
    max_ = int(re.search(r"^respawn_max=(\d+)$", initd, re.M).group(1))
    period = int(re.search(r"^respawn_period=(\d+)$", initd, re.M).group(1))
    assert 0 < max_ <= 10 and period >= 60
    assert run(["sh", "-n", str(rendered / "node-daemon.initd")], check=False).returncode == 0


@pytest.mark.parametrize("stack", STACKS)
def test_every_region_renders(stack: str) -> None:
    cfg = load_stack(stack)
    for region in cfg.regions:
        user_data = render_node_files(cfg, region)["user-data.yaml"]
        assert f"--region '{region}'" in user_data
        assert f"idra/{stack}/NODE_TOKEN" in user_data


def test_boot_scripts_are_valid_shell(rendered: Path) -> None:
    data = yaml.safe_load((rendered / "user-data.yaml").read_text())
    for entry in data["write_files"]:
        if entry["content"].startswith("#!/bin/sh"):
            check = subprocess.run(["sh", "-n"], input=entry["content"], text=True, check=False)
            assert check.returncode == 0, entry["path"]
            for line in entry["content"].splitlines():  # never follow a planted symlink
                assert not re.match(r"\s*chown (?!-h )", line), line


def test_rewrite_replaces_all_files(tmp_path: Path) -> None:
    out = tmp_path / "node"
    write_node_files(load_stack("staging"), out)
    (out / "sysctl.conf").write_text("stale")
    write_node_files(load_stack("production"), out)
    assert "production" in (out / "sysctl.conf").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["node"]


def _idra_render(cwd: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    idra = str(Path(sys.executable).parent / "idra")
    return subprocess.run(
        [idra, "render", "--stack", "staging", "--out", str(out), *extra],
        cwd=cwd, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_render_reads_the_stack_file_of_the_current_folder(tmp_path: Path) -> None:
    here = tmp_path / "project"
    here.mkdir()
    text = (REPO_ROOT / "Pulumi.staging.yaml").read_text()
    (here / "Pulumi.staging.yaml").write_text(text + "  idra:wireguardPort: 51999\n")
    result = _idra_render(here, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert f"stack file: {here}/Pulumi.staging.yaml" in result.stderr
    assert "51999" in (tmp_path / "out" / "nftables.nft").read_text()
    other = _idra_render(tmp_path, tmp_path / "out2", "--cwd", str(REPO_ROOT))
    assert other.returncode == 0 and f"stack file: {REPO_ROOT}/Pulumi.staging.yaml" in other.stderr
    assert "51999" not in (tmp_path / "out2" / "nftables.nft").read_text()


def test_a_folder_named_like_an_output_file_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "node"
    out.mkdir()
    for name in NODE_FILES:
        (out / name).write_text("old")
    (out / "nftables.nft").unlink()
    (out / "nftables.nft").mkdir()
    result = _idra_render(REPO_ROOT, out)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "nftables.nft: exists and is not a regular file" in result.stderr
    assert "Traceback" not in result.stderr
    for name in NODE_FILES:
        if name != "nftables.nft":
            assert (out / name).read_text() == "old", f"{name} was replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node"], "no staging folder left"


def test_every_flag_reads_an_idra_environment_variable(tmp_path: Path) -> None:
    idra = str(Path(sys.executable).parent / "idra")
    env = os.environ | {"IDRA_RENDER_STACK": "production", "IDRA_RENDER_OUT": str(tmp_path / "o"),
                        "IDRA_RENDER_CWD": str(REPO_ROOT)}  # fmt: skip
    result = subprocess.run([idra, "render"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "Pulumi.production.yaml" in result.stderr
    assert "production" in (tmp_path / "o" / "sysctl.conf").read_text()


def test_user_data_above_the_budget_is_refused_and_nothing_written(tmp_path, monkeypatch) -> None:
    """The same 12 KB budget (gzipped, as sent) as the launch template's, before a deploy."""
    import idra.render
    from idra.config import ConfigError

    monkeypatch.setattr(idra.render, "USER_DATA_BUDGET", 512)
    with pytest.raises(ConfigError, match=r"^eu-central-1: user-data is \d+ bytes gzipped"):
        write_node_files(load_stack("staging"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


OPS = {"ops_url": "https://example.com/idra-ops.pyz", "ops_sha256": "cd" * 32}


def test_ops_stack_file_loads_back_as_the_same_settings(tmp_path: Path) -> None:
    """The ops instance reads its settings with the same loader: nothing lost, no secret."""
    cfg = load_stack("production").model_copy(update=OPS)
    (tmp_path / "Pulumi.production.yaml").write_text(render_ops_files(cfg)["stack.yaml"])
    assert load_stack("production", tmp_path) == cfg


def test_ops_scripts_are_valid_shell_and_the_service_openrc(tmp_path: Path) -> None:
    files = render_ops_files(load_stack("staging").model_copy(update=OPS))
    document = yaml.safe_load(files["ops-user-data.yaml"])
    scripts = [
        f["content"] for f in document["write_files"] if f["content"].startswith("#!/bin/sh")
    ]
    assert len(scripts) == 3  # install, lockdown, boot
    for index, script in enumerate([*scripts, files["idra-ops.initd"]]):
        path = tmp_path / f"script{index}"
        path.write_text(script)
        result = run(["sh", "-n", str(path)], check=False)
        assert result.returncode == 0, result.stderr


def test_ops_files_need_a_pinned_artifact() -> None:
    unpinned = load_stack("staging").model_copy(update={"ops_url": None, "ops_sha256": None})
    with pytest.raises(ConfigError, match="idra:opsUrl"):
        render_ops_files(unpinned)


def _scripts(text: str) -> dict[str, str]:
    return {f["path"]: f["content"] for f in yaml.safe_load(text)["write_files"]}


def test_ops_boot_shares_the_nodes_install_lockdown_and_ssh_blocks() -> None:
    """templates/boot-blocks.j2 renders both: the ops instance's pinned install, root
    lockdown, SSH-off and service-user steps are the node's, word for word, but for
    their names, pins and tmpfs list."""
    cfg = load_stack("staging").model_copy(update=OPS)
    node = _scripts(render_node_files(cfg)["user-data.yaml"])
    ops = _scripts(render_ops_files(cfg)["ops-user-data.yaml"])
    install = node["/usr/local/sbin/idra-install-agent"]
    renames = ((cfg.agent_url, cfg.ops_url), ("idra-install-agent", "idra-install-ops"),
               ("node-daemon", "idra-ops.pyz"), (cfg.agent_sha256, cfg.ops_sha256))  # fmt: skip
    for old, new in renames:
        install = install.replace(old, new)
    assert ops["/usr/local/sbin/idra-install-ops"] == install

    def without_paths(script: str) -> str:
        head, rest = script.split("<<'EOF'\n")
        return head + rest.split("EOF\n", 1)[1]

    lockdown = "/usr/local/sbin/idra-lockdown"
    assert without_paths(ops[lockdown]) == without_paths(node[lockdown])
    assert "/var/lib/cloud 16m\n" in ops[lockdown] and "/tmp 64m ,noexec\n" in ops[lockdown]
    node_boot = node["/var/lib/cloud/scripts/per-boot/idra-boot"]
    ops_boot = ops["/var/lib/cloud/scripts/per-boot/idra-ops-boot"]
    ssh_off = "rc-update del sshd default 2>/dev/null || true\nrc-service sshd stop"
    assert ssh_off in node_boot and ssh_off in ops_boot
    user = node_boot[node_boot.index("id node-daemon") : node_boot.index("agent=")]
    assert user.replace("node-daemon", "idra-ops") in ops_boot
    assert f"{lockdown} /" in ops_boot


@pytest.mark.parametrize("stack", STACKS)
def test_ops_service_arguments_are_what_idra_ops_run_takes(stack: str) -> None:
    """The service's command line, parsed by the installed CLI itself (a removed option
    would stop the service at every boot with "No such option")."""
    initd = render_ops_files(load_stack(stack).model_copy(update=OPS))["idra-ops.initd"]
    args = shlex.split(re.search(r'command_args="(.*?)"', initd, re.S)[1].replace("\\\n", " "))
    assert args[0] == "/usr/local/lib/idra/idra-ops.pyz" and args[3:5] == ["ops", "run"]
    idra = Path(sys.executable).with_name("idra")
    result = subprocess.run([idra, *args[1:], "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_ops_zipapp_unpacks_on_a_tmpfs_that_allows_its_compiled_wheels() -> None:
    """shiv unpacks into SHIV_ROOT; /run may be noexec, so the service points it at a
    tmpfs of its own that the lockdown mounts without noexec (but nosuid, nodev)."""
    files = render_ops_files(load_stack("staging").model_copy(update=OPS))
    assert 'supervise_daemon_args="--env SHIV_ROOT=/var/lib/idra-ops"' in files["idra-ops.initd"]
    scripts = _scripts(files["ops-user-data.yaml"])
    assert "\n/var/lib/idra-ops 256m\n" in scripts["/usr/local/sbin/idra-lockdown"]
    boot = scripts["/var/lib/cloud/scripts/per-boot/idra-ops-boot"]
    owned = "install -d -m 0700 -o idra-ops -g idra-ops /run/idra-ops /var/lib/idra-ops"
    assert boot.index(owned) < boot.index("/usr/local/sbin/idra-lockdown /")
