"""``idra ops run``: the lease (two loops never act at once; the standby takes over after
expiry), the canary's confirmations (a replaced loop carries on), supervision (a failing
pass never ends the loop) and the metrics of each pass.

The loops are real ``idra`` subprocesses against the real control plane, which holds
their lease and the canary's confirmations (``/v1/ops/…``); their AWS calls (CloudWatch,
Auto Scaling) go to moto's server mode on 127.0.0.1 (``AWS_ENDPOINT_URL``). The canary
asks the test's DNS blocklist server on loopback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import httpx
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from idra.config import OPS_NAMESPACE, REPO_ROOT
from idra.lifecycle import metrics
from idra.lifecycle.api import OperatorApi
from idra.lifecycle.ops import Lease, Ops, Pass
from tests.controlplane.conftest import free_port, sql, start

from .dns_server import start as start_dns

REGION = "eu-central-1"  # staging's primary region
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
ZONE = "zen.test.example"


def test_lease_over_the_api(cp) -> None:
    api = OperatorApi(cp.url, cp.tokens["operator"])
    a, b = Lease(api, "a", 30), Lease(api, "b", 30)
    assert a.acquire() and a.acquire() and not b.acquire()
    b.release()
    assert not b.acquire(), "b's release leaves a's lease"
    a.release()
    assert b.acquire(), "released: taken at once"
    assert sql(cp.database_url, "SELECT name, holder FROM ops_leases") == [("ops", "b")]


def test_a_failing_pass_never_ends_the_loop(cp, monkeypatch) -> None:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    ran: list[str] = []

    def broken() -> str:
        ran.append("broken")
        raise RuntimeError("control plane down")

    def fine() -> str:
        ran.append("fine")
        return "ok"

    with mock_aws():
        cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        lease = Lease(OperatorApi(cp.url, cp.tokens["operator"]), "me", 30)
        loop = Ops("staging", lease, cloudwatch,
                   [Pass("broken", 0.01, broken), Pass("fine", 0.01, fine)], tick=0.02,
                   values={metrics.CANARY_LISTED: 2})  # fmt: skip
        loop.run(threading.Event(), ticks=3)
        listed = cloudwatch.list_metrics(Namespace=OPS_NAMESPACE)["Metrics"]
    assert ran == ["broken", "fine"] * 3
    assert {m["MetricName"] for m in listed} == {metrics.HEARTBEAT, metrics.CANARY_LISTED}
    assert sql(cp.database_url, "SELECT * FROM ops_leases") == [], "a clean stop releases it"


@pytest.fixture
def moto_server():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    # The server shares moto's in-process state: start from an empty account.
    httpx.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
    yield url
    server.stop()


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


EVERY = ("0.5", "0.5", "0.5")  # canary, rollout, reaper (seconds)


def _loop(tmp: Path, name: str, cp, endpoint: str, *extra: str,
          every: tuple[str, str, str] = EVERY) -> tuple[subprocess.Popen, Path]:  # fmt: skip
    log = tmp / f"{name}.log"
    env = os.environ | CREDENTIALS | {"AWS_ENDPOINT_URL": endpoint, "IDRA_LOG_FORMAT": "text"}
    canary, rollout, reap = every
    process = subprocess.Popen(
        [sys.executable, "-m", "idra.cli", "ops", "run", "--stack", "staging",
         "--cwd", str(REPO_ROOT), "--api-url", cp.url,
         "--operator-token-file", str(tmp / "operator.token"), "--holder", name,
         "--canary-every", canary, "--rollout-every", rollout, "--reap-every", reap,
         "--lease-seconds", "2", *extra],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    return process, log


def _passes(log: Path, kind: str = "reaper") -> int:
    return len(re.findall(rf"ops {kind} pass: ", log.read_text()))


def _wait(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _stop(*processes) -> None:
    for process in processes:
        if process and process.poll() is None:
            process.kill()
            process.wait(10)


def test_two_loops_exactly_one_acts_and_the_other_takes_over(tmp_path: Path, cp, moto_server):
    a, a_log = _loop(tmp_path, "ops-a", cp, moto_server)
    b = None
    try:
        _wait(lambda: _passes(a_log) >= 2)
        b, b_log = _loop(tmp_path, "ops-b", cp, moto_server)
        _wait(lambda: b_log.read_text().count("standby") >= 4)
        before = _passes(a_log)
        time.sleep(1.5)
        assert _passes(a_log) > before, "a keeps acting"
        assert _passes(b_log) == 0, b_log.read_text()
        a.send_signal(signal.SIGKILL)  # no clean release: b must wait for the expiry
        a.wait(10)
        killed = time.monotonic()
        _wait(lambda: _passes(b_log) >= 1)
        assert time.monotonic() - killed < 2 + 2, "b took over within lease + tick"
        assert "took the lease as ops-b" in b_log.read_text()
        for kind in ("canary", "rollout", "reaper"):
            assert f"ops {kind} pass: " in b_log.read_text(), kind
        cloudwatch = boto3.client("cloudwatch", region_name=REGION,
                                  endpoint_url=moto_server, **_keys())  # fmt: skip
        listed = cloudwatch.list_metrics(Namespace=OPS_NAMESPACE)["Metrics"]
        assert {m["MetricName"] for m in listed} == {metrics.HEARTBEAT, *metrics.PASS_METRICS}
        assert all(m["Dimensions"] == [{"Name": "Stack", "Value": "staging"}] for m in listed)
        b.send_signal(signal.SIGTERM)
        assert b.wait(10) == 0
        assert "lease released" in b_log.read_text()
        assert sql(cp.database_url, "SELECT * FROM ops_leases") == []
        assert cp.tokens["operator"] not in a_log.read_text() + b_log.read_text()
    finally:
        _stop(a, b)


def test_a_replaced_loop_resumes_the_canarys_confirmations(tmp_path: Path, cp, moto_server):
    """Loop 1 sees the node listed once and is killed; loop 2, a new process with another
    holder, drains it on its own first canary pass: the first listing came from the
    control plane, not from anything loop 2 saw."""
    listed_ip, clean_ip = "203.0.113.70", "203.0.113.71"
    node = cp.register(region=REGION, public_ip=listed_ip)
    cp.register(region=REGION, public_ip=clean_ip)
    dns, behaviours, _, address = start_dns(ZONE)
    behaviours[listed_ip] = "listed"
    dnsbl = ("--dnsbl", ZONE, "--nameserver", address)
    first = second = None
    try:
        # one canary pass (then not for a minute), the other passes each tick
        first, first_log = _loop(tmp_path, "ops-1", cp, moto_server, *dnsbl,
                                 every=("60", "0.5", "0.5"))  # fmt: skip
        _wait(lambda: _passes(first_log, "canary") == 1)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        once = f"ops canary pass: 2 active, 1 listed ({ZONE} 1), 0 errors, 0 drained"
        assert once in first_log.read_text()
        with cp.client("operator") as ops:
            assert ops.get("/v1/ops/canary").json() == {"listed_runs": {node: 1}}
            assert ops.get(f"/v1/nodes/{node}").json()["state"] == "active"

        second, second_log = _loop(tmp_path, "ops-2", cp, moto_server, *dnsbl,
                                   every=("60", "0.5", "0.5"))  # fmt: skip
        _wait(lambda: _passes(second_log, "canary") == 1)
        twice = f"ops canary pass: 2 active, 1 listed ({ZONE} 1), 0 errors, 1 drained"
        assert twice in second_log.read_text()
        with cp.client("operator") as ops:
            drained = ops.get(f"/v1/nodes/{node}").json()
            assert (drained["state"], drained["drain_reason"]) == ("draining", "blocked")
            assert ops.get("/v1/ops/canary").json() == {"listed_runs": {}}, "drained: cleared"
        assert listed_ip not in first_log.read_text() + second_log.read_text()
    finally:
        _stop(first, second)
        dns.stop()


def test_fetch_token_writes_the_operator_token_owner_only(tmp_path: Path, moto_server) -> None:
    """What the ops instance's boot runs, through the installed entry point."""
    token = "operator-" + os.urandom(12).hex()
    secrets = boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto_server,
                           **_keys())  # fmt: skip
    secrets.create_secret(Name="idra/staging/OPERATOR_TOKEN", SecretString=token)
    env = os.environ | CREDENTIALS | {"AWS_ENDPOINT_URL": moto_server}
    out = tmp_path / "run" / "token"
    idra = str(Path(sys.executable).parent / "idra")
    fetch = [idra, "ops", "fetch-token", "--region", REGION, "--out", str(out), "--attempts", "1"]
    done = subprocess.run([*fetch, "--secret-id", "idra/staging/OPERATOR_TOKEN"], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_text() == token and out.stat().st_mode & 0o777 == 0o600
    assert token not in done.stdout + done.stderr
    missing = subprocess.run([*fetch, "--secret-id", "idra/staging/NOPE"], env=env,
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].endswith("ResourceNotFoundException")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stack", "nope"], "Pulumi.nope.yaml: no such stack file"),
        (["--stack", "staging", "--reap-every", "5", "--lease-seconds", "5"],
         "the lease (5s) must outlast a tick (5s)"),
        (["--stack", "staging", "--api-url", "http://api.example"], "must be https://"),
        (["--stack", "staging", "--fleet", "gcp"], "Invalid value for '--fleet': 'gcp'"),
        (["--stack", "staging", "--fleet", "lab", "--rollout-every", "5"],
         "--rollout-every: no rollout pass with --fleet lab"),
        (["--stack", "staging", "--probes", "/nonexistent/probes.yaml"],
         "--probes /nonexistent/probes.yaml: No such file or directory"),
        (["--stack", "staging", "--probes", "{probes}"], "--probes: give --key-file"),
        (["--stack", "staging", "--probes", "{probes}", "--key-file", "{probes}",
          "--tunnel-dns", "dns.example"], "--tunnel-dns dns.example: not an IP address"),
        (["--stack", "staging", "--holder", "two words"], "--holder: 1-128 printable"),
        (["--stack", "staging", "--lease-seconds", "0.5"], "--lease-seconds"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    token = tmp_path / "operator.token"
    token.write_text("x" * 32)
    token.chmod(0o600)
    probes = tmp_path / "probes.yaml"
    probes.write_text("targets: []\n")
    args = [a.format(probes=probes) for a in args]
    base = ["--cwd", str(REPO_ROOT), "--api-url", "https://api.example",
            "--operator-token-file", str(token)]  # fmt: skip
    idra = str(Path(sys.executable).parent / "idra")
    done = subprocess.run([idra, "ops", "run", *base, *args], capture_output=True, text=True,
                          check=False, env=os.environ | CREDENTIALS)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr


def test_the_lab_fleet_needs_no_aws(tmp_path: Path) -> None:
    """``--fleet lab``: no rollout pass, no CloudWatch, the lab's fleet backend (an
    instance the lab does not run is already gone: the drained record is forgotten).
    Every AWS call would fail here: no credentials, an endpoint nobody listens on."""
    cp = start(tmp_path)
    node = cp.register("i-0a1b2c3d4e5f60001", region=REGION)
    cp.heartbeat(node, active_peers=0)
    with cp.client("operator") as operator:
        assert (
            operator.post("/node/drain", json={"id": node, "reason": "manual"}).status_code == 202
        )
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    (lab_dir / "state.json").write_text(
        '{"status": "up", "processes": [], "nodes": [], "clients": []}'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "IDRA_LAB_DIR": str(lab_dir)}
    idra = str(Path(sys.executable).parent / "idra")
    try:
        done = subprocess.run(
            [idra, "ops", "run", "--fleet", "lab", "--stack", "staging", "--cwd", str(REPO_ROOT),
             "--api-url", cp.url, "--operator-token-file", str(tmp_path / "operator.token"),
             "--holder", "lab-test", "--dnsbl", "zone.invalid", "--ticks", "1"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        with cp.client("operator") as operator:
            left = operator.get("/v1/nodes").json()["nodes"]
    finally:
        cp.process.terminate()
        cp.process.wait(10)
    log = done.stderr
    assert done.returncode == 0, log
    assert "(lab fleet: canary, reaper)" in log
    assert "ops canary pass: 0 active, 0 listed, 0 errors, 0 drained" in log
    assert "ops reaper pass: 1 draining, 1 terminating, 0 failed or refused" in log
    assert "rollout" not in log.replace("--rollout", "") and "metrics" not in log
    assert not re.search(r"Traceback| error | warning ", log), log
    assert left == [], "the lab fleet said the instance is gone: the record went"
