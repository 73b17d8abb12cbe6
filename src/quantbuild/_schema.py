"""A small typed loader: dataclasses describe each params.yaml section; this turns YAML into them.

Every problem becomes one line `path: value is wrong because ... (fix)`; unknown keys get a
"did you mean". Problems are collected, not raised one at a time, so a user fixes the file in one go.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Union

MISSING = dataclasses.MISSING


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path}: {message}")

    def __bool__(self) -> bool:
        return bool(self.lines)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in typing.get_args(tp) else "")
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, path: str, problems: Problems) -> Any:
    """Check `value` against the annotation `tp`; returns the converted value (or None on error)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        for arg in candidates:  # first arm that accepts the value without problems wins
            trial = Problems()
            out = convert(arg, value, path, trial)
            if not trial:
                return out
        if len(candidates) == 1:
            return convert(candidates[0], value, path, problems)
        problems.add(path, f"{show(value)} must be {_type_name(tp)}")
        return None
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            hint = did_you_mean(str(value), [str(a) for a in allowed])
            problems.add(path, f"{show(value)} must be one of {', '.join(repr(a) for a in allowed)}{hint}")
            return None
        return value
    if dataclasses.is_dataclass(tp):
        return load_dataclass(tp, value, path, problems)
    if origin in (list, tuple):
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str) or not isinstance(value, list):
            problems.add(path, f"{show(value)} must be a list (write it as a YAML list)")
            return None
        return [convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.add(path, f"{show(value)} must be a mapping of name: settings")
            return None
        return {str(k): convert(val_tp, v, f"{path}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.add(path, f"{show(value)} must be true or false")
            return None
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(path, f"{show(value)} must be an integer")
            return None
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.add(path, f"{show(value)} must be a number")
            return None
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.add(path, f"{show(value)} must be a string (quote it in YAML)")
            return None
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def load_dataclass(cls: type, data: Any, path: str, problems: Problems) -> Any:
    """Build `cls` from a mapping. Unknown keys and missing required keys are problems."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add(path, f"{show(data)} must be a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}")
        return None
    before = len(problems.lines)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            problems.add(f"{path}.{key}" if path else str(key),
                         f"unknown key{did_you_mean(str(key), fields)}; allowed: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = convert(hints[name], data[name], sub, problems)
        elif field.default is MISSING and field.default_factory is MISSING:  # type: ignore[misc]
            problems.add(sub, f"is required ({field.metadata.get('help', 'see params.yaml in the repo for an example')})")
            kwargs[name] = None
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"{cls.__name__}: {exc}") from exc
    check = getattr(obj, "check", None)
    if check is not None and (len(problems.lines) == before or getattr(cls, "check_always", False)):
        # checks see only what typed cleanly, unless they guard themselves (check_always)
        check(path, problems)
    return obj
