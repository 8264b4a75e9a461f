"""NODE_TOKEN rotation (docs/infrastructure.md): a new value in Secrets Manager, the
control plane restarted with it, and each node's token file fetched again — the running
agent re-reads the file at its next registration, so it needs no restart, and nodes
already registered keep working on their own credential meanwhile."""

from __future__ import annotations

import secrets
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from node_daemon.api import NodeApi, Unauthorized
from node_daemon.aws import fetch_secret
from tests.controlplane.conftest import ControlPlane, start, wg_key

SECRET_ID = "idra/staging/NODE_TOKEN"
REGION = "eu-central-1"


def register_body_for(cp: ControlPlane) -> dict:
    """A fresh instance's registration, signed by the key this control plane trusts."""
    return {"identity": cp.identity(), "public_ip": "203.0.113.50", "public_key": wg_key(),
            "listen_port": 51820, "agent_version": "test"}  # fmt: skip


def test_rotated_token_reaches_a_running_agent_without_restart(tmp_path: Path) -> None:
    old, new = secrets.token_urlsafe(36), secrets.token_urlsafe(36)
    token_file = tmp_path / "node" / "token"
    kinds = {"operator": secrets.token_urlsafe(24), "client": secrets.token_urlsafe(24)}
    with mock_aws():
        aws = boto3.client("secretsmanager", region_name=REGION)
        aws.create_secret(Name=SECRET_ID, SecretString=old)
        fetch_secret(SECRET_ID, REGION, token_file, aws)  # what user-data does at boot
        cp = start(tmp_path, tokens=kinds | {"node": old})
        port = int(cp.url.rsplit(":", 1)[1])
        try:
            agent = NodeApi(cp.url, token_file)
            first = agent.register(register_body_for(cp))
            # Rotate: the new value in Secrets Manager, the control plane restarted on it.
            aws.put_secret_value(SecretId=SECRET_ID, SecretString=new)
            cp.process.terminate()
            cp.process.wait(10)
            cp = start(tmp_path, port=port, tokens=kinds | {"node": new})
            cp.credentials[first.node_id] = first.credential
            cp.heartbeat(first.node_id)  # a registered node: its credential, not the token
            with pytest.raises(Unauthorized):  # the old file is refused at registration
                NodeApi(cp.url, token_file).register(register_body_for(cp))
            fetch_secret(SECRET_ID, REGION, token_file, aws)  # on the node: fetch again
            assert token_file.stat().st_mode & 0o777 == 0o600
            second = agent.register(register_body_for(cp))  # the same agent object
            assert second.node_id != first.node_id
        finally:
            cp.process.terminate()
            cp.process.wait(10)
    assert old not in cp.log.read_text() and new not in cp.log.read_text()
