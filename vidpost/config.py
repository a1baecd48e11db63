"""Typed configuration: dataclasses next to the code that reads them, YAML presets, dotted CLI overrides.

    cfg = load_config(SFTConfig, "configs/shapes/sft.yaml", ["optim.lr=1e-4", "lora.rank=8"])

Rules:
- A YAML file maps onto a (nested) dataclass; every key must be a field. An unknown key is a `ValueError` that
  names the full dotted key and lists the valid keys at that level — a typo never silently does nothing.
- Overrides are `dotted.key=value`; the value is parsed as YAML (`1e-4`, `true`, `[1, 2]`, `null`) and then
  checked against the field's type like a YAML value. Overrides apply after the file.
- Values are type-checked (int, float, str, bool, lists, dicts, Optional, Literal, nested dataclasses); an int
  is accepted for a float field. Every number must be finite (`nan`, `inf` are errors), and a field annotated with a
  range (`PositiveInt`, `NonNegativeInt`, `PositiveFloat`, `NonNegativeFloat`, `Fraction`, or `Annotated[x, Range(..)]`)
  must lie in it — all checked when the config loads, before any model does.
- A YAML file that does not parse (or holds a Python tag: files are read with `yaml.safe_load`) is one `ValueError`
  naming the file, the line and the problem (`parse_yaml`). A YAML file may name a `base:` file (relative to itself) to inherit from.
- `to_dict(cfg)` gives the plain dict that is saved next to every run (and hashed by the staged run). A dict
  field with integer keys reads its own JSON back: a key that is a decimal string ("1") is accepted as an int.
- A class decorated with `@renamed_keys(old="new")` still reads the old key (YAML written before the rename,
  saved configs) and takes it as a keyword; errors under it name the key as written.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """The interval a numeric config field must lie in (`Annotated[int, Range(1)]`); None = unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """whether `low` itself is excluded (a positive float: `Range(0, low_open=True)`)"""

    def check(self, value: float, key: str) -> None:
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and value > self.high
        if below or above:
            raise ValueError(f"config key '{key}': {value!r} is out of range (must be {self.text()})")

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{'>' if self.low_open else '≥'} {self.low:g} and ≤ {self.high:g}"
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        return f"≤ {self.high:g}"


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1)]


def finite_number(value: Any, key: str) -> None:
    """A ValueError naming `key` when `value` is NaN or infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config key '{key}': {value!r} is not a finite number")


def _flag_number(kind: type, bounds: Range | None) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if bounds is not None:
            try:
                bounds.check(value, "")
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text} is out of range (must be {bounds.text()})") from None
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


finite_float = _flag_number(float, None)
"""argparse types for numeric flags: a finite float; ints and floats in a range"""
positive_int = _flag_number(int, Range(1))
nonnegative_int = _flag_number(int, Range(0))
positive_float = _flag_number(float, Range(0, low_open=True))
nonnegative_float = _flag_number(float, Range(0))


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose `type=float` flags refuse `nan` and `inf` at parse time (exit 2, one line);
    every vidpost command builds its parser with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("type", float, finite_float)


def parse_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load(text)`; a syntax error or a tag safe_load refuses (`!!python/...`) is a one-line ValueError
    naming `source` (a file, or a command-line value) and where."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if isinstance(e, yaml.constructor.ConstructorError):
            problem = f"{problem}: a tag safe YAML does not allow (nothing was run)"
        raise ValueError(f"{source}: not valid YAML{where}: {problem}") from None


def _range_of(tp: Any) -> tuple[Any, Range | None]:
    """(the base type, its Range) of `Annotated[x, Range(...)]`; (tp, None) otherwise."""
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        return base, next((m for m in meta if isinstance(m, Range)), None)
    return tp, None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` to the annotated type `tp`; raise ValueError naming `key`."""
    tp, bounds = _range_of(tp)
    if bounds is not None:
        value = _coerce(value, tp, key)
        if value is not None:
            bounds.check(value, key)
        return value
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        if len(errors) == 1:  # Optional[X]: X's own message names the offending nested key
            raise ValueError(errors[0])
        raise ValueError(f"config key '{key}': {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans: take the option the user wrote
            value = next((w for w in _YAML_BOOL_WORDS[value] if w in get_args(tp)), value)
        if value not in get_args(tp):
            raise ValueError(f"config key '{key}': {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{key}': expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ValueError(f"config key '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}': expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(_int_key(k, kt), kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key '{key}': expected a number, got {value!r}")
        finite_number(float(value), key)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} for '{key}'")


_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _int_key(k: Any, kt: Any) -> Any:
    """A dict key read back from JSON: "3" for an int-keyed dict is 3."""
    if kt is int and isinstance(k, str) and k.strip().lstrip("-").isdigit():
        return int(k)
    return k


def renamed_keys(**old_to_new: str) -> Callable[[type[T]], type[T]]:
    """Class decorator (above `@dataclass`) for renamed fields: `from_dict` still reads each old key, the
    constructor still takes it as a keyword, and the old attribute name reads the new field."""

    def wrap(cls: type[T]) -> type[T]:
        cls.__config_renamed__ = dict(old_to_new)  # type: ignore[attr-defined]
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{cls.__name__}: give '{new}' or its old name '{old}', not both")
                    kwargs[new] = kwargs.pop(old)
            init(self, *args, **kwargs)

        cls.__init__ = __init__  # type: ignore[method-assign]
        for old, new in old_to_new.items():
            setattr(cls, old, property(lambda self, new=new: getattr(self, new), doc=f"old name of `{new}`"))
        return cls

    return wrap


def moved_keys(**old_to_new: str) -> Callable[[type[T]], type[T]]:
    """Class decorator of a top-level config for keys that moved to another section: `from_dict` reads
    `@moved_keys(**{"forward.nft_beta": "nft.beta"})`'s old dotted key as the new one (with a one-line warning), and
    `migrate` does the same to a config saved before the move (a checkpoint's)."""

    def wrap(cls: type[T]) -> type[T]:
        cls.__config_moved__ = dict(old_to_new)  # type: ignore[attr-defined]
        return cls

    return wrap


def migrate(cls: type, data: dict[str, Any], warn: bool = True) -> dict[str, Any]:
    """`data` (a config mapping of `cls`) with its moved keys (`moved_keys`) under their new names."""
    moved = getattr(cls, "__config_moved__", {})
    if not moved or not isinstance(data, dict):
        return data
    data = json.loads(json.dumps(data))
    for old, new in moved.items():
        *head, leaf = old.split(".")
        node = data
        for part in head:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        *new_head, new_leaf = new.split(".")
        target = data
        for part in new_head:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"config key '{old}' moved to '{new}', but '{part}' is not a section here")
        if new_leaf in target:
            raise ValueError(f"config key '{old}' is the old name of '{new}': give one of them")
        target[new_leaf] = value
        if warn:
            print(f"warning: config key '{old}' is now '{new}'", file=sys.stderr)
    return data


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ValueError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    if not prefix:
        data = migrate(cls, data)
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    renamed = getattr(cls, "__config_renamed__", {})
    unknown = [k for k in data if k not in fields and renamed.get(k) not in fields]
    if unknown:
        where = f" under '{prefix.rstrip('.')}'" if prefix else ""
        raise ValueError(f"unknown config key '{prefix}{unknown[0]}' (valid keys{where}: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for written, value in data.items():
        name = written if written in fields else renamed[written]
        if name in kwargs:
            raise ValueError(f"config key '{prefix}{written}' is the old name of '{prefix}{name}': give one of them")
        kwargs[name] = _coerce(value, hints[name], prefix + written)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config (sorted JSON), recorded with each stage's output."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.exists():
        raise ValueError(f"config file {path} does not exist")
    if path in seen:
        raise ValueError(f"config file {path} inherits from itself via 'base:'")
    data = parse_yaml(path.read_text(), f"config file {path}") or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must contain a mapping at top level")
    base = data.pop("base", None)
    if base is not None:
        parent = _read_yaml((path.parent / base).resolve(), (*seen, path))
        data = deep_merge(parent, data)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a plain dict (its `base:` chain merged in)."""
    return _read_yaml(Path(path))


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like dotted.key=value")
    key, raw = override.split("=", 1)
    value = parse_yaml(raw, f"override {override!r}") if raw.strip() else ""
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: '{p}' is not a section")
    node[parts[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    data = _read_yaml(Path(path)) if path is not None else {}
    for o in overrides or []:
        apply_override(data, o)
    return from_dict(cls, data)


def _type_text(tp: Any) -> str:
    """A field type as written in the source (`list[int]`, `Literal['a', 'b']`, `str | None`)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "None"
    if get_origin(tp) is Annotated:
        base, bounds = _range_of(tp)
        return f"{_type_text(base)} {bounds.text()}" if bounds else _type_text(base)
    if tp is Ellipsis:
        return "..."
    if origin is None:
        return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
    return f"{name}[{', '.join(_type_text(a) for a in args)}]" if args else name


def _nested_dataclass(tp: Any) -> type | None:
    """The dataclass a field of type `tp` holds (`X`, `X | None`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
        if len(inner) == 1:
            return inner[0]
    return None


def _docstrings(cls: type) -> dict[str, str]:
    """The string literal written under each annotated field of `cls` and of its dataclass bases, one line each."""
    import ast
    import inspect
    import textwrap

    out: dict[str, str] = {}
    for klass in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                value = getattr(nxt, "value", None) if isinstance(nxt, ast.Expr) else None
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    out[node.target.id] = " ".join(value.value.split())
    return out


def _default_value(f: dataclasses.Field, owner: Any = None) -> Any:
    """The default of field `f`: taken from `owner` (the default instance of the enclosing section, whose factory may
    set other values than the class's) when given, else from the field itself; MISSING when it has none."""
    if owner is not None:
        return getattr(owner, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _default_text(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.dumps(value, default=str)


def field_docs(cls: type, _defaults: Any = None) -> dict[str, str]:
    """Every config key of dataclass `cls` (for --help-config), by dotted key, in declaration order, nested sections
    (`X` or `X | None` fields) included with their keys: "<type> = <default as JSON>" plus " — <docstring>" when
    the field has one (the string literal written under it). A section's line says "section"; its keys show the
    defaults of the section's default instance. A required field (no default) says "required"."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    docs = _docstrings(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, f.type)
        nested = _nested_dataclass(tp)
        default = _default_value(f, _defaults)
        text = f"{_type_text(tp)} = {_default_text(default)}"
        if nested is not None and nested is tp:
            text = f"{_type_text(tp)} section"
        if f.name in docs:
            text += f" — {docs[f.name]}"
        out[f.name] = text
        if nested is not None:
            inner = default if isinstance(default, nested) else None
            out.update({f"{f.name}.{k}": v for k, v in field_docs(nested, inner).items()})
    return out
