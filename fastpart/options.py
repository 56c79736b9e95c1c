"""The option table's machinery, and budgets as users write them (no torch, nothing of fastpart but its error).

``option(...)`` makes a dataclass field that describes its command-line option (help, group, kind, choices,
whether only PART uses it, whether a resume may change it); ``options`` lists them; ``from_mapping`` checks a
config file's or a run's config.json values against them. The verbs' configs (``fastpart.config``) are declared
with it, and the command line, config files and the resume check all read it.

Budgets and step sizes are in [0, 1] pixel units: ``parse_budget`` accepts ``8/255`` or a float and refuses a
value above 1 ("did you mean 8/255?"); ``budget_label`` shows one as ``8/255``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, field, fields
from typing import Any

from fastpart.errors import FastpartError

__all__ = ["GROUPS", "KINDS", "RECORDED_ONLY", "budget_label", "default_of", "did_you_mean", "from_mapping", "option",
           "options", "parse_budget", "part_only", "resume_may_change"]

# ---------------------------------------------------------------------------------------------
# Budgets in [0, 1] units
# ---------------------------------------------------------------------------------------------


def parse_budget(text: str | float) -> float:
    """``8/255``, ``0.0314`` or a number -> a budget in [0, 1] units; one line for anything else.

    A value above 1 is refused ("budgets are in [0, 1] units: did you mean 8/255?"): images are in [0, 1]."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        spelled = str(text).strip()
        try:
            if "/" in spelled:
                top, bottom = spelled.split("/", 1)
                value = float(top) / float(bottom)
            else:
                value = float(spelled)
        except (ValueError, ZeroDivisionError):
            raise FastpartError(f"{text!r} is not a budget: give a fraction such as 8/255 or a number in [0, 1]") \
                from None
    if not math.isfinite(value) or value < 0:
        raise FastpartError(f"a budget must be a finite number >= 0, got {text!r}")
    if value > 1:
        raise FastpartError(f"budgets are in [0, 1] units (images are in [0, 1]): did you mean {value:g}/255?")
    return value


def budget_label(value: Any) -> str:
    """A budget as users write it: 8/255 -> '8/255', 0.5/255 -> '0.5/255'; not a number -> '?'."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "?"
    return f"{round(255 * value, 4):g}/255"


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """' (did you mean X?)' for the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# ---------------------------------------------------------------------------------------------
# The option table
# ---------------------------------------------------------------------------------------------

KINDS = ("str", "int", "float", "budget", "flag", "ints", "budgets", "names")
GROUPS = {"data": "data", "method": "method", "part": "PART (part, part-trades, part-mart only)",
          "attack": "attack (training adversarial examples)", "schedule": "schedule", "evaluation": "evaluation",
          "fast": "fast path", "output": "output"}


def option(default: Any, help: str, group: str, kind: str = "str", *, choices: tuple[str, ...] | None = None,
           part: bool = False, resume: bool = False, metavar: str | None = None, shown: str | bool = True) -> Any:
    """A dataclass field that describes its command-line option.

    ``kind``: str, int, float, budget ([0, 1] units, ``8/255`` accepted), flag (on/off), ints / budgets (a list),
    names (comma-separated); ``part``: only PART methods use it; ``resume``: ``--resume`` may change it;
    ``shown``: the default as --help shows it (True: the value, budgets as n/255; False: nothing; or a text)."""
    assert kind in KINDS and group in GROUPS, (kind, group)
    meta = {"help": help, "group": group, "kind": kind, "choices": choices, "part": part, "resume": resume,
            "metavar": metavar, "shown": shown}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults: use a tuple")
    return field(default=default, metadata=meta)


def options(config_class: type) -> list[Any]:
    """The fields of a config class that are options, in declaration order."""
    return [f for f in fields(config_class) if "help" in f.metadata]


def resume_may_change(config_class: type) -> set[str]:
    return {f.name for f in options(config_class) if f.metadata["resume"]}


def part_only(config_class: type) -> set[str]:
    return {f.name for f in options(config_class) if f.metadata["part"]}


def default_of(f: Any) -> Any:
    return None if f.default is MISSING else f.default


def from_mapping(config_class: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """The option values of a mapping (a config file, a run's config.json), checked: unknown keys are one line
    (with a did-you-mean); dashes may stand for underscores; lists become tuples; budgets are parsed."""
    known = {f.name: f for f in options(config_class)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            if name in RECORDED_ONLY:
                continue
            raise FastpartError(f"{source}: unknown setting {key!r}{did_you_mean(name, list(known))}")
        kind = known[name].metadata["kind"]
        if kind == "budget" and value is not None:
            value = parse_budget(value)
        elif kind == "budgets" and value is not None:
            value = tuple(parse_budget(v) for v in value)
        elif kind == "names" and isinstance(value, str):
            value = tuple(name.strip() for name in value.split(",") if name.strip())
        elif isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return out


RECORDED_ONLY = {"val_rows"}  # what config.json records beside the settings (derived, never set)
