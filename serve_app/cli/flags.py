"""The stylize options as ``animegan stylize`` flags, derived from ``StylizeOptions``.

Each field is one flag, ``--<name>`` with dashes: its type, choices, bounds and help come
from the field. The command line has no config, so the bounds that come from one (the
served styles, ``limits``) are the service's alone; its styles are registry names or
weight files (a field's ``CliFlag`` says where it differs).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from serve_app.errors import ServiceError
from serve_app.options import Option, option_fields


def flag_of(option: Option) -> str:
    return "--" + option.name.replace("_", "-")


def add_option_flags(parser: argparse.ArgumentParser, styles: Sequence[str]) -> None:
    """A flag for every option. ``styles``: the registry's names, for the help text."""
    for option in option_fields():
        cli = option.control.cli
        default = cli.default if cli.default is not None else option.fixed_default
        text = cli.help or option.description
        settings: dict[str, Any] = {
            "dest": option.name,
            "default": default,
            "help": text.format(styles=", ".join(styles), default=default),
        }
        if option.value_type is bool:
            settings["action"] = "store_true"
        else:
            settings["type"] = _parser_of(option)
            settings["choices"] = option.choices(None)
            settings["metavar"] = cli.metavar
        parser.add_argument(flag_of(option), **settings)


def option_values(args: argparse.Namespace) -> dict[str, Any]:
    """Every option as parsed (unchecked against any config), by its field's name."""
    return {option.name: getattr(args, option.name) for option in option_fields()}


def _parser_of(option: Option) -> Callable[[str], Any]:
    """Text -> the option's value, within the bounds every config shares."""

    def parse(text: str) -> Any:
        try:
            return option.checked(option.parse(text), config=None)
        except ServiceError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return parse
