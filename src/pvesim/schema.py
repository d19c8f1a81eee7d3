"""Loading the official PVE API schema and routing request paths onto its path templates."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_ENV = "PVESIM_SCHEMA"
SCHEMA_NAME = "pve-api-8.4.json"
_SHARED_DEFAULT = Path("/work/shared/pve-api") / SCHEMA_NAME


class SchemaNotFoundError(RuntimeError):
    """The PVE API schema file is not where pvesim looks for it."""


def schema_candidates() -> list[Path]:
    """Places searched for the schema, in order (env var first, then the shared folders)."""
    out: list[Path] = []
    env = os.environ.get(SCHEMA_ENV)
    if env:
        out.append(Path(env))
    out.append(_SHARED_DEFAULT)
    # CI keeps shared/ beside the checkout: <repo>/../shared/pve-api/
    repo = Path(__file__).resolve().parents[2]
    out.append(repo.parent / "shared" / "pve-api" / SCHEMA_NAME)
    out.append(Path.cwd().parent / "shared" / "pve-api" / SCHEMA_NAME)
    return out


def find_schema() -> Path:
    """Return the schema path or raise SchemaNotFoundError saying where it was looked for."""
    tried = schema_candidates()
    if os.environ.get(SCHEMA_ENV):
        # An explicit setting must not silently fall back to another file.
        tried = tried[:1]
    for p in tried:
        if p.is_file():
            return p
    raise SchemaNotFoundError(
        "PVE API schema not found (looked at: "
        + ", ".join(str(p) for p in tried)
        + f"); set {SCHEMA_ENV} to the path of {SCHEMA_NAME}"
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

    def __init__(self, tree: list[dict[str, Any]]) -> None:
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
def _load(path: str) -> Schema:
    with open(path, encoding="utf-8") as fh:
        return Schema(json.load(fh))


def load_schema(path: Path | str | None = None) -> Schema:
    """Load (once per process) and index the schema at `path` or the default location."""
    return _load(str(path or find_schema()))
