"""The docs stand on their own: every relative link resolves inside the repository, and no
doc points at a file or document the repository does not hold."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from idra.config import REPO_ROOT
from node_daemon.logsetup import setup_logging

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(doc) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path = (doc.parent / target).resolve()
        assert path.is_relative_to(REPO_ROOT) and path.exists(), f"{doc.name}: {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_reference_outside_the_repository(doc) -> None:
    text = doc.read_text()
    for outside in (r"ARCHITECTURE", r"\bthe seed\b", r"\bseed's\b", r"seed/", r"/work/", r"§"):
        assert not re.search(outside, text), f"{doc.name} mentions {outside!r}"


def test_json_log_lines() -> None:
    stream = io.StringIO()
    setup_logging("json", "info", stream=stream)
    logging.getLogger("idra.test").info("pass %d of %d", 1, 2)
    logging.getLogger("idra.test").debug("hidden at info")
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "pass 1 of 2" and entry["level"] == "info"
    logging.getLogger().handlers.clear()


def _stack_keys() -> set[str]:
    from idra.config import SECRET_KEYS, StackConfig

    fields = {f.alias or name for name, f in StackConfig.model_fields.items()}
    return (fields - {"stack", "secretsSet"}) | set(SECRET_KEYS)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_stack_key_named_in_the_docs_exists(doc) -> None:
    """Every ``idra:<key>`` a doc names is a key of the stack-config schema."""
    named = set(re.findall(r"\bidra:([A-Za-z][A-Za-z0-9]*)", doc.read_text()))
    assert named <= _stack_keys(), f"{doc.name}: unknown stack keys {named - _stack_keys()}"


def test_the_stack_key_table_is_the_schema() -> None:
    """docs/node-config.md's key table lists exactly the schema's keys."""
    text = (REPO_ROOT / "docs" / "node-config.md").read_text()
    table = text.split("## Stack keys", 1)[1].split("\n\n", 2)[1]
    listed = {key for row in table.splitlines()[2:] for key in re.findall(
        r"`([A-Za-z0-9]+)`", row.split("|")[1])}  # fmt: skip
    assert listed == _stack_keys()


def _readme_section(title: str) -> str:
    text = (REPO_ROOT / "README.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_diagram_names_only_commands_that_exist() -> None:
    """Every ``idra …`` / ``node-daemon …`` the Mermaid diagram names is a real command."""
    import click

    from idra.cli import main as idra
    from node_daemon.cli import main as node_daemon

    text = (REPO_ROOT / "README.md").read_text()
    diagram = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    named = re.findall(r"\b(idra|node-daemon)((?: [a-z][a-z-]+)+)", diagram)
    assert len(named) >= 9, named
    for program, words in named:
        command: click.Command = idra if program == "idra" else node_daemon
        for word in words.split():
            if not isinstance(command, click.Group):
                break
            found = command.get_command(click.Context(command), word)
            assert found, f"README diagram: {program}{words}"
            command = found


def test_readme_set_up_is_two_commands() -> None:
    block = _readme_section("Set up").split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert [c for c in commands if c] == ["./scripts/demo", "./scripts/test"]
