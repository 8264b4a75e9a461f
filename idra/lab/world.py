"""Build and tear down the lab's namespaces: the "internet", the control plane, the
outside-world services, the VPC/metadata host, exit nodes and WireGuard clients.

    internet (bridge 203.0.113.0/24, 2001:db8:1::/64; web server 198.51.100.80)
      ├── cp      203.0.113.2   reference control plane over TLS (lab CA); with --replicas N:
      │                         N of them on PostgreSQL behind HAProxy (:8443)
      ├── svc     203.0.113.3   DNS blocklist (listed.json) + "streaming" service that
      │                         refuses the addresses in refused.json
      ├── ops     203.0.113.4   the lifecycle service: ``idra ops run --fleet lab``
      │                         (canary with tunnel probes, reaper), supervised
      ├── nodeN   203.0.113.1N  rendered nftables + sysctl, wireguard-go, node-daemon.pyz,
      │                         an IMDSv2 stand-in at 169.254.169.254 (signed identity)
      ├── clientM 203.0.113.10M WireGuard client, all traffic through its node
      └── vpc     (routed)      169.254.169.254 and 10.20.0.5: must stay unreachable
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from idra.config import StackConfig
from idra.lab import state as S
from idra.lab.state import Client, LabState, Node, Process
from idra.netns import (
    WG_RUN_DIR,
    Netns,
    create_netns,
    delete_netns,
    link,
    netns_names,
    parse_sysctl,
    run,
    start_wireguard,
    stop_process,
    wg_keypair,
)
from idra.render import render_node_files

PYTHON = sys.executable
FAILURES = "failures"  # logs of failed demo runs, kept by teardown
LAB_HEARTBEAT_S = 2  # faster than production's 10 s, so the story moves quickly
# The ops loop's intervals in the lab (production: minutes), so a drain and a replacement
# take seconds; the lease outlasts a canary pass whose tunnels time out.
LAB_OPS_EVERY_S = 2
LAB_OPS_LEASE_S = 20


def ns(role: str) -> Netns:
    return Netns(S.NS_PREFIX + role)


def _new_ns(state: LabState, role: str) -> Netns:
    created = create_netns(S.NS_PREFIX + role)
    state.namespaces.append(created.name)
    state.save()
    return created


def _plug(state: LabState, role: str, v4: str, v6: str) -> Netns:
    """A namespace on the internet segment, default routes via the router."""
    host = _new_ns(state, role)
    link(ns("internet"), f"p-{role}"[:15], host, "eth0")
    ns("internet").ip("link", "set", f"p-{role}"[:15], "master", "br0")
    host.addr("eth0", f"{v4}/24", f"{v6}/64")
    host.route("default", "via", S.ROUTER_V4)
    host.route("default", "via", S.ROUTER_V6)
    return host


def _spawn(state: LabState, where: Netns, role: str, *args: str, ready: bool = False) -> int:
    log = S.LAB_DIR / "logs" / f"{role}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = where.spawn(*args, log=log)
    state.processes.append(Process(role, proc.pid, str(log)))
    state.save()
    if ready:
        _wait_for(lambda: "ready" in log.read_text(), f"{role} to start", proc=proc)
    return proc.pid


def _wait_for(condition, what: str, timeout: float = 30, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if (proc and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def build_world(state: LabState) -> None:
    """Internet, control plane, services, ops host and VPC (no nodes, no clients)."""
    internet = _new_ns(state, "internet")
    # A fixed MAC: a bridge otherwise takes its lowest port's MAC, so a client joining or
    # leaving could move the router's MAC and black-hole every node's uplink until ARP
    # re-resolves (seconds of loss for everyone). 00:00:5e:00:53:xx is for documentation.
    internet.ip("link", "add", "br0", "address", S.ROUTER_MAC, "type", "bridge")
    internet.ip("link", "set", "br0", "up")
    internet.addr("br0", f"{S.ROUTER_V4}/24", f"{S.ROUTER_V6}/64")
    internet.addr("lo", f"{S.PUBLIC_V4}/32", f"{S.PUBLIC_V6}/128")
    internet.sysctl("net.ipv4.ip_forward", 1)
    internet.sysctl("net.ipv6.conf.all.forwarding", 1)

    vpc = _new_ns(state, "vpc")
    link(internet, "vpc", vpc, "eth0")
    internet.addr("vpc", "192.0.2.49/28")
    vpc.addr("eth0", "192.0.2.50/28")
    vpc.addr("lo", f"{S.METADATA_V4}/32", f"{S.PRIVATE_V4}/32")
    vpc.route("default", "via", "192.0.2.49")
    for dest in (f"{S.METADATA_V4}/32", "10.0.0.0/8"):
        internet.route(dest, "via", "192.0.2.50")

    for name in ("listed.json", "refused.json"):
        (S.LAB_DIR / name).write_text("{}")
    whoami = ["-m", "idra.lab.services", "whoami", "--port", str(S.WEB_PORT)]
    _spawn(state, internet, "web", PYTHON, *whoami, ready=True)
    _spawn(state, vpc, "vpc-web", PYTHON, *whoami, ready=True)

    svc = _plug(state, "svc", S.SVC_V4, "2001:db8:1::3")
    listed, refused = S.LAB_DIR / "listed.json", S.LAB_DIR / "refused.json"
    dnsbl = f"dnsbl --zone {S.DNSBL_ZONE} --listed {listed} --listen {S.SVC_V4}:53"
    streaming = f"streaming --listed {refused} --listen {S.SVC_V4}:{S.STREAMING_PORT}"
    for role, args in (("dnsbl", dnsbl), ("streaming", streaming)):
        _spawn(state, svc, role, PYTHON, "-m", "idra.lab.services", *args.split(), ready=True)
    _plug(state, "ops", S.OPS_V4, "2001:db8:1::4")


def start_control_plane(state: LabState, cfg: StackConfig) -> None:
    """TLS with the lab CA; trusts only the lab's identity certificate (plays AWS)."""
    from idra.lab.pki import LAB_ACCOUNT, IdentitySigner, make_ca_and_server

    cp = _plug(state, "cp", S.CP_V4, "2001:db8:1::2")
    pki = S.LAB_DIR / "pki"
    make_ca_and_server(pki, [S.CP_V4])
    signer = IdentitySigner()
    signer.write_key(pki / "iid.key")
    signer.write_cert(pki / "iid.pem")
    for kind in ("node", "operator", "client"):
        token = S.LAB_DIR / f"{kind}-token"
        token.touch(mode=0o600)
        token.write_text(secrets.token_urlsafe(32))
    serve = [
        PYTHON, "-m", "idra.cli", "controlplane", "serve",
        "--node-token-file", str(S.LAB_DIR / "node-token"),
        "--operator-token-file", str(S.LAB_DIR / "operator-token"),
        "--client-token-file", str(S.LAB_DIR / "client-token"),
        "--tls-cert", str(pki / "server.pem"),
        "--tls-key", str(pki / "server.key"),
        "--client-pool-v4", str(cfg.client_pool_ipv4),
        "--client-pool-v6", str(cfg.client_pool_ipv6),
        "--heartbeat-interval", str(LAB_HEARTBEAT_S),
        "--iid-cert-file", f"{state.region}={pki / 'iid.pem'}",
        "--aws-account", LAB_ACCOUNT,
        "--aws-region", state.region,
        "--insecure-skip-aws-verify",  # the lab plays AWS: no AWS API to ask
        "--allow-public-ip-range", S.SEGMENT_V4,  # the lab's "internet": documentation ranges
        "--allow-public-ip-range", S.SEGMENT_V6,
    ]  # fmt: skip
    if state.replicas == 1:
        database = ["--db", str(S.LAB_DIR / "controlplane.db")]
        _spawn(state, cp, "controlplane", *serve, *database, "--listen", f"{S.CP_V4}:{S.CP_PORT}")
    else:
        _start_replicas(state, cp, serve)
    _wait_for(lambda: _cp_up(cp), "the control plane")


def _start_replicas(state: LabState, cp: Netns, serve: list[str]) -> None:
    """PostgreSQL on the namespace's loopback, ``state.replicas`` control planes on it
    (ports 8444, 8445, …) and HAProxy on the one address everything uses."""
    from idra.lab import balancer
    from idra.lab.postgres import Cluster

    # Outside the lab's folder, which only root may enter; recorded first, for teardown.
    state.postgres = tempfile.mkdtemp(prefix="idra-lab-postgres-")
    state.save()
    cluster = Cluster(Path(state.postgres), prefix=("ip", "netns", "exec", cp.name))
    cluster.create()
    cluster.start()
    url = ["--database-url", cluster.url()]
    cp.run(*serve[:3], "controlplane", "migrate", *url)
    replicas = [f"{S.CP_V4}:{S.CP_PORT + i}" for i in range(1, state.replicas + 1)]
    for i, listen in enumerate(replicas, 1):
        _spawn(state, cp, f"controlplane{i}", *serve, *url, "--listen", listen)
        _wait_for(lambda p=S.CP_PORT + i: _cp_up(cp, p), f"control plane {i}")
    cfg = S.LAB_DIR / "haproxy.cfg"
    cfg.write_text(balancer.config(f"{S.CP_V4}:{S.CP_PORT}", replicas, tls=True))
    _spawn(state, cp, "haproxy", *balancer.command(cfg))


def _cp_up(cp: Netns, port: int = S.CP_PORT) -> bool:
    probe = f"import socket; socket.create_connection(('{S.CP_V4}', {port}), 1)"
    return cp.run(PYTHON, "-c", probe, check=False).returncode == 0


def node_config(cfg: StackConfig, node: Node) -> StackConfig:
    """The stack config as this lab node sees it: its own tunnel interface name."""
    return cfg.model_copy(update={"tunnel_interface": node.wg})


def add_node(state: LabState, cfg: StackConfig, agent: Path) -> Node:
    """Boot a node as cloud-init would: firewall, sysctl, tunnel, supervised agent."""
    from idra.lab.pki import IdentitySigner, new_instance_id

    index = state.next_node
    state.next_node += 1
    v4, v6 = S.node_addresses(index)
    node = Node(
        index, S.NS_PREFIX + f"node{index}", f"{S.WG_PREFIX}n{index}", new_instance_id(), v4, v6
    )
    host = _plug(state, f"node{index}", v4, v6)
    files = render_node_files(node_config(cfg, node))
    host.run("nft", "-f", "-", input=files["nftables.nft"])
    host_wide = host.load_sysctl(files["sysctl.conf"])
    state_dir = S.LAB_DIR / f"node{index}"
    state_dir.mkdir(mode=0o700, exist_ok=True)
    applied = {k: v for k, v in parse_sysctl(files["sysctl.conf"]).items() if k not in host_wide}
    sysctl_file = state_dir / "sysctl.conf"  # what this node's namespace really holds
    sysctl_file.write_text("".join(f"{k} = {v}\n" for k, v in applied.items()))
    # AWS's part: this instance's metadata service, its identity signed by the lab key
    document = IdentitySigner.document(node.instance_id, state.region)
    signer = IdentitySigner.load(S.LAB_DIR / "pki" / "iid.key")
    (state_dir / "identity.json").write_text(document)
    (state_dir / "identity.sig").write_text(signer.sign(document))
    host.addr("lo", f"{S.METADATA_V4}/32")
    node.imds_pid = _spawn(
        state, host, f"imds-node{index}", PYTHON, "-m", "idra.lab.services", "imds",
        "--document", str(state_dir / "identity.json"),
        "--signature", str(state_dir / "identity.sig"),
        "--public-ipv4", v4, "--listen", f"{S.METADATA_V4}:80", ready=True,
    )  # fmt: skip
    node.wireguard_pid = start_wireguard(host, node.wg, log=_log(f"wireguard-node{index}")).pid
    host.addr(node.wg, cfg.tunnel_address(4), cfg.tunnel_address(6))
    host.ip("link", "set", node.wg, "mtu", str(cfg.tunnel_mtu), "up")
    node.supervisor_pid = _spawn(
        state,
        host,
        f"agent-node{index}",
        PYTHON,
        "-m",
        "idra.lab.supervise",
        "--",
        PYTHON,
        str(agent),
        "run",
        "--api-url",
        state.api_url,
        "--token-file",
        str(S.LAB_DIR / "node-token"),
        "--ca-file",
        str(S.LAB_DIR / "pki/ca.pem"),
        "--interface",
        node.wg,
        "--listen-port",
        str(cfg.wireguard_port),
        "--region",
        state.region,
        "--state-dir",
        str(state_dir),
        "--driver",
        "uapi",
        "--metrics-addr",
        "127.0.0.1:9586",
        "--sysctl-file",
        str(sysctl_file),
        "--scan-interval",  # active peers counted as often as heartbeats
        str(LAB_HEARTBEAT_S),
    )
    state.nodes.append(node)
    state.save()
    return node


def _log(role: str) -> Path:
    return S.LAB_DIR / "logs" / f"{role}.log"


def remove_node(state: LabState, node: Node) -> None:
    """Terminate a node: its agent, its tunnel (all sessions) and its namespace."""
    for pid in (node.supervisor_pid, node.imds_pid, node.wireguard_pid):
        stop_process(pid)
    ours = (node.supervisor_pid, node.imds_pid)
    state.processes = [p for p in state.processes if p.pid not in ours]
    delete_netns(node.ns)
    state.namespaces.remove(node.ns)
    state.nodes.remove(node)
    state.save()


def ops_command(state: LabState) -> list[str]:
    """``idra ops run`` for the lab: its fleet, its DNS blocklist, the streaming probe
    through a tunnel to each node, intervals of seconds."""
    from idra.config import REPO_ROOT

    probes = S.LAB_DIR / "probes.yaml"
    if not probes.exists():
        probes.write_text(
            f"targets:\n  - name: streaming\n    url: http://{S.SVC_V4}:{S.STREAMING_PORT}/\n"
            "    blocked: {status: [403], body: '(?i)proxy detected'}\n"
        )
    return [
        PYTHON, "-m", "idra.cli", "ops", "run", "--fleet", "lab", "--stack", state.stack,
        "--cwd", str(REPO_ROOT), "--api-url", state.api_url,
        "--operator-token-file", str(S.LAB_DIR / "operator-token"),
        "--ca-file", str(S.LAB_DIR / "pki/ca.pem"), "--nameserver", f"{S.SVC_V4}:53",
        "--probes", str(probes), "--whoami-url", f"http://{S.PUBLIC_V4}:{S.WEB_PORT}/",
        "--key-file", str(S.LAB_DIR / "ops" / "canary.key"), "--handshake-timeout", "5",
        "--canary-every", str(LAB_OPS_EVERY_S), "--reap-every", str(LAB_OPS_EVERY_S),
        "--lease-seconds", str(LAB_OPS_LEASE_S), "--holder", "lab-ops",
    ]  # fmt: skip


def in_ops(*args: str) -> list[str]:
    """``args`` run in the ops host's network namespace but the machine's mount namespace
    (as :func:`enter_ops`): ``ip netns exec`` would give them a private one, where a
    namespace the lab fleet adds (a replacement node) would be an empty file to others."""
    return ["nsenter", f"--net=/run/netns/{S.NS_PREFIX}ops", "--", *args]


def start_ops(state: LabState) -> None:
    """The lifecycle service in the ops namespace, respawned if it exits (as on its
    instance); its log is ``logs/ops.log``."""
    (S.LAB_DIR / "ops").mkdir(mode=0o700, exist_ok=True)
    log = _log("ops")
    command = in_ops(PYTHON, "-m", "idra.lab.supervise", "--", *ops_command(state))
    proc = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    state.processes.append(Process("ops", proc.pid, str(log)))
    state.save()


def default_agent() -> Path:
    """Build dist/node-daemon.pyz from this checkout (the file every lab node runs)."""
    repo = Path(__file__).resolve().parents[2]
    run([PYTHON, str(repo / "agent" / "build.py"), "--out", str(repo / "dist")], timeout=300)
    return repo / "dist" / "node-daemon.pyz"


def enter_ops() -> None:
    """Move this process's networking into the ops host (on the lab's internet), so its
    HTTP calls reach the control plane; the host's own network is never touched."""
    from pyroute2.netns import setns

    setns(S.NS_PREFIX + "ops", flags=0)


def teardown(state: LabState | None) -> list[str]:
    """Stop every process, delete every namespace and file; return what was removed."""
    removed = []
    if state and state.postgres:  # --replicas: its database server (pg_ctl's daemon)
        from idra.lab.postgres import Cluster

        Cluster(Path(state.postgres)).remove()
        removed.append(f"postgresql cluster {state.postgres}")
    if state:
        for process in state.processes:
            if process.role == "ops":  # first: it must not replace a node meanwhile
                stop_process(process.pid)
        for node in state.nodes:
            stop_process(node.wireguard_pid)
        for client in state.clients:
            stop_process(client.wireguard_pid)
        for process in reversed(state.processes):
            stop_process(process.pid)
            removed.append(f"process {process.role}")
    for name in netns_names():
        if name.startswith(S.NS_PREFIX):
            delete_netns(name)
            removed.append(f"namespace {name}")
    for sock in WG_RUN_DIR.glob(f"{S.WG_PREFIX}*.sock") if WG_RUN_DIR.exists() else []:
        sock.unlink(missing_ok=True)
    if S.LAB_DIR.exists():
        kept = S.LAB_DIR / FAILURES
        for path in S.LAB_DIR.iterdir():
            if path != kept:
                run(["rm", "-rf", "--one-file-system", str(path)])
        if kept.exists():
            removed.append(f"folder {S.LAB_DIR} (logs of failed runs kept in {kept})")
        elif S.LAB_DIR.is_mount():  # a file system of its own (a tmpfs): emptied, it stays
            removed.append(f"contents of {S.LAB_DIR}")
        else:
            S.LAB_DIR.rmdir()
            removed.append(f"folder {S.LAB_DIR}")
    return removed


def keep_logs() -> Path:
    """Copy this run's logs to ``failures/<UTC time>/``, which teardown keeps."""
    kept = S.LAB_DIR / FAILURES / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    shutil.copytree(S.LAB_DIR / "logs", kept, dirs_exist_ok=True)
    return kept


def add_client(state: LabState, api: httpx.Client) -> Client:
    """A WireGuard client: key, ``POST /v1/peers``, tunnel to its assigned node."""
    index = max((c.index for c in state.clients), default=0) + 1
    v4, v6 = S.client_addresses(index)
    host = _plug(state, f"client{index}", v4, v6)
    private, public = wg_keypair()
    client = Client(index, host.name, f"{S.WG_PREFIX}c{index}", public)
    keyfile = S.LAB_DIR / f"client{index}.key"
    keyfile.touch(mode=0o600)
    keyfile.write_text(private)
    client.wireguard_pid = start_wireguard(
        host, client.wg, log=_log(f"wireguard-client{index}")
    ).pid
    host.run("wg", "set", client.wg, "private-key", str(keyfile))
    host.ip("link", "set", client.wg, "mtu", "1420", "up")
    state.clients.append(client)
    connect(state, client, api)
    return client


def connect(state: LabState, client: Client, api: httpx.Client) -> None:
    """Ask the control plane for a node (again) and point the tunnel at it."""
    reply = api.post("/v1/peers", json={"public_key": client.public_key, "region": state.region})
    reply.raise_for_status()
    client.assigned_at = time.monotonic()
    assignment = reply.json()
    host = Netns(client.ns)
    for peer in host.run("wg", "show", client.wg, "peers").stdout.split():
        host.run("wg", "set", client.wg, "peer", peer, "remove")
    host.run(
        "wg",
        "set",
        client.wg,
        "peer",
        assignment["node_public_key"],
        "endpoint",
        assignment["endpoint"],
        "allowed-ips",
        "0.0.0.0/0,::/0",
        "persistent-keepalive",
        "15",
    )
    host.ip("-4", "addr", "flush", "dev", client.wg)
    host.ip("-6", "addr", "flush", "dev", client.wg, "scope", "global")
    client.address_v4 = assignment["addresses"]["ipv4"].split("/")[0]
    client.address_v6 = assignment["addresses"]["ipv6"].split("/")[0]
    host.addr(client.wg, f"{client.address_v4}/32", f"{client.address_v6}/128")
    host.route("default", "dev", client.wg)
    host.route("::/0", "dev", client.wg)
    client.node_id = assignment["node_id"]
    state.save()


def remove_client(state: LabState, client: Client, api: httpx.Client) -> None:
    api.delete(f"/v1/peers/{client.public_key}").raise_for_status()
    stop_process(client.wireguard_pid)
    delete_netns(client.ns)
    state.namespaces.remove(client.ns)
    state.clients.remove(client)
    state.save()


def api_client(state: LabState, kind: str) -> httpx.Client:
    """HTTPS to the lab control plane with a token of ``kind`` (call after enter_ops)."""
    token = (S.LAB_DIR / f"{kind}-token").read_text().strip()
    return httpx.Client(
        base_url=state.api_url,
        verify=ssl.create_default_context(cafile=S.LAB_DIR / "pki" / "ca.pem"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def bring_up(
    cfg: StackConfig, nodes: int, clients: int, agent: Path, console, replicas: int = 1
) -> LabState:
    """The whole lab; on return every node is active and every client has a handshake.
    ``replicas`` > 1: that many control planes on PostgreSQL behind HAProxy."""
    state = LabState(stack=cfg.stack, region=cfg.regions[0], agent=str(agent.resolve()),
                     replicas=replicas)  # fmt: skip
    state.save()
    console.print("building the internet, control plane and services")
    build_world(state)
    start_control_plane(state, cfg)
    for _ in range(nodes):
        node = add_node(state, cfg, agent)
        console.print(f"booted node{node.index} at {node.public_v4}")
    enter_ops()
    with api_client(state, "operator") as ops:
        _wait_for(lambda: len(active_nodes(ops)) == nodes, "every node to register", 60)
        learn_node_ids(state, ops)
    with api_client(state, "client") as api:
        for _ in range(clients):
            client = add_client(state, api)
            console.print(f"client{client.index} connected")
    for client in state.clients:
        _wait_for(lambda c=client: handshake(c), f"client{client.index}'s handshake", 60)
    console.print("starting the lifecycle service (idra ops run --fleet lab)")
    start_ops(state)
    state.status = "up"
    state.save()
    return state


def learn_node_ids(state: LabState, ops: httpx.Client) -> None:
    """Record each lab node's control-plane id (by its instance id)."""
    reply = ops.get("/v1/nodes")
    reply.raise_for_status()
    ids = {n["instance_id"]: n["id"] for n in reply.json()["nodes"]}
    for node in state.nodes:
        node.node_id = ids.get(node.instance_id, node.node_id)
    state.save()


def active_nodes(ops: httpx.Client) -> list[dict]:
    reply = ops.get("/v1/nodes", params={"state": "active"})
    reply.raise_for_status()
    return reply.json()["nodes"]


def handshake(client: Client) -> bool:
    """True once the client's tunnel has a handshake (sends a ping to trigger one)."""
    host = Netns(client.ns)
    host.run("ping", "-c", "1", "-W", "1", S.PUBLIC_V4, check=False)
    shakes = host.run("wg", "show", client.wg, "latest-handshakes").stdout.split()
    return len(shakes) == 2 and shakes[1] != "0"
