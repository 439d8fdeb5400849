"""The documentation holds: the configuration page is what the config models say, the
README stays a short first read with the CI's test command, and every link between the
pages leads to a file and a heading that exist."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from serve_app import config
from serve_app.config_docs import FIX_COMMAND, PAGE, render, sections
from tests.support.paths import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 150
FIRST_SCREEN_LINES = 45  # what a browser or a terminal shows before any scrolling

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_configuration_page_is_generated_from_the_models():
    committed = (REPO / PAGE).read_text()
    if committed != render():
        changed = next(
            (
                f"line {number}: {line!r}"
                for number, (line, wanted) in enumerate(
                    zip(committed.splitlines(), render().splitlines(), strict=False), 1
                )
                if line != wanted
            ),
            "its length",
        )
        pytest.fail(f"{PAGE} is out of date ({changed}): run `{FIX_COMMAND}`", pytrace=False)


def test_every_config_model_has_its_section():
    """A model added to config.py but reached from neither AppConfig nor the Stylizer's
    user_config would be missing from the page: the generator must be told of it."""
    models = {
        value
        for name, value in vars(config).items()
        if inspect.isclass(value)
        and issubclass(value, BaseModel)
        and value.__module__ == config.__name__
        and not name.startswith("_")
    }
    documented = {section.model for section in sections()}
    assert models - documented == set()


def test_every_setting_is_a_row_of_its_section():
    page = render()
    for section in sections():
        body = page.split(f"\n## {section.title}\n", 1)[1].split("\n## ", 1)[0]
        for name in section.model.model_fields:
            assert f"\n| `{name}` |" in body, (section.title, name)


def test_the_readme_is_a_short_first_read_with_the_quick_start_on_its_first_screen():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    first_screen = "\n".join(lines[:FIRST_SCREEN_LINES])
    for command in ('pip install torch==2.13.0 -e ".[dev]"', "serve run ", "curl "):
        assert command in first_screen, command


def test_the_readme_keeps_the_test_command_the_ci_runs():
    readme_commands = [
        line.strip()
        for language, body in FENCE.findall(README.read_text())
        if language == "bash"
        for line in body.splitlines()
    ]
    assert "python -m pytest" in readme_commands
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert "python -m pytest" in ci_lines


def test_the_readme_python_example_is_python():
    blocks = [body for language, body in FENCE.findall(README.read_text()) if language == "python"]
    assert blocks
    for body in blocks:
        ast.parse(body)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but '-' and '_' dropped,
    spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())  # a "# comment" in a code block is no heading
    return {github_anchor(heading) for heading in HEADING.findall(text)}


def markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda page: page.name)
def test_links_between_the_pages_lead_somewhere(page: Path):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
            broken.append(f"{target}: no such heading")
    assert broken == []
