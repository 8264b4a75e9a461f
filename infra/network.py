"""Per region: a dual-stack VPC with one public subnet per availability zone, or the
existing subnets named in the stack config."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from itertools import islice

import pulumi
import pulumi_aws as aws

from idra.config import StackConfig

MAX_ZONES = 3


@dataclass(frozen=True)
class Network:
    vpc_id: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]


def _ipv6_subnet(vpc_block: str, index: int) -> str:
    return str(next(islice(ipaddress.IPv6Network(vpc_block).subnets(new_prefix=64), index, None)))


def network(cfg: StackConfig, region: str, provider: aws.Provider) -> Network:
    """The subnets the region's nodes launch into."""
    invoke = pulumi.InvokeOptions(provider=provider)
    existing = cfg.existing_subnet_ids.get(region)
    if existing:
        subnet = aws.ec2.get_subnet_output(id=existing[0], opts=invoke)
        return Network(vpc_id=subnet.vpc_id, subnet_ids=list(existing))

    opts = pulumi.ResourceOptions(provider=provider)
    vpc = aws.ec2.Vpc(
        f"{region}-vpc",
        cidr_block=str(cfg.vpc_cidr),
        assign_generated_ipv6_cidr_block=True,
        enable_dns_support=True,
        enable_dns_hostnames=True,
        tags={"Name": f"idra-{cfg.stack}-{region}"},
        opts=opts,
    )
    gateway = aws.ec2.InternetGateway(f"{region}-igw", vpc_id=vpc.id, opts=opts)
    routes = aws.ec2.RouteTable(
        f"{region}-public",
        vpc_id=vpc.id,
        routes=[
            aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id),
            aws.ec2.RouteTableRouteArgs(ipv6_cidr_block="::/0", gateway_id=gateway.id),
        ],
        opts=opts,
    )
    zones = aws.get_availability_zones(state="available", opts=invoke).names[:MAX_ZONES]
    v4_blocks = cfg.vpc_cidr.subnets(new_prefix=min(cfg.vpc_cidr.prefixlen + 4, 28))
    subnet_ids: list[pulumi.Input[str]] = []
    for index, (zone, v4_block) in enumerate(zip(zones, v4_blocks, strict=False)):
        subnet = aws.ec2.Subnet(
            f"{region}-public-{zone}",
            vpc_id=vpc.id,
            availability_zone=zone,
            cidr_block=str(v4_block),
            ipv6_cidr_block=vpc.ipv6_cidr_block.apply(lambda v6, i=index: _ipv6_subnet(v6, i)),
            map_public_ip_on_launch=True,
            assign_ipv6_address_on_creation=True,
            tags={"Name": f"idra-{cfg.stack}-{zone}"},
            opts=opts,
        )
        aws.ec2.RouteTableAssociation(
            f"{region}-public-{zone}", subnet_id=subnet.id, route_table_id=routes.id, opts=opts
        )
        subnet_ids.append(subnet.id)
    return Network(vpc_id=vpc.id, subnet_ids=subnet_ids)
