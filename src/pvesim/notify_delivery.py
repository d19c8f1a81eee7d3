"""Delivering notifications to real peers: SMTP servers, Gotify and webhook URLs (like proxmox-notify).

Runs in a background thread per notification (never under the sim lock). `sendmail` targets are
only recorded: pvesim has no local MTA.
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import ssl
import urllib.request
from email.message import EmailMessage
from typing import Any

_PRIORITY = {"info": 1, "notice": 3, "warning": 5, "error": 9, "unknown": 5}


def _propstring(text: str) -> tuple[str, str]:
    """`name=<n>,value=<base64>` -> (name, decoded value)."""
    parts = dict(p.split("=", 1) for p in text.split(",") if "=" in p)
    return parts.get("name", ""), base64.b64decode(parts.get("value", "")).decode("utf-8", "replace")


def render(template: str, note: dict[str, Any], secrets: dict[str, str]) -> str:
    """proxmox-notify's handlebars subset: {{ title }}, {{ message }}, {{ severity }}, {{ timestamp }},
    {{ fields.X }}, {{ secrets.X }}, and the helpers {{ json X }}, {{ url-encode X }}, {{ escape X }}."""
    from urllib.parse import quote

    def value(expr: str) -> Any:
        expr = expr.strip()
        if expr.startswith("fields."):
            return note.get("fields", {}).get(expr[7:], "")
        if expr.startswith("secrets."):
            return secrets.get(expr[8:], "")
        return note.get(expr, "")

    def sub(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        helper, _, arg = expr.partition(" ")
        if helper == "json" and arg:
            return json.dumps(value(arg))
        if helper == "url-encode" and arg:
            return quote(str(value(arg)), safe="")
        if helper == "escape" and arg:
            return json.dumps(str(value(arg)))[1:-1]
        return str(value(expr))

    return re.sub(r"\{\{\s*([^}]+?)\s*\}\}", sub, template)


def deliver(kind: str, endpoint: dict[str, Any], note: dict[str, Any], emails: list[str]) -> str:
    """Send one notification; returns "delivered" or the error text."""
    try:
        if kind == "smtp":
            _smtp(endpoint, note, emails)
        elif kind == "gotify":
            body = json.dumps(
                {
                    "title": note["title"],
                    "message": note["message"],
                    "priority": _PRIORITY.get(note["severity"], 5),
                    "extras": {"client::display": {"contentType": "text/markdown"}},
                }
            ).encode()
            _http(
                "POST",
                str(endpoint["server"]).rstrip("/") + "/message",
                body,
                {"Content-Type": "application/json", "X-Gotify-Key": str(endpoint.get("token", ""))},
            )
        elif kind == "webhook":
            secrets = dict(_propstring(s) for s in endpoint.get("secret", []))
            headers = {n: render(v, note, secrets) for n, v in (_propstring(h) for h in endpoint.get("header", []))}
            body_t = base64.b64decode(endpoint["body"]).decode() if endpoint.get("body") else ""
            method = str(endpoint.get("method", "post")).upper()
            url = render(str(endpoint["url"]), note, secrets)
            _http(method, url, render(body_t, note, secrets).encode() if method != "GET" else None, headers)
        else:
            return "recorded (pvesim has no local MTA for sendmail)"
    except (OSError, smtplib.SMTPException, ValueError, KeyError) as e:
        return f"error: {e}"
    return "delivered"


def _http(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> None:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def _smtp(ep: dict[str, Any], note: dict[str, Any], emails: list[str]) -> None:
    recipients = [str(x) for x in ep.get("mailto", [])] + emails
    if not recipients:
        raise ValueError("no recipients")
    msg = EmailMessage()
    msg["From"] = f"{ep.get('author', 'Proxmox VE')} <{ep.get('from-address', 'root@localhost')}>"
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = note["title"]
    msg.set_content(note["message"])
    mode = ep.get("mode", "tls")
    port = int(ep.get("port") or {"tls": 465, "starttls": 587}.get(mode, 25))
    server = str(ep["server"])
    ctx = ssl.create_default_context()
    smtp: smtplib.SMTP = (
        smtplib.SMTP_SSL(server, port, timeout=10, context=ctx)
        if mode == "tls"
        else smtplib.SMTP(server, port, timeout=10)
    )
    with smtp:
        if mode == "starttls":
            smtp.starttls(context=ctx)
        if ep.get("username"):
            smtp.login(str(ep["username"]), str(ep.get("password", "")))
        smtp.send_message(msg, to_addrs=recipients)
