"""Control-plane hardening from the node-identity review (issue 13): bounded numbers,
no NaN, a 0600 database, short-lived change rows, documented error codes, bad CLI input,
and the optional AWS check on moto."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from idra.controlplane import auth
from idra.controlplane.app import Settings, create_app
from idra.controlplane.aws import AwsConfirm
from idra.controlplane.identity import TrustedCert, Verifier
from idra.controlplane.store import Pool, Store
from idra.lab.pki import LAB_ACCOUNT, IdentitySigner

from .conftest import ControlPlane, database_url, dump, sql, start, wg_key, write_token
from .test_identity import heartbeat_body, register_body

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("where", "value"),
    [("active_peers", 2**63), ("peers", -1), ("rx_bytes", 2**64), ("load1", "NaN"),
     ("cpu_pct", "Infinity"), ("tx_bps", "-Infinity"), ("rx_bps", 1e300)],
)  # fmt: skip
def test_numbers_are_bounded_and_finite(cp: ControlPlane, where: str, value) -> None:
    node = cp.register()
    body = heartbeat_body()
    body["stats"][where] = "__VALUE__"
    raw = str(body).replace("'", '"').replace("True", "true").replace('"__VALUE__"', str(value))
    with cp.client(node) as http:
        json_type = {"Content-Type": "application/json"}
        reply = http.post(f"/v1/nodes/{node}/heartbeat", content=raw, headers=json_type)
        assert reply.status_code == 400, reply.text
        assert where in reply.json()["detail"]
        assert http.get(f"/v1/nodes/{node}/peers", params={"since": 2**63}).status_code == 400
        ok = http.post(f"/v1/nodes/{node}/heartbeat", json=heartbeat_body())
    assert ok.status_code == 200, "the same body with a sane number is fine"


@pytest.mark.only_on("sqlite")
def test_database_is_created_0600(cp: ControlPlane) -> None:
    cp.heartbeat(cp.register())
    files = [cp.db, Path(f"{cp.db}-wal"), Path(f"{cp.db}-shm")]
    assert {path.stat().st_mode & 0o777 for path in files} == {0o600}


def test_removed_keys_leave_the_change_log(tmp_path) -> None:
    """With --change-retention, a removed client's key stays only that long; a node
    asking from before gets the full list (so the removal still reaches it)."""
    server = start(tmp_path, "--change-retention", "1")
    try:
        node = server.register()
        server.heartbeat(node)
        gone, kept = wg_key(), wg_key()
        with server.client("client") as api:
            for key in (gone, kept):
                assert api.post("/v1/peers", json={"public_key": key}).status_code == 200
            assert api.delete(f"/v1/peers/{gone}").status_code == 204
        assert sql(server.database_url, "SELECT COUNT(*) FROM changes WHERE public_key = :k",
                   {"k": gone})  # fmt: skip
        time.sleep(1.5)
        server.heartbeat(node)  # any write prunes
        assert gone not in dump(server.database_url), "the removed key is forgotten"
        with server.client(node) as http:
            reply = http.get(f"/v1/nodes/{node}/peers", params={"since": 1}).json()
        assert reply["full"] and [p["public_key"] for p in reply["peers"]] == [kept]
    finally:
        server.process.terminate()
        server.process.wait(10)


def test_error_codes_match_the_schema_and_the_docs(cp: ControlPlane) -> None:
    with cp.client("operator") as ops:
        schema = ops.get("/openapi.json").json()
    documented = (REPO / "docs" / "node-api.md").read_text()
    table = dict(re.findall(r"^\| \*\*(\d{3})\*\* \| (.+?) \|$", documented, re.MULTILINE))
    assert set(map(int, table)) == set(auth.ERRORS), "docs/node-api.md lists every code"
    seen = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = {int(c) for c in operation["responses"] if c[0] in "45"}
            assert {401, 413} <= codes, f"{method} {path}"
            assert operation["security"], f"{method} {path} names its credential"
            seen |= codes
    assert seen == set(auth.ERRORS), "no undocumented code (FastAPI's 422 is our 400)"
    assert set(schema["components"]["securitySchemes"]) == set(auth.SCHEMES.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--iid-cert-file", "/nonexistent.pem", "--aws-account", LAB_ACCOUNT], "nonexistent"),
        (["--iid-cert-file", "CERT"], "needs at least one --aws-account"),
        (["--iid-cert-file", "CERT", "--aws-account", "12"], "expected 12 digits"),
        (["--iid-cert-file", "Mars=CERT", "--aws-account", LAB_ACCOUNT], "not a region"),
        (["--iid-cert-file", "KEY", "--aws-account", LAB_ACCOUNT], "--iid-cert-file"),
        (["--verify-with-aws"], "needs --stack"),
        (["--allow-public-ip-range", "300.0.0.0/8"], "--allow-public-ip-range"),
    ],
)
def test_serve_refuses_bad_identity_options(tmp_path, args: list[str], message: str) -> None:
    signer = IdentitySigner()
    cert, key = signer.write_cert(tmp_path / "c.pem"), signer.write_key(tmp_path / "k.pem")
    args = [a.replace("CERT", str(cert)).replace("KEY", str(key)) for a in args]
    if "--verify-with-aws" not in args:
        args.append("--insecure-skip-aws-verify")  # as documented: only the bad option is wrong
    for kind in ("node", "operator", "client"):
        token = write_token(tmp_path / kind, f"{kind}-token-long-enough")
        args += [f"--{kind}-token-file", str(token)]
    result = subprocess.run(
        [sys.executable, "-m", "idra.cli", "controlplane", "serve", "--db",
         str(tmp_path / "db"), "--listen", "127.0.0.1:1", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "db").exists(), "nothing half made"


# -- --verify-with-aws, on moto ----------------------------------------------------------

REGION, STACK = "eu-central-1", "staging"
GROUP = f"idra-{STACK}-{REGION}"


@pytest.fixture
def moto_groups(monkeypatch):
    """The stack's group (tagged as infra tags it) and another team's, in moto."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        asg = boto3.client("autoscaling", region_name=REGION)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        ec2.create_launch_template(LaunchTemplateName="node", LaunchTemplateData={"ImageId": image})
        tags = {"environment": STACK, "role": "exit-node", "project": "idra"}
        for name, tagged in ((GROUP, tags), ("other-team", {})):
            asg.create_auto_scaling_group(
                AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": "node"},
                MinSize=1, MaxSize=1, DesiredCapacity=1, AvailabilityZones=[f"{REGION}a"],
                Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True}
                      for k, v in tagged.items()],
            )  # fmt: skip

        def instance(group: str) -> tuple[str, str]:
            found = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])
            instance_id = found["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
            described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
            return instance_id, described[0]["Instances"][0]["PublicIpAddress"]

        yield instance, ec2


def test_verify_with_aws_admits_only_the_stacks_running_instances(tmp_path, moto_groups) -> None:
    """The real app in process (moto patches boto3 here, not in a child process)."""
    instance, ec2 = moto_groups
    signer = IdentitySigner()
    verifier = Verifier([TrustedCert(signer.cert.public_key(), None)], frozenset({LAB_ACCOUNT}))
    tokens = {"node": "n" * 20, "operator": "o" * 20, "client": "c" * 20}
    settings = Settings(tokens, verifier=verifier, confirm=AwsConfirm(STACK))
    pool = Pool(ipaddress.IPv4Network("10.96.0.0/12"), ipaddress.IPv6Network("fd49::/64"))
    store = Store(database_url(tmp_path), pool)
    http = TestClient(create_app(store, settings), headers={"Authorization": "Bearer " + "n" * 20})

    def register(instance_id: str, public_ip: str):
        document = IdentitySigner.document(instance_id, REGION)
        identity = {"document": document, "signature": signer.sign(document)}
        return http.post("/v1/nodes", json=register_body(None, identity, public_ip=public_ip))

    own, own_ip = instance(GROUP)
    other, other_ip = instance("other-team")
    refused = {
        "another group": register(other, other_ip),
        "someone else's address": register(own, other_ip),
        "no such instance": register("i-0123456789abcdef0", own_ip),
    }
    for why, reply in refused.items():
        assert reply.status_code == 403, why
    assert "not " + GROUP in refused["another group"].json()["detail"]
    assert store.nodes() == [], "nothing joined"
    assert register(own, own_ip).status_code == 201
    ec2.terminate_instances(InstanceIds=[own])
    store.delete_node(store.nodes()[0]["id"])
    assert register(own, own_ip).status_code == 409, "retired, and not running anyway"
