"""Options written once: a dataclass field says its default, type, help and command-line flag, and
:func:`add_arguments` / :func:`from_args` build the ``argparse`` flags and the options object from them.

So a new option of :class:`~FusionLungSegLib.segmenter.SegmentOptions` or
:class:`~FusionLungSegLib.training.train.TrainConfig` is one field, and every front door (the CLI, the
Python API, the Slicer panel and batch script) takes it the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

__all__ = ["option", "add_arguments", "from_args"]

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    help: str | None = None,
    *,
    flag: str | None = None,
    type: Any = None,
    choices: tuple | list | None = None,
    nargs: str | None = None,
    metavar: str | None = None,
    negate: bool = False,
    cli: bool = True,
    default_factory: Any = _MISSING,
):
    """A dataclass field with its command-line flag.

    ``flag``: the flag's name (default: ``--field-name``); ``negate``: a boolean that is True by default
    and turned off by the flag (``--no-augment`` sets ``augment`` False); ``cli=False``: no flag.
    ``type`` is taken from the default where it is not given (needed for options whose default is None).
    """
    meta = {
        "help": help,
        "flag": flag,
        "type": type,
        "choices": choices,
        "nargs": nargs,
        "metavar": metavar,
        "negate": negate,
        "cli": cli,
    }
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _cli_fields(cls, skip=()) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False) and f.name not in skip]


def add_arguments(parser: argparse.ArgumentParser, cls, *, skip=(), defaults: dict | None = None) -> None:
    """Add a flag for every option field of the dataclass ``cls`` (not those named in ``skip``);
    ``defaults`` overrides field defaults for this parser."""
    defaults = defaults or {}
    for f in _cli_fields(cls, skip):
        m = f.metadata
        default = defaults.get(f.name, f.default if f.default is not _MISSING else None)
        kwargs: dict[str, Any] = {"dest": f.name, "help": m.get("help")}
        if m.get("negate") or isinstance(default, bool):
            kwargs["action"] = "store_true"
            kwargs["default"] = False
        else:
            kind = m.get("type") or (type(default) if default is not None else str)
            if isinstance(default, tuple) or m.get("nargs"):
                kwargs["nargs"] = m.get("nargs") or "*"
                default = list(default) if default is not None else None
            kwargs.update(type=kind, default=default)
            kwargs["metavar"] = m.get("metavar") or _flag(f)[2:].upper().replace("-", "_")
            if m.get("choices") is not None:
                kwargs["choices"] = m["choices"]
                kwargs.pop("metavar")
        parser.add_argument(_flag(f), **kwargs)


def from_args(cls, args: argparse.Namespace, **overrides):
    """An instance of ``cls`` from parsed flags (fields without a flag keep their defaults)."""
    values = {}
    for f in _cli_fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.metadata.get("negate"):
            value = not value
        elif isinstance(f.default, tuple) and value is not None:
            value = tuple(value)
        values[f.name] = value
    values.update(overrides)
    return cls(**values)
