"""Render the audit document as a terminal table, JSON, Markdown or HTML (jinja2 templates)."""

from __future__ import annotations

import io
import json
from typing import Any

import jinja2
from rich.console import Console

from pveguard.output import Col, FitTable

FORMATS = ("table", "json", "markdown", "html")


def _md(value: Any) -> str:
    """Markdown table cells must not break the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _env(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("pveguard.audit", "templates"),
                             autoescape=autoescape, trim_blocks=False, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["md"] = _md
    return env


def render(report: dict[str, Any], fmt: str, width: int | None = None, full: bool = False) -> str:
    """The report in `fmt` (one of FORMATS) as text. Only the terminal table is shortened to the
    findings unless `full`; JSON, Markdown and HTML are always the whole report."""
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=True) + "\n"
    if fmt == "markdown":
        return _env(False).get_template("report.md.j2").render(r=report)
    if fmt == "html":
        return _env(True).get_template("report.html.j2").render(r=report)
    if fmt == "table":
        return render_table(report, width, full)
    raise ValueError(f"unknown format {fmt!r}")


def render_table(r: dict[str, Any], width: int | None = None, full: bool = False) -> str:
    """The terminal view at `width` columns (default 100): the score and the findings; with `full`
    also services with suggestions, migration facts, the dependency map, sockets and the rest."""
    buf = io.StringIO()
    con = Console(file=buf, width=width or 100, highlight=False, force_terminal=False, color_system=None)
    h = r["host"]
    pve = f"detected ({h['pve']['evidence']})" if h["pve"]["detected"] else "not detected"
    con.print(f"pveguard audit of {h['hostname']}  root {h['root']} ({'live' if h['live'] else 'offline'})",
              markup=False)
    con.print(f"Proxmox VE: {pve}; core roots: {', '.join(h['core_roots'])}", markup=False)
    s = r["score"]
    con.print(f"compliance score: {s['value']}/100  ({s['explanation']})", markup=False)
    con.print(f"  {s['formula']}", markup=False)

    t = FitTable(Col("severity", 1, wrap=False), Col("finding", 0, min_width=24), Col("fix", 2, min_width=22),
                 title=f"findings ({len(r['findings'])})")
    for f in r["findings"]:
        t.add_row(f["severity"], f"{f['title']}\n{f['detail']}", f["fix"])
    con.print(t)
    if full:
        _inventory(con, r)
    else:
        p = r["packages"]
        listed = [sv for sv in r["services"] if sv["in_use"] or not sv["core"]]
        non_core = [sv for sv in listed if not sv["core"]]
        con.print(f"services: {len(listed)} in use or non-core, {len(non_core)} non-core; packages: "
                  f"{p['installed']} installed, {p['non_core']} non-core; listening sockets: {len(r['sockets'])}; "
                  f"cron jobs: {len(r['cron'])}", markup=False)
        con.print("pveguard audit --full adds services with their suggested containers, migration facts, the "
                  "dependency map, sockets, guests and backups; --format json|markdown|html writes everything",
                  markup=False)
    for u in r["unavailable"]:
        con.print(f"not collected: {u['fact']}: {u['reason']}", markup=False)
    for n in r["needs_root"]:
        con.print(f"needs root: {n}", markup=False)
    return buf.getvalue()


def _inventory(con: Console, r: dict[str, Any]) -> None:
    """The whole inventory (`audit --full`): every table keeps its unit, package and address whole."""
    t = FitTable(Col("unit", 0, wrap=False), Col("state", 3, min_width=8), Col("package", 0, wrap=False),
                 Col("class", 1, wrap=False), Col("reason", 4, min_width=16),
                 Col("suggested container", 2, min_width=18), title="services")
    shown = [sv for sv in r["services"] if sv["in_use"] or not sv["core"]]
    for sv in shown:
        state = sv["enablement"] + (f", {sv['active']}/{sv['sub']}" if sv["active"] else "")
        sug = sv["suggestion"]
        target = f"{sug['container'] or 'none'} ({sug['confidence']:.2f})" if sug else ""
        t.add_row(sv["unit"], state, sv["package"] or "-", "core" if sv["core"] else "NON-CORE", sv["detail"],
                  target)
    con.print(t)
    hidden = len(r["services"]) - len(shown)
    if hidden:
        con.print(f"({hidden} more core units are installed but neither enabled nor running; --format json lists "
                  "them)", markup=False)

    for sv in r["services"]:
        if sv["core"]:
            continue
        m = sv["migration"]
        con.print(f"migration facts for {sv['unit']} -> {sv['suggestion']['container'] or '(no matching container)'}",
                  markup=False)
        for label, key in (("ports", "ports"), ("config", "config_paths"), ("data", "data_paths"),
                           ("logs", "log_paths"), ("users", "users"), ("ExecStart", "exec_start"), ("note", "notes")):
            if m[key]:
                con.print(f"  {label}: {', '.join(m[key])}", markup=False)

    if r["dependency_map"]:
        t = FitTable(Col("unit", 0, wrap=False), Col("requires", 3, min_width=12), Col("wants", 5, min_width=12),
                     Col("after", 6, min_width=12), Col("required/wanted by", 2, min_width=12),
                     Col("packages pulled in", 1, min_width=16), Col("ports", 4, min_width=12),
                     title="dependency map (--format json or markdown for the full package lists)")
        for d in r["dependency_map"]:
            pkgs = d["packages"]
            pulled = (f"{pkgs[0]}" + (f" +{len(pkgs) - 1} more" if len(pkgs) > 1 else "")
                      + f"; only for it: {', '.join(d['exclusive_packages']) or 'none'}") if pkgs else ""
            t.add_row(d["unit"], ", ".join(d["requires"] + d["binds_to"] + d["requisite"]), ", ".join(d["wants"]),
                      ", ".join(d["after"]), ", ".join(d["required_by"] + d["wanted_by"]), pulled,
                      ", ".join(d["ports"]))
        con.print(t)

    p = r["packages"]
    con.print(f"packages: {p['installed']} installed, {p['core']} core, {p['non_core']} non-core; "
              f"manually installed non-core: {', '.join(p['manual_non_core']) or 'none'}", markup=False)
    if r["sockets"]:
        t = FitTable(Col("proto", 3, wrap=False), Col("address", 0, wrap=False), Col("port", 0, wrap=False),
                     Col("process", 2, min_width=10), Col("unit", 1, wrap=False), title="listening sockets")
        for sk in r["sockets"]:
            t.add_row(sk["proto"], sk["address"], str(sk["port"]), f"{sk['process'] or '?'} ({sk['pid'] or '?'})",
                      sk["unit"] or "?")
        con.print(t)
    custom = [c for c in r["cron"] if not c["package"]]
    con.print(f"cron jobs: {len(r['cron'])} ({len(custom)} not from a package)", markup=False)
    g = r["guests"]
    con.print("guests: " + (", ".join(f"{x['vmid']} {x['name']} ({x['status']})" for x in g["items"]) or "none"
                            if g["available"] else f"unavailable ({g['reason']})"), markup=False)
    bk = r["backup"]
    if bk["available"]:
        rows = [f"{x['guest'].rpartition('/')[2]} {x['name']} ({'ok' if x['compliant'] else '; '.join(x['problems'])})"
                for x in bk["items"]]
        head = f"backups ({bk['source']})" if bk["source"] else "backups"
        con.print(f"{head}: " + (", ".join(rows) or "no guest under the backup policy"), markup=False)
    else:
        con.print(f"backups: unavailable ({bk['reason']})", markup=False)
