"""firewall handlers."""

from __future__ import annotations
