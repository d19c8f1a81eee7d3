"""Every Markdown page of the repository (the README, docs/, bench/, src/pvesim/..., found by
`git ls-files`, so a new page is covered without a change here) points only at files the
repository has: every relative Markdown link,
every repository path in backticks (`docs/...`, `src/...`, `tests/...`, `scripts/...`, `bench/...`)
and every `*.md` file named anywhere in the text must exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _pages() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "*.md"],
                                cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
        return sorted(REPO / name for name in listed if name and (REPO / name).is_file())
    except (OSError, subprocess.CalledProcessError):   # not a git checkout (an unpacked source tree)
        return sorted(p for p in REPO.rglob("*.md") if not any(part.startswith(".") for part in p.parts))


DOCS = _pages()
TOP_DIRS = [*sorted(p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")), ".ci"]

LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
MD_NAME = re.compile(r"(?<![\w/.-])([\w./-]+\.md)\b")


def pointers(text: str) -> list[str]:
    """The repository paths a page points at."""
    found = []
    for target in LINK.findall(text):
        if not re.match(r"^[a-z]+:|^#", target):
            found.append(target.split("#", 1)[0])
    for span in CODE.findall(text):
        span = span.strip()
        first = span.split("/", 1)[0]
        if " " not in span and "/" in span and first in TOP_DIRS and not re.search(r"[<>*{}$|]", span):
            found.append(span.split(":", 1)[0])   # `src/x.py:12` names a line of a file
    found += MD_NAME.findall(text)
    return found


def exists(path: str, page: Path) -> bool:
    return any((base / path).exists() for base in (REPO, page.parent))


@pytest.mark.parametrize("page", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_every_pointer_exists(page: Path) -> None:
    missing = sorted({p for p in pointers(page.read_text()) if not exists(p, page)})
    assert not missing, f"{page.relative_to(REPO)} points at files the repository does not have: {missing}"


def test_the_checker_sees_what_the_issue_found() -> None:
    text = ("Rules (from `ARCHITECTURE.md`); facts in `shared/reference/host.md` §3; see host.md's examples; "
            "[json](docs/json.md), `src/pveguard/output.py`, `/etc/pve`, `lxc/101`, https://pve.proxmox.com")
    assert pointers(text) == ["docs/json.md", "src/pveguard/output.py", "ARCHITECTURE.md",
                              "shared/reference/host.md", "host.md", "docs/json.md"]
    missing = [p for p in pointers(text) if not exists(p, REPO / "README.md")]
    assert missing == ["ARCHITECTURE.md", "shared/reference/host.md", "host.md"]


def test_every_page_is_checked() -> None:
    pages = {str(p.relative_to(REPO)) for p in DOCS}
    assert {"README.md", "docs/json.md", "src/pvesim/README.md", "bench/README.md"} <= pages, pages
