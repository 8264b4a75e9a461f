"""One function per benchmark: run it, return its markdown section (tables, plots, goals)."""

from __future__ import annotations

from bench.datapath import run_datapath
from bench.run import table


def datapath(quick: bool) -> str:
    results = run_datapath(repeats=1 if quick else 5, seconds=3 if quick else 5)
    idra, bare = results["idra"], results["no firewall"]
    ratio = idra["tcp_mbps"] / bare["tcp_mbps"]
    rows = [
        [name, r["tcp_mbps"], r["udp_mbps"], r["udp_loss_pct"], r["rtt_avg_ms"]]
        for name, r in results.items()
    ]
    verdict = "met" if ratio >= 0.95 else f"missed by {0.95 - ratio:.1%}"
    return "\n".join(
        [
            "## 6. Data path through the tunnel",
            "",
            "iperf3 client → wireguard-go client → node (tunnel + uplink) → iperf3 server, "
            "medians of alternating runs; UDP offered at a fixed 150 Mbit/s.",
            "",
            table(
                ["node firewall", "TCP Mbit/s", "UDP goodput Mbit/s", "UDP loss %", "RTT ms"], rows
            ),
            "",
            f"IDRA ruleset + sysctl reach **{ratio:.1%}** of the no-firewall TCP throughput "
            f"(goal ≥ 95 %: {verdict}). Both are bounded by wireguard-go's userspace crypto on "
            "2 cores, not by nftables.",
        ]
    )


ALL = [datapath]
