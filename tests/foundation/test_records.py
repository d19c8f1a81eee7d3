"""pveguard.records.record builds, for every record on the apt hook's path, what @dataclass built
before (mypy checks them as dataclasses; this checks the run-time side): the same constructor
signature, defaults and default factories, repr, equality, hashing, immutability, __post_init__,
__match_args__ and `replace`."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from pveguard import records
from pveguard.guard import approvals, aptproto, decide, hook
from pveguard.invocation import Written
from pveguard.packages import classify, status
from pveguard.security import anchors, ledger

RECORDS = [hook.HookEnv, aptproto.Action, aptproto.HookInput, decide.Policy, decide.Approval, decide.Candidate,
           decide.Item, decide.Decision, classify.Verdict, classify.Classifier, status.Package, ledger.Entry,
           ledger.VerifyResult, anchors.Head, anchors.Reading, approvals.ApprovalRecord, Written]


def twin(cls: type) -> Any:
    """The same class body made by the real @dataclass."""
    ns: dict[str, Any] = {k: v for k, v in cls.__dict__.items()
                          if k not in ("__dict__", "__weakref__") and not k.startswith("__record")
                          and k not in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__",
                                        "__delattr__", "__match_args__")}
    for name, spec in cls.__record_fields__.items():  # type: ignore[attr-defined]
        if spec.default_factory is not records._MISSING:  # type: ignore[attr-defined]
            ns[name] = dataclasses.field(default_factory=spec.default_factory, repr=spec.repr)
        elif spec.default is not records._MISSING:  # type: ignore[attr-defined]
            ns[name] = dataclasses.field(default=spec.default, repr=spec.repr)
        elif not spec.repr:
            ns[name] = dataclasses.field(repr=False)
    return dataclasses.dataclass(frozen=cls.__record_frozen__)(type(cls.__name__, (), ns))  # type: ignore[attr-defined]


def sample(cls: type, salt: str) -> dict[str, Any]:
    """Values for the fields without a default (strings; Classifier needs its package mapping)."""
    out: dict[str, Any] = {}
    for name, param in inspect.signature(cls).parameters.items():
        if param.default is inspect.Parameter.empty:
            out[name] = {} if (cls, name) == (classify.Classifier, "packages") else f"{name}-{salt}"
    return out


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__qualname__)
def test_a_record_behaves_like_the_dataclass_it_replaces(cls: type) -> None:
    dc = twin(cls)
    assert str(inspect.signature(cls)) == str(inspect.signature(dc))
    assert cls.__match_args__ == dc.__match_args__  # type: ignore[attr-defined]
    name = "extra_allowed" if cls is classify.Classifier else cls.__match_args__[0]  # type: ignore[attr-defined]
    a, b, other = cls(**sample(cls, "a")), cls(**sample(cls, "a")), cls(**{**sample(cls, "a"), name: "other"})
    da = dc(**sample(cls, "a"))
    assert repr(a) == repr(da)
    assert vars(a) == vars(da)  # defaults, default factories and __post_init__ alike
    assert a == b and a != other and (a == da) is False
    if cls.__record_frozen__:  # type: ignore[attr-defined]
        assert hash(a) == hash(b) == hash(da)
        for obj in (a, da):
            with pytest.raises(AttributeError):
                setattr(obj, name, "changed")
            with pytest.raises(AttributeError):
                obj.not_a_field = 1
    else:
        assert cls.__hash__ is None and dc.__hash__ is None
    changed = records.replace(a, **{name: getattr(other, name)})
    assert getattr(changed, name) == getattr(other, name) and changed is not a
    with pytest.raises(TypeError):
        records.replace(a, no_such_field=1)


def test_default_factories_give_each_instance_its_own_value() -> None:
    one, two = aptproto.HookInput(3), aptproto.HookInput(3)
    one.actions.append(aptproto.Action("p", None, "<", "1", "/x.deb"))
    assert two.actions == [] and one != two


def test_constructor_errors_are_pythons_own() -> None:
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'version'"):
        aptproto.HookInput()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        decide.Policy(nope=1)  # type: ignore[call-arg]


def test_what_records_do_not_support_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(ValueError, match="mutable default"):
        records.record(type("Bad", (), {"__annotations__": {"x": "list[int]"}, "x": []}))
    with pytest.raises(TypeError, match="non-default argument"):
        records.record(type("Bad", (), {"__annotations__": {"x": "int", "y": "int"}, "x": 1}))
    with pytest.raises(TypeError, match="does not support"):
        records.record(order=True)  # type: ignore[call-overload]
