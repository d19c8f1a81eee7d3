"""Loading the official PVE API schema and routing request paths onto its path templates."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_ENV = "PVESIM_SCHEMA"
VERSION_ENV = "PVESIM_PVE_VERSION"
VERSIONS = ("8.4", "9.1")  # the PVE releases pvesim emulates, one schema file each
DEFAULT_VERSION = "8.4"
SCHEMA_NAME = f"pve-api-{DEFAULT_VERSION}.json"
_SHARED_DIR = Path("/work/shared/pve-api")


def schema_name(version: str = DEFAULT_VERSION) -> str:
    """The schema file of one PVE release: pve-api-8.4.json, pve-api-9.1.json."""
    return f"pve-api-{version}.json"


def default_version() -> str:
    """The PVE release to emulate when none is named: $PVESIM_PVE_VERSION, else 8.4."""
    return os.environ.get(VERSION_ENV) or DEFAULT_VERSION


def check_version(version: str) -> str:
    """`version` when pvesim emulates it, else ValueError naming the ones it does."""
    if version not in VERSIONS:
        raise ValueError(f"pvesim emulates PVE {' and '.join(VERSIONS)}, not {version!r}")
    return version


class SchemaNotFoundError(RuntimeError):
    """The PVE API schema file is not where pvesim looks for it."""


def _env_schema(version: str) -> Path | None:
    """$PVESIM_SCHEMA: a folder holding pve-api-<version>.json, or the 8.4 file itself (then the
    other releases' files are looked for beside it)."""
    env = os.environ.get(SCHEMA_ENV)
    if not env:
        return None
    p = Path(env)
    if p.is_dir():
        return p / schema_name(version)
    return p if version == DEFAULT_VERSION else p.parent / schema_name(version)


def schema_candidates(version: str = DEFAULT_VERSION) -> list[Path]:
    """Places searched for the schema of `version`, in order (env var first, then the shared folders)."""
    name = schema_name(version)
    out: list[Path] = []
    env = _env_schema(version)
    if env is not None:
        out.append(env)
    out.append(_SHARED_DIR / name)
    # CI keeps shared/ beside the checkout: <repo>/../shared/pve-api/
    repo = Path(__file__).resolve().parents[2]
    out.append(repo.parent / "shared" / "pve-api" / name)
    out.append(Path.cwd().parent / "shared" / "pve-api" / name)
    return out


def find_schema(version: str | None = None) -> Path:
    """Return the schema path of `version` (default: default_version()) or raise SchemaNotFoundError
    saying where it was looked for."""
    version = check_version(version or default_version())
    tried = schema_candidates(version)
    if os.environ.get(SCHEMA_ENV):
        # An explicit setting must not silently fall back to another file.
        tried = tried[:1]
    for p in tried:
        if p.is_file():
            return p
    raise SchemaNotFoundError(
        f"PVE {version} API schema not found (looked at: "
        + ", ".join(str(p) for p in tried)
        + f"); set {SCHEMA_ENV} to the folder holding {schema_name(version)}"
    )


@dataclass
class Method:
    """One method of one API path, as described by the schema."""

    http_method: str
    path: str
    name: str
    parameters: dict[str, Any]
    returns: dict[str, Any]
    permissions: dict[str, Any] | None
    proxyto: str | None
    allowtoken: bool
    protected: bool
    validator: Any = None  # compiled lazily by pvesim.validate


@dataclass
class _Trie:
    static: dict[str, _Trie] = field(default_factory=dict)
    param: tuple[str, _Trie] | None = None
    path: str | None = None


class Schema:
    """The API tree: path templates with their methods, and a segment trie to route paths."""

    def __init__(self, tree: list[dict[str, Any]], version: str = DEFAULT_VERSION) -> None:
        self.version = version
        self.methods: dict[tuple[str, str], Method] = {}
        self.paths: dict[str, dict[str, Method]] = {}
        self.children: dict[str, list[str]] = {}
        self._root = _Trie()
        for node in tree:
            self._add(node)

    def _add(self, node: dict[str, Any]) -> None:
        path = node["path"]
        ms: dict[str, Method] = {}
        for hm, info in (node.get("info") or {}).items():
            m = Method(
                http_method=hm,
                path=path,
                name=info.get("name", ""),
                parameters=info.get("parameters") or {},
                returns=info.get("returns") or {},
                permissions=info.get("permissions"),
                proxyto=info.get("proxyto"),
                allowtoken=bool(info.get("allowtoken", 1)),
                protected=bool(info.get("protected", 0)),
            )
            ms[hm] = m
            self.methods[(hm, path)] = m
        self.paths[path] = ms
        self.children[path] = [str(c.get("text") or c["path"].rsplit("/", 1)[-1]) for c in node.get("children") or []]
        t = self._root
        for seg in path.strip("/").split("/"):
            if seg.startswith("{") and seg.endswith("}"):
                if t.param is None:
                    t.param = (seg[1:-1], _Trie())
                t = t.param[1]
            else:
                t = t.static.setdefault(seg, _Trie())
        t.path = path
        for child in node.get("children") or []:
            self._add(child)

    def route(self, segments: list[str]) -> tuple[str, dict[str, str]] | None:
        """Match already URL-decoded path segments to a template; return it with the path params.

        Clients such as proxmoxer do not escape `/` inside volume ids (`local:backup/vzdump-...`), and
        PVE still finds the method: when nothing matches, a trailing `{param}` takes the rest of the path.
        """
        got = self._route(segments)
        if got is not None:
            return got
        for cut in range(len(segments) - 1, 0, -1):
            head = [*segments[: cut - 1], "/".join(segments[cut - 1 :])]
            got = self._route(head)
            if got is not None and got[0].endswith("}") and ":" in head[-1]:
                return got
        return None

    def _route(self, segments: list[str]) -> tuple[str, dict[str, str]] | None:
        t = self._root
        params: dict[str, str] = {}
        for seg in segments:
            nxt = t.static.get(seg)
            if nxt is not None:
                t = nxt
                continue
            if t.param is None or seg == "":
                return None
            params[t.param[0]] = seg
            t = t.param[1]
        if t.path is None:
            return None
        return t.path, params


@lru_cache(maxsize=4)
def _load(path: str, version: str) -> Schema:
    with open(path, encoding="utf-8") as fh:
        return Schema(json.load(fh), version)


_active = threading.local()


@contextmanager
def active(schema: Schema) -> Iterator[Schema]:
    """Make `schema` what load_schema() answers in this thread (the request pipeline sets the
    schema of the sim it serves, so handlers' schema look-ups follow the emulated release)."""
    prev = getattr(_active, "schema", None)
    _active.schema = schema
    try:
        yield schema
    finally:
        _active.schema = prev


def load_schema(path: Path | str | None = None, version: str | None = None) -> Schema:
    """Load (once per process) and index the schema at `path`, or the one of `version`; with neither,
    the schema active in this thread (see active()), else the default release's."""
    if path is None and version is None:
        cur: Schema | None = getattr(_active, "schema", None)
        if cur is not None:
            return cur
    version = check_version(version or default_version())
    return _load(str(path or find_schema(version)), version)
