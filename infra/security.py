"""Per region: the nodes' security group. In: WireGuard from anywhere, SSH only from the
bastion CIDRs (none by default). Out: open (an exit node's job); the node's nftables
ruleset narrows what clients may reach."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from idra.config import StackConfig

SSH_PORT = 22
WORLD = {"cidr_blocks": ["0.0.0.0/0"], "ipv6_cidr_blocks": ["::/0"]}


def _ssh_rules(cfg: StackConfig) -> list[aws.ec2.SecurityGroupIngressArgs]:
    rules = []
    for version, key in ((4, "cidr_blocks"), (6, "ipv6_cidr_blocks")):
        cidrs = [str(cidr) for cidr in cfg.ssh_bastion_cidrs if cidr.version == version]
        if cidrs:
            rules.append(
                aws.ec2.SecurityGroupIngressArgs(
                    description=f"SSH from bastions (IPv{version})",
                    protocol="tcp",
                    from_port=SSH_PORT,
                    to_port=SSH_PORT,
                    **{key: cidrs},
                )
            )
    return rules


def security_group(
    cfg: StackConfig, region: str, vpc_id: pulumi.Input[str], provider: aws.Provider
) -> aws.ec2.SecurityGroup:
    """Inline rules only, so a rule added by hand is removed on the next ``pulumi up``."""
    wireguard = aws.ec2.SecurityGroupIngressArgs(
        description="WireGuard",
        protocol="udp",
        from_port=cfg.wireguard_port,
        to_port=cfg.wireguard_port,
        **WORLD,
    )
    return aws.ec2.SecurityGroup(
        f"{region}-nodes",
        description=f"IDRA {cfg.stack} exit nodes",
        vpc_id=vpc_id,
        ingress=[wireguard, *_ssh_rules(cfg)],
        egress=[
            aws.ec2.SecurityGroupEgressArgs(
                description="Exit traffic", protocol="-1", from_port=0, to_port=0, **WORLD
            )
        ],
        tags={"Name": f"idra-{cfg.stack}-nodes"},
        opts=pulumi.ResourceOptions(provider=provider),
    )
