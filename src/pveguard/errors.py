"""Errors a user can meet: one class per kind, each with a message that says what to do next.

The CLI turns any `PveguardError` into its message on stderr and its exit code; anything else that
escapes is a bug and is shown as one.
"""

from __future__ import annotations

# Exit codes shared by every command (documented in the README).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


class PveguardError(Exception):
    """Base class: a message for the user and the exit code the CLI returns."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(PveguardError):
    """The strategy file (or another configuration input) is missing or invalid."""

    exit_code = EXIT_USAGE


class UsageError(PveguardError):
    """A command was called with arguments that cannot work."""

    exit_code = EXIT_USAGE


class OperationError(PveguardError):
    """An operation was attempted and failed (backend error, I/O error, timeout)."""

    exit_code = EXIT_FAILED


class StateError(PveguardError):
    """The state store cannot be opened, read or migrated."""

    exit_code = EXIT_FAILED


class PolicyRefused(PveguardError):
    """The installation policy (or another guardrail) refused the action."""

    exit_code = EXIT_REFUSED


class BackendError(OperationError):
    """A backend (Proxmox VE API, LXC tools) reported an error; the message is the backend's own."""


class BackendUnavailable(BackendError):
    """No backend can be reached or none is configured; the message says what is missing."""
