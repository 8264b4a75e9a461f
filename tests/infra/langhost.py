"""Start a Pulumi program the way the Pulumi CLI's Python language host does, with Pulumi's
mock monitor in place of the engine.

It follows ``pulumi-language-python-exec`` (pulumi/pulumi, sdk/python/cmd): config from
``PULUMI_CONFIG`` / ``PULUMI_CONFIG_SECRET_KEYS``, ``chdir`` to ``--pwd`` (the project's
``main``), then ``runpy.run_path(PROGRAM, run_name="__main__")`` inside
``pulumi.runtime.run_in_stack`` — so the program folder is first on ``sys.path``. Only the
runtime settings differ: Pulumi's mock monitor (what ``set_mocks`` installs) instead of
the engine's.
Every resource registered is written as JSON to ``--out``. A ``pulumi.RunError`` is
reported as the CLI does (``error: <message>``) with exit code 1.

Run it with a fresh interpreter; it must not import the program (or the standard
library's ``secrets``) before ``run_path`` does.
"""

import argparse
import asyncio
import importlib.util
import json
import os
import runpy
import sys
from pathlib import Path

import pulumi
import pulumi.runtime
from google.protobuf import empty_pb2
from pulumi.runtime.mocks import MockEngine, MockSettings


def _load_mocks():  # by file path: no project folder goes on sys.path
    path = Path(__file__).with_name("mocks.py")
    spec = importlib.util.spec_from_file_location("_idra_mocks", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", required=True)
    parser.add_argument("--stack", required=True)
    parser.add_argument("--pwd", required=True)
    parser.add_argument("--dry_run", default="false")
    parser.add_argument("--out", required=True)
    parser.add_argument("PROGRAM")
    args = parser.parse_args()

    pulumi.runtime.set_all_config(
        pulumi.runtime.get_config_env(), pulumi.runtime.get_config_secret_keys_env()
    )
    mocks = _load_mocks()
    deployment = mocks.Deployment(args.stack)
    # What pulumi.runtime.set_mocks does, minus its own root stack: run_in_stack makes it.
    monitor = mocks.RecordingMonitor(mocks.RecordingMocks(deployment))
    features = monitor.GetDeploymentInfo(empty_pb2.Empty()).supportedFeatures
    pulumi.runtime.configure(
        MockSettings(
            monitor=monitor,
            monitor_features=set(features),
            engine=MockEngine(None),
            project=args.project,
            stack=args.stack,
            dry_run=args.dry_run == "true",
            organization=None,
            callbacks=None,
        )
    )
    sys.argv = [args.PROGRAM]
    os.chdir(args.pwd)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    code = 0
    try:
        loop.run_until_complete(
            pulumi.runtime.run_in_stack(lambda: runpy.run_path(args.PROGRAM, run_name="__main__"))
        )
    except pulumi.RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        loop.close()
    records = [
        {"typ": r.typ, "name": r.name, "region": r.region, "inputs": r.inputs}
        for r in deployment.resources
    ]
    Path(args.out).write_text(json.dumps({"resources": records}, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
