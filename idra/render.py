"""Render a node's boot configuration from ``templates/`` for one stack and region.

The same :func:`render_node_files` feeds ``idra render`` and the Pulumi launch template.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import tempfile
from pathlib import Path

import jinja2
import yaml

from idra.config import LAUNCH_HOOK, LIFECYCLE_HOOK, REPO_ROOT, ConfigError, StackConfig


def _templates() -> Path:
    """The installed package data (``idra.templates``), else a checkout's ``templates/``."""
    spec = importlib.util.find_spec("idra.templates")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return REPO_ROOT / "templates"


TEMPLATES = _templates()
NODE_FILES = ("sysctl.conf", "nftables.nft", "node-daemon.initd", "user-data.yaml")
USER_DATA_BUDGET = 12 * 1024  # bytes as sent to EC2 (gzipped); EC2 refuses above 16 KB

# Destinations a client must never reach through a node (ARCHITECTURE §2). Documentation
# ranges stay reachable: they are never routed on the internet, and the lab uses them.
BLOCKED_V4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
    "240.0.0.0/4",
)  # fmt: skip
BLOCKED_V6 = (
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "2001::/23", "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
)  # fmt: skip

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # noqa: S701 - renders config files, not HTML
)


def render_node_files(cfg: StackConfig, region: str | None = None) -> dict[str, str]:
    """Return the four node files (name → text) for ``region`` (default: the first)."""
    region = region or cfg.regions[0]
    if region not in cfg.regions:
        raise ConfigError(f"region {region!r} is not in stack {cfg.stack!r} (has {cfg.regions})")
    bastions = cfg.ssh_bastion_cidrs
    context = {
        "cfg": cfg,
        "region": region,
        "tun": cfg.tunnel_interface,
        "lifecycle_hook": LIFECYCLE_HOOK,
        "launch_hook": LAUNCH_HOOK,
        "bastions_v4": [str(c) for c in bastions if c.version == 4],
        "bastions_v6": [str(c) for c in bastions if c.version == 6],
        "blocked_v4": [*BLOCKED_V4, str(cfg.vpc_cidr)],
        "blocked_v6": list(BLOCKED_V6),
    }
    files = {
        name: _env.get_template(f"{name}.j2").render(context)
        for name in ("sysctl.conf", "nftables.nft", "node-daemon.initd")
    }
    files["user-data.yaml"] = _env.get_template("user-data.yaml.j2").render(context, files=files)
    return files


def render_ops_files(cfg: StackConfig) -> dict[str, str]:
    """The ops instance's files (name -> text): its stack file (no secret), OpenRC
    service and ``ops-user-data.yaml``, for the stack's primary region."""
    if not cfg.ops_url:
        raise ConfigError(f"stack {cfg.stack!r}: no ops artifact (set idra:opsUrl, idra:opsSha256)")
    values = cfg.model_dump(mode="json", by_alias=True, exclude_none=True,
                            exclude={"stack", "secrets_set"})  # fmt: skip
    stack = {"config": {f"idra:{key}": value for key, value in values.items()}}
    context = {"cfg": cfg, "region": cfg.primary_region}
    files = {
        "stack.yaml": yaml.safe_dump(stack, sort_keys=True),
        "idra-ops.initd": _env.get_template("idra-ops.initd.j2").render(context),
    }
    files["ops-user-data.yaml"] = _env.get_template("ops-user-data.yaml.j2").render(
        context, files=files
    )
    return files


def sent_user_data(text: str, where: str) -> bytes:
    """``user-data.yaml`` as the launch template sends it: gzipped (cloud-init unpacks
    it; ``mtime=0`` keeps it identical between runs). Above :data:`USER_DATA_BUDGET`,
    a :class:`ConfigError` naming ``where``."""
    sent = gzip.compress(text.encode(), compresslevel=9, mtime=0)
    if len(sent) > USER_DATA_BUDGET:
        raise ConfigError(
            f"{where}: user-data is {len(sent)} bytes gzipped, above {USER_DATA_BUDGET}"
        )
    return sent


def write_node_files(cfg: StackConfig, out: Path, region: str | None = None) -> list[Path]:
    """Render, then write all four files into ``out``: all of them or none."""
    files = render_node_files(cfg, region)
    sent_user_data(files["user-data.yaml"], region or cfg.regions[0])
    out = Path(out)
    try:
        return _write_all(files, out)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write: {exc.strerror or exc}") from None


def _write_all(files: dict[str, str], out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, text in files.items():
            (staging / name).write_text(text)
        if not out.exists():
            staging.rename(out)
            return [out / name for name in NODE_FILES]
        if not out.is_dir():
            raise ConfigError(f"{out}: exists and is not a folder")
        for name in NODE_FILES:  # check all before replacing any
            target = out / name
            if target.is_symlink() or (target.exists() and not target.is_file()):
                raise ConfigError(f"{target}: exists and is not a regular file; nothing written")
        for name in NODE_FILES:
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in NODE_FILES]


__all__ = ["NODE_FILES", "USER_DATA_BUDGET", "render_node_files", "render_ops_files",
           "sent_user_data", "write_node_files"]  # fmt: skip
