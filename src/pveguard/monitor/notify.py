"""Notifiers (webhook, SMTP e-mail, Alertmanager) and the outbox that makes delivery exactly-once-ish.

Events from the alert engine are written to `monitor_outbox` in the same transaction as the alert
state that produced them; `Dispatcher.deliver()` then sends each event to each notifier and marks
that pair delivered. A crash between the two resends at most the one pair in flight; a restart never
re-creates events (the state says they were produced) and never drops them (the outbox keeps them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import sqlite3
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol

import requests
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from pveguard import __version__
from pveguard.errors import ConfigError
from pveguard.store import Store

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Pveguard-Signature"
EVENT_HEADER = "X-Pveguard-Event"
MAX_ATTEMPTS_PER_EVENT = 20  # over polls; each attempt itself retries with backoff
OUTBOX_RETENTION = 7 * 86400.0


NO_NOTIFIER_HINT = ("add one under 'monitoring.notify' in the strategy (type webhook, email or alertmanager; "
                    "see docs/monitoring.md), then run 'pveguard check'")


class DeliveryError(Exception):
    """A receiver refused or could not be reached (after the in-call retries)."""


class Notifier(Protocol):
    name: str

    def send(self, event: dict[str, Any]) -> None: ...


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def summary(event: dict[str, Any]) -> str:
    """One line a person reads first."""
    who = event.get("name") or event["target"]
    value = event.get("value")
    shown = f" ({value:.1f}%)" if isinstance(value, (int, float)) and event["rule"] != "down" else ""
    verb = "RESOLVED" if event["kind"] == "resolved" else ("STILL FIRING" if event.get("repeat") else "FIRING")
    return f"[{verb}] {event['severity']}: {who} {event['description']}{shown}"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError):  # an OSError too, but trying again cannot help
        return False
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, OSError, smtplib.SMTPServerDisconnected,
                            smtplib.SMTPConnectError))


def _retrying(attempts: int, max_wait: float) -> Any:
    return retry(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.2, max=max_wait),
                 retry=retry_if_exception(_transient), reraise=True)


class WebhookNotifier:
    """POST the event as JSON; `X-Pveguard-Signature: sha256=<hex HMAC of the body>` when keyed."""

    def __init__(self, url: str, secret: bytes | None = None, name: str | None = None,
                 timeout: float = 10.0, attempts: int = 4, max_wait: float = 5.0) -> None:
        self.url = url
        self.secret = secret
        self.name = name or f"webhook:{url}"
        self.timeout = timeout
        self._post = _retrying(attempts, max_wait)(self._post_once)

    def body(self, event: dict[str, Any]) -> bytes:
        payload = {"version": 1, "source": "pveguard", "summary": summary(event), **event,
                   "ts_iso": _iso(event["ts"]), "started_at_iso": _iso(event["started_at"])}
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()

    def signature(self, body: bytes) -> str | None:
        if not self.secret:
            return None
        return "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()

    def _post_once(self, body: bytes, headers: dict[str, str]) -> None:
        resp = requests.post(self.url, data=body, headers=headers, timeout=self.timeout)
        resp.raise_for_status()

    def send(self, event: dict[str, Any]) -> None:
        body = self.body(event)
        headers = {"Content-Type": "application/json", EVENT_HEADER: event["id"],
                   "User-Agent": f"pveguard/{__version__}"}
        sig = self.signature(body)
        if sig:
            headers[SIGNATURE_HEADER] = sig
        try:
            self._post(body, headers)
        except requests.RequestException as exc:
            raise DeliveryError(f"{self.name}: {exc}") from None


class EmailNotifier:
    """One plain-text mail per event through SMTP (STARTTLS and login when configured).

    STARTTLS verifies the relay's certificate and host name against the system's CAs, or `ca_file`
    for a relay with a self-signed or private-CA certificate; `tls_verify=False` turns the check
    off and says so on every send. Credentials are never sent without STARTTLS: a login on a plain
    connection would put the password on the wire in clear, so that configuration is refused.
    """

    def __init__(self, host: str, port: int, mail_from: str, mail_to: list[str], *, starttls: bool = False,
                 user: str | None = None, password: str | None = None, name: str | None = None,
                 ca_file: str | None = None, tls_verify: bool = True,
                 timeout: float = 15.0, attempts: int = 3, max_wait: float = 5.0) -> None:
        self.host, self.port = host, port
        self.mail_from, self.mail_to = mail_from, mail_to
        self.starttls, self.user, self.password = starttls, user, password
        self.name = name or f"email:{host}:{port}"
        if (user or password) and not starttls:
            raise ConfigError(f"notifier {self.name}: refusing to send the SMTP login over an unencrypted "
                              "connection (smtp_user/smtp_password_file are set, smtp_starttls is off)",
                              hint="set 'smtp_starttls: true' (the relay must offer STARTTLS), or remove "
                                   "smtp_user and smtp_password_file for a relay that takes mail without a login")
        if not starttls and (ca_file or not tls_verify):
            raise ConfigError(f"notifier {self.name}: smtp_ca_file / smtp_tls_verify only apply with "
                              "smtp_starttls: true", hint="set 'smtp_starttls: true' or remove them")
        self.tls_verify = tls_verify
        self.tls_context = tls_context(ca_file, tls_verify, self.name) if starttls else None
        self.timeout = timeout
        self._deliver = _retrying(attempts, max_wait)(self._deliver_once)

    def message(self, event: dict[str, Any]) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = summary(event)
        msg["From"] = self.mail_from
        msg["To"] = ", ".join(self.mail_to)
        msg["Message-ID"] = f"<{hashlib.sha256(event['id'].encode()).hexdigest()[:32]}@pveguard>"
        msg["X-Pveguard-Event"] = event["id"]
        lines = [summary(event), "",
                 f"target:    {event['target']} {event.get('name') or ''}".rstrip(),
                 f"rule:      {event['rule']} ({event['description']})",
                 f"severity:  {event['severity']}",
                 f"value:     {event.get('value')}",
                 f"threshold: {event['threshold']}",
                 f"since:     {_iso(event['started_at'])}",
                 f"at:        {_iso(event['ts'])}", "",
                 "Silence with: pveguard alerts silence TARGET --for 2h --reason '...'"]
        msg.set_content("\n".join(lines) + "\n")
        return msg

    def _deliver_once(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.tls_context is not None:
                # smtplib raises SMTPNotSupportedError when the relay offers no STARTTLS: never a
                # silent fallback to plain text.
                smtp.starttls(context=self.tls_context)
            if self.user and self.password:
                smtp.login(self.user, self.password)
            smtp.send_message(msg)

    def send(self, event: dict[str, Any]) -> None:
        if self.tls_context is not None and not self.tls_verify:
            log.warning("%s: sending with smtp_tls_verify: false - the relay's certificate is NOT checked, so "
                        "anyone on the path can read the alert and the SMTP password", self.name)
        try:
            self._deliver(self.message(event))
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"{self.name}: the relay's certificate is not trusted ({exc.verify_message}); "
                                "for a self-signed or private-CA relay set smtp_ca_file to its CA "
                                "certificate") from None
        except smtplib.SMTPNotSupportedError:
            raise DeliveryError(f"{self.name}: the relay does not offer STARTTLS, so nothing was sent "
                                "(smtp_starttls: true needs it)") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{self.name}: {exc}") from None


def tls_context(ca_file: str | None, verify: bool, name: str) -> ssl.SSLContext:
    """A client context that checks the certificate chain and the host name (the default), against
    `ca_file` instead of the system's CAs when given."""
    if not verify:
        log.warning("%s: smtp_tls_verify is false: STARTTLS without certificate or host name checks", name)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"notifier {name}: cannot load smtp_ca_file {ca_file}: {exc}",
                          hint="point it at the relay's CA certificate in PEM format") from None


class AlertmanagerNotifier:
    """POST /api/v2/alerts. A firing alert carries endsAt = now + `hold` (Alertmanager would otherwise
    resolve it after its resolve_timeout, since we post once rather than on every evaluation); a
    resolved one carries endsAt = the resolution time."""

    def __init__(self, url: str, name: str | None = None, hold: float = 4 * 3600.0 + 900.0,
                 timeout: float = 10.0, attempts: int = 4, max_wait: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        # Alertmanager judges endsAt against its own wall clock, so ours is the wall clock too
        self.clock = clock
        self.url = url.rstrip("/")
        self.name = name or f"alertmanager:{url}"
        self.hold = hold
        self.timeout = timeout
        self._post = _retrying(attempts, max_wait)(self._post_once)

    def alerts(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        ends = min(event["ts"], now) if event["kind"] == "resolved" else now + self.hold
        alertname = "Pveguard" + "".join(w.capitalize() for w in event["rule"].split("_"))  # fw_drops: PveguardFwDrops
        labels = {"alertname": alertname, "id": event["target"],
                  "rule": event["rule"], "severity": event["severity"], "source": "pveguard"}
        if event.get("name"):
            labels["name"] = event["name"]
        return [{
            "labels": labels,
            "annotations": {"summary": summary(event), "description": event["description"],
                            "value": str(event.get("value"))},
            "startsAt": _iso(event["started_at"]),
            "endsAt": _iso(ends),
        }]

    def _post_once(self, body: list[dict[str, Any]]) -> None:
        resp = requests.post(f"{self.url}/api/v2/alerts", json=body, timeout=self.timeout)
        resp.raise_for_status()

    def send(self, event: dict[str, Any]) -> None:
        try:
            self._post(self.alerts(event))
        except requests.RequestException as exc:
            raise DeliveryError(f"{self.name}: {exc}") from None


def _read_secret(path: str | None, what: str) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}",
                          hint="fix the path in monitoring.notify or create the file") from None


def notifiers_from_strategy(configs: list[Any], renotify: float = 4 * 3600.0) -> list[Notifier]:
    """Notifier objects from the strategy's `monitoring.notify` entries."""
    out: list[Notifier] = []
    for c in configs:
        if c.type == "webhook":
            secret = _read_secret(c.secret_file, "webhook secret")
            out.append(WebhookNotifier(c.url, secret.encode() if secret else None, name=c.name))
        elif c.type == "email":
            out.append(EmailNotifier(c.smtp_host, c.smtp_port, c.mail_from, list(c.mail_to),
                                     starttls=c.smtp_starttls, user=c.smtp_user,
                                     password=_read_secret(c.smtp_password_file, "SMTP password"), name=c.name,
                                     ca_file=c.smtp_ca_file, tls_verify=c.smtp_tls_verify))
        elif c.type == "alertmanager":
            out.append(AlertmanagerNotifier(c.url, name=c.name, hold=renotify + 900.0))
    return out


def enqueue(conn: sqlite3.Connection, events: list[dict[str, Any]], notifier_names: list[str], now: float) -> None:
    """Queue events for the notifiers configured now (call inside the alert-state transaction)."""
    for event in events:
        conn.execute("INSERT OR IGNORE INTO monitor_outbox(id, created, payload) VALUES(?,?,?)",
                     (event["id"], now, json.dumps(event, sort_keys=True)))
        conn.executemany("INSERT OR IGNORE INTO monitor_delivery(event_id, notifier, attempts) VALUES(?,?,0)",
                         [(event["id"], name) for name in notifier_names])


class Dispatcher:
    """Outbox delivery: each queued (event, notifier) pair until it succeeded, then never again."""

    def __init__(self, store: Store, notifiers: list[Notifier]) -> None:
        from pveguard.monitor.series import open_monitor_store

        self.store = open_monitor_store(store)
        self.notifiers = {n.name: n for n in notifiers}

    def deliver(self, now: float) -> dict[str, int]:
        """Try every undelivered pair once (oldest first); return counts sent/failed."""
        sent = failed = 0
        rows = self.store.conn.execute(
            "SELECT d.event_id, d.notifier, o.payload FROM monitor_delivery d JOIN monitor_outbox o "
            "ON o.id = d.event_id WHERE d.delivered IS NULL AND d.attempts < ? ORDER BY o.created, o.rowid",
            (MAX_ATTEMPTS_PER_EVENT,)).fetchall()
        for row in rows:
            n = self.notifiers.get(row["notifier"])
            if n is None:  # the notifier was removed from the strategy
                continue
            error: str | None = None
            try:
                n.send(json.loads(row["payload"]))
            except DeliveryError as exc:
                error = str(exc)
            except (OSError, ValueError) as exc:  # one broken receiver must not stop the others
                error = f"{n.name}: {type(exc).__name__}: {exc}"
            with self.store.transaction() as tx:
                tx.execute("UPDATE monitor_delivery SET attempts = attempts + 1, delivered = ?, last_error = ? "
                           "WHERE event_id = ? AND notifier = ?",
                           (None if error else now, error, row["event_id"], row["notifier"]))
            if error:
                failed += 1
                log.warning("notification %s not delivered: %s", row["event_id"], error)
            else:
                sent += 1
        with self.store.transaction() as tx:
            tx.execute("DELETE FROM monitor_outbox WHERE created < ?", (now - OUTBOX_RETENTION,))
        return {"sent": sent, "failed": failed}

    def delivered_to(self, event_id: str) -> list[str]:
        """The notifiers that received one event."""
        rows = self.store.conn.execute("SELECT notifier FROM monitor_delivery WHERE event_id = ? AND delivered IS NOT "
                                       "NULL ORDER BY notifier", (event_id,)).fetchall()
        return [str(r["notifier"]) for r in rows]

    def undelivered(self) -> list[dict[str, Any]]:
        """Pairs not delivered yet, with their last error (for `pveguard alerts`)."""
        rows = self.store.conn.execute(
            "SELECT event_id, notifier, attempts, last_error FROM monitor_delivery WHERE delivered IS NULL "
            "ORDER BY event_id").fetchall()
        return [dict(r) for r in rows]
