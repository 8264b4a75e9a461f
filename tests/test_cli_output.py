"""What ``idra`` prints, through the installed entry point against a real control plane:
tables off a terminal (empty ones too: the cron case) and on one, ``-o
table|wide|json|yaml``, ``--no-headers``, and one JSON shape for a node everywhere."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from idra.config import REPO_ROOT
from tests.controlplane.conftest import ControlPlane, module_server

IDRA = str(Path(sys.executable).parent / "idra")
NO_AWS = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_CONFIG_FILE": "/nonexistent",
}
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def env_for(cp: ControlPlane) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("IDRA_", "AWS_"))}
    return (
        base
        | NO_AWS
        | {
            "IDRA_API_URL": cp.url,
            "IDRA_OPERATOR_TOKEN_FILE": str(cp.log.parent / "operator.token"),
        }
    )


def idra(cp: ControlPlane, *args: str, cwd: Path = REPO_ROOT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([IDRA, *args], capture_output=True, text=True, env=env_for(cp),
                          cwd=cwd, timeout=60, **kw)  # fmt: skip


def on_a_terminal(cp: ControlPlane, *args: str, answer: str = "", columns: int = 100) -> str:
    """Run ``idra`` with stdin, stdout and stderr on a pseudo-terminal ``columns`` wide;
    type ``answer``; return everything it printed (colours removed)."""
    import fcntl
    import termios

    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = env_for(cp) | {"COLUMNS": str(columns), "TERM": "xterm"}
    process = subprocess.Popen([IDRA, *args], stdin=side, stdout=side, stderr=side, env=env,
                               cwd=REPO_ROOT)  # fmt: skip
    os.close(side)
    if answer:
        os.write(main, answer.encode())
    chunks, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif process.poll() is not None:
            break
    os.close(main)
    process.wait(10)
    text = b"".join(chunks).decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


empty = module_server(doc="A control plane that never gets a node.")


EMPTY = {
    "nodes list": (["nodes", "list", "--region", "nowhere"], "0 nodes", "id"),
    "canary": (["canary"], "canary: 0 active nodes", "node"),
    "reap": (["reap", "--fleet", "aws", "--stack", "staging"], "reap: 0 draining nodes", "node"),
    "rollout": (["rollout", "--stack", "staging", "--dry-run"], "idra rollout", "node"),
}


@pytest.mark.parametrize("name", EMPTY)
def test_an_empty_table_off_a_terminal(empty: ControlPlane, name: str) -> None:
    """The cron case: nothing to show is a title and a header line, exit 0."""
    args, title, first = EMPTY[name]
    result = idra(empty, *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert STAMP.match(lines[0]) and lines[0].endswith(" " + title), lines
    assert lines[1].split()[0] == first and len(lines) == 2
    assert idra(empty, *args, "--no-headers").stdout == ""
    assert json.loads(idra(empty, *args, "--json").stdout) == []
    assert yaml.safe_load(idra(empty, *args, "-o", "yaml").stdout) == []


def test_node_objects_have_the_keys_of_the_api_everywhere(cp: ControlPlane) -> None:
    """list, show, drain and delete print the same node object: the keys of GET
    /v1/nodes, times as UTC ISO-8601; GET /v1/nodes/{id} is one element of the list."""
    node = cp.register("i-shape", region="eu-central-1")
    cp.heartbeat(node, active_peers=1)
    with cp.client("operator") as ops:
        (server,) = ops.get("/v1/nodes").json()["nodes"]
        assert ops.get(f"/v1/nodes/{node}").json() == server
        missing = ops.get("/v1/nodes/node-nope")
        assert missing.status_code == 404 and missing.json()["detail"] == "no such node"
    listed = json.loads(idra(cp, "nodes", "list", "--json").stdout)
    assert isinstance(listed, list) and list(listed[0]) == list(server)
    for key in ("last_heartbeat_at", "registered_at"):
        assert ISO.match(listed[0][key])
        assert abs(dt.datetime.fromisoformat(listed[0][key]).timestamp() - server[key]) < 1
    assert listed[0]["drain_started_at"] is None
    shown = json.loads(idra(cp, "nodes", "show", node, "-o", "json").stdout)
    assert shown == listed[0]
    assert yaml.safe_load(idra(cp, "nodes", "show", node, "-o", "yaml").stdout) == shown
    assert yaml.safe_load(idra(cp, "nodes", "list", "-o", "yaml").stdout) == listed
    drained = json.loads(idra(cp, "nodes", "drain", node, "--yes", "--json").stdout)
    assert [list(n) for n in drained] == [list(server)]
    assert drained[0]["state"] == "draining" and ISO.match(drained[0]["drain_started_at"])
    silent = cp.register("i-0000051e7")  # never heartbeats: nothing runs, delete may forget it
    assert idra(cp, "nodes", "drain", silent, "--yes").returncode == 0
    deleted = json.loads(idra(cp, "nodes", "delete", silent, "--yes", "--json").stdout)
    assert [n["id"] for n in deleted] == [silent] and list(deleted[0]) == list(server)


def test_tables_show_relative_times_and_wide_columns(cp: ControlPlane) -> None:
    node = cp.register("i-times", region="eu-central-1", public_ip="203.0.113.44")
    cp.heartbeat(node)
    table = idra(cp, "nodes", "list").stdout.splitlines()
    assert table[0].endswith(" 1 node"), "one node, not '1 nodes'"
    row = table[2].split()
    assert row[0] == node and re.search(r"\d+ s ago", table[2]) and "i-times" not in table[2]
    wide = idra(cp, "nodes", "list", "-o", "wide").stdout
    assert "i-times" in wide and "203.0.113.44" in wide and "identity refused" in wide
    assert idra(cp, "nodes", "list", "--no-headers").stdout.split()[0] == node
    shown = idra(cp, "nodes", "show", node).stdout
    heard = next(line for line in shown.splitlines() if line.startswith("last_heartbeat_at"))
    assert re.search(r"\d{4}-\d\d-\d\dT\S+Z \(\d+ s ago\)$", heard), "not a raw epoch"


def test_a_terminal_table_never_cuts_the_region(cp: ControlPlane) -> None:
    node = cp.register("i-tty", region="eu-central-1")
    cp.heartbeat(node)
    for output in ("table", "wide"):
        shown = on_a_terminal(cp, "nodes", "list", "-o", output, columns=100)
        assert node in shown and "eu-central-1" in shown, shown
        assert "…" not in shown, shown


def test_json_and_another_output_is_one_line(cp: ControlPlane) -> None:
    result = idra(cp, "nodes", "list", "--json", "-o", "yaml")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--json and -o yaml" in result.stderr


def test_help_with_h() -> None:
    for args in ([], ["nodes"], ["nodes", "drain"]):
        result = subprocess.run([IDRA, *args, "-h"], capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.startswith("Usage: idra"), result


def _state(cp: ControlPlane, node: str) -> tuple[str, str | None]:
    with cp.client("operator") as ops:
        found = ops.get(f"/v1/nodes/{node}").json()
    return found["state"], found["drain_reason"]


def test_drain_and_delete_ask_on_a_terminal(cp: ControlPlane) -> None:
    node = cp.register("i-ask", region="eu-central-1")
    said_no = on_a_terminal(cp, "nodes", "drain", node, answer="n\n")
    assert f"will drain {node} (eu-central-1, active, 0 active peers)" in said_no
    assert "Drain 1 node? [y/N]" in said_no and "not confirmed" in said_no
    assert _state(cp, node) == ("active", None)
    said_yes = on_a_terminal(cp, "nodes", "drain", node, "--reason", "outdated", answer="y\n")
    assert f"{node} draining (outdated)" in said_yes
    assert _state(cp, node) == ("draining", "outdated")
    assert "not confirmed" in on_a_terminal(cp, "nodes", "delete", node, answer="\n")
    assert _state(cp, node)[0] == "draining", "the default answer is no"
    assert f"{node} deleted" in on_a_terminal(cp, "nodes", "delete", node, answer="y\n")


def test_a_drain_tells_the_reason_the_node_really_has(cp: ControlPlane) -> None:
    """A node already draining keeps its reason (only compromised overrides): the
    command says so instead of echoing the reason it was given."""
    node = cp.register("i-kept")
    assert idra(cp, "nodes", "drain", node, "--reason", "blocked", "--yes").returncode == 0
    again = idra(cp, "nodes", "drain", node, "--reason", "outdated", "--yes")
    assert again.returncode == 0
    assert again.stdout.strip() == f"{node} draining (blocked); already draining, reason " \
        "kept (only compromised overrides)"  # fmt: skip
    assert _state(cp, node) == ("draining", "blocked")
    worse = idra(cp, "nodes", "drain", node, "--reason", "compromised", "--yes")
    assert worse.stdout.strip() == f"{node} draining (compromised)"


def test_bulk_drain_by_selector_shows_first(cp: ControlPlane) -> None:
    eu = [cp.register(f"i-bulk{n}", region="eu-central-1") for n in range(2)]
    us = cp.register("i-bulkus", region="us-east-1")
    plan = idra(cp, "nodes", "drain", "--region", "eu-central-1", "--dry-run", "--json")
    assert sorted(n["id"] for n in json.loads(plan.stdout)) == sorted(eu)
    assert {_state(cp, n)[0] for n in [*eu, us]} == {"active"}, "a dry run changes nothing"
    refused = idra(cp, "nodes", "drain", "--region", "eu-central-1")
    assert refused.returncode == 2 and all(f"will drain {n}" in refused.stderr for n in eu)
    assert {_state(cp, n)[0] for n in eu} == {"active"}
    young = idra(cp, "nodes", "drain", "--region", "eu-central-1", "--older-than", "1h", "--yes")
    assert young.returncode == 0 and "no node matches" in young.stderr
    time.sleep(1.1)
    done = idra(cp, "nodes", "drain", "--region", "eu-central-1", "--older-than", "1s", "--yes",
                "--reason", "outdated", "-o", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(n["id"] for n in json.loads(done.stdout)) == sorted(eu)
    assert [_state(cp, n) for n in eu] == [("draining", "outdated")] * 2
    assert _state(cp, us) == ("active", None), "another region is not touched"


def test_drain_with_an_unknown_id_drains_none(cp: ControlPlane) -> None:
    """Every ID is looked up before any drain: one unknown id, nothing done."""
    node = cp.register("i-allornone")
    result = idra(cp, "nodes", "drain", node, "node-nope", "--yes")
    assert result.returncode == 1 and "node-nope: no such node" in result.stderr
    assert _state(cp, node) == ("active", None)


def test_only_the_server_command_loads_the_servers_libraries() -> None:
    """``idra controlplane`` is imported when asked for: other commands start without
    FastAPI, uvicorn, SQLAlchemy and Alembic (most of a start), and it still runs."""
    heavy = ("fastapi", "uvicorn", "sqlalchemy", "alembic")
    code = f"import sys, idra.cli; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"
    help_text = subprocess.run([IDRA, "controlplane", "serve", "--help"], capture_output=True,
                               text=True, timeout=60, check=True).stdout  # fmt: skip
    assert "--database-url" in help_text
