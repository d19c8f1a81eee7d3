"""`record`, `field`, `replace`: the part of `dataclasses` the apt hook's modules use, without
importing `dataclasses`.

apt waits for the hook's start-up on every transaction (issue 17: < 60 ms p50), and
`import dataclasses` alone pulls in inspect, ast, dis, tokenize and linecache (~7 ms), before each
@dataclass compiles its methods. The modules on the hook's path (guard.aptproto, guard.decide,
guard.approvals, guard.hook, packages.status/classify, security.ledger/anchors, invocation) declare
their records with `@record` instead.

Type checkers see the real thing: under TYPE_CHECKING these names ARE dataclasses.dataclass,
dataclasses.field and dataclasses.replace, so mypy checks every constructor call, default and
`replace` exactly as before. At run time `record` builds what @dataclass builds for the options used
here (init, repr, eq, frozen, default / default_factory / repr=False fields, __post_init__,
__match_args__, __hash__ as @dataclass sets it); tests/foundation/test_records.py checks it against
@dataclass class by class. What is not supported raises TypeError when the class is created.
`dataclasses.asdict`/`fields`/`is_dataclass` do not know these classes: the modules write their own
`as_dict`.

No maintained library does this cheaper: in a fresh `python -IS` (2026-12-06, this machine) `import
msgspec` took 19.5 ms and `import attrs` 31 ms, more than `import dataclasses` itself (15 ms cold).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported either (mypy treats this name as true)

if TYPE_CHECKING:
    from dataclasses import dataclass as record
    from dataclasses import field, replace
else:

    class FrozenInstanceError(AttributeError):
        """Assignment to a field of a frozen record (what dataclasses raises, same base class)."""

    class _Missing:
        def __repr__(self) -> str:
            return "MISSING"

    _MISSING = _Missing()

    class _Factory:
        def __repr__(self) -> str:
            return "<factory>"  # what a dataclass's signature shows for a default_factory field

    _HAS_FACTORY = _Factory()

    class _Field:
        __slots__ = ("default", "default_factory", "repr")

        def __init__(self, default: object, default_factory: object, repr: bool) -> None:
            self.default = default
            self.default_factory = default_factory
            self.repr = repr

    def field(*, default: object = _MISSING, default_factory: object = _MISSING, repr: bool = True,
              **unsupported: object) -> object:
        """dataclasses.field for the options the hook's modules use."""
        if unsupported:
            raise TypeError(f"records.field does not support {', '.join(sorted(unsupported))}")
        if default is not _MISSING and default_factory is not _MISSING:
            raise ValueError("cannot specify both default and default_factory")
        return _Field(default, default_factory, repr)

    def _fields(cls: type) -> tuple[tuple[str, _Field], ...]:
        out: dict[str, _Field] = {}
        for base in reversed(cls.__mro__[1:]):
            out.update(getattr(base, "__record_fields__", {}))
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - inspect is what this avoids
        for name, annotation in own.items():
            text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
            if text.startswith(("ClassVar", "typing.ClassVar", "InitVar", "dataclasses.InitVar")):
                raise TypeError(f"{cls.__name__}.{name}: records do not support ClassVar/InitVar")
            value = cls.__dict__.get(name, _MISSING)
            if isinstance(value, _Field):
                spec = value
                if spec.default is _MISSING:
                    delattr(cls, name)
                else:
                    setattr(cls, name, spec.default)
            else:
                if isinstance(value, (list, dict, set)):
                    raise ValueError(f"mutable default {type(value)} for field {name} is not allowed: "
                                     "use default_factory")
                spec = _Field(value, _MISSING, True)
            out[name] = spec
        return tuple(out.items())

    def _make_init(cls: type, fields: tuple[tuple[str, _Field], ...], frozen: bool) -> None:
        env: dict[str, object] = {"__HAS_FACTORY": _HAS_FACTORY, "__object_setattr": object.__setattr__}
        params: list[str] = []
        body: list[str] = []
        seen_default = False
        for name, spec in fields:
            if spec.default_factory is not _MISSING:
                env[f"__factory_{name}"] = spec.default_factory
                params.append(f"{name}=__HAS_FACTORY")
                value = f"__factory_{name}() if {name} is __HAS_FACTORY else {name}"
                seen_default = True
            elif spec.default is not _MISSING:
                env[f"__default_{name}"] = spec.default
                params.append(f"{name}=__default_{name}")
                value = name
                seen_default = True
            else:
                if seen_default:
                    raise TypeError(f"non-default argument {name!r} follows default argument")
                params.append(name)
                value = name
            if frozen:
                body.append(f"  __object_setattr(self, {name!r}, {value})")
            else:
                body.append(f"  self.{name} = {value}")
        if "__post_init__" in dir(cls):
            body.append("  self.__post_init__()")
        if not body:
            body.append("  pass")
        source = f"def __init__({', '.join(['self', *params])}):\n" + "\n".join(body) + "\n"
        namespace: dict[str, object] = {}
        exec(source, env, namespace)  # what dataclasses does: a real signature and real TypeErrors
        init = namespace["__init__"]
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        annotations = {}
        for klass in reversed(cls.__mro__):
            annotations.update(klass.__dict__.get("__annotations__", {}))  # noqa: RUF063 - see above
        init.__annotations__ = {name: annotations[name] for name, _ in fields} | {"return": None}
        cls.__init__ = init

    def _repr(self: object) -> str:
        parts = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__record_repr__)
        return f"{type(self).__qualname__}({parts})"

    def _eq(self: object, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        names = type(self).__record_names__
        return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)

    def _hash(self: object) -> int:
        return hash(tuple(getattr(self, n) for n in type(self).__record_names__))

    def _frozen_setattr(self: object, name: str, value: object) -> None:
        if type(self).__record_frozen__ or name in type(self).__record_names__:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def _frozen_delattr(self: object, name: str) -> None:
        if type(self).__record_frozen__ or name in type(self).__record_names__:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        object.__delattr__(self, name)

    def record(cls: type | None = None, /, *, frozen: bool = False, **unsupported: object) -> object:
        """@dataclass / @dataclass(frozen=True) for the hook's modules (see the module doc)."""
        if unsupported:
            raise TypeError(f"records.record does not support {', '.join(sorted(unsupported))}")

        def wrap(cls: type) -> type:
            fields = _fields(cls)
            cls.__record_fields__ = dict(fields)
            cls.__record_names__ = tuple(name for name, _ in fields)
            cls.__record_repr__ = tuple(name for name, spec in fields if spec.repr)
            cls.__match_args__ = cls.__record_names__
            if "__init__" not in cls.__dict__:
                _make_init(cls, fields, frozen)
            if "__repr__" not in cls.__dict__:
                cls.__repr__ = _repr
            if "__eq__" not in cls.__dict__:
                cls.__eq__ = _eq
            if "__hash__" not in cls.__dict__ or cls.__dict__["__hash__"] is None:
                cls.__hash__ = _hash if frozen else None
            cls.__record_frozen__ = frozen
            if frozen:
                cls.__setattr__ = _frozen_setattr
                cls.__delattr__ = _frozen_delattr
            return cls

        return wrap if cls is None else wrap(cls)

    def replace(obj: object, /, **changes: object) -> object:
        """dataclasses.replace for records: a new instance with `changes` applied."""
        names = type(obj).__record_names__
        for name in changes:
            if name not in names:
                raise TypeError(f"{type(obj).__name__}.__init__() got an unexpected keyword argument {name!r}")
        return type(obj)(**{name: changes[name] if name in changes else getattr(obj, name) for name in names})

__all__ = ["field", "record", "replace"]
