"""``idra release pin``: build a release's two artifacts reproducibly and pin them in
``Pulumi.<stack>.yaml``: the node agent (``node-daemon.pyz``, ``idra:agentUrl``/
``agentSha256``) and the ops service's ``idra`` zipapp (``idra-ops.pyz``,
``idra:opsUrl``/``opsSha256``, which makes the stack deploy its ops group).

Only those four lines change; every other line, comment and key order of the stack file
stays as it was. The new file is validated before it replaces the old one (atomically),
so a failed pin leaves the file untouched.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import click

from idra.cliutil import BadInput, Failed
from idra.config import NAMESPACE, REPO_ROOT, ConfigError, load_stack, stack_file
from node_daemon import __version__ as AGENT_VERSION

BUILD_SCRIPT = REPO_ROOT / "agent" / "build.py"
ASSET = "node-daemon.pyz"
OPS_ASSET = "idra-ops.pyz"
# A GitHub release asset: .../releases/download/<tag>/<file>; the tag is replaced.
RELEASE_URL = re.compile(r"^(https://github\.com/[^/]+/[^/]+/releases/download/)[^/]+(/[^/]+)$")


def tree_tag() -> str:
    """The release tag of this tree's agent (``v`` + node_daemon's version)."""
    return f"v{AGENT_VERSION}"


def _build_module() -> ModuleType:
    if not BUILD_SCRIPT.is_file():
        raise BadInput(f"{BUILD_SCRIPT}: not found; run 'idra release pin' from a checkout")
    spec = importlib.util.spec_from_file_location("idra_agent_build", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def build_artifact(out: Path, name: str) -> tuple[Path, str]:
    """Build the release artifact ``name`` (``node-daemon`` or ``idra-ops``, see
    agent/build.py) into ``out``; return its path and sha256."""
    module = _build_module()
    try:
        path = module.build(out, module.ARTIFACTS[name])
    except module.BuildError as exc:
        raise Failed(f"{name} build: {exc}") from None
    digest = (path.parent / f"{path.name}.sha256").read_text().split()[0]
    return path, digest


def release_url(current: str, tag: str, key: str = "agentUrl", flag: str = "--url") -> str:
    """The stack's current URL (``idra:<key>``) with its release tag replaced by ``tag``."""
    match = RELEASE_URL.match(current)
    if not match:
        raise BadInput(
            f"{NAMESPACE}:{key} {current}: not a GitHub release asset URL; give {flag} for {tag}"
        )
    return f"{match.group(1)}{tag}{match.group(2)}"


def ops_release_url(agent_url: str, current: str | None, tag: str) -> str:
    """The stack's ops URL with its tag replaced; a stack without one gets ``idra-ops.pyz``
    of the same release as the agent."""
    if current:
        return release_url(current, tag, "opsUrl", "--ops-url")
    return release_url(agent_url, tag, "agentUrl", "--ops-url").rsplit("/", 1)[0] + f"/{OPS_ASSET}"


def set_keys(text: str, values: dict[str, str]) -> str:
    """``text`` (a stack file) with each ``idra:<key>`` line set to its new value; a key
    the file lacks is added at the end of the ``config:`` mapping."""
    lines = text.splitlines(keepends=True)
    indent = next(
        (m.group(1) for line in lines if (m := re.match(rf"^(\s+){NAMESPACE}:\w", line))), "  "
    )
    for key, value in values.items():
        entry = f"{indent}{NAMESPACE}:{key}: {value}\n"
        pattern = re.compile(rf"^\s+{NAMESPACE}:{key}:(\s.*)?$")
        found = [i for i, line in enumerate(lines) if pattern.match(line.rstrip("\n"))]
        if len(found) > 1:
            raise BadInput(f"{NAMESPACE}:{key} is set {len(found)} times")
        if found:
            lines[found[0]] = entry
        else:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(entry)
    return "".join(lines)


def write_pin(stack: str, root: Path, pins: dict[str, tuple[str, str]], *,
              dry_run: bool = False) -> Path:  # fmt: skip
    """Set ``<prefix>Url``/``<prefix>Sha256`` for each ``prefix -> (url, sha256)`` of
    ``pins`` (prefixes ``agent``, ``ops``) in ``root/Pulumi.<stack>.yaml``: validated, then
    atomic (``dry_run``: validate only)."""
    path = stack_file(stack, root)
    values = {}
    for prefix, (url, sha256) in pins.items():
        # Quoted: YAML would read a checksum of only digits as a number.
        values |= {f"{prefix}Url": url, f"{prefix}Sha256": f'"{sha256}"'}
    text = set_keys(path.read_text(), values)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        candidate = stack_file(stack, Path(tmp))
        candidate.write_text(text)
        try:
            load_stack(stack, Path(tmp))
        except ConfigError as exc:
            raise BadInput(f"{path.name}: the pinned file would not load: {exc}") from None
        if not dry_run:
            candidate.chmod(path.stat().st_mode & 0o777)
            candidate.replace(path)
    return path


@click.group("release")
def release() -> None:
    """Releases (node agent and ops zipapp): build reproducibly and pin them in a stack."""


@release.command("pin")
@click.option("--stack", required=True, help="Stack to pin: writes Pulumi.<stack>.yaml.")
@click.option("--version", "tag", default=None, help="Release tag of this tree, like v0.1.0.")
@click.option(
    "--from-stack",
    default=None,
    help="Copy another stack's pin instead of building (production after staging).",
)
@click.option("--url", default=None, help="Where node-daemon.pyz is downloaded from "
              "[default: the stack's agentUrl with its tag replaced].")  # fmt: skip
@click.option(
    "--ops-url",
    default=None,
    help="Where idra-ops.pyz is downloaded from "
    "[default: the stack's opsUrl with its tag replaced, else beside the agent's].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the builds here (node-daemon.pyz, idra-ops.pyz and their .sha256) "
    "[default: a temporary folder].",
)
@click.option(
    "--cwd",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path(),
    help="Folder holding Pulumi.<stack>.yaml (default: the current folder, as Pulumi).",
)
def pin(stack: str, tag: str | None, from_stack: str | None, url: str | None,
        ops_url: str | None, out: Path | None, cwd: Path) -> None:  # fmt: skip
    """Build node-daemon.pyz and idra-ops.pyz of this tree reproducibly and pin their URLs
    and sha256 in Pulumi.<stack>.yaml (or copy the pins of --from-stack)."""
    root = cwd.resolve()
    try:
        cfg = load_stack(stack, root)
        source = load_stack(from_stack, root) if from_stack else None
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    if (tag is None) == (source is None):
        raise BadInput("give exactly one of --version and --from-stack")
    if source is not None:
        if url or ops_url:
            raise BadInput("--url, --ops-url: not with --from-stack (its URLs are copied)")
        pins = {"agent": (source.agent_url, source.agent_sha256)}
        if source.ops_url and source.ops_sha256:
            pins["ops"] = (source.ops_url, source.ops_sha256)
    else:
        if tag != tree_tag():
            raise BadInput(
                f"--version {tag}: this tree builds node-daemon {AGENT_VERSION} "
                f"(agent/node_daemon/__init__.py); pin {tree_tag()} or check out {tag}"
            )
        url = url or release_url(cfg.agent_url, tag)
        ops_url = ops_url or ops_release_url(url, cfg.ops_url, tag)
        # A bad URL is refused before any build (any valid checksum stands in for now).
        unbuilt = cfg.agent_sha256
        write_pin(stack, root, {"agent": (url, unbuilt), "ops": (ops_url, unbuilt)}, dry_run=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = out if out is not None else Path(tmp)
            pins = {"agent": (url, build_artifact(folder, "node-daemon")[1]),
                    "ops": (ops_url, build_artifact(folder, "idra-ops")[1])}  # fmt: skip
    path = write_pin(stack, root, pins)
    for prefix, (pinned_url, digest) in pins.items():
        click.echo(f"{path.name}: {NAMESPACE}:{prefix}Url {pinned_url}")
        click.echo(f"{path.name}: {NAMESPACE}:{prefix}Sha256 {digest}")


__all__ = ["build_artifact", "ops_release_url", "pin", "release",
           "release_url", "set_keys", "tree_tag", "write_pin"]  # fmt: skip
