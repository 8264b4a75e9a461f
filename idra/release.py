"""``idra release pin``: build the agent reproducibly and pin it in ``Pulumi.<stack>.yaml``.

Only the two lines ``idra:agentUrl`` and ``idra:agentSha256`` change; every other line,
comment and key order of the stack file stays as it was. The new file is validated
before it replaces the old one (atomically), so a failed pin leaves the file untouched.
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path
from types import ModuleType

import click

from idra.cliutil import BadInput, Failed
from idra.config import NAMESPACE, REPO_ROOT, ConfigError, load_stack, stack_file
from node_daemon import __version__ as AGENT_VERSION

BUILD_SCRIPT = REPO_ROOT / "agent" / "build.py"
ASSET = "node-daemon.pyz"
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
    spec.loader.exec_module(module)
    return module


def build_agent(out: Path) -> tuple[Path, str]:
    """Build ``node-daemon.pyz`` into ``out``; return its path and sha256."""
    module = _build_module()
    try:
        path = module.build(out)
    except module.BuildError as exc:
        raise Failed(f"agent build: {exc}") from None
    digest = (path.parent / f"{ASSET}.sha256").read_text().split()[0]
    return path, digest


def release_url(current: str, tag: str) -> str:
    """The stack's current agent URL with its release tag replaced by ``tag``."""
    match = RELEASE_URL.match(current)
    if not match:
        raise BadInput(
            f"idra:agentUrl {current}: not a GitHub release asset URL; give --url for {tag}"
        )
    return f"{match.group(1)}{tag}{match.group(2)}"


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


def write_pin(stack: str, root: Path, url: str, sha256: str, *, dry_run: bool = False) -> Path:
    """Set agentUrl/agentSha256 in ``root/Pulumi.<stack>.yaml``: validated, then atomic
    (``dry_run``: validate only)."""
    path = stack_file(stack, root)
    # Quoted: YAML would read a checksum of only digits as a number.
    text = set_keys(path.read_text(), {"agentUrl": url, "agentSha256": f'"{sha256}"'})
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
    """Agent releases: build reproducibly and pin them in a stack."""


@release.command("pin")
@click.option("--stack", required=True, help="Stack to pin: writes Pulumi.<stack>.yaml.")
@click.option("--version", "tag", default=None, help="Release tag of this tree, like v0.1.0.")
@click.option(
    "--from-stack",
    default=None,
    help="Copy another stack's pin instead of building (production after staging).",
)
@click.option("--url", default=None, help="Where the release asset is downloaded from "
              "[default: the stack's agentUrl with its tag replaced].")  # fmt: skip
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the build here (node-daemon.pyz and .sha256) [default: a temporary folder].",
)
@click.option(
    "--cwd",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path(),
    help="Folder holding Pulumi.<stack>.yaml (default: the current folder, as Pulumi).",
)
def pin(stack: str, tag: str | None, from_stack: str | None, url: str | None,
        out: Path | None, cwd: Path) -> None:  # fmt: skip
    """Build node-daemon.pyz of this tree reproducibly and pin its URL and sha256 in
    Pulumi.<stack>.yaml (or copy the pin of --from-stack)."""
    root = cwd.resolve()
    try:
        cfg = load_stack(stack, root)
        source = load_stack(from_stack, root) if from_stack else None
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    if (tag is None) == (source is None):
        raise BadInput("give exactly one of --version and --from-stack")
    if source is not None:
        if url:
            raise BadInput("--url: not with --from-stack (its URL is copied)")
        url, digest = source.agent_url, source.agent_sha256
    else:
        if tag != tree_tag():
            raise BadInput(
                f"--version {tag}: this tree builds node-daemon {AGENT_VERSION} "
                f"(agent/node_daemon/__init__.py); pin {tree_tag()} or check out {tag}"
            )
        url = url or release_url(cfg.agent_url, tag)
        write_pin(stack, root, url, cfg.agent_sha256, dry_run=True)  # a bad --url: no build
        if out is not None:
            _, digest = build_agent(out)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                _, digest = build_agent(Path(tmp))
    path = write_pin(stack, root, url, digest)
    click.echo(f"{path.name}: {NAMESPACE}:agentUrl {url}")
    click.echo(f"{path.name}: {NAMESPACE}:agentSha256 {digest}")


__all__ = ["build_agent", "pin", "release", "release_url", "set_keys", "tree_tag", "write_pin"]
