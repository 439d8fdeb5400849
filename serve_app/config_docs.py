"""docs/configuration.md, written from the config models so that it cannot drift from them.

    python -m serve_app.config_docs            # rewrite docs/configuration.md
    python -m serve_app.config_docs --check    # exit 1 when the file is out of date

Every setting of ``AppConfig`` (the serve config's ``args:``), of the models nested in it,
and of ``BatchConfig`` (the Stylizer's ``user_config``) becomes a table row: its name,
type, default, bounds and description, as declared in ``config.py``; each model's
validators add their docstrings as the checks across settings. ``tests/test_docs.py``
renders the page in memory and fails when the committed file differs.

Imports only the config module (pydantic, no Ray), so it runs anywhere.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from serve_app.config import AppConfig, BatchConfig

PAGE = Path("docs") / "configuration.md"
FIX_COMMAND = "python -m serve_app.config_docs"

INTRO = f"""\
# Configuration

<!-- Generated from serve_app/config.py by `{FIX_COMMAND}`: edit the models there, then
run it. tests/test_docs.py fails when this file differs from what the models say. -->

The application's settings are the `args:` block of a Serve config file
(`serve_config.yaml`, `configs/*.yaml`); Ray validates them against `AppConfig` when
`serve run` or `serve deploy` builds the application, so a wrong name, type or bound stops
the deploy with pydantic's message. A setting left out takes its default; nested settings
are YAML mappings (`jobs: {{ttl_s: 3600}}`). The Stylizer deployment's `user_config` is
`BatchConfig` (last section), applied live by `serve deploy` without restarting replicas.
Deployment knobs (replicas, autoscaling, `max_ongoing_requests`, `max_queued_requests`,
`ray_actor_options`) are Serve's own: see [operations](operations.md).

Sizes in bytes also show their binary unit (MiB, GiB). `null` is YAML's empty value."""


@dataclass(frozen=True)
class Section:
    """One model's table: where it sits in the config (``jobs.webhooks``) and the model."""

    path: str
    model: type[BaseModel]
    title: str

    @property
    def anchor(self) -> str:
        """The heading's anchor as GitHub (and most Markdown renderers) make it."""
        slug = re.sub(r"[^\w\- ]", "", self.title.lower())
        return slug.replace(" ", "-")


def sections() -> list[Section]:
    """Every model of the configuration, the top level first, then each nested model where
    it first appears (depth first), then the Stylizer's ``user_config``."""
    found = [Section("", AppConfig, "Application args")]
    found += _nested(AppConfig, "")
    found.append(Section("user_config", BatchConfig, "Stylizer user_config"))
    return found


def _nested(model: type[BaseModel], prefix: str) -> Iterator[Section]:
    for name, field in model.model_fields.items():
        for inner in _models_in(field.annotation):
            path = f"{prefix}{name}"
            yield Section(path, inner, path)
            yield from _nested(inner, f"{path}.")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds: itself, or the items of a list, tuple or union."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


# --- one row -------------------------------------------------------------------------------


def _type_text(annotation: Any, links: dict[type, Section]) -> str:
    if annotation is type(None):
        return "null"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        section = links[annotation]
        return f"[{section.title}](#{section.anchor})"
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_text(arg, links) for arg in get_args(annotation))
    if origin in (list, tuple):
        items = [arg for arg in get_args(annotation) if arg is not Ellipsis]
        return "list of " + _type_text(items[0], links)
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def _value_text(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple):
        return "`[" + ", ".join(str(item) for item in value) + "]`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{value}`"


def _binary_units(value: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size and value % size == 0:
            return f" ({value // size} {unit})"
    return ""


def _default_text(name: str, field: FieldInfo) -> str:
    if field.default_factory is not None:
        return _value_text(field.default_factory())
    default = field.default
    if default is PydanticUndefined:
        return "required"
    if isinstance(default, BaseModel):
        return "its defaults"
    text = _value_text(default)
    if name.endswith("_bytes") and isinstance(default, int) and not isinstance(default, bool):
        text += _binary_units(default)
    return text


_BOUNDS = (
    (annotated_types.Gt, "gt", "> {}"),
    (annotated_types.Ge, "ge", "≥ {}"),
    (annotated_types.Lt, "lt", "< {}"),
    (annotated_types.Le, "le", "≤ {}"),
    (annotated_types.MultipleOf, "multiple_of", "multiple of {}"),
    (annotated_types.MinLen, "min_length", "at least {} item"),
    (annotated_types.MaxLen, "max_length", "at most {} items"),
)


def _bounds_text(field: FieldInfo) -> str:
    bounds = []
    for item in field.metadata:
        for kind, attribute, form in _BOUNDS:
            if isinstance(item, kind):
                bounds.append(form.format(getattr(item, attribute)))
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            bounds.append(f"matches `{pattern}`")
    return ", ".join(bounds)


def _cell(text: str) -> str:
    """Text fit for one Markdown table cell: one line, pipes escaped, RST quotes made
    Markdown ones."""
    return " ".join(text.replace("``", "`").replace("|", "\\|").split())


def _doc(obj: Any) -> str:
    return _cell(inspect.getdoc(obj) or "")


def _description(field: FieldInfo) -> str:
    """The field's description; a nested model without one: the model's own docstring."""
    if field.description:
        return _cell(field.description)
    models = _models_in(field.annotation)
    return _doc(models[0]) if models else ""


# --- the page ------------------------------------------------------------------------------


def _checks(model: type[BaseModel]) -> list[str]:
    """What the model's validators check, from their docstrings."""
    decorators = model.__pydantic_decorators__
    validators = [*decorators.field_validators.values(), *decorators.model_validators.values()]
    return [_doc(validator.func) for validator in validators if inspect.getdoc(validator.func)]


def _section_lines(section: Section, links: dict[type, Section]) -> list[str]:
    model = section.model
    lines = [f"## {section.title}", "", f"`{model.__name__}`: {_doc(model)}", ""]
    lines += [
        "| setting | type | default | bounds | what it does |",
        "|---|---|---|---|---|",
    ]
    for name, field in model.model_fields.items():
        cells = [
            f"`{name}`",
            _type_text(field.annotation, links),
            _default_text(name, field),
            _bounds_text(field),
            _description(field),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    checks = _checks(model)
    if checks:
        lines += ["", "Checked when the config is loaded:", ""]
        lines += [f"- {check}" for check in checks]
    return [*lines, ""]


def render() -> str:
    """The whole page, as it should be committed."""
    found = sections()
    links = {section.model: section for section in found}
    lines = [INTRO, "", "Sections: " + ", ".join(f"[{s.title}](#{s.anchor})" for s in found), ""]
    for section in found:
        lines += _section_lines(section, links)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name if __spec__ else 'serve_app.config_docs'}",
        description="Write docs/configuration.md from the config models.",
    )
    parser.add_argument("--out", type=Path, default=PAGE, help=f"default: {PAGE}")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the file is out of date"
    )
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != page:
            sys.stderr.write(f"{args.out} is out of date: run `{FIX_COMMAND}`\n")
            return 1
        return 0
    args.out.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
