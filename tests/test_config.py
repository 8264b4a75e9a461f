"""Stack configuration: both real stacks load; every class of bad value is refused with
one line naming the file and the key, through ``idra render``, leaving the output alone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from idra.config import REPO_ROOT, ConfigError, load_stack


@pytest.mark.parametrize("stack", ["staging", "production"])
def test_real_stacks_load(stack: str) -> None:
    cfg = load_stack(stack)
    assert cfg.stack == stack
    assert cfg.ssh_bastion_cidrs == [], "SSH must be closed by default"
    assert cfg.block_smtp
    assert cfg.wireguard_port == 51820


def test_production_is_bigger_than_staging() -> None:
    staging, production = load_stack("staging"), load_stack("production")
    assert production.max_size > staging.max_size
    assert production.min_size > staging.min_size
    assert len(production.regions) >= len(staging.regions)


BAD_VALUES = {
    "unknown key": ("idra:wireguardPrt", 51820, "idra:wireguardPrt"),
    "bad CIDR": ("idra:clientPoolIpv4", "10.96.0.0/33", "idra:clientPoolIpv4"),
    "host bits in CIDR": ("idra:clientPoolIpv4", "10.96.0.1/12", "idra:clientPoolIpv4"),
    "public client pool": ("idra:clientPoolIpv4", "8.8.0.0/16", "idra:clientPoolIpv4"),
    "client pool below /27": ("idra:clientPoolIpv4", "10.96.0.0/28", "idra:clientPoolIpv4"),
    "port out of range": ("idra:wireguardPort", 70000, "idra:wireguardPort"),
    "port zero": ("idra:wireguardPort", 0, "idra:wireguardPort"),
    "pools overlap": ("idra:vpcCidr", "10.100.0.0/16", "idra:clientPoolIpv4"),
    "missing sha256": ("idra:agentSha256", None, "idra:agentSha256"),
    "short sha256": ("idra:agentSha256", "abc123", "idra:agentSha256"),
    "plain http agent": ("idra:agentUrl", "http://example.com/a.pyz", "idra:agentUrl"),
    "ssh open to the world": ("idra:sshBastionCidrs", ["0.0.0.0/0"], "idra:sshBastionCidrs"),
    "min above max": ("idra:minSize", 50, "idra:minSize"),
    "bad region": ("idra:regions", ["eu-central"], "idra:regions"),
    "interface name too long": ("idra:tunnelInterface", "wg0123456789abcdef", "tunnelInterface"),
    "bad subnet id": ("idra:existingSubnetIds", {"eu-central-1": ["sn-1"]}, "existingSubnetIds"),
    "subnets of another region": (
        "idra:existingSubnetIds",
        {"us-east-1": ["subnet-0123abcd"]},
        "existingSubnetIds",
    ),
    "plaintext secret": ("idra:nodeToken", "hunter2", "idra:nodeToken"),
    "foreign namespace": ("idar:regions", ["eu-west-1"], "idar:regions"),
    "missing account": ("idra:awsAccountId", None, "idra:awsAccountId"),
    "unquoted account": ("idra:awsAccountId", 12345678901, "quote it"),
    "short account": ("idra:awsAccountId", "1234", "idra:awsAccountId"),
    "control plane elsewhere": ("idra:controlPlaneRegion", "us-west-2", "controlPlaneRegion"),
    "reader not a role": (
        "idra:controlPlaneRoleArns",
        ["arn:aws:iam::111111111111:user/alice"],
        "idra:controlPlaneRoleArns",
    ),
    "repository without org": ("idra:githubRepository", "exit-nodes", "idra:githubRepository"),
    "another oidc provider": (
        "idra:githubOidcProviderArn",
        "arn:aws:iam::111111111111:oidc-provider/example.com",
        "idra:githubOidcProviderArn",
    ),
    "bad alarm address": ("idra:alarmEmails", ["ops"], "idra:alarmEmails"),
    "lease shorter than two passes": ("idra:opsLeaseSeconds", 100, "idra:opsLeaseSeconds"),
    "ops artifact without its pin": ("idra:opsSha256", None, "idra:opsSha256"),
    "interval too short": ("idra:opsReaperIntervalSeconds", 5, "idra:opsReaperIntervalSeconds"),
}


def _write_stack(folder: Path, key: str, value: object) -> None:
    document = yaml.safe_load((REPO_ROOT / "Pulumi.staging.yaml").read_text())
    if value is None:
        document["config"].pop(key)
    else:
        document["config"][key] = value
    (folder / "Pulumi.bad.yaml").write_text(yaml.safe_dump(document))


def _render(root: Path, out: Path, stack: str = "bad") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "idra.cli", "render", "--stack", stack, "--root", str(root),
         "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(("key", "value", "named"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_value_refused_with_one_line(tmp_path: Path, key, value, named) -> None:
    _write_stack(tmp_path, key, value)
    out = tmp_path / "out"
    out.mkdir()
    (out / "nftables.nft").write_text("previous\n")
    result = _render(tmp_path, out)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Pulumi.bad.yaml" in lines[0] and named in lines[0], lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["nftables.nft"]
    assert (out / "nftables.nft").read_text() == "previous\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temp left"


def test_secret_value_is_never_echoed(tmp_path: Path) -> None:
    _write_stack(tmp_path, "idra:firebasePrivateKey", "-----BEGIN PRIVATE KEY----- s3cr3t")
    result = _render(tmp_path, tmp_path / "out")
    assert result.returncode == 2
    assert "s3cr3t" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()


def test_encrypted_secrets_are_accepted_and_not_rendered(tmp_path: Path) -> None:
    _write_stack(tmp_path, "idra:nodeToken", {"secure": "v1:Q2lwaGVydGV4dA=="})
    cfg = load_stack("bad", tmp_path)
    assert cfg.secrets_set == {"nodeToken"}
    result = _render(tmp_path, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    rendered = "".join(p.read_text() for p in (tmp_path / "out").iterdir())
    assert "Q2lwaGVydGV4dA" not in rendered


@pytest.mark.parametrize(
    ("text", "message"),
    [("config: [unclosed", r"Pulumi\.bad\.yaml: line \d+ not valid YAML"),
     ("just a string", r"Pulumi\.bad\.yaml: needs a top-level 'config:' mapping")],
)  # fmt: skip
def test_unreadable_stack_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "Pulumi.bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_stack("bad", tmp_path)
    assert _render(tmp_path, tmp_path / "out").returncode == 2


def test_missing_stack_and_bad_region_option(tmp_path: Path) -> None:
    result = _render(REPO_ROOT, tmp_path / "out", stack="nosuchstack")
    assert result.returncode == 2 and "Pulumi.nosuchstack.yaml" in result.stderr
    shutil.copy(REPO_ROOT / "Pulumi.staging.yaml", tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "idra.cli", "render", "--stack", "staging", "--root",
         str(tmp_path), "--out", str(tmp_path / "out"), "--region", "us-west-2"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert re.search(r"region 'us-west-2' is not in stack 'staging'", result.stderr)
    assert not (tmp_path / "out").exists()
