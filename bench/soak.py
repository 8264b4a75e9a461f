"""Soak: the packaged agent for N minutes (10 by default) against the scripted control
plane and IMDSv2 stand-in of tests/agent/scripted.py, which fail at random (every fault
they know, random lengths), while the control plane's peers change at random and a
real WireGuard client pings through the node. At the end: the agent alive, its RSS
bounded, the interface equal to the control plane's peers. Writes section 7 of
docs/benchmarks.md (needs root; run under the netns lock).

    .venv/bin/python -m bench.soak [--minutes 10]
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.run import DOC, SOAK, table
from idra.config import REPO_ROOT
from idra.netns import Netns, Topology, unique_name, wg_keypair
from tests.agent.scripted import (
    CP_FAULTS,
    IMDS_FAULTS,
    ScriptedControlPlane,
    ScriptedImds,
    random_key,
)

INTERVAL, BACKOFF_MAX, DEADLINE, BASE_PEERS = 1.0, 5.0, 3.0, 2000
CLIENT_IP = "10.96.0.2/32"
HEADING = SOAK


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{.*}})? (\S+)$", text, re.M))


def _dump(node: Netns, wg: str) -> dict[str, str]:
    lines = node.run("wg", "show", wg, "dump").stdout.splitlines()[1:]
    return {f[0]: f[3] for f in (line.split("\t") for line in lines)}


def _build(out: Path) -> Path:
    subprocess.run([sys.executable, str(REPO_ROOT / "agent" / "build.py"), "--out", str(out)],
                   check=True, capture_output=True)  # fmt: skip
    return out / "node-daemon.pyz"


def soak(minutes: float, seed: int) -> dict:
    rng = random.Random(seed)  # noqa: S311 - a reproducible fault schedule, not secrets
    cp, imds = ScriptedControlPlane(), ScriptedImds()
    with tempfile.TemporaryDirectory() as tmp, Topology("soak") as topo:
        work = Path(tmp)
        pyz = _build(work / "dist")
        node = topo.netns("node")
        wg = unique_name("wgn")
        topo.wireguard(node, wg)
        node.addr(wg, "10.96.0.1/12", "fd49:4452:4100::1/64")
        node.ip("link", "set", wg, "up")
        private, public = wg_keypair()
        desired = {public: [CLIENT_IP]}
        pool = [f"10.96.{8 + i // 250}.{i % 250 + 2}/32" for i in range(BASE_PEERS + 500)]
        desired |= {random_key(): [ip] for ip in pool[:BASE_PEERS]}
        cp.set_peers(desired)
        (work / "token").write_text("soak-token")
        (work / "sysctl.conf").write_text("")
        port = 19586
        agent = subprocess.Popen(
            [sys.executable, str(pyz), "run", "--api-url", cp.url, "--token-file",
             str(work / "token"), "--interface", wg, "--interface-netns", node.name,
             "--driver", "uapi", "--imds-url", imds.url, "--imds-deadline", str(DEADLINE),
             "--state-dir", str(work / "state"), "--heartbeat-interval", str(INTERVAL),
             "--backoff-max", str(BACKOFF_MAX), "--request-deadline", str(DEADLINE),
             "--max-reply-bytes", str(512 << 10),
             "--sysctl-file", str(work / "sysctl.conf"), "--metrics-addr", f"127.0.0.1:{port}"],
            stdout=(work / "agent.log").open("w"), stderr=subprocess.STDOUT,
            env={"SHIV_ROOT": str(work / "shiv"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while len(_dump(node, wg)) < len(desired) and time.monotonic() < deadline:
                time.sleep(0.5)
            client = topo.netns("client")
            topo.link(node, "c2", client, "eth0")
            node.addr("c2", "192.0.2.1/32")
            node.route("198.18.2.2/32", "dev", "c2")
            client.addr("eth0", "198.18.2.2/32")
            client.route("192.0.2.1/32", "dev", "eth0")
            cwg = unique_name("wgc")
            topo.wireguard(client, cwg)
            node_key = node.run("wg", "show", wg, "public-key").stdout.strip()
            client.run("wg", "set", cwg, "private-key", "/dev/stdin", "peer", node_key,
                       "endpoint", "192.0.2.1:51820", "allowed-ips", "10.96.0.0/12",
                       input=private)  # fmt: skip
            client.addr(cwg, CLIENT_IP)
            client.ip("link", "set", cwg, "up")
            client.route("10.96.0.0/12", "dev", cwg)
            client.run("ping", "-c", "3", "-i", "0.2", "10.96.0.1", check=False)
            ping = subprocess.Popen(
                client.exec_args("ping", "-n", "-q", "-i", "0.2", "-W", "1", "10.96.0.1"),
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            started = time.monotonic()
            end = started + minutes * 60
            rss: list[tuple[float, float]] = []
            injected: dict[str, int] = {}
            changes = 0
            while time.monotonic() < end:
                server, names = rng.choice([(cp, CP_FAULTS), (imds, IMDS_FAULTS)])
                fault = rng.choice(names)
                injected[fault] = injected.get(fault, 0) + 1
                server.set_fault(fault)
                fault_end = time.monotonic() + rng.uniform(0.5, 8)
                while time.monotonic() < fault_end:  # peers change during faults too
                    keys = [k for k in desired if k != public]
                    for key in rng.sample(keys, rng.randint(0, min(20, len(keys)))):
                        del desired[key]
                    used = {ips[0] for ips in desired.values()}
                    free = [ip for ip in pool if ip not in used]
                    for ip in rng.sample(free, rng.randint(0, 20)):
                        desired[random_key()] = [ip]
                    cp.set_peers(desired)
                    changes += 1
                    time.sleep(rng.uniform(0.2, 1.5))
                server.set_fault(None)
                time.sleep(rng.uniform(0, 3))
                rss.append((time.monotonic() - started, _rss_mb(agent.pid)))
                if agent.poll() is not None:
                    break
            alive = agent.poll() is None
            want = {k: ",".join(v) for k, v in desired.items()}
            converge_started = time.monotonic()
            while _dump(node, wg) != want and time.monotonic() - converge_started < 30:
                time.sleep(0.2)
            converged = time.monotonic() - converge_started
            correct = _dump(node, wg) == want
            ping.send_signal(signal.SIGINT)
            out, _ = ping.communicate(timeout=10)
            counts = re.search(r"(\d+) packets transmitted, (\d+) received", out)
            sent, received = int(counts.group(1)), int(counts.group(2))
            faults = _metric(port, "idra_agent_faults_total") if alive else float("nan")
            log = (work / "agent.log").read_text()
        finally:
            agent.terminate()
            agent.wait(10)
            cp.close()
            imds.close()
    first = [mb for t, mb in rss if t <= 60] or [rss[0][1]]
    return {
        "minutes": minutes, "seed": seed, "alive": alive, "correct": correct,
        "converged_s": converged, "peers": len(desired), "changes": changes,
        "injected": injected, "faults_counted": faults, "sent": sent, "received": received,
        "rss_first_min": max(first), "rss_max": max(mb for _, mb in rss),
        "rss_end": rss[-1][1], "tracebacks": log.count("Traceback"),
        "lines": len(log.splitlines()),
    }  # fmt: skip


def section(r: dict) -> str:
    yes = {True: "yes", False: "**no**"}
    counted = f"{sum(r['injected'].values())} / {r['faults_counted']:,.0f} failed calls"
    rss = f"{r['rss_first_min']:.1f} / {r['rss_max']:.1f} / {r['rss_end']:.1f} MiB"
    rows = [
        ["agent alive at the end", yes[r["alive"]]],
        ["interface = control plane's peers at the end",
         f"{yes[r['correct']]} ({r['peers']:,} peers, {r['converged_s']:.1f} s after the end)"],
        ["faults injected / counted by the agent", counted],
        ["peer-set changes during the run", r["changes"]],
        ["pings of the unchanged client answered", f"{r['received']:,} of {r['sent']:,}"],
        ["agent RSS: max in minute 1 / max / at the end", rss],
        ["tracebacks in the agent log / log lines", f"{r['tracebacks']} / {r['lines']:,}"],
    ]  # fmt: skip
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["injected"].items()))
    return "\n".join([
        HEADING, "",
        f"`python -m bench.soak --minutes {r['minutes']:g} --seed {r['seed']}`: the packaged agent "
        f"(heartbeat {INTERVAL:g} s, backoff up to {BACKOFF_MAX:g} s, {DEADLINE:g} s call "
        "deadline) against the scripted control plane and IMDSv2 stand-in of "
        "`tests/agent/scripted.py`, one random fault after another (0.5 to 8 s each, up to "
        "3 s healthy in between), the peer set changing by up to 20 adds and 20 removals "
        "every 0.2 to 1.5 s, and a real WireGuard client pinging the node every 0.2 s.",
        "", table(["", "result"], rows), "", f"Faults injected: {kinds}.",
    ])  # fmt: skip


def write_section(text: str) -> None:
    """Replace (or append) this section in docs/benchmarks.md."""
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = doc.find(HEADING)
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    else:
        after = doc.find("\n## ", start + len(HEADING))
        doc = doc[:start] + text + "\n" + (doc[after:] if after >= 0 else "")
    DOC.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    result = soak(args.minutes, args.seed)
    print(result)
    write_section(section(result))
    print(f"wrote {DOC}")
    sys.exit(0 if result["alive"] and result["correct"] else 1)


if __name__ == "__main__":
    main()
