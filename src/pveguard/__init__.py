"""pveguard: container-first guardrails for Proxmox VE hosts."""

__version__ = "0.1.0"
