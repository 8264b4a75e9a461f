"""``idra nodes`` end to end against the real control plane, through the installed entry
point, configured only by ``IDRA_*`` environment variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema

from tests.controlplane.conftest import ControlPlane, start

IDRA = str(Path(sys.executable).parent / "idra")
NODE = {
    "type": "object",
    "required": [
        "id", "instance_id", "public_ip", "region", "state", "drain_reason", "drain_started_at",
        "peers", "active_peers", "last_heartbeat_at", "agent_version", "registered_at",
    ],
    "additionalProperties": True,
    "properties": {
        "id": {"type": "string", "pattern": "^node-"},
        "region": {"type": "string"},
        "state": {"enum": ["active", "draining"]},
        "drain_reason": {"type": ["string", "null"]},
        "peers": {"type": ["integer", "null"], "minimum": 0},
        "active_peers": {"type": "integer", "minimum": 0},
        "last_heartbeat_at": {"type": ["string", "null"], "pattern": "^[0-9-]{10}T[0-9:]{8}Z$"},
        "registered_at": {"type": "string", "pattern": "^[0-9-]{10}T[0-9:]{8}Z$"},
        "agent_version": {"type": "string"},
    },
}  # fmt: skip
LIST = {"type": "array", "items": NODE}


def idra(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDRA_")} | {
        "IDRA_API_URL": cp.url,
        "IDRA_OPERATOR_TOKEN_FILE": str(cp.log.parent / "operator.token"),
    }
    return subprocess.run([IDRA, "nodes", *args], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip


def listed(cp: ControlPlane, *args: str) -> dict[str, dict]:
    result = idra(cp, "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    jsonschema.validate(document, LIST)
    return {node["id"]: node for node in document}


def test_list_filter_show_drain_delete(cp: ControlPlane) -> None:
    eu = cp.register("i-eu", region="eu-central-1", public_ip="203.0.113.1")
    us = cp.register("i-us", region="us-east-1", public_ip="203.0.113.2")
    silent = cp.register("i-silent", region="us-east-1", public_ip="203.0.113.3")
    cp.heartbeat(eu, active_peers=3)
    cp.heartbeat(us, active_peers=0)

    every = listed(cp)
    assert set(every) == {eu, us, silent}
    assert every[eu]["active_peers"] == 3 and every[eu]["last_heartbeat_at"]
    assert every[eu]["agent_version"] == "test" and every[eu]["peers"] == 0
    assert every[silent]["last_heartbeat_at"] is None and every[silent]["peers"] is None
    assert set(listed(cp, "--region", "us-east-1")) == {us, silent}
    assert set(listed(cp, "--region", "us-east-1", "--region", "eu-central-1")) == set(every)

    drained = idra(cp, "drain", us, "--reason", "outdated", "--yes")
    assert drained.returncode == 0 and f"{us} draining (outdated)" in drained.stdout
    assert set(listed(cp, "--state", "draining")) == {us}
    assert set(listed(cp, "--state", "active")) == {eu, silent}
    assert set(listed(cp, "--state", "active", "--region", "us-east-1")) == {silent}
    with cp.client("operator") as ops:
        server = {n["id"]: n for n in ops.get("/v1/nodes").json()["nodes"]}
    assert server[us]["state"] == "draining" and server[us]["drain_reason"] == "outdated"

    shown = idra(cp, "show", us, "--json")
    assert shown.returncode == 0
    node = json.loads(shown.stdout)
    jsonschema.validate(node, NODE)
    assert node["id"] == us and node["drain_reason"] == "outdated"
    text = idra(cp, "show", us)
    assert "drain_reason" in text.stdout and "outdated" in text.stdout

    refused = idra(cp, "delete", eu, "--yes")
    assert refused.returncode == 1 and "still active" in refused.stderr
    assert eu in listed(cp), "an active node is not deleted without --force"
    running = idra(cp, "delete", us, "--yes")
    assert running.returncode == 1 and "still runs" in running.stderr, "it heartbeats"
    assert us in listed(cp), "deleting it would leave its instance serving (see --force)"
    assert idra(cp, "drain", silent, "--yes").returncode == 0
    assert idra(cp, "delete", silent, "--yes").returncode == 0, "never heard from: nothing runs"
    assert silent not in listed(cp)
    gone = idra(cp, "delete", silent, "--yes")
    assert gone.returncode == 1 and "no such node" in gone.stderr
    assert set(listed(cp)) == {eu, us}


def test_table_has_full_ids_and_a_timestamp_off_a_terminal(cp: ControlPlane) -> None:
    ids = [cp.register(f"i-table{n}", region="eu-central-1") for n in range(3)]
    cp.heartbeat(ids[0], active_peers=1)
    result = idra(cp, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith(" 3 nodes") and lines[0][:4].isdigit() and "T" in lines[0][:20]
    assert lines[1].split()[:3] == ["id", "region", "state"]
    for node_id in ids:
        row = next(line for line in lines if line.startswith(node_id + " "))
        assert "eu-central-1" in row and "active" in row
    assert "never" in result.stdout, "a node never heard from says so"


def test_drain_needs_a_known_reason(cp: ControlPlane) -> None:
    node = cp.register("i-reason")
    result = idra(cp, "drain", node, "--reason", "bored", "--yes")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert listed(cp)[node]["state"] == "active"
    assert idra(cp, "drain", node, "--yes").returncode == 0, "--reason defaults to manual"
    assert listed(cp)[node]["drain_reason"] == "manual"


def test_shell_completion_as_documented() -> None:
    source = subprocess.run([IDRA], env=os.environ | {"_IDRA_COMPLETE": "bash_source"},
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert "complete -o nosort -F _idra_completion idra" in source.stdout
    words = {"_IDRA_COMPLETE": "bash_complete", "COMP_WORDS": "idra nodes drain x --reason c",
             "COMP_CWORD": "5"}  # fmt: skip
    reply = subprocess.run([IDRA], env=os.environ | words, capture_output=True, text=True)
    assert reply.stdout.split() == ["plain,compromised"]


def test_https_with_the_ca_file_from_the_environment(tmp_path) -> None:
    server = start(tmp_path, tls=True)
    try:
        node = server.register("i-tls")
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDRA_")} | {
            "IDRA_API_URL": server.url,
            "IDRA_OPERATOR_TOKEN_FILE": str(tmp_path / "operator.token"),
        }
        command = [IDRA, "nodes", "list", "--json"]
        untrusted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        env["IDRA_CA_FILE"] = str(tmp_path / "pki" / "ca.pem")
        trusted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert trusted.returncode == 0, trusted.stderr
        assert [n["id"] for n in json.loads(trusted.stdout)] == [node]
    finally:
        server.process.terminate()
        server.process.wait(10)
