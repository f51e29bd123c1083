"""Settings tables: dataclasses whose fields carry a one-line help text, so one table serves as
the code's configuration, ``verifier_server``'s flags and a node's parameters alike."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable


def setting(default: Any, help_text: str):
    """A field of a settings table (its help text is the flag's and the parameter's description)."""
    return dataclasses.field(default=default, metadata={"help": help_text})


def check_positive(table, what: str, may_be_zero: Iterable[str] = ()):
    """``table`` itself when every field is > 0 (or >= 0 for ``may_be_zero``); else ValueError."""
    allowed_zero = set(may_be_zero)
    for item in dataclasses.fields(table):
        value = getattr(table, item.name)
        if not (value > 0 or (value == 0 and item.name in allowed_zero)):
            raise ValueError(f"{what} {item.name} must be > 0, got {value!r}")
    return table
