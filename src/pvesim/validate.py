"""Parameter validation exactly like pve-common JSONSchema.pm, compiled once per path/method.

A compiled validator turns raw request parameters (strings from query/form, or JSON values)
into typed values (int for integer/boolean, float for number, str, list) or raises ParamError
with PVE's per-parameter messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pvesim.formats import FORMATS, PROPSTRING_FORMATS, FormatError

# Highest index + 1 for indexed options (`net[n]` ...); pve-container / qemu-server limits.
INDEX_LIMITS = {
    "net": 32,
    "mp": 256,
    "unused": 256,
    "dev": 256,
    "scsi": 31,
    "virtio": 16,
    "sata": 6,
    "ide": 4,
    "usb": 14,
    "hostpci": 16,
    "serial": 4,
    "parallel": 3,
    "ipconfig": 32,
    "numa": 8,
    "virtiofs": 10,
    "link": 8,
}

_INT = re.compile(r"[+-]?\d+")
_NUM = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_TRUE = {"1", "on", "yes", "true"}
_FALSE = {"0", "off", "no", "false"}


class ParamError(Exception):
    """400 Parameter verification failed, with PVE's `errors` object."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("Parameter verification failed.")
        self.errors = errors


class _Invalid(Exception):
    pass


Checker = Callable[[Any], Any]


def perl_regex(pattern: str) -> re.Pattern[str] | None:
    """Translate a Perl pattern from the schema into an anchored Python regex (None if untranslatable)."""
    p = pattern.replace("(?^:", "(?:").replace("(?^i:", "(?i:").replace("\\z", "\\Z")
    try:
        return re.compile(p)
    except re.error:
        return None


def _num_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def compile_prop(schema: dict[str, Any], in_propstring: bool = False) -> Checker:
    """Compile one property schema into a checker: raw value -> typed value, or raises _Invalid(msg)."""
    typ = schema.get("type", "string")
    if typ == "array":
        item = compile_prop(schema.get("items") or {"type": "string"})

        def check_array(value: Any) -> Any:
            values = value if isinstance(value, list) else [value]
            return [item(v) for v in values]

        return check_array

    steps: list[Callable[[Any], Any]] = []

    if typ == "integer":

        def to_int(v: Any) -> Any:
            if isinstance(v, int) and not isinstance(v, bool):
                return v
            s = _scalar_text(v)
            if not _INT.fullmatch(s):
                raise _Invalid(f"type check ('integer') failed - got '{s}'")
            return int(s)

        steps.append(to_int)
    elif typ == "number":

        def to_num(v: Any) -> Any:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v
            s = _scalar_text(v)
            if not _NUM.fullmatch(s):
                raise _Invalid(f"type check ('number') failed - got '{s}'")
            f = float(s)
            return int(f) if f.is_integer() and "." not in s and "e" not in s.lower() else f

        steps.append(to_num)
    elif typ == "boolean":

        def to_bool(v: Any) -> Any:
            if isinstance(v, bool):
                return int(v)
            if isinstance(v, int) and v in (0, 1):
                return v
            s = str(v)
            if in_propstring:
                if s.lower() in _TRUE:
                    return 1
                if s.lower() in _FALSE:
                    return 0
            elif s in ("0", "1"):
                return int(s)
            raise _Invalid(f"type check ('boolean') failed - got '{s}'")

        steps.append(to_bool)
    elif typ == "string":

        def to_str(v: Any) -> Any:
            if isinstance(v, (dict, list)):
                raise _Invalid("type check ('string') failed - got a reference")
            return _scalar_text(v)

        steps.append(to_str)
    elif typ == "object":

        def to_obj(v: Any) -> Any:
            return v

        steps.append(to_obj)

    if "maxLength" in schema:
        mx = int(schema["maxLength"])

        def max_len(v: Any) -> Any:
            if len(str(v)) > mx:
                raise _Invalid(f"value may only be {mx} characters long")
            return v

        steps.append(max_len)
    if "minLength" in schema:
        mn = int(schema["minLength"])

        def min_len(v: Any) -> Any:
            if len(str(v)) < mn:
                raise _Invalid(f"value must be at least {mn} characters long")
            return v

        steps.append(min_len)
    if "minimum" in schema or "maximum" in schema:
        lo = schema.get("minimum")
        hi = schema.get("maximum")
        lo_f = float(lo) if lo is not None else None
        hi_f = float(hi) if hi is not None else None

        def bounds(v: Any) -> Any:
            if isinstance(v, (int, float)) or _NUM.fullmatch(str(v)):
                f = float(v)
                if lo_f is not None and f < lo_f:
                    raise _Invalid(f"value must have a minimum value of {_num_text(lo)}")
                if hi_f is not None and f > hi_f:
                    raise _Invalid(f"value must have a maximum value of {_num_text(hi)}")
            return v

        steps.append(bounds)
    if schema.get("enum"):
        allowed = [str(x) for x in schema["enum"]]
        allowed_set = set(allowed)
        joined = ", ".join(allowed)

        def enum(v: Any) -> Any:
            if str(v) not in allowed_set:
                raise _Invalid(f"value '{v}' does not have a value in the enumeration '{joined}'")
            return v

        steps.append(enum)
    if "pattern" in schema:
        rx = perl_regex(str(schema["pattern"]))
        if rx is not None:
            rxc = rx

            def pattern(v: Any) -> Any:
                if not rxc.fullmatch(str(v)):
                    raise _Invalid("value does not match the regex pattern")
                return v

            steps.append(pattern)
    fmt = schema.get("format")
    if isinstance(fmt, dict) or (isinstance(fmt, str) and fmt in PROPSTRING_FORMATS):
        pfmt: dict[str, Any] = fmt if isinstance(fmt, dict) else PROPSTRING_FORMATS[fmt]
        parser = PropertyString(pfmt)

        def propstring(v: Any) -> Any:
            parser.parse(str(v))
            return v

        steps.append(propstring)
    elif isinstance(fmt, str) and fmt in FORMATS:
        fcheck = FORMATS[fmt]

        def named(v: Any) -> Any:
            try:
                fcheck(str(v))
            except FormatError as e:
                raise _Invalid(f"invalid format - {e}") from None
            return v

        steps.append(named)

    if len(steps) == 1:
        return steps[0]

    def run(v: Any) -> Any:
        for s in steps:
            v = s(v)
        return v

    return run


class PropertyStringError(_Invalid):
    """Errors from parsing a property string: sub-key -> message."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("format error")


class PropertyString:
    """A compiled property-string format (`net[n]`, `rootfs`, `features`, `prune-backups` ...)."""

    def __init__(self, fmt: dict[str, Any]) -> None:
        self.fmt = fmt
        self.default_key: str | None = None
        self.aliases: dict[str, str] = {}
        self.key_alias: dict[str, str] = {}
        self.checkers: dict[str, Checker] = {}
        self.required: list[str] = []
        for k, s in fmt.items():
            if s.get("default_key"):
                self.default_key = k
            if "alias" in s and "keyAlias" in s:
                self.key_alias[k] = s["keyAlias"]
                self.aliases[k] = s["alias"]
                continue
            if "alias" in s:
                self.aliases[k] = s["alias"]
                continue
            self.checkers[k] = compile_prop(s, in_propstring=True)
            if not s.get("optional"):
                self.required.append(k)

    def parse(self, text: str, key: str = "") -> dict[str, Any]:
        """Parse and validate; raise PropertyStringError with PVE-style sub-key messages."""
        res: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for part in text.split(","):
            if part == "":
                continue
            if "=" in part:
                k, v = part.split("=", 1)
                if k in self.key_alias:
                    res[self.key_alias[k]] = k
                    k = self.aliases[k]
                elif k in self.aliases:
                    k = self.aliases[k]
            elif self.default_key is not None:
                k, v = self.default_key, part
                if k in res:
                    errors[k] = "duplicate key in comma-separated list property"
                    continue
            else:
                errors["_"] = "value without key, but schema does not define a default key"
                continue
            if k in res:
                errors[k] = f"duplicate key in comma-separated list property: {k}"
                continue
            check = self.checkers.get(k)
            if check is None:
                errors[k] = "property is not defined in schema and the schema does not allow additional properties"
                continue
            try:
                res[k] = check(v)
            except PropertyStringError as e:
                errors[k] = "invalid format - format error"
                errors.update(e.errors)
            except _Invalid as e:
                errors[k] = str(e)
        for k in self.required:
            if k not in res and k not in errors:
                errors[k] = "property is missing and it is not optional"
        if errors:
            raise PropertyStringError(errors)
        return res

    def print(self, values: dict[str, Any]) -> str:
        """PVE's print_property_string order: default key (bare), required keys, then the rest sorted."""
        parts: list[str] = []
        done: set[str] = set()
        dk = self.default_key
        if dk is not None and dk in values:
            parts.append(_scalar_text(values[dk]))
            done.add(dk)
        for k in self.required:
            if k in values and k not in done:
                parts.append(f"{k}={_scalar_text(values[k])}")
                done.add(k)
        for k in sorted(values):
            if k not in done and values[k] is not None:
                parts.append(f"{k}={_scalar_text(values[k])}")
        return ",".join(parts)


def _format_sub_errors(key: str, e: PropertyStringError) -> str:
    lines = [f"{key}.{k}: {m}" for k, m in e.errors.items()]
    return "invalid format - format error\n" + "\n".join(lines)


class MethodValidator:
    """All parameters of one path/method, compiled."""

    def __init__(self, parameters: dict[str, Any]) -> None:
        props: dict[str, Any] = parameters.get("properties") or {}
        self.additional = bool(parameters.get("additionalProperties", 0))
        self.plain: dict[str, Checker] = {}
        self.indexed: dict[str, tuple[int, Checker]] = {}
        self.required: list[str] = []
        self.requires: list[tuple[str, str]] = []
        self.schemas: dict[str, dict[str, Any]] = {}
        for name, s in props.items():
            if name.endswith("[n]"):
                base = name[:-3]
                self.indexed[base] = (INDEX_LIMITS.get(base, 256), compile_prop(s))
            else:
                self.plain[name] = compile_prop(s)
                if not s.get("optional"):
                    self.required.append(name)
            self.schemas[name] = s
            if "requires" in s:
                self.requires.append((name, s["requires"]))
        self._idx_rx = re.compile(r"([a-z]+)(\d+)") if self.indexed else None

    def checker_for(self, key: str) -> Checker | None:
        """The checker for a concrete key (`net0` resolves via `net[n]`)."""
        c = self.plain.get(key)
        if c is not None or self._idx_rx is None:
            return c
        m = self._idx_rx.fullmatch(key)
        if m and m.group(1) in self.indexed:
            limit, chk = self.indexed[m.group(1)]
            if int(m.group(2)) < limit and (m.group(2) == "0" or not m.group(2).startswith("0")):
                return chk
        return None

    def schema_for(self, key: str) -> dict[str, Any] | None:
        """The property schema for a concrete key."""
        s = self.schemas.get(key)
        if s is not None:
            return s
        m = re.fullmatch(r"([a-z]+)(\d+)", key)
        if m and m.group(1) + "[n]" in self.schemas:
            return self.schemas[m.group(1) + "[n]"]
        return None

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Return typed params or raise ParamError."""
        out: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for key, raw in params.items():
            check = self.checker_for(key)
            if check is None:
                if self.additional:
                    out[key] = raw
                    continue
                errors[key] = "property is not defined in schema and the schema does not allow additional properties"
                continue
            if isinstance(raw, list) and check.__name__ != "check_array":
                # Repeated keys for a scalar: PVE joins them with NUL, which then fails the checks.
                raw = "\0".join(str(x) for x in raw)
            try:
                out[key] = check(raw)
            except PropertyStringError as e:
                errors[key] = _format_sub_errors(key, e)
            except _Invalid as e:
                errors[key] = str(e)
        for key in self.required:
            if key not in params:
                errors[key] = "property is missing and it is not optional"
        for key, req in self.requires:
            if key in params and req not in params and req not in errors:
                errors[req] = f"missing property - '{key}' requires this property"
        if errors:
            raise ParamError(errors)
        return out


def parse_propstring(fmt: dict[str, Any], text: str) -> dict[str, Any]:
    """Parse a property string with a schema format dict (raises PropertyStringError)."""
    return PropertyString(fmt).parse(text)
