"""Typed `key=value` overrides of nested dataclass configs (`--set optim.lr=3e-4`).

Values are parsed into the annotated type of the field they set (int, float, bool, str, X | None,
tuples, lists, dicts); a dotted key may also reach into a dict field (`model.decoder_options.steps=5`).
Every changed dataclass is rebuilt with dataclasses.replace, so its __post_init__ checks run again.
"""

from __future__ import annotations

import ast
import dataclasses
import types
import typing
from typing import Any

_NONE = ("none", "null")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_value(text: str, hint: Any, key: str) -> Any:
    """text -> a value of type `hint`; errors name the key, the text and the type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in _NONE and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        return parse_value(text, real[0], key) if len(real) == 1 else _literal(text, key)
    if hint is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(f"--set {key}={text!r}: expected a bool (true/false)")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise ValueError(f"--set {key}={text!r}: expected {hint.__name__}") from None
    if hint is str:
        return text
    value = _literal(text, key)
    expected = origin or hint
    if expected in (tuple, list) and isinstance(value, (tuple, list)):
        inner = args[0] if args else None
        if inner not in (None, Ellipsis, typing.Any):
            value = [parse_value(str(v), inner, key) if not isinstance(v, inner) else v for v in value]
        return expected(value)
    if expected is dict and not isinstance(value, dict):
        raise ValueError(f"--set {key}={text!r}: expected a dict such as {{'steps': 5}}")
    return value


def _literal(text: str, key: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"--set {key}={text!r}: not a Python literal (quote strings inside lists/dicts)") from None


def _loose(text: str) -> Any:
    """A value inside a free-form dict: a literal when it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(cfg: Any, key: str, text: str, aliases: dict[str, str] | None = None) -> Any:
    """Returns a new config with the dotted `key` set from `text`; cfg itself is not modified."""
    full = (aliases or {}).get(key, key)
    return _set(cfg, full.split("."), text, full)


def _set(node: Any, parts: list[str], text: str, key: str) -> Any:
    if isinstance(node, dict):
        new = dict(node)
        if len(parts) == 1:
            new[parts[0]] = _loose(text)
        else:
            new[parts[0]] = _set(new.get(parts[0], {}), parts[1:], text, key)
        return new
    if not dataclasses.is_dataclass(node):
        raise ValueError(f"--set {key}: {'.'.join(parts)} goes inside a {type(node).__name__}, which has no fields")
    names = {f.name for f in dataclasses.fields(node)}
    head = parts[0]
    if head not in names:
        raise ValueError(f"--set {key}: unknown key {head!r} in {type(node).__name__}; known keys: {sorted(names)}")
    if len(parts) == 1:
        value = parse_value(text, typing.get_type_hints(type(node))[head], key)
    else:
        value = _set(getattr(node, head), parts[1:], text, key)
    return dataclasses.replace(node, **{head: value})


def parse_assignment(item: str) -> tuple[str, str]:
    """'a.b=3' -> ('a.b', '3')."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
    return key.strip(), text.strip()
