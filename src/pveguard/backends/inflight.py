"""How many PVE API calls (and `pct exec`s) pveguard keeps in flight at once.

Per-guest reads (configs, firewall options and rules, RBAC token-file checks) are independent and bound
by the round trip: over a LAN or WAN (5-20 ms a call) one after another they take seconds per thousand
guests. A bounded number in flight hides the round trips without flooding pveproxy (which serves each
connection from a small worker pool). The https transport keeps as many pooled connections as this, so
no call waits for a TLS handshake.
"""

from __future__ import annotations

import os

DEFAULT = 32


def in_flight() -> int:
    """PVEGUARD_PVE_CONCURRENCY (1-64; an unreadable value means the default), else DEFAULT."""
    raw = os.environ.get("PVEGUARD_PVE_CONCURRENCY", "")
    try:
        n = int(raw)
    except ValueError:
        return DEFAULT
    return min(max(n, 1), 64)


IN_FLIGHT = in_flight()
