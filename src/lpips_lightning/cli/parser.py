"""The command line's parser: usage errors as one line, and a tool command's options read off its function.

Every command (the tools and LightningCLI's fit/validate/test) parses with jsonargparse through
`OneLineErrors`: a usage error is one ``error: ... (options: lpips-lightning CMD --help)`` line
and exit status 2, where jsonargparse would print the whole usage first (77 lines for fit).

A tool command is a plain typed function; `add_function_options` turns its signature into the
options that the command has always had: a parameter before ``*`` is a positional, a keyword-only
one is a dashed option (``batch_size`` -> ``--batch-size``), ``bool`` is a flag, ``list[X]`` takes
one or more space-separated values, ``Literal`` lists the choices, and each help text is the
parameter's line in the docstring (argparse's ``%(default)s`` works there). jsonargparse's own
``add_function_arguments`` would spell them ``--batch_size``, ``--overwrite true`` and
``--groups '[a, b]'``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import NoneType, UnionType

import docstring_parser
import jsonargparse

MAX_ERROR = 400  # characters of a usage error kept on its line (a type error can list a whole class)
REQUIRED = "the following arguments are required: "


class OneLineErrors:
    """Mixin for a jsonargparse parser: a usage error is one line on stderr, exit status 2."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse catches these itself
            return super().error(message, ex)
        text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
        text = text if len(text) <= MAX_ERROR else text[:MAX_ERROR] + " ..."
        prog = self.prog.replace(" [options]", "")
        self.print_error(f"{text} (options: {prog} --help)")
        raise SystemExit(2)

    @staticmethod
    def print_error(line: str) -> None:
        print(f"error: {line}", file=sys.stderr)


class ToolParser(OneLineErrors, jsonargparse.ArgumentParser):
    """The parser of a tool command (pack, download, demo-data, export, evaluate, distance)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.HelpFormatter)  # the help texts say their defaults
        kwargs.setdefault("default_env", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if str(message).startswith(REQUIRED):  # jsonargparse names them by key; argparse as the user types them
            names = {a.dest: "/".join(a.option_strings) or a.metavar or a.dest for a in self._actions}
            message = REQUIRED + ", ".join(names.get(k, k) for k in str(message)[len(REQUIRED) :].split(", "))
        return super().error(message, ex)

    def add_argument(self, *args, **kwargs):
        if kwargs.get("type") in (int, float):
            kwargs["type"] = _as_argparse_does(kwargs["type"])
        return super().add_argument(*args, **kwargs)


def _as_argparse_does(kind: type) -> Callable[[str], object]:
    """`kind` (int, float) converted as argparse does, with its message ("invalid int value: 'x'").

    Given ``type=int``, jsonargparse would check a type hint instead and word the error otherwise
    (``Parser key "size": Expected a <class 'int'>``): `ToolParser` keeps argparse's words.
    """

    def convert(text: str):
        return kind(text)

    convert.__name__ = kind.__name__
    return convert


@dataclass(frozen=True)
class Arg:
    """What an option needs beyond its type and default: its metavar, or a parser of its own."""

    metavar: str | None = None
    parse: Callable[[str], object] | None = None


def _option(hint, extra: Arg) -> dict:
    """add_argument's keywords for a parameter of type `hint` (``X | None`` is X that may stay unset)."""
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [h for h in typing.get_args(hint) if h is not NoneType]
    if hint is bool:
        return {"action": "store_true"}
    kwargs: dict = {}
    if typing.get_origin(hint) is list:
        kwargs["nargs"] = "+"
        (hint,) = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        kwargs["choices"] = typing.get_args(hint)
    elif hint in (int, float):
        kwargs["type"] = hint
    if extra.parse is not None:
        kwargs["type"] = extra.parse
    if extra.metavar is not None:
        kwargs["metavar"] = extra.metavar
    return kwargs


def add_function_options(parser: argparse.ArgumentParser, function: Callable) -> None:
    """Add `function`'s parameters to `parser` as the command's positionals and dashed options."""
    hints = typing.get_type_hints(function, include_extras=True)
    helps = {p.arg_name: p.description for p in docstring_parser.parse(function.__doc__ or "").params}
    for name, param in inspect.signature(function).parameters.items():
        hint, extra = hints[name], Arg()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *meta = typing.get_args(hint)
            extra = next((m for m in meta if isinstance(m, Arg)), extra)
        kwargs = {**_option(hint, extra), "help": helps.get(name)}
        if param.kind is not param.KEYWORD_ONLY:
            parser.add_argument(name, **kwargs)
        elif param.default is param.empty:
            parser.add_argument(f"--{name.replace('_', '-')}", required=True, **kwargs)
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", default=param.default, **kwargs)


def tool_parser(prog: str, function: Callable) -> ToolParser:
    """The parser of tool command `function`, described by its docstring."""
    doc = docstring_parser.parse(function.__doc__ or "")
    description = " ".join(filter(None, (doc.short_description, doc.long_description)))
    parser = ToolParser(prog=prog, description=description or None)
    add_function_options(parser, function)
    return parser


def run_tool(prog: str, function: Callable[..., int], argv: Sequence[str]) -> int:
    """Parse `argv` for `function` and call it with the options; return its exit status."""
    options = tool_parser(prog, function).parse_args(list(argv))
    return function(**options.as_dict())
