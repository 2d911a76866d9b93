"""What a key accepts, declared beside the constructor parameter it rules, so that adding a model, loss,
sampler or data source is a class plus a YAML file and its keys are still checked before any data loads:

    def __init__(self, num_users: int, num_items: int, dim: Annotated[int, Range(1, MAX_WIDTH)] = 64) -> None:

`constructor_rules` reads those annotations (an `int` makes a `Range` integers only; `| None` also accepts
null); the up-front check of a composed config and the check of a config read back from disk both use it.
Keys no class of ours takes (Lightning's trainer, torch's optimizers, an entry point's own arguments) are in
one table per entry point, built from the same rules. This module imports nothing of the project, so any
layer (data, models, serving) may declare its ranges with it.
"""

from __future__ import annotations

import inspect
import math
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from typing import Annotated, Any, Union, get_args, get_origin

from hydra.utils import get_class

MAX_WIDTH = 2**16  # an embedding or layer width: far beyond any useful one, and no checkpoint asks for terabytes
MAX_COUNT = 2**31 - 1  # indices are int64, but counts beyond 2^31 users or items are a typo on any machine this runs on
MAX_SHOWN = 80  # characters of a bad value quoted in a message
MAX_SHOWN_PATH = 200  # characters of a path quoted in a message: real ones are long, and their end names the file


class Rule:
    """The values one key accepts: `accepts` decides, `str(rule)` tells the user what would do."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Range(Rule):
    """A finite int or float, never a bool (`integer`: ints only), within [low, high]; an `open_` side
    excludes its bound. On an `int` parameter the annotation makes it integers only."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    open_low: bool = False
    open_high: bool = False

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low is None or value > self.low or (value == self.low and not self.open_low)
        below = self.high is None or value < self.high or (value == self.high and not self.open_high)
        return above and below

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.open_low else '>='} {self.low}"
        if self.high is not None:
            return f"{kind} {'<' if self.open_high else '<='} {self.high}"
        return "an integer" if self.integer else "a finite number"


def integer(low: int | None = None, high: int | None = None) -> Range:
    return Range(low, high, integer=True)


@dataclass(frozen=True)
class Choice(Rule):
    """One of the given values, compared with their type (so true is not 1)."""

    options: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(option) and value == option for option in self.options)

    def __str__(self) -> str:
        options = ", ".join(shown(option) for option in self.options)
        return options if len(self.options) == 1 else f"one of {options}"


@dataclass(frozen=True)
class Pattern(Rule):
    """A string matching `regex` as a whole; `description` is what the user reads."""

    regex: str
    description: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(self.regex, value) is not None

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class ListOf(Rule):
    """A list of at least `min_length` (and, given `max_length`, at most that many) entries, each accepted by `entry`."""

    entry: Rule
    min_length: int
    example: str
    max_length: int | None = None

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, list) or len(value) < self.min_length:
            return False
        return (self.max_length is None or len(value) <= self.max_length) and all(self.entry.accepts(item) for item in value)

    def __str__(self) -> str:
        most = f" of at most {self.max_length} entries" if self.max_length is not None else ""
        return f"a {'non-empty ' if self.min_length else ''}list{most}, each entry {self.entry}, e.g. {self.example}"


@dataclass(frozen=True)
class AnyOf(Rule):
    rules: tuple[Rule, ...]

    def accepts(self, value: Any) -> bool:
        return any(rule.accepts(value) for rule in self.rules)

    def __str__(self) -> str:
        return " or ".join(str(rule) for rule in self.rules)


@dataclass(frozen=True)
class Kind(Rule):
    """Any value of the given Python types (never a bool unless bool is one of them)."""

    types: tuple[type, ...]
    description: str

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.types) and (bool in self.types or not isinstance(value, bool))

    def __str__(self) -> str:
        return self.description


class Encoding(Rule):
    def accepts(self, value: Any) -> bool:
        try:
            # str.encode accepts text encodings only: codecs.lookup would also take base64 or rot13.
            return isinstance(value, str) and "".encode(value) is not None
        except LookupError:
            return False

    def __str__(self) -> str:
        return "a text encoding Python knows (utf-8, latin-1, cp1252, utf-16, ...)"


class Shares(Rule):
    """Train, valid and test shares of a ratio or temporal split."""

    def accepts(self, value: Any) -> bool:
        numbers = isinstance(value, list) and len(value) == 3 and all(Range(0, open_low=True).accepts(share) for share in value)
        return numbers and abs(sum(value) - 1.0) <= 1e-6

    def __str__(self) -> str:
        return "three positive numbers (train, valid, test) summing to 1, e.g. [0.8,0.1,0.1]"


NULL = Kind((type(None),), "null")
FLAG = Kind((bool,), "true or false")
TEXT = Pattern(r"(?s).+", "a non-empty string")
MODE = Choice(("min", "max"))
POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
SCALAR_ID = Kind((str, int, float, bool), "a single id")


def optional(rule: Rule) -> Rule:
    return AnyOf((rule, NULL))


def argument_names(target: str) -> frozenset[str] | None:
    """Keyword arguments `target`'s constructor takes, following `**kwargs` up the class hierarchy;
    None when some constructor takes any keyword (nothing to check names against)."""
    names: set[str] = set()
    takes_any = False
    for _, parameters in _constructors(target):
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    return None if takes_any else frozenset(names)


def constructor_rules(target: str) -> dict[str, Rule]:
    """Argument name -> the Rule its constructor declares (`Annotated[int, Range(1, 64)]`), following
    `**kwargs` up the class hierarchy as `argument_names` does; the first declaration of a name wins."""
    return dict(_declared_rules(target))


@cache  # a class's signature does not change while it runs; reading it costs more than every check together
def _declared_rules(target: str) -> tuple[tuple[str, Rule], ...]:
    rules: dict[str, Rule] = {}
    for init, parameters in _constructors(target):
        hints = _evaluated_annotations(init)
        for parameter in parameters:
            rule = _rule_of(hints.get(parameter.name))
            if rule is not None:
                rules.setdefault(parameter.name, rule)
    return tuple(rules.items())


def _constructors(target: str) -> Iterator[tuple[Callable[..., Any], list[inspect.Parameter]]]:
    """Each `__init__` up the hierarchy of `target` and its parameters after self, until one that takes no `**kwargs`."""
    for klass in get_class(target).__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        yield klass.__init__, parameters
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return


def _evaluated_annotations(init: Callable[..., Any]) -> dict[str, Any]:
    """The evaluated annotations of a constructor's parameters (as written: no implicit Optional for a None
    default). A library's may name types only its type checker imports: it declares no ranges, so it counts
    as none; ours must resolve, or a declared range would go unchecked."""
    try:
        return {name: p.annotation for name, p in inspect.signature(init, eval_str=True).parameters.items()}
    except (NameError, TypeError):
        if str(getattr(init, "__module__", "")).partition(".")[0] == __name__.partition(".")[0]:
            raise
        return {}


def _rule_of(hint: Any) -> Rule | None:
    """The Rule an `Annotated[...]` hint carries: a `Range` on an `int` takes integers only, and a type that
    admits None (`Annotated[int | None, Range(1)]`) also accepts null."""
    if get_origin(hint) is not Annotated:
        return None
    base, *metadata = get_args(hint)
    rule = next((item for item in metadata if isinstance(item, Rule)), None)
    if rule is None:
        return None
    options = get_args(base) if get_origin(base) in (Union, types.UnionType) else (base,)
    if isinstance(rule, Range) and int in options and float not in options:
        rule = replace(rule, integer=True)
    return optional(rule) if type(None) in options else rule


def shown_path(path: Any, limit: int = MAX_SHOWN_PATH) -> str:
    """A path as a message shows it: whole up to `limit` characters, else its start and its end (the file the
    message is about) around "..."."""
    text = str(path)
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head] + "..." + text[len(text) - (limit - head - 3) :]


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """A value as a user types it on the command line, cut to `limit` characters."""
    text = {True: "true", False: "false", None: "null"}.get(value, value) if isinstance(value, (bool, type(None))) else value
    text = str(text).replace("'", "").replace(" ", "") if isinstance(text, list) else str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
