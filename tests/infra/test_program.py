"""The Pulumi program, run under Pulumi's mock runtime on the real stack files."""

from __future__ import annotations

import base64
import fnmatch
import gzip
import json
from dataclasses import replace
from pathlib import Path

import pulumi
import pytest

import idra.render
from idra.config import LAUNCH_HOOK, LIFECYCLE_HOOK, load_stack
from idra.netns import run
from idra.render import USER_DATA_BUDGET, render_node_files
from tests.infra.harness import ACCOUNTS, IMAGES, Deployment, Image, Resource, deploy, stack_config

SG = "aws:ec2/securityGroup:SecurityGroup"
LT = "aws:ec2/launchTemplate:LaunchTemplate"
ASG = "aws:autoscaling/group:Group"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
SECRET = "aws:secretsmanager/secret:Secret"
VERSION = "aws:secretsmanager/secretVersion:SecretVersion"


def staging_with(changes: dict[str, str | None] | None = None) -> dict[str, str]:
    """The staging stack file plus test stack secrets, with ``changes`` (None drops a key)."""
    config = stack_config("staging") | {
        "idra:firebasePrivateKey": "test-firebase-key",
        "idra:blindedSigningPrivateKey": "test-signing-key",
    }
    return {k: v for k, v in (config | (changes or {})).items() if v is not None}


def policy_statements(deployment: Deployment, region: str) -> list[dict]:
    """The statements of the policies of ``region``'s node role."""
    return [
        statement
        for policy in deployment.nodes(ROLE_POLICY)
        if policy.region == region and policy.name.startswith(f"{region}-node")
        for statement in json.loads(policy.inputs["policy"])["Statement"]
    ]


def test_one_provider_and_one_asg_per_region(deployment: Deployment) -> None:
    regions = load_stack(deployment.stack).regions
    providers = deployment.nodes("pulumi:providers:aws")
    assert sorted(p.inputs["region"] for p in providers) == sorted(regions)
    nodes = [asg for asg in deployment.nodes(ASG) if asg.name != "ops"]
    assert sorted(asg.region for asg in nodes) == sorted(regions)
    for asg in nodes:
        assert asg.inputs["name"] == f"idra-{deployment.stack}-{asg.region}"
    # Every AWS resource goes through one of the explicit regional providers.
    assert all(r.region in regions for r in deployment.resources if r.typ.startswith("aws:"))


def test_security_group_admits_only_wireguard(deployment: Deployment) -> None:
    port = load_stack(deployment.stack).wireguard_port
    for region in load_stack(deployment.stack).regions:
        group = deployment.one(SG, region)
        assert group.inputs["ingress"] == [
            {
                "description": "WireGuard",
                "protocol": "udp",
                "fromPort": port,
                "toPort": port,
                "cidrBlocks": ["0.0.0.0/0"],
                "ipv6CidrBlocks": ["::/0"],
            }
        ]
        (egress,) = group.inputs["egress"]
        assert egress["protocol"] == "-1"


def test_ssh_only_from_the_configured_bastions() -> None:
    config = staging_with(
        {"idra:sshBastionCidrs": json.dumps(["198.51.100.7/32", "2001:db8::7/128"])}
    )
    group = deploy("staging", config).one(SG, "eu-central-1")
    ssh = [rule for rule in group.inputs["ingress"] if rule["protocol"] == "tcp"]
    assert [(r["fromPort"], r["toPort"]) for r in ssh] == [(22, 22), (22, 22)]
    assert [r.get("cidrBlocks") for r in ssh] == [["198.51.100.7/32"], None]
    assert [r.get("ipv6CidrBlocks") for r in ssh] == [None, ["2001:db8::7/128"]]


def test_launch_template_imdsv2_and_encrypted_root(deployment: Deployment) -> None:
    for template in deployment.nodes(LT):
        options = template.inputs["metadataOptions"]
        assert options["httpTokens"] == "required"
        assert options["httpPutResponseHopLimit"] == 1
        (root,) = template.inputs["blockDeviceMappings"]
        assert root["ebs"]["encrypted"] == "true"
        assert root["ebs"]["volumeType"] == "gp3"
        assert template.inputs["iamInstanceProfile"]["arn"].startswith("arn:aws:iam::")


def test_alpine_image_pinned_by_exact_name(deployment: Deployment) -> None:
    cfg = load_stack(deployment.stack)
    lookups = [args for token, args in deployment.invokes if token == "aws:ec2/getAmi:getAmi"]
    assert len(lookups) == len(cfg.regions) + 1  # and the ops group's, in the primary region
    for args in lookups:
        assert args["owners"] == ["538276064493"] and not args.get("mostRecent")
        assert {"name": "name", "values": [cfg.ami_name]} in args["filters"]
        assert not any(c in cfg.ami_name for c in "*?")
    for template in deployment.nodes(LT):
        pinned = next(i for i in IMAGES if i.name == cfg.ami_name)
        assert template.inputs["imageId"] == pinned.id_in(template.region)


def test_an_image_published_after_the_pin_changes_nothing() -> None:
    """A newer Alpine image (even of the same release, rebuilt) appears in the catalogue:
    the next preview registers exactly the same inputs."""
    config = staging_with()
    before = deploy("staging", config)
    newer = Image("alpine-3.22.3-x86_64-uefi-cloudinit-r0", "2026-11-20T10:00:00.000Z")
    rebuilt = Image("alpine-3.22.2-x86_64-uefi-cloudinit-r1", "2026-11-21T10:00:00.000Z")
    after = deploy("staging", config, images=(*IMAGES, newer, rebuilt))
    assert before.one(LT, "eu-central-1").inputs["imageId"] == IMAGES[1].id_in("eu-central-1")

    def inputs(deployment: Deployment) -> dict:
        return {(r.typ, r.name): r.inputs for r in deployment.resources if r.typ != VERSION}

    assert inputs(after) == inputs(before)


def test_two_images_with_the_pinned_name_stop_the_preview() -> None:
    twin = Image("alpine-3.22.2-x86_64-uefi-cloudinit-r0", "2026-11-01T10:00:00.000Z")
    with pytest.raises(Exception, match="more than one result"):
        deploy("staging", staging_with(), images=(*IMAGES, twin))


def test_ami_ids_per_region_are_looked_up_by_id() -> None:
    """An id pinned in ``amiIds`` is still asked of EC2 (by id), for its root device."""
    pinned = IMAGES[0].id_in("eu-central-1")
    deployment = deploy(
        "staging", staging_with({"idra:amiIds": json.dumps({"eu-central-1": pinned})})
    )
    lookups = [args for token, args in deployment.invokes if token == "aws:ec2/getAmi:getAmi"]
    assert len(lookups) == 2  # the nodes' and the ops group's
    assert all(a["filters"] == [{"name": "image-id", "values": [pinned]}] for a in lookups)
    assert deployment.one(LT, "eu-central-1").inputs["imageId"] == pinned


def test_a_deprecated_pinned_image_is_still_found() -> None:
    """Alpine deprecates its images; EC2 then hides them from lookups unless
    ``include_deprecated`` is set, and the next preview would fail."""
    images = tuple(replace(i, deprecated=True) for i in IMAGES)
    deployment = deploy("staging", staging_with(), images=images)
    assert deployment.one(LT, "eu-central-1").inputs["imageId"] == IMAGES[1].id_in("eu-central-1")


def test_root_device_is_the_images_own() -> None:
    images = (IMAGES[0], replace(IMAGES[1], root_device="/dev/sda1"), IMAGES[2])
    template = deploy("staging", staging_with(), images=images).one(LT, "eu-central-1")
    (root,) = template.inputs["blockDeviceMappings"]
    assert root["deviceName"] == "/dev/sda1"


def test_providers_refuse_other_accounts_and_tag_everything(deployment: Deployment) -> None:
    cfg = load_stack(deployment.stack)
    assert cfg.aws_account_id == ACCOUNTS[deployment.stack]
    for provider in deployment.nodes("pulumi:providers:aws"):
        assert json.loads(provider.inputs["allowedAccountIds"]) == [cfg.aws_account_id]
        tags = json.loads(provider.inputs["defaultTags"])["tags"]
        assert tags == {"environment": cfg.stack, "role": "exit-node", "project": "idra"}


def test_stateful_resources_are_protected(deployment: Deployment) -> None:
    """A key or secret is never deleted or replaced by an update; fixed names go first."""
    options = deployment.options
    stateful = ("aws:kms/key:Key", "aws:kms/replicaKey:ReplicaKey", SECRET)
    found = [key for key in options if key[0] in stateful]
    # the key, the three stack secrets and the ops service's OPERATOR_TOKEN, a replica key
    # per other region
    assert len(found) == 1 + 4 + (len(load_stack(deployment.stack).regions) - 1)
    assert all(options[key]["protect"] for key in found)
    fixed_names = (SECRET, "aws:kms/alias:Alias", "aws:autoscaling/lifecycleHook:LifecycleHook")
    assert all(options[k]["delete_before_replace"] for k in options if k[0] in fixed_names)
    assert not any(options[k]["protect"] for k in options if k[0] not in stateful)


def sent_user_data(template: Resource) -> bytes:
    """What EC2 hands the instance: the launch template's user-data, base64-decoded."""
    return base64.b64decode(template.inputs["userData"])


def test_user_data_is_the_rendered_file_and_valid(deployment: Deployment, tmp_path: Path) -> None:
    """Sent gzipped; cloud-init's own user-data processor (the system's cloud-init, as on
    the node) unpacks it into exactly the rendered cloud-config, which its schema accepts."""
    cfg = load_stack(deployment.stack)
    for template in deployment.nodes(LT):
        blob = sent_user_data(template)
        text = gzip.decompress(blob).decode()
        assert text == render_node_files(cfg, template.region)["user-data.yaml"]
        (tmp_path / "blob").write_bytes(blob)
        read = run(["/usr/bin/python3", "-c", CLOUD_INIT_READS, str(tmp_path / "blob")])
        assert read.stdout == f"text/cloud-config {len(text.encode())}\n"
        path = tmp_path / f"{template.region}.yaml"
        path.write_text(text)
        result = run(["cloud-init", "schema", "--config-file", str(path)], check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"--region '{template.region}'" in text  # region becomes the node's location


CLOUD_INIT_READS = """
import sys
from cloudinit import helpers, user_data
blob = open(sys.argv[1], "rb").read()
message = user_data.UserDataProcessor(helpers.Paths({})).process(blob)
for part in message.walk():
    if not part.is_multipart():
        print(part.get_content_type(), len(part.get_payload(decode=True)))
"""


def _inputs_text(resource: Resource) -> str:
    return json.dumps(resource.inputs, default=str)


def test_no_secret_value_outside_its_secret_version(deployment: Deployment) -> None:
    # two stack secrets + generated NODE_TOKEN and OPERATOR_TOKEN
    assert len(deployment.secret_values) == 4
    outputs = json.dumps(deployment.outputs)
    for value in deployment.secret_values:
        assert value not in outputs
        holders = [r.typ for r in deployment.resources if value in _inputs_text(r)]
        assert holders == [VERSION]


def _as_list(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def test_node_role_reads_only_its_node_token(deployment: Deployment) -> None:
    token_arn = deployment.outputs["secretArns"]["NODE_TOKEN"]
    for region in load_stack(deployment.stack).regions:
        regional_arn = token_arn.replace(":eu-central-1:", f":{region}:")
        statements = policy_statements(deployment, region)
        actions = {" ".join(_as_list(s["Action"])): s["Resource"] for s in statements}
        account = ACCOUNTS[deployment.stack]
        own_group = (
            f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:*:"
            f"autoScalingGroupName/idra-{deployment.stack}-{region}"
        )
        lifecycle = "autoscaling:CompleteLifecycleAction autoscaling:RecordLifecycleActionHeartbeat"
        assert actions == {
            "secretsmanager:GetSecretValue": regional_arn,
            "kms:Decrypt": deployment.outputs["kmsKeyArns"][region],
            lifecycle: own_group,
        }
        group_arn = deployment.outputs["asgArns"][region]
        assert fnmatch.fnmatchcase(group_arn, own_group)  # the wildcard is only the group id
        decrypt = next(s for s in statements if s["Action"] == "kms:Decrypt")
        assert decrypt["Condition"]["StringEquals"] == {
            "kms:ViaService": f"secretsmanager.{region}.amazonaws.com",
            "kms:EncryptionContext:SecretARN": regional_arn,
        }
        secret_statements = [s for s in statements if s["Resource"] != own_group]
        assert all(s["Effect"] == "Allow" and "*" not in s["Resource"] for s in secret_statements)


def test_stacks_never_reference_each_other(deployments: dict[str, Deployment]) -> None:
    for stack, other in (("staging", "production"), ("production", "staging")):
        foreign = deployments[other].arns()
        assert foreign
        for resource in deployments[stack].resources:
            text = _inputs_text(resource)
            assert not any(arn in text for arn in foreign), resource.name
            assert other not in text, resource.name


def test_secrets_encrypted_and_replicated(deployment: Deployment) -> None:
    cfg = load_stack(deployment.stack)
    secrets = deployment.nodes(SECRET)
    assert sorted(s.inputs["name"] for s in secrets) == sorted(
        f"idra/{cfg.stack}/{name}"
        for name in (
            "NODE_TOKEN", "FIREBASE_PRIVATE_KEY", "BLINDED_SIGNING_PRIVATE_KEY", "OPERATOR_TOKEN"
        )
    )  # fmt: skip
    (key,) = deployment.nodes("aws:kms/key:Key")
    assert key.inputs["enableKeyRotation"] is True
    for secret in secrets:
        assert secret.inputs["kmsKeyId"] == key.state["arn"]
        replicas = {r["region"]: r["kmsKeyId"] for r in secret.inputs.get("replicas", [])}
        # Only the nodes' token goes to every node region (the private keys: test_roles.py).
        node_token = secret.inputs["name"].endswith("/NODE_TOKEN")
        assert sorted(replicas) == sorted(cfg.regions[1:] if node_token else []), secret.name
        for region, key_arn in replicas.items():
            assert key_arn == deployment.outputs["kmsKeyArns"][region]


def test_node_token_from_stack_secret_is_not_generated() -> None:
    config = staging_with({"idra:nodeToken": "a-token-set-by-the-operator-0123456789"})
    deployment = deploy("staging", config)
    generated = deployment.of_type("random:index/randomPassword:RandomPassword")
    assert [r.name for r in generated] == ["operator-token"]
    versions = [_inputs_text(v) for v in deployment.nodes(VERSION)]
    assert sum("a-token-set-by-the-operator" in text for text in versions) == 1


def test_scale_in_only_through_drain(deployment: Deployment) -> None:
    cfg = load_stack(deployment.stack)
    for asg in deployment.nodes(ASG):
        assert asg.inputs["protectFromScaleIn"] is True
        assert (asg.inputs["minSize"], asg.inputs["maxSize"]) == (cfg.min_size, cfg.max_size)
        assert "desiredCapacity" not in asg.inputs  # left to the scaling policies
        assert asg.inputs["healthCheckGracePeriod"] == cfg.health_check_grace_seconds
        assert asg.inputs["defaultInstanceWarmup"] == cfg.instance_warmup_seconds
        assert "instanceRefresh" not in asg.inputs  # serving nodes are rolled through drain
        overrides = asg.inputs["mixedInstancesPolicy"]["launchTemplate"]["overrides"]
        assert [o["instanceType"] for o in overrides] == cfg.instance_types
    policies = deployment.nodes("aws:autoscaling/policy:Policy")
    metrics = 2 if cfg.scale_network_out_target_mbps else 1
    assert len(policies) == metrics * len(cfg.regions)
    for policy in policies:
        tracking = policy.inputs["targetTrackingConfiguration"]
        assert policy.inputs["policyType"] == "TargetTrackingScaling"
        # Scale-in lowers desired capacity only: protected instances are never terminated by
        # AWS (asserted above); idra scale-in drains the excess.
        assert tracking["disableScaleIn"] is False
    hooks = [
        h
        for h in deployment.nodes("aws:autoscaling/lifecycleHook:LifecycleHook")
        if h.inputs["name"] == LIFECYCLE_HOOK
    ]
    assert sorted(h.inputs["autoscalingGroupName"] for h in hooks) == sorted(
        cfg.asg_name(region) for region in cfg.regions
    )
    for hook in hooks:
        assert hook.inputs["name"] == LIFECYCLE_HOOK
        assert hook.inputs["lifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
        # AWS's limit is 2 h; the agent sends lifecycle heartbeats for longer drains.
        assert hook.inputs["heartbeatTimeout"] == min(cfg.max_drain_seconds, 7200)
        assert hook.inputs["defaultResult"] == "CONTINUE"


def test_new_nodes_count_only_once_serving(deployment: Deployment) -> None:
    """The launch hook is part of the group from its creation (even its first instances
    wait) and abandons an instance whose agent never reports ready."""
    cfg = load_stack(deployment.stack)
    expected = {
        "name": LAUNCH_HOOK,
        "lifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
        "heartbeatTimeout": cfg.launch_hook_timeout_seconds,
        "defaultResult": "ABANDON",
    }
    for asg in deployment.nodes(ASG):
        (hook,) = asg.inputs["initialLifecycleHooks"]
        assert hook == expected
        # and as its own resource, so a later change (or an older group) gets it too
        (own,) = [
            h
            for h in deployment.nodes("aws:autoscaling/lifecycleHook:LifecycleHook")
            if h.inputs["name"] == LAUNCH_HOOK and h.region == asg.region
        ]
        assert own.inputs == expected | {"autoscalingGroupName": asg.inputs["name"]}


PROVIDER_CAPACITY_WAIT_S = 600  # aws_autoscaling_group's default wait_for_capacity_timeout


def test_pulumi_never_waits_for_capacity_the_readiness_hook_does(deployment: Deployment) -> None:
    """The AWS provider's group resource waits by default up to 10 min for ``min_size``
    InService instances and fails on a failed scaling activity (provider docs,
    aws_autoscaling_group: "Waiting for Capacity"; ``wait_for_capacity_timeout`` "0" skips
    all capacity waiting; ``ignore_failed_scaling_activities``). A new instance may stay in
    Pending:Wait for the launch hook's whole heartbeat timeout before it is InService
    (Auto Scaling user guide, "Amazon EC2 Auto Scaling lifecycle hooks"), longer than that
    wait: so the program does not wait, and the hook alone decides what counts."""
    cfg = load_stack(deployment.stack)
    assert cfg.launch_hook_timeout_seconds + cfg.health_check_grace_seconds > (
        PROVIDER_CAPACITY_WAIT_S
    ), "the default wait would cut the readiness hook short"
    for asg in deployment.nodes(ASG):
        assert asg.inputs["waitForCapacityTimeout"] == "0"
        assert asg.inputs["ignoreFailedScalingActivities"] is True
    # The hooks and policies wait only for the group's creation, never for its capacity.
    for typ in ("aws:autoscaling/lifecycleHook:LifecycleHook", "aws:autoscaling/policy:Policy"):
        for resource in deployment.nodes(typ):
            assert deployment.depends_on[resource.name] <= {
                f"{ASG}::{resource.region}-nodes",
                f"pulumi:providers:aws::aws-{resource.region}",
            }


def test_group_waits_for_the_token_and_the_node_policies(deployment: Deployment) -> None:
    for asg in deployment.nodes(ASG):
        needs = deployment.depends_on[asg.name]
        assert f"{VERSION}::node-token" in needs
        assert f"{ROLE_POLICY}::{asg.region}-node-token" in needs
        assert f"{ROLE_POLICY}::{asg.region}-node-lifecycle" in needs


def test_instances_carry_the_stack_tags(deployment: Deployment) -> None:
    """Resources get the stack's tags from the provider's default_tags; those never reach
    instances, so the group and the template's tag specifications carry them (the reaper
    checks them before it terminates anything)."""
    stack_tags = {"environment": deployment.stack, "role": "exit-node", "project": "idra"}
    for asg in deployment.nodes(ASG):
        propagated = {t["key"]: t["value"] for t in asg.inputs["tags"] if t["propagateAtLaunch"]}
        assert propagated.items() >= stack_tags.items()
    for template in deployment.nodes(LT):
        specs = {s["resourceType"]: s["tags"] for s in template.inputs["tagSpecifications"]}
        assert sorted(specs) == ["instance", "network-interface", "volume"]
        assert all(tags.items() >= stack_tags.items() for tags in specs.values())
    for resource in deployment.resources:
        if resource.typ not in (ASG, LT):
            assert set(resource.inputs.get("tags") or {}) <= {"Name"}, resource.name


def test_dual_stack_public_subnets_across_zones(deployment: Deployment) -> None:
    for vpc in deployment.nodes("aws:ec2/vpc:Vpc"):
        assert vpc.inputs["assignGeneratedIpv6CidrBlock"] is True
        subnets = [s for s in deployment.nodes("aws:ec2/subnet:Subnet") if s.region == vpc.region]
        assert len({s.inputs["availabilityZone"] for s in subnets}) == 3
        assert len({s.inputs["ipv6CidrBlock"] for s in subnets}) == 3
        assert all(s.inputs["ipv6CidrBlock"].endswith("/64") for s in subnets)
        asg = deployment.one(ASG, vpc.region)
        assert sorted(asg.inputs["vpcZoneIdentifiers"]) == sorted(s.id for s in subnets)


def test_existing_subnets_replace_the_vpc() -> None:
    subnets = ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]
    config = staging_with({"idra:existingSubnetIds": json.dumps({"eu-central-1": subnets})})
    deployment = deploy("staging", config)
    assert not deployment.nodes("aws:ec2/vpc:Vpc")
    assert deployment.one(ASG, "eu-central-1").inputs["vpcZoneIdentifiers"] == subnets
    assert deployment.one(SG, "eu-central-1").inputs["vpcId"] == "vpc-0123456789abcdef0"


def test_outputs_name_what_operators_need(deployment: Deployment) -> None:
    cfg = load_stack(deployment.stack)
    outputs = deployment.outputs
    assert outputs["asgNames"] == {r: cfg.asg_name(r) for r in cfg.regions}
    assert sorted(outputs["asgArns"]) == sorted(outputs["securityGroupIds"]) == sorted(cfg.regions)
    assert sorted(outputs["secretArns"]) == [
        "BLINDED_SIGNING_PRIVATE_KEY",
        "FIREBASE_PRIVATE_KEY",
        "NODE_TOKEN",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"idra:blindedSigningPrivateKey": None},
            "Pulumi.staging.yaml: idra:blindedSigningPrivateKey: required secret is not set; "
            "run 'pulumi config set --secret --stack staging idra:blindedSigningPrivateKey",
        ),
        (
            {"idra:regions": json.dumps(["moon-base-1"])},
            "Pulumi.staging.yaml: idra:regions[0]: 'moon-base-1' is not an AWS region name",
        ),
        (
            {"idra:minSize": "5", "idra:maxSize": "2"},
            "Pulumi.staging.yaml: idra:minSize: 5 is above maxSize 2",
        ),
        (
            {"idra:amiName": None},
            "Pulumi.staging.yaml: idra:amiName: required: pin the image by exact name, "
            "or amiIds for eu-central-1",
        ),
        (
            {"idra:amiName": "alpine-3.*-x86_64-uefi-cloudinit-r*"},
            "Pulumi.staging.yaml: idra:amiName: String should match pattern",
        ),
        (
            {"idra:amiIds": json.dumps({"us-west-2": "ami-0fedcba9876543210"})},
            "Pulumi.staging.yaml: idra:amiIds: us-west-2 is not in regions",
        ),
    ],
)
def test_bad_config_stops_with_one_clear_line(change: dict, message: str) -> None:
    with pytest.raises(pulumi.RunError) as error:
        deploy("staging", staging_with(change))
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def user_data_sizes(deployments: dict[str, Deployment]) -> dict[tuple[str, str], int]:
    """Bytes sent per stack and region (gzipped, before base64)."""
    return {
        (stack, t.region): len(sent_user_data(t))
        for stack, deployment in deployments.items()
        for t in deployment.nodes(LT)
    }


def test_user_data_fits_the_budget(deployments: dict[str, Deployment]) -> None:
    """12 KB as sent, well inside EC2's 16 KB; docs/infrastructure.md quotes the sizes."""
    sizes = user_data_sizes(deployments)
    assert len(sizes) == 3
    assert max(sizes.values()) <= USER_DATA_BUDGET == 12 * 1024, sizes


def test_user_data_above_the_budget_stops_the_preview(monkeypatch) -> None:
    monkeypatch.setattr(idra.render, "USER_DATA_BUDGET", 512)
    with pytest.raises(pulumi.RunError, match=r"eu-central-1: user-data is \d+ bytes gzipped"):
        deploy("staging", staging_with())
