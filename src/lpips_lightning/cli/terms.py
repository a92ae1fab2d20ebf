"""Errors in the command line's own terms: the library names Python arguments, a command names its options.

A library message names an argument as Python spells it: as advice, ``pass backbone_weights=PATH``;
as its subject, ``lr must be ...``; in passing, ``drop lora_rank``. `in_terms` spells those as
the command's options (``--model.backbone_weights PATH`` on fit, ``--backbone-weights PATH`` on
distance) and drops advice naming an argument the command does not have. A bare word that is
also plain English (``pretrained weights``, ``a frozen backbone: ...``, a file named ``train``)
is re-spelled only where it reads as an argument (``name=VALUE``, or ``name must`` opening the
message); a name with an underscore, wherever it stands. (``distance: embedding`` stays: on fit
that is how a YAML config says it.)
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping

NAME = r"(?<![\w.\-/'\"])(?P<name>[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)?)"
# "..., or pass name=VALUE": the lead goes too when the command has no such option
ADVICE = re.compile(r"(?P<lead>(?:[,;]? )?(?:or )?(?:pass )?)" + NAME + r"=(?P<value>[^\s,;)]+)")
SUBJECT = re.compile(r"^" + NAME + r"(?= must )")  # not "name: ...": that is how a message names a file
IDENTIFIER = re.compile(NAME + r"(?![\w=])")
LITERALS = {"True": "true", "False": "false", "None": "null"}


def training_options(model: Callable, data: Callable) -> dict[str, str]:
    """fit/validate/test: each argument of the model and data classes as ``--model.NAME`` / ``--data.NAME``."""
    options: dict[str, str] = {}
    for group, cls in (("model", model), ("data", data)):
        for name in inspect.signature(cls).parameters:
            options[name] = options[f"{group}.{name}"] = f"--{group}.{name}"
    return options


def tool_options(function: Callable) -> dict[str, str]:
    """A tool command: each keyword-only parameter of its function as ``--dashed-name``."""
    params = inspect.signature(function).parameters.values()
    return {p.name: f"--{p.name.replace('_', '-')}" for p in params if p.kind is p.KEYWORD_ONLY}


def in_terms(message: str, options: Mapping[str, str]) -> str:
    """`message` with the arguments it names spelled as the options of a command (`options`: name -> option)."""

    def advice(found: re.Match) -> str:
        option = options.get(found["name"])
        if option is None:
            return "" if found["lead"].strip() else found[0]  # no lead: not advice, leave it be
        value = found["value"]
        if option.startswith(("--model.", "--data.")):  # a training option takes YAML's true/false/null
            return f"{found['lead']}{option} {LITERALS.get(value, value)}"
        return f"{found['lead']}{option}" + ("" if value == "True" else f" {value}")

    def subject(found: re.Match) -> str:
        return options.get(found["name"], found[0])

    def identifier(found: re.Match) -> str:
        name = found["name"]
        return options.get(name, name) if "_" in name else name

    spelled = IDENTIFIER.sub(identifier, SUBJECT.sub(subject, ADVICE.sub(advice, message)))
    return spelled if spelled.strip() else message  # advice alone, none of it for this command: as it was
