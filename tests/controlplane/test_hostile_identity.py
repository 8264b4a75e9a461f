"""Issue 23 (identity side) against the real ``idra controlplane serve``: an unlucky node
(a lost first reply, a reboot) and a hostile one (a replay, a stolen key) each get what
they should: the same node, a distinct drain reason, a 409 that names nothing; one key
has one owner, enforced by the database; a node that still runs is not deleted; AWS is
asked by default, and not more often than its cache and rate limits allow."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from moto import mock_aws

from idra.controlplane.app import AwsUnavailable
from idra.controlplane.aws import NEGATIVE_TTL_S, POSITIVE_TTL_S, AwsConfirm
from idra.controlplane.identity import Identity
from idra.lab.pki import LAB_ACCOUNT
from idra.nodes import nodes

from .conftest import ControlPlane, dump, module_server, sql, start, wg_key, write_token
from .moto_serve import make_groups
from .test_identity import snapshot

MOTO_SERVE = Path(__file__).with_name("moto_serve.py")


cp = module_server(doc="One server for the module: each test looks only at its own nodes.")


def _record(cp: ControlPlane, node_id: str) -> dict:
    with cp.client("operator") as ops:
        return next(n for n in ops.get("/v1/nodes").json()["nodes"] if n["id"] == node_id)


# -- idempotent registration (X-Node-Credential on the first call too) --------------------


def test_a_lost_first_reply_is_retried_into_the_same_node(cp: ControlPlane) -> None:
    """The agent's own credential, sent on its first call, is bound: the retry after a
    lost reply gets the same node, still active, and that credential works."""
    credential, key = secrets.token_urlsafe(32), wg_key()
    identity = cp.identity()
    first = cp.register_reply(identity=identity, credential=credential, public_key=key)
    assert first.status_code == 201, first.text
    node_id = first.json()["node_id"]
    assert first.json()["node_credential"] == credential, "the agent's own, bound"
    for _ in range(3):  # the reply was lost; the agent retries, same credential
        again = cp.register_reply(identity=identity, credential=credential, public_key=key)
        assert again.status_code == 201 and again.json()["node_id"] == node_id
    record = _record(cp, node_id)
    assert (record["state"], record["drain_reason"], record["identity_refusals"]) == (
        "active", None, 0,
    )  # fmt: skip
    cp.credentials[node_id] = credential
    assert cp.heartbeat(node_id)["drain"] is False, "the credential is the node's"
    assert credential not in dump(cp.database_url), "stored only hashed"


def test_an_agent_without_the_header_still_gets_a_credential(cp: ControlPlane) -> None:
    """An older agent: no header on its first call; the reply holds a credential chosen
    by the control plane, which keeps the node after that."""
    node_id = cp.register()
    assert len(cp.credentials[node_id]) >= 43
    assert cp.register(cp.instances[node_id]) == node_id, "with the credential it was given"


@pytest.mark.parametrize("credential", ["short", "x" * 65, "no+slash/" * 5, "A" * 42 + "="])
def test_a_malformed_credential_header_is_400(cp: ControlPlane, credential: str) -> None:
    before = snapshot(cp)
    reply = cp.register_reply(credential=credential)
    assert reply.status_code == 400 and "x-node-credential" in reply.json()["detail"]
    assert snapshot(cp) == before


@pytest.mark.parametrize("presented", ["none", "a new agent's own"])
def test_a_reboot_is_identity_lost_and_the_409_names_no_node(
    cp: ControlPlane, presented: str
) -> None:
    """A reboot (tmpfs lost: an old agent sends nothing, a new one a fresh credential)
    and a replay look alike: 409 naming no node, and the node drains as identity_lost
    (reaped at once), not compromised."""
    node_id = cp.register()
    instance = cp.instances[node_id]
    reply = cp.register_reply(
        instance, credential=None if presented == "none" else secrets.token_urlsafe(32)
    )
    assert reply.status_code == 409
    assert "credential" in reply.json()["detail"]
    assert node_id not in reply.text and "node-" not in reply.text, "a replayer learns no id"
    record = _record(cp, node_id)
    assert (record["state"], record["drain_reason"]) == ("draining", "identity_lost")
    assert record["identity_refusals"] == 1
    assert cp.heartbeat(node_id)["drain_reason"] == "identity_lost", "the node is told"


def test_a_compromised_node_stays_compromised(cp: ControlPlane) -> None:
    node_id = cp.register()
    cp.heartbeat(node_id)
    assert cp.heartbeat(node_id, sysctl_ok=False)["drain_reason"] == "compromised"
    assert cp.register_reply(cp.instances[node_id]).status_code == 409
    assert _record(cp, node_id)["drain_reason"] == "compromised", "never softened"


# -- one key, one owner ----------------------------------------------------------------


def test_a_key_has_one_owner_across_nodes_clients_and_canary(cp: ControlPlane) -> None:
    a, b = cp.register(), cp.register()
    cp.heartbeat(a)
    cp.heartbeat(b)
    node_key = next(row[3] for row in snapshot(cp)["nodes"] if row[0] == a)
    client_key, canary_key = wg_key(), wg_key()
    with cp.client("client") as api:
        assert api.post("/v1/peers", json={"public_key": client_key}).status_code == 200
    with cp.client("operator") as ops:
        assert ops.post(f"/v1/nodes/{b}/canary", json={"public_key": canary_key}).status_code == 200
    before = snapshot(cp)
    clashes = {
        "node takes a client's key": lambda: cp.register_reply(public_key=client_key),
        "node takes the canary's key": lambda: cp.register_reply(public_key=canary_key),
        "node takes another node's key": lambda: cp.register_reply(public_key=node_key),
        "node b moves to a client's key": lambda: cp.register_reply(
            cp.instances[b], credential=cp.credentials[b], public_key=client_key
        ),
    }
    with cp.client("client") as api:
        for owner, key in (("node", node_key), ("canary", canary_key)):
            clashes[f"client takes a {owner}'s key"] = lambda key=key: api.post(
                "/v1/peers", json={"public_key": key}
            )
        with cp.client("operator") as ops:
            for owner, key in (("node", node_key), ("client", client_key)):
                clashes[f"canary takes a {owner}'s key"] = lambda key=key: ops.post(
                    f"/v1/nodes/{a}/canary", json={"public_key": key}
                )
            replies = {what: send() for what, send in clashes.items()}
    for what, reply in replies.items():
        assert reply.status_code == 409, what
        assert reply.json()["detail"].startswith("public key in use by"), what
    assert replies["client takes a node's key"].json()["detail"] == "public key in use by a node"
    assert snapshot(cp) == before, "nothing half written"


def test_the_database_itself_refuses_a_second_owner(cp: ControlPlane) -> None:
    """Not a check in this process: any writer of the database is refused."""
    node_id = cp.register()
    node_key = next(row[3] for row in snapshot(cp)["nodes"] if row[0] == node_id)
    for kind in ("client", "canary"):  # what the store writes with a client or canary
        with pytest.raises(sa.exc.IntegrityError):
            sql(cp.database_url, "INSERT INTO key_owners (public_key, kind, slot) "
                "VALUES (:key, :kind, 999)", {"key": node_key, "kind": kind})  # fmt: skip


# -- delete means revoke ---------------------------------------------------------------


def test_a_node_that_still_runs_is_not_deleted(cp: ControlPlane) -> None:
    node_id = cp.register()
    cp.heartbeat(node_id)
    with cp.client("operator") as ops:
        ops.post("/node/drain", json={"id": node_id, "reason": "manual"})
        refused = ops.delete(f"/v1/nodes/{node_id}")
        assert refused.status_code == 409 and "still runs" in refused.json()["detail"]
        assert cp.heartbeat(node_id)["drain"] is True, "still known, still told to drain"
        deleted = ops.delete(f"/v1/nodes/{node_id}", params={"terminated": "true"})
        assert deleted.status_code == 204, "the reaper terminated it"


REGION, STACK = "eu-central-1", "staging"


@pytest.fixture
def moto_group(monkeypatch):
    """The stack's group with one instance, and another team's, in moto (this process)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        yield make_groups(1)


def test_delete_force_terminates_through_the_fleet_first(cp: ControlPlane, moto_group) -> None:
    """``idra nodes delete --force``: the stack's own instance is terminated (in moto)
    before the record goes; another team's instance is never touched."""
    (own, _), (other, _) = moto_group["own"][0], moto_group["other"][0]
    ours, theirs = cp.register(own, REGION), cp.register(other, REGION)
    for node_id in (ours, theirs):
        cp.heartbeat(node_id)
    token = str(cp.log.parent / "operator.token")
    connection = ["--api-url", cp.url, "--operator-token-file", token]
    runner = CliRunner()

    def delete(node_id: str, *args: str):
        return runner.invoke(nodes, ["delete", node_id, "--yes", *connection, *args])

    assert delete(ours, "--force").exit_code == 2, "--fleet aws needs --stack"
    refused = delete(ours)
    assert refused.exit_code == 1 and "still active" in refused.output
    foreign = delete(theirs, "--force", "--stack", STACK)
    assert foreign.exit_code == 1 and "not terminated" in foreign.output, foreign.output
    done = delete(ours, "--force", "--stack", STACK)
    assert done.exit_code == 0, done.output
    assert "terminated; deleted" in done.output
    ec2 = boto3.client("ec2", region_name=REGION)
    described = ec2.describe_instances(InstanceIds=[own, other])["Reservations"]
    states = {i["InstanceId"]: i["State"]["Name"] for r in described for i in r["Instances"]}
    assert states[own] in ("shutting-down", "terminated") and states[other] == "running"
    with cp.client("operator") as ops:
        left = {n["id"] for n in ops.get("/v1/nodes").json()["nodes"]}
    assert ours not in left and theirs in left
    assert cp.register_reply(own, REGION, credential=cp.credentials[ours]).status_code == 409


# -- AWS verification: the default, cached and rate-limited -----------------------------


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    for kind in ("node", "operator", "client"):
        token = write_token(tmp_path / kind, f"{kind}-token-long-enough")
        args += (f"--{kind}-token-file", str(token))
    return subprocess.run(
        [sys.executable, "-m", "idra.cli", "controlplane", "serve", "--db",
         str(tmp_path / "db"), "--listen", "127.0.0.1:1", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--verify-with-aws --stack"),
        (("--verify-with-aws",), "needs --stack"),
        (("--verify-with-aws", "--stack", "s", "--insecure-skip-aws-verify"), "exclude"),
    ],
)
def test_serve_verifies_with_aws_unless_told_otherwise(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = _serve(tmp_path, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "db").exists(), "nothing half made"


def test_the_insecure_flag_is_said_out_loud(cp: ControlPlane) -> None:
    cp.register()
    warnings = [line for line in cp.log.read_text().splitlines() if "insecure" in line]
    assert len(warnings) == 1 and "any instance" in warnings[0]


@pytest.fixture
def aws_cp(tmp_path: Path):
    """The real serve with --verify-with-aws, boto3 answered by moto in its process."""
    instances, calls = tmp_path / "instances.json", tmp_path / "aws-calls"
    calls.touch()
    server = start(
        tmp_path, aws=("--verify-with-aws", "--stack", STACK), entry=(str(MOTO_SERVE),),
        env={"MOTO_INSTANCES": str(instances), "MOTO_CALLS": str(calls), "MOTO_OWN": "3",
             "MOTO_STACK": STACK},
    )  # fmt: skip
    try:
        yield server, json.loads(instances.read_text()), lambda: len(calls.read_text().split())
    finally:
        server.process.terminate()
        server.process.wait(10)


def test_aws_answers_are_cached_and_calls_rate_limited(aws_cp) -> None:
    cp, instances, calls = aws_cp
    (own, own_ip), (spare, spare_ip), (third, _) = instances["own"]
    other, other_ip = instances["other"][0]

    node_id = cp.register(own, REGION, own_ip)
    assert calls() == 2, "DescribeInstances and DescribeAutoScalingInstances"
    assert cp.register(own, REGION, own_ip) == node_id
    assert calls() == 2, "bound, same address: AWS is not asked again"

    for _ in range(5):  # another team's instance, replayed
        reply = cp.register_reply(other, REGION, other_ip)
        assert reply.status_code == 403 and "not idra-" in reply.json()["detail"]
    assert calls() == 4, "a refusal is cached too"

    moved = cp.register_reply(own, REGION, spare_ip, credential=cp.credentials[node_id])
    assert moved.status_code == 403 and "public_ip" in moved.json()["detail"], "re-checked"
    assert calls() == 6
    assert _record(cp, node_id)["public_ip"] == own_ip, "the address did not move"

    statuses = [cp.register_reply(third, REGION, f"198.51.100.{n}").status_code for n in range(6)]
    assert statuses[:3] == [403] * 3, "an address that is not its own (each one asked)"
    assert statuses[3:] == [503] * 3, "then the instance's rate limit"
    assert calls() == 12
    assert cp.register(spare, REGION, spare_ip), "other instances are not held up"
    assert calls() == 14


def test_cache_lifetimes_and_the_total_limit(moto_group) -> None:
    """In process, on a clock of our own: an admission is kept 5 min, a refusal 30 s, and
    the whole process asks AWS no faster than its total limit."""
    now, calls = [0.0], []

    def client(service: str, region: str):
        made = boto3.client(service, region_name=region)
        made.meta.events.register("before-call", lambda model, **_: calls.append(model.name))
        return made

    confirm = AwsConfirm(STACK, client=client, clock=lambda: now[0], total=(2, 1.0))
    (own, own_ip), (other, other_ip) = moto_group["own"][0], moto_group["other"][0]

    def check(instance_id: str, public_ip: str) -> str | None:
        return confirm(Identity(instance_id, REGION, LAB_ACCOUNT), public_ip)

    assert check(own, own_ip) is None and len(calls) == 2
    assert "not idra-" in check(other, other_ip) and len(calls) == 4
    with pytest.raises(AwsUnavailable, match="rate limited"):
        check("i-0123456789abcdef0", own_ip)
    assert len(calls) == 4, "the total limit: no call made"
    now[0] = NEGATIVE_TTL_S + 1
    assert "not idra-" in check(other, other_ip) and len(calls) == 6, "a refusal expires"
    assert check(own, own_ip) is None and len(calls) == 6, "an admission is still cached"
    now[0] = POSITIVE_TTL_S + 1
    assert check(own, own_ip) is None and len(calls) == 8, "and expires too"
