"""The configuration reference (a Markdown table of every strategy key), generated from the models.

`python -m pveguard.strategy.reference --write README.md` refreshes the README section between the
markers; a test fails when the README and the models disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pveguard.strategy.enforcement import NOT_ENFORCED
from pveguard.strategy.models import Strategy

BEGIN = "<!-- BEGIN config-reference (generated: python -m pveguard.strategy.reference --write README.md) -->"
END = "<!-- END config-reference -->"
NOT_ENFORCED_BEGIN = ("<!-- BEGIN not-enforced (generated from src/pveguard/strategy/enforcement.py: "
                      "python -m pveguard.strategy.reference --write README.md) -->")
NOT_ENFORCED_END = "<!-- END not-enforced -->"


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:
        base = _type_name(args[0])
        meta = " ".join(type(m).__name__ for m in args[1:])
        if "PlainSerializer" in meta and base == "int":
            return "size"
        if "PlainSerializer" in meta and base == "timedelta":
            return "duration"
        if base == "str" and "BeforeValidator" in meta:
            return "schedule"
        return base
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[1])}"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" (optional)" if type(None) in args else "")
    if isinstance(ann, type):
        return ann.__name__.lower() if not issubclass(ann, BaseModel) else "mapping"
    return str(ann)


def _kind(field: FieldInfo) -> str | None:
    """'size', 'duration' or 'schedule' for the strategy's own scalar types (kept in metadata)."""
    from pveguard.strategy import models, units

    funcs = {units.parse_size: "size", units.parse_duration: "duration", models._check_frequency: "schedule",
             models._check_vlan: "vlan"}
    for meta in _all_metadata(field):
        func = getattr(meta, "func", None)
        if func in funcs:
            return funcs[func]
    return None


def _all_metadata(field: FieldInfo) -> list[Any]:
    found = list(field.metadata)
    for arg in typing.get_args(field.annotation):
        found += list(getattr(arg, "__metadata__", ()))
    return found


def _default(field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return f"{len(value)} entries"
    from pveguard.strategy.units import format_duration

    if hasattr(value, "total_seconds"):
        return f"`{format_duration(value)}`"
    if _kind(field) == "size" and isinstance(value, int):
        from pveguard.strategy.units import format_size

        return f"`{format_size(value)}`"
    return f"`{json.dumps(value)}`"


def _model_of(ann: Any) -> type[BaseModel] | None:
    from pveguard.strategy.load import _unwrap_model

    found = _unwrap_model(ann)
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


def rows(model: type[BaseModel] = Strategy, prefix: str = "") -> list[tuple[str, str, str, str]]:
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _model_of(field.annotation)
        is_list = typing.get_origin(field.annotation) is list
        kind = _kind(field)
        type_name = _type_name(field.annotation)
        if kind:
            type_name = kind + (" (optional)" if "optional" in type_name else "")
        out.append((path, "list of mappings" if sub and is_list else type_name,
                    _default(field), (field.description or "").replace("|", "\\|")))
        if sub is not None:
            out += rows(sub, f"{path}[]." if is_list else f"{path}.")
    return out


def render() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{p}` | {t} | {d} | {m} |" for p, t, d, m in rows()]
    return "\n".join(lines) + "\n"


def render_not_enforced() -> str:
    """The keys that are accepted but not enforced yet, for the README's status section."""
    if not NOT_ENFORCED:
        return "None: every strategy key is read and acted on (or refused when it cannot be honoured).\n"
    lines = ["| strategy key (accepted, not enforced yet) | to be enforced by |", "|---|---|"]
    for key, issue in NOT_ENFORCED.items():
        is_section = _model_at_key(key) is not None
        lines.append(f"| `{key}{'.*' if is_section else ''}` | issue #{issue} |")
    return "\n".join(lines) + "\n"


def _model_at_key(key: str) -> type[BaseModel] | None:
    """The model a table key names when it is a whole section, else None."""
    model: type[BaseModel] | None = Strategy
    for part in key.replace("[]", "").split("."):
        if model is None or part not in model.model_fields:
            return None
        model = _model_of(model.model_fields[part].annotation)
    return model


def splice(text: str) -> str:
    """`text` with the generated blocks between their markers replaced by the current ones.

    The config reference is required; the not-enforced table is refreshed where its markers are.
    """
    text = _splice(text, BEGIN, END, render(), required=True)
    return _splice(text, NOT_ENFORCED_BEGIN, NOT_ENFORCED_END, render_not_enforced(), required=False)


def _splice(text: str, begin: str, end: str, body: str, *, required: bool) -> str:
    head, sep, rest = text.partition(begin)
    if not sep:
        if required:
            raise ValueError(f"README has no {begin!r} marker")
        return text
    _, sep2, tail = rest.partition(end)
    if not sep2:
        raise ValueError(f"README has no end marker {end!r}")
    return f"{head}{begin}\n{body}{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="refresh the section in this file")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(splice(args.write.read_text()))
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
