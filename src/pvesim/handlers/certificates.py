"""Node certificates, node configuration and ACME (pve-manager's PVE/API2/Certificates.pm, ACME.pm,
ACMEAccount.pm, ACMEPlugin.pm, NodeConfig.pm). The certificates themselves live in pvesim.certstore."""

from __future__ import annotations

import hashlib
from typing import Any

from pvesim.formats import split_list
from pvesim.handlers import Ctx, api
from pvesim.state import ApiError, TaskError, die, param_error

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


def _ok_node(ctx: Ctx) -> None:
    if ctx.node not in ctx.sim.nodes:
        raise die(f"no such cluster node '{ctx.node}'")


@api("GET", "/nodes/{node}/certificates")
def certificates_index(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"name": "acme"}, {"name": "custom"}, {"name": "info"}]


@api("GET", "/nodes/{node}/certificates/info")
def certificates_info(ctx: Ctx) -> list[dict[str, Any]]:
    _ok_node(ctx)
    return ctx.sim.certs.info(ctx.node)


@api("GET", "/nodes/{node}/certificates/acme")
def acme_index(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"name": "certificate"}]


# --- node configuration (/etc/pve/nodes/<node>/config) -------------------------------------------


def _config(ctx: Ctx) -> dict[str, Any]:
    return ctx.sim.certs.node_config.setdefault(ctx.node, {})


def _digest(conf: dict[str, Any]) -> str:
    return hashlib.sha1("".join(f"{k}: {v}\n" for k, v in sorted(conf.items())).encode()).hexdigest()


@api("GET", "/nodes/{node}/config")
def node_config(ctx: Ctx) -> dict[str, Any]:
    _ok_node(ctx)
    conf = _config(ctx)
    prop = ctx.p.get("property")
    if prop and prop != "all":
        return {prop: conf[prop]} if prop in conf else {}
    return {**conf, "digest": _digest(conf)}


@api("PUT", "/nodes/{node}/config")
def set_node_config(ctx: Ctx) -> None:
    _ok_node(ctx)
    conf = _config(ctx)
    digest = ctx.p.get("digest")
    if digest and digest != _digest(conf):
        raise die("detected modified configuration - file changed by other user? Try again.")
    new = dict(conf)
    for k, v in ctx.p.items():
        if k not in ("node", "delete", "digest"):
            new[k] = v
    for k in split_list(str(ctx.p.get("delete") or "")):
        new.pop(k, None)
    _acme_domains(new)  # verify_conf: a broken ACME config is refused before it is written
    conf.clear()
    conf.update(new)
    ctx.sim.changed()


def _kv(text: str, default_key: str | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in str(text).split(","):
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        elif default_key:
            out[default_key] = part.strip()
    return out


def _acme_domains(conf: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """PVE::NodeConfig::get_acme_conf: (account, domain -> plugin); duplicate domains are an error."""
    acme = _kv(conf.get("acme", ""))
    account = acme.get("account", "default")
    domains: dict[str, str] = {}
    for d in filter(None, acme.get("domains", "").split(";")):
        d = d.lower()
        if d in domains:
            raise die(f"duplicate domain '{d}' in ACME config properties")
        domains[d] = "standalone"
    for key in sorted(k for k in conf if k.startswith("acmedomain")):
        entry = _kv(conf[key], "domain")
        d = entry.get("domain", "").lower()
        if d in domains:
            raise die(f"duplicate domain '{d}' in ACME config properties")
        domains[d] = entry.get("plugin", "standalone")
    return account, domains


# --- ordering and renewing (PVE/API2/ACME.pm) ----------------------------------------------------


def _order(ctx: Ctx, ttype: str, force: bool) -> str:
    store = ctx.sim.certs
    node = ctx.node
    _ok_node(ctx)
    account, domains = _acme_domains(_config(ctx))
    if not domains:
        raise ApiError(400, "ACME domain list in node configuration is missing!")

    def work() -> list[str]:
        if account not in store.acme_accounts:
            raise TaskError(f"ACME account config file '{account}' does not exist.")
        for d, plugin in domains.items():
            if plugin != "standalone" and plugin not in store.acme_plugins:
                raise TaskError(f"plugin '{plugin}' for domain '{d}' not found!")
        store.issue_acme(node, list(domains))
        return ["Loading ACME account details", "Placing ACME order", "All domains validated!",
                "Setting pveproxy certificate and key", "Restarting pveproxy"]

    del force
    return ctx.sim.new_task(node, ttype, "", ctx.auth, work=work)


@api("POST", "/nodes/{node}/certificates/acme/certificate")
def new_certificate(ctx: Ctx) -> str:
    from pvesim.certstore import PROXY_CERT

    if not ctx.p.get("force") and PROXY_CERT in ctx.sim.certs.node(ctx.node).files:
        raise param_error({"force": "Custom certificate exists but 'force' is not set."})
    return _order(ctx, "acmenewcert", bool(ctx.p.get("force")))


@api("PUT", "/nodes/{node}/certificates/acme/certificate")
def renew_certificate(ctx: Ctx) -> str:
    from pvesim.certstore import DAY, PROXY_CERT

    files = ctx.sim.certs.node(ctx.node).files
    if PROXY_CERT not in files:
        raise die("No current (custom) certificate found, please order a new certificate!")
    expires_soon = files[PROXY_CERT].cert.not_valid_after_utc.timestamp() < ctx.sim.now() + 30 * DAY
    if not expires_soon and not ctx.p.get("force"):
        raise param_error({"force": "Certificate does not expire within the next 30 days, and 'force' is not set."})
    return _order(ctx, "acmerenew", True)


# --- ACME accounts and plugins (cluster-wide, /etc/pve/priv/acme) ----------------------------------


@api("GET", "/cluster/acme")
def acme_cluster_index(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"name": n} for n in ("account", "tos", "directories", "plugins", "challenge-schema", "meta")]


@api("GET", "/cluster/acme/account")
def account_index(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"name": n} for n in sorted(ctx.sim.certs.acme_accounts)]


@api("POST", "/cluster/acme/account")
def register_account(ctx: Ctx) -> str:
    name = str(ctx.p.get("name") or "default")
    store = ctx.sim.certs
    directory = str(ctx.p.get("directory") or LETSENCRYPT)
    contact = [f"mailto:{a}" for a in split_list(str(ctx.p["contact"]))]

    def work() -> list[str]:
        if name in store.acme_accounts:
            raise TaskError(f"ACME account config file '{name}' already exists.")
        store.acme_accounts[name] = {
            "directory": directory,
            "location": f"{directory.rsplit('/', 1)[0]}/acme/acct/{len(store.acme_accounts) + 1}",
            "account": {"status": "valid", "contact": contact},
            "tos": ctx.p.get("tos_url") or "",
        }
        return ["Registering new ACME account..", "Registration successful"]

    # the worker runs on the node that took the request: the one behind the listening socket
    node = ctx.sim.certs.served_node or next(iter(ctx.sim.nodes))
    return ctx.sim.new_task(node, "acmeregister", name, ctx.auth, work=work)


@api("GET", "/cluster/acme/account/{name}")
def get_account(ctx: Ctx) -> dict[str, Any]:
    name = str(ctx.p.get("name") or "default")
    acct = ctx.sim.certs.acme_accounts.get(name)
    if acct is None:
        raise param_error({"name": f"ACME account config file '{name}' does not exist."})
    return dict(acct)


@api("GET", "/cluster/acme/plugins")
def plugin_index(ctx: Ctx) -> list[dict[str, Any]]:
    typ = ctx.p.get("type")
    rows = [{"plugin": pid, **cfg} for pid, cfg in sorted(ctx.sim.certs.acme_plugins.items())]
    return [r for r in rows if not typ or r.get("type") == typ]


@api("POST", "/cluster/acme/plugins")
def add_plugin(ctx: Ctx) -> None:
    pid = str(ctx.p["id"])
    plugins = ctx.sim.certs.acme_plugins
    if pid in plugins:
        raise die(f"ACME plugin ID '{pid}' already defined")
    plugins[pid] = {k: v for k, v in ctx.p.items() if k != "id"}
    ctx.sim.changed()
