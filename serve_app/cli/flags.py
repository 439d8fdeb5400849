"""The stylize options as ``animegan`` flags, derived from ``StylizeOptions``.

Each field is one flag, ``--<name>`` with dashes: its type, choices, bounds and help come
from the field. The command line has no config, so the bounds that come from one (the
served styles, ``limits``) are the service's alone. ``animegan stylize`` stylizes here: its
styles are registry names or weight files (a field's ``CliFlag`` says where it differs).
``animegan jobs submit`` sends the flags given as query parameters, and leaves the rest to
the service's own defaults.
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
    """A flag for every option, stylizing here. ``styles``: the registry's names, for the
    help text."""
    for option in option_fields():
        cli = option.control.cli
        default = cli.default if cli.default is not None else option.fixed_default
        text = cli.help or option.description
        _add_flag(parser, option, default, text.format(styles=", ".join(styles), default=default))


def add_service_option_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every option, as the service takes it: a flag not given is not sent (the
    service's default applies)."""
    group = parser.add_argument_group(
        "stylize options", "sent as query parameters; one not given takes the service's default"
    )
    for option in option_fields():
        _add_flag(group, option, None, option.description)


def _add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    option: Option,
    default: Any,
    text: str,
) -> None:
    settings: dict[str, Any] = {
        "dest": option.name,
        "default": default,
        "help": text.replace("%", "%%"),  # argparse formats help with %
    }
    if option.value_type is bool:
        settings["action"] = "store_true"
    else:
        settings["type"] = _parser_of(option)
        settings["choices"] = option.choices(None)
        settings["metavar"] = option.control.cli.metavar
    parser.add_argument(flag_of(option), **settings)


def option_values(args: argparse.Namespace) -> dict[str, Any]:
    """Every option as parsed (unchecked against any config), by its field's name."""
    return {option.name: getattr(args, option.name) for option in option_fields()}


def given_option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (flags from ``add_service_option_flags``)."""
    return {name: value for name, value in option_values(args).items() if value is not None}


def _parser_of(option: Option) -> Callable[[str], Any]:
    """Text -> the option's value, within the bounds every config shares."""

    def parse(text: str) -> Any:
        try:
            return option.checked(option.parse(text), config=None)
        except ServiceError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return parse
