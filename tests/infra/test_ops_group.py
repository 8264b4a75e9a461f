"""The ops service's group: built like the nodes, each resource and property by name.
Both stacks pin the ops artifact (``idra release pin``), so both deploy it."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest
import yaml
from pulumi_policy.proxy import unknown_checking_proxy

from idra.config import load_stack
from idra.netns import run
from idra.render import render_ops_files
from policy import rules
from tests.infra.harness import IMAGES, Deployment, Resource, deploy, stack_config

LOCKDOWN = "/usr/local/sbin/idra-lockdown"
PINNED = load_stack("production")
OPS_SHA, OPS_URL = PINNED.ops_sha256, PINNED.ops_url


def named(deployment: Deployment, typ: str, name: str) -> Resource:
    (found,) = [r for r in deployment.of_type(typ) if r.name == name]
    return found


@pytest.fixture(scope="module")
def ops(deployments: dict[str, Deployment]) -> Deployment:
    """The real production stack, as pinned."""
    assert OPS_URL and OPS_SHA, "Pulumi.production.yaml pins no ops artifact"
    return deployments["production"]


def group(ops: Deployment) -> Resource:
    return named(ops, "aws:autoscaling/group:Group", "ops")


def template(ops: Deployment) -> Resource:
    return named(ops, "aws:ec2/launchTemplate:LaunchTemplate", "ops")


def test_one_instance_in_the_primary_region(ops: Deployment) -> None:
    ops_group = group(ops)
    assert ops_group.region == "eu-central-1"
    assert ops_group.inputs["name"] == "idra-production-ops"
    assert (ops_group.inputs["minSize"], ops_group.inputs["maxSize"]) == (1, 1)
    assert ops_group.inputs["desiredCapacity"] == 1
    node_group = ops.one("aws:autoscaling/group:Group", "us-east-1")
    assert ops_group.inputs["vpcZoneIdentifiers"] != node_group.inputs["vpcZoneIdentifiers"]


def test_its_instances_are_never_the_reapers(ops: Deployment) -> None:
    """The reaper only touches instances tagged role=exit-node in idra-<stack>-<region>."""
    tag = {t["key"]: t["value"] for t in group(ops).inputs["tags"]}
    assert tag["role"] == "ops" and tag["environment"] == "production"


def test_ssh_closed_nothing_in(ops: Deployment) -> None:
    security = named(ops, "aws:ec2/securityGroup:SecurityGroup", "ops")
    assert security.inputs.get("ingress", []) == []


def test_pinned_image_imdsv2_encrypted_root(ops: Deployment) -> None:
    launch = template(ops)
    cfg = load_stack("production")
    pinned = next(i for i in IMAGES if i.name == cfg.ami_name)
    assert launch.inputs["imageId"] == pinned.id_in("eu-central-1")
    options = launch.inputs["metadataOptions"]
    assert (options["httpTokens"], options["httpPutResponseHopLimit"]) == ("required", 1)
    (root,) = launch.inputs["blockDeviceMappings"]
    assert root["ebs"]["encrypted"] == "true"
    profile = named(ops, "aws:iam/instanceProfile:InstanceProfile", "ops")
    assert launch.inputs["iamInstanceProfile"]["arn"] == profile.state["arn"]
    assert group(ops).inputs["launchTemplate"]["id"] == launch.id


def test_user_data_is_rendered_and_cloud_init_valid(deployment: Deployment, tmp_path: Path) -> None:
    """Both stacks' ops user-data, as sent: the rendered file, valid for ``cloud-init
    schema`` (as the nodes': tests/infra/test_program.py), no secret in it."""
    text = gzip.decompress(base64.b64decode(template(deployment).inputs["userData"])).decode()
    assert text == render_ops_files(load_stack(deployment.stack))["ops-user-data.yaml"]
    path = tmp_path / "ops-user-data.yaml"
    path.write_text(text)
    result = run(["cloud-init", "schema", "--config-file", str(path)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(secret not in text for secret in deployment.secret_values)


def test_user_data_runs_the_pinned_loop_supervised_with_ssh_off(ops: Deployment) -> None:
    text = gzip.decompress(base64.b64decode(template(ops).inputs["userData"])).decode()
    document = yaml.safe_load(text)
    files = {f["path"]: f["content"] for f in document["write_files"]}
    service = files["/etc/init.d/idra-ops"]
    assert 'supervisor="supervise-daemon"' in service
    assert "ops run" in service and "--stack production" in service
    assert 'command_user="idra-ops:idra-ops"' in service
    assert f"pin='{OPS_SHA}'" in files["/usr/local/sbin/idra-install-ops"]
    boot = files["/var/lib/cloud/scripts/per-boot/idra-ops-boot"]
    assert "rc-update del sshd" in boot and "mount -o remount,ro" in files[LOCKDOWN]
    assert boot.index(f"{LOCKDOWN} /") < boot.index("rc-service idra-ops start")
    stack = yaml.safe_load(files["/etc/idra/Pulumi.production.yaml"])["config"]
    assert stack["idra:opsSha256"] == OPS_SHA
    assert not any("secure" in str(value) for value in stack.values())


def test_operator_token_readable_by_the_ops_role_only(ops: Deployment) -> None:
    secret = named(ops, "aws:secretsmanager/secret:Secret", "operator-token")
    assert secret.inputs["name"] == "idra/production/OPERATOR_TOKEN"
    assert not secret.inputs.get("replicas")
    assert ops.options[(secret.typ, secret.name)]["protect"] is True
    policy = named(ops, "aws:iam/rolePolicy:RolePolicy", "ops-token")
    role = named(ops, "aws:iam/role:Role", "ops")
    assert policy.inputs["role"] == role.id
    statements = json.loads(policy.inputs["policy"])["Statement"]
    assert statements[0]["Resource"] == secret.state["arn"]
    nodes = [p for p in ops.of_type(policy.typ) if p.name.endswith("-node-token")]
    assert all(secret.state["arn"] not in p.inputs["policy"] for p in nodes)


def test_the_ops_resources_pass_every_policy(ops: Deployment) -> None:
    for resource in ops.resources:
        props = unknown_checking_proxy(json.loads(json.dumps(resource.inputs)))
        for name, (_, rule) in rules.RULES.items():
            assert rule(resource.typ, props) == [], (name, resource.name)


def test_both_stacks_deploy_the_ops_group(deployment: Deployment) -> None:
    (ops_group,) = [g for g in deployment.of_type("aws:autoscaling/group:Group") if g.name == "ops"]
    assert ops_group.inputs["name"] == f"idra-{deployment.stack}-ops"
    assert deployment.outputs["opsGroupName"] == ops_group.inputs["name"]


def test_no_ops_artifact_no_ops_group() -> None:
    config = stack_config("staging") | {
        "idra:firebasePrivateKey": "test-firebase-key",
        "idra:blindedSigningPrivateKey": "test-signing-key",
    }
    del config["idra:opsUrl"], config["idra:opsSha256"]
    deployment = deploy("staging", config)
    assert not [
        g.name for g in deployment.of_type("aws:autoscaling/group:Group") if g.name == "ops"
    ]
    assert not [s.name for s in deployment.of_type("aws:secretsmanager/secret:Secret")
                if s.name == "operator-token"]  # fmt: skip
    assert deployment.outputs["opsGroupName"] == ""


def test_ops_template_is_hardened_exactly_like_the_nodes(deployment: Deployment) -> None:
    """One helper (infra.fleet.hardened) for both: IMDSv2 required with hop limit 1, no
    instance tags in the metadata, an encrypted gp3 root on the image's root device."""
    ops_template = template(deployment)
    node_template = deployment.one("aws:ec2/launchTemplate:LaunchTemplate", ops_template.region)
    for key in ("metadataOptions", "blockDeviceMappings"):
        assert ops_template.inputs[key] == node_template.inputs[key], key
    assert ops_template.inputs["metadataOptions"] == {
        "httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1,
        "instanceMetadataTags": "disabled",
    }  # fmt: skip
    (root,) = ops_template.inputs["blockDeviceMappings"]
    assert root["ebs"] == {"volumeSize": load_stack(deployment.stack).root_volume_gb,
                           "volumeType": "gp3", "encrypted": "true",
                           "deleteOnTermination": "true"}  # fmt: skip
