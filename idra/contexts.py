"""Named contexts: an operator's defaults (API URL, token file, CA file, stack) per
control plane, in ``~/.config/idra/config.yaml``, chosen by ``--context``, ``IDRA_CONTEXT``
or the file's ``current-context``::

    current-context: lab
    contexts:
      lab:
        api-url: https://203.0.113.2:8443
        operator-token-file: /run/idra-lab/operator-token
        ca-file: /run/idra-lab/pki/ca.pem
        stack: staging

The file names token *files* only; a token in it is refused. A flag or an ``IDRA_*``
variable beats the context. A context with a ``stack`` and no ``api-url`` takes the
stack's ``idra:controlPlaneUrl`` from ``Pulumi.<stack>.yaml`` in the current folder.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import click
import yaml

from idra.cliutil import BadInput, Column, Output, output_options, plural

KEYS = ("api-url", "operator-token-file", "ca-file", "stack")
PARAMS = {key: key.replace("-", "_") for key in KEYS}  # the click parameter of each key
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def config_path() -> Path:
    """``$IDRA_CONFIG``, else ``$XDG_CONFIG_HOME/idra/config.yaml`` (``~/.config``)."""
    if os.environ.get("IDRA_CONFIG"):
        return Path(os.environ["IDRA_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "idra" / "config.yaml"


def load(path: Path | None = None) -> dict[str, Any]:
    """The config file, checked: a missing file is an empty one."""
    path = path or config_path()
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {"contexts": {}}
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:  # its text may quote the file: only the line
        mark = getattr(exc, "problem_mark", None)
        raise BadInput(
            f"{path}:{f' line {mark.line + 1}' if mark else ''} not valid YAML"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("contexts", {}), dict):
        raise BadInput(f"{path}: needs a 'contexts:' mapping of name to settings")
    document.setdefault("contexts", {})
    unknown = set(document) - {"contexts", "current-context"}
    if unknown:
        raise BadInput(f"{path}: {sorted(unknown)[0]}: unknown key")
    for name, settings in document["contexts"].items():
        _check(path, str(name), settings)
    return document


def _check(path: Path, name: str, settings: Any) -> None:
    if not isinstance(settings, dict):
        raise BadInput(f"{path}: contexts.{name}: needs a mapping of settings")
    for key, value in settings.items():
        if "token" in str(key) and key != "operator-token-file":
            raise BadInput(f"{path}: contexts.{name}.{key}: a token is never kept in this "
                           "file; name its file with operator-token-file")  # fmt: skip
        if key not in KEYS:
            raise BadInput(f"{path}: contexts.{name}.{key}: unknown key (known: "
                           f"{', '.join(KEYS)})")  # fmt: skip
        if not isinstance(value, str) or not value:
            raise BadInput(f"{path}: contexts.{name}.{key}: must be a non-empty string")


def selected(document: dict[str, Any], name: str | None) -> tuple[str | None, dict[str, str]]:
    """The context ``name`` (or the current one) and its settings; none: ``(None, {})``."""
    name = name or document.get("current-context")
    if not name:
        return None, {}
    contexts = document["contexts"]
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise BadInput(f"--context {name}: no such context in {config_path()} (known: {known})")
    return name, dict(contexts[name])


def with_stack_url(settings: dict[str, str], root: Path) -> dict[str, str]:
    """A context naming a stack but no ``api-url`` takes the stack's ``controlPlaneUrl``
    (from ``Pulumi.<stack>.yaml`` in ``root``, when that file is there)."""
    from idra.config import ConfigError, load_stack, stack_file

    stack = settings.get("stack")
    if not stack or "api-url" in settings or not stack_file(stack, root).is_file():
        return settings
    try:
        return settings | {"api-url": load_stack(stack, root).control_plane_url}
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


def default_map(command: click.Command, settings: dict[str, str]) -> dict[str, Any]:
    """Click defaults for every subcommand that has the context's options."""
    mapping: dict[str, Any] = {}
    if isinstance(command, click.Group):
        for sub_name, sub in command.commands.items():
            sub_map = default_map(sub, settings)
            if sub_map:
                mapping[sub_name] = sub_map
        return mapping
    names = {param.name for param in command.params}
    return {PARAMS[k]: v for k, v in settings.items() if PARAMS[k] in names}


def _save(document: dict[str, Any]) -> Path:
    """Write the file atomically (0600: it names where the secrets are)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".config.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(document, handle, sort_keys=False)
    Path(tmp).replace(path)
    return path


@click.group()
def context() -> None:
    """Named sets of defaults (API URL, token file, CA file, stack): list, use, show, set."""


COLUMNS = (
    Column("current", lambda c: "*" if c["current"] else ""),
    Column("name", lambda c: c["name"]),
    *(Column(key, lambda c, k=key: c.get(k)) for key in KEYS),
)


@context.command("list")
@output_options
def list_contexts(out: Output) -> None:
    """The contexts in the config file; * marks the current one."""
    document = load()
    current = document.get("current-context")
    rows = [{"name": name, "current": name == current} | settings
            for name, settings in document["contexts"].items()]  # fmt: skip
    out.print(f"{config_path()}: {plural(len(rows), 'context')}", COLUMNS, rows)


def _names(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion: the contexts in the file."""
    try:
        return [n for n in load()["contexts"] if str(n).startswith(incomplete)]
    except click.ClickException:
        return []


@context.command()
@click.argument("name", shell_complete=_names)
def use(name: str) -> None:
    """Make NAME the current context."""
    document = load()
    selected(document, name)
    document["current-context"] = name
    click.echo(f"current context: {name} ({_save(document)})")


@context.command()
@click.argument("name", required=False, shell_complete=_names)
@output_options
def show(name: str | None, out: Output) -> None:
    """The settings of NAME (default: the selected context: --context, IDRA_CONTEXT or
    the current one)."""
    ctx = click.get_current_context()
    name = name or ctx.find_root().meta.get("idra.context")
    name, settings = selected(load(), name)
    if name is None:
        raise BadInput(f"no context selected and no current-context in {config_path()}")
    if out.data:
        out.print_data({"name": name} | settings)
        return
    width = max(map(len, KEYS))
    for key, value in (("name", name), *((k, settings.get(k, "-")) for k in KEYS)):
        click.echo(f"{key.ljust(width)}  {value}")


@context.command("set")
@click.argument("name")
@click.option("--api-url", default=None, help="Control-plane base URL.")
@click.option("--operator-token-file", type=click.Path(dir_okay=False), default=None,
              help="Operator token FILE (the token itself is never stored).")  # fmt: skip
@click.option("--ca-file", type=click.Path(dir_okay=False), default=None)
@click.option("--stack", default=None)
def set_context(name: str, **values: str | None) -> None:
    """Create or change context NAME (given settings only); the first becomes current."""
    if not re.fullmatch(NAME, name):
        raise BadInput(f"NAME {name!r}: letters, digits, '.', '-', '_'")
    document = load()
    settings = document["contexts"].setdefault(name, {})
    for param, value in values.items():
        if value is not None:
            key = param.replace("_", "-")
            settings[key] = str(Path(value).absolute()) if key.endswith("-file") else value
    _check(config_path(), name, settings)
    document.setdefault("current-context", name)
    click.echo(f"context {name} saved ({_save(document)})")


__all__ = ["config_path", "context", "default_map", "load", "selected", "with_stack_url"]
