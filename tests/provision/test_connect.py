"""Backend selection and target settings: strategy `target:` overridden by PVEGUARD_*; secrets never shown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from proxmoxer import ResourceException

from pveguard.backends import choose, connect, proxmox_settings
from pveguard.backends.proxmox import NodeInfo, ProxmoxBackend, choose_node, is_retryable, pve_message, pve_params
from pveguard.errors import BackendUnavailable, ConfigError
from pveguard.strategy.models import Strategy

SECRET = "5f0e6c1e-0c3a-4d7b-9a55-secretsecret"


def strategy(**target: object) -> Strategy:
    return Strategy.model_validate({"target": target})


@pytest.mark.parametrize(("env", "target", "pve_dir", "expected"), [
    ({"PVEGUARD_BACKEND": "lxc"}, {}, False, "lxc"),
    ({"PVEGUARD_BACKEND": "proxmox"}, {"backend": "lxc"}, False, "proxmox"),
    ({}, {"backend": "proxmox"}, False, "proxmox"),
    ({"PVEGUARD_PVE_HOST": "pve.example:8006"}, {}, False, "proxmox"),
    ({}, {"proxmox": {"host": "10.0.0.1"}}, False, "proxmox"),
    ({}, {}, True, "proxmox"),
])
def test_choose(tmp_path: Path, env: dict[str, str], target: dict[str, object], pve_dir: bool,
                expected: str) -> None:
    d = tmp_path / "pve"
    if pve_dir:
        d.mkdir()
    assert choose(strategy(**target), env, d) == expected


def test_choose_rejects_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not one of auto, proxmox, lxc"):
        choose(Strategy(), {"PVEGUARD_BACKEND": "docker"}, tmp_path)


def test_auto_without_anything_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no lxc tools, no pvesh
    with pytest.raises(BackendUnavailable) as e:
        connect(Strategy(), {}, tmp_path / "pve")
    assert "not a PVE node" in e.value.message and "lxc-create" in e.value.message
    assert e.value.hint and "PVEGUARD_PVE_HOST" in e.value.hint


def test_lxc_without_tools_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="lxc tools"):
        connect(Strategy(), {"PVEGUARD_BACKEND": "lxc"}, tmp_path)


def test_local_pve_without_pvesh_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    (tmp_path / "pve").mkdir()
    with pytest.raises(BackendUnavailable, match="pvesh"):
        connect(Strategy(), {}, tmp_path / "pve")


def test_env_overrides_target() -> None:
    s = strategy(proxmox={"host": "a.example", "verify_ssl": True, "node": "pve1"})
    st = proxmox_settings(s, {"PVEGUARD_PVE_HOST": "b.example:8443", "PVEGUARD_PVE_VERIFY_SSL": "0",
                              "PVEGUARD_PVE_NODE": "pve2", "PVEGUARD_PVE_TOKEN": f"pveguard@pve!apply={SECRET}"})
    assert (st.mode, st.host, st.verify_ssl, st.node) == ("https", "b.example:8443", False, "pve2")
    assert (st.user, st.token_id, st.token_secret) == ("pveguard@pve", "apply", SECRET)


def test_user_and_password_from_env() -> None:
    st = proxmox_settings(strategy(proxmox={"host": "h"}),
                          {"PVEGUARD_PVE_USER": "root@pam", "PVEGUARD_PVE_PASSWORD": SECRET})
    assert (st.user, st.password, st.token_id) == ("root@pam", SECRET, None)


def test_secret_files_from_target(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(SECRET + "\n")
    st = proxmox_settings(strategy(proxmox={"host": "h", "user": "u@pve", "token_id": "t",
                                            "token_secret_file": str(f)}), {})
    assert st.token_secret == SECRET
    with pytest.raises(ConfigError, match="cannot read the token secret file"):
        proxmox_settings(strategy(proxmox={"host": "h", "user": "u@pve", "token_id": "t",
                                           "token_secret_file": str(tmp_path / "nope")}), {})


@pytest.mark.parametrize("env", [
    {"PVEGUARD_PVE_TOKEN": f"no-realm!x={SECRET}"},
    {"PVEGUARD_PVE_TOKEN": f"u@pve={SECRET}"},
    {"PVEGUARD_PVE_USER": "u@pve"},
    {"PVEGUARD_PVE_PASSWORD": SECRET},
    {"PVEGUARD_PVE_VERIFY_SSL": "yes"},
])
def test_bad_settings_are_config_errors_without_the_secret(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as e:
        proxmox_settings(strategy(proxmox={"host": "h"}), env)
    assert SECRET not in str(e.value) and SECRET not in repr(e.value)


def test_secrets_stay_out_of_repr_logs_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env = {"PVEGUARD_PVE_HOST": "127.0.0.1:9", "PVEGUARD_PVE_TOKEN": f"u@pve!t={SECRET}"}
    st = proxmox_settings(Strategy(), env)
    assert SECRET not in repr(st) and SECRET not in st.describe()
    st.retries, st.retry_wait, st.http_timeout = 2, 0.01, 1
    backend = ProxmoxBackend(st)  # nothing listens on port 9: every call fails
    assert SECRET not in repr(backend)
    with pytest.raises(Exception) as e:
        backend.list_guests()
    assert SECRET not in str(e.value) and SECRET not in caplog.text
    st2 = proxmox_settings(Strategy(), {"PVEGUARD_PVE_HOST": "127.0.0.1:9", "PVEGUARD_PVE_USER": "root@pam",
                                        "PVEGUARD_PVE_PASSWORD": SECRET})
    with pytest.raises(BackendUnavailable) as e2:
        ProxmoxBackend(st2)  # password auth logs in at once
    assert SECRET not in str(e2.value) and SECRET not in caplog.text


@pytest.mark.parametrize(("values", "expected"), [
    ({"unprivileged": True, "onboot": False, "x": None, "memory": 512}, {"unprivileged": 1, "onboot": 0,
                                                                        "memory": 512}),
])
def test_pve_params_booleans_as_01(values: dict[str, object], expected: dict[str, object]) -> None:
    assert pve_params(values) == expected


@pytest.mark.parametrize(("exc", "retry"), [
    (ResourceException(500, "Internal Server Error", "boom"), True),
    (ResourceException(595, "Errors during connection establishment", "No route to host"), True),
    (ResourceException(400, "Bad Request", "Parameter verification failed."), False),
    (ResourceException(500, "Internal Server Error",
                       "detected modified configuration - file changed by other user? Try again."), False),
    (ResourceException(403, "Forbidden", "Permission check failed"), False),
    (ValueError("x"), False),
])
def test_is_retryable(exc: BaseException, retry: bool) -> None:
    assert is_retryable(exc) == retry


@pytest.mark.parametrize(("exc", "text"), [
    (ResourceException(400, "Bad Request", "Parameter verification failed.",
                       errors={"vmid": "VM 100 already exists"}),
     "Parameter verification failed. (vmid: VM 100 already exists) [HTTP 400]"),
    (ResourceException(500, "Internal Server Error", "CT is locked (backup)"), "CT is locked (backup) [HTTP 500]"),
    (ResourceException(500, "Internal Server Error", "500 CT is locked (backup)\n"),
     "CT is locked (backup) [HTTP 500]"),
])
def test_pve_message_is_pves_own(exc: BaseException, text: str) -> None:
    assert pve_message(exc) == text


@pytest.mark.parametrize(("nodes", "placed", "expected"), [
    ([NodeInfo("a", True, 100, 50), NodeInfo("b", True, 100, 10)], {}, "b"),
    ([NodeInfo("a", True, 100, 50), NodeInfo("b", False, 100, 0)], {}, "a"),
    ([NodeInfo("a", True, 100, 50), NodeInfo("b", True, 100, 10)], {"b": 60}, "a"),
    ([NodeInfo("b", True, 100, 0), NodeInfo("a", True, 100, 0)], {}, "a"),
    ([NodeInfo("a", False, 100, 0)], {}, None),
])
def test_choose_node(nodes: list[NodeInfo], placed: dict[str, int], expected: str | None) -> None:
    assert choose_node(nodes, placed) == expected
