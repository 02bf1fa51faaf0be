"""Config dataclasses as CLI flags: each field `foo_bar` is the flag `--foo-bar`.

Every service has one frozen config dataclass; its fields' metadata carries the help text and
choices, so the flags, their defaults and their documentation cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT")


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type,
                         skip: frozenset[str] = frozenset()) -> None:
    """Adds one flag per field of `config_class`; fields already added (or in `skip`) are left."""
    existing = {action.dest for action in parser._actions}
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        if field.name in existing or field.name in skip:
            continue
        # A field's metadata may name short spellings SGLang users type ("--tp").
        flags = ["--" + field.name.replace("_", "-"), *field.metadata.get("aliases", ())]
        kind = _base_type(hints[field.name])
        help_text = field.metadata.get("help", "")
        if typing.get_origin(kind) is tuple:  # `tuple[str, ...]`: a flag given once per item
            parser.add_argument(*flags, dest=field.name, action="append", type=typing.get_args(kind)[0],
                                default=list(field.default), help=help_text)
            continue
        if kind is bool:
            parser.add_argument(*flags, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=field.default, help=help_text)
            continue
        parser.add_argument(*flags, dest=field.name, type=kind, default=field.default,
                            help=help_text, choices=field.metadata.get("choices"))


def config_from_args(config_class: type[ConfigT], args: argparse.Namespace) -> ConfigT:
    names = {field.name for field in dataclasses.fields(config_class)}
    values: dict[str, Any] = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values = {name: tuple(value) if isinstance(value, list) else value  # configs are frozen
              for name, value in values.items()}
    return config_class(**values)


def _base_type(hint: Any) -> type:
    """`int | None` -> int; plain types pass through."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) != 1:
            raise TypeError(f"cannot make a flag of type {hint}")
        return members[0]
    return hint
