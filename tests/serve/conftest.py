"""Fixtures for the serve tests: an app on a fresh state directory and one token per role."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from infra.strategies import defaults_file
from pveguard.context import AppContext
from pveguard.serve import tokens
from pveguard.serve.app import create_app
from pveguard.serve.runtime import Runtime


@dataclass
class Api:
    rt: Runtime
    client: TestClient
    secrets: dict[str, str]

    def h(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}"}


def make_runtime(state_dir: Path, strategy: str | None = None) -> Runtime:
    return Runtime(AppContext.from_options(strategy or defaults_file(), str(state_dir)))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    rt = make_runtime(tmp_path / "state")
    secrets = {role: tokens.create(rt.ctx.store, role, role, None, "test")[1] for role in tokens.ROLES}
    with TestClient(create_app(rt, dashboard=False)) as client:
        yield Api(rt, client, secrets)
    rt.ctx.close()
