"""What every command shares: where the strategy and the state live, loaded once and lazily.

Importing this module loads neither the strategy models (pydantic) nor the state store, the
ledger or rich: a command pays for them when it first asks for `strategy`, `store` or `ledger`
(shell completion and `backup prune-sim` never do).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pveguard.errors import ConfigError
from pveguard.strategy import paths as strategy_paths

if TYPE_CHECKING:
    from pveguard.security.ledger import Ledger, VerifyResult
    from pveguard.store import Store
    from pveguard.strategy.models import Strategy

LEDGER_KEY_ENV = "PVEGUARD_LEDGER_KEY_FILE"


@dataclass
class AppContext:
    strategy_path: Path
    state_dir: Path
    verbose: bool = False
    strategy_explicit: bool = False  # named by --strategy / PVEGUARD_STRATEGY, so it must exist
    _strategy: Strategy | None = None
    _store: Store | None = None
    _ledger: Ledger | None = None
    _noted_defaults: bool = False

    @classmethod
    def from_options(cls, strategy: str | None, state_dir: str | None, verbose: bool = False) -> AppContext:
        # typer fills `strategy` from PVEGUARD_STRATEGY too; resolve_path reads it again for direct callers.
        from pveguard.store import resolve_state_dir

        explicit = bool(strategy or os.environ.get(strategy_paths.ENV_VAR))
        return cls(strategy_paths.resolve_path(strategy), resolve_state_dir(state_dir), verbose, explicit)

    def require_named_strategy(self) -> None:
        """A strategy file named by --strategy / PVEGUARD_STRATEGY that does not exist is an error.

        Falling back to the defaults there would run a command under a policy nobody chose (a
        typo in the path would go unnoticed), so every command but `init` refuses it.
        """
        if self.strategy_explicit and not self.strategy_path.exists():
            raise ConfigError(
                f"strategy file {self.strategy_path} does not exist (named by --strategy or PVEGUARD_STRATEGY)",
                hint="fix the path, create the file with 'pveguard init', or leave both unset to use "
                     f"{strategy_paths.DEFAULT_PATH}",
            )

    @property
    def strategy(self) -> Strategy:
        """The validated strategy; raises ConfigError/StrategyInvalid with every problem listed.

        Warnings (capacity, keys not enforced yet) go to stderr once, for every command that loads it.
        """
        if self._strategy is None:
            from pveguard.output import warn
            from pveguard.strategy import load as strategy_load

            self._strategy, problems = strategy_load.load(self.strategy_path)
            for problem in problems:
                warn(problem.text())
        return self._strategy

    def strategy_or_default(self) -> Strategy:
        """The strategy file; the built-in defaults (with a note) only when the default path has none.

        For read-only commands. A named file that is missing is an error (require_named_strategy).
        """
        if self.strategy_explicit or self.strategy_path.exists():
            self.require_named_strategy()
            return self.strategy
        from pveguard.strategy.models import Strategy

        if not self._noted_defaults:
            from pveguard.output import info

            self._noted_defaults = True
            info(f"note: no strategy file at {self.strategy_path}; using the built-in defaults "
                 "(write them with 'pveguard init')")
        return Strategy()

    @property
    def store(self) -> Store:
        if self._store is None:
            from pveguard.store import Store

            self._store = Store(self.state_dir)
        return self._store

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            from pveguard.security.ledger import Ledger

            self._ledger = Ledger(self.store, self._ledger_key_file())
        return self._ledger

    def verify_ledger(self, extra_anchor_files: list[Path] | None = None) -> VerifyResult:
        """Check the ledger against its head, checkpoints and anchors; creates nothing (no state
        directory, no database) when there is no ledger."""
        from pveguard.security.ledger import verify_state

        return verify_state(self.state_dir, self._ledger_key_file(), extra_anchor_files)

    def _ledger_key_file(self) -> str | None:
        env = os.environ.get(LEDGER_KEY_ENV)
        if env:
            return env
        if self.strategy_path.exists():
            return self.strategy.security.ledger_hmac_key_file
        return None

    def record(self, action: str, target: str = "", **details: Any) -> None:
        """Write one ledger entry for a mutating action."""
        self.ledger.append(action, target, details)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
            self._ledger = None
