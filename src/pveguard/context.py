"""What every command shares: where the strategy and the state live, loaded once and lazily."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pveguard.security.ledger import Ledger, VerifyResult, verify_state
from pveguard.store import Store, resolve_state_dir
from pveguard.strategy import load as strategy_load
from pveguard.strategy.models import Strategy

LEDGER_KEY_ENV = "PVEGUARD_LEDGER_KEY_FILE"


@dataclass
class AppContext:
    strategy_path: Path
    state_dir: Path
    verbose: bool = False
    _strategy: Strategy | None = None
    _store: Store | None = None
    _ledger: Ledger | None = None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_options(cls, strategy: str | None, state_dir: str | None, verbose: bool = False) -> AppContext:
        return cls(strategy_load.resolve_path(strategy), resolve_state_dir(state_dir), verbose)

    @property
    def strategy(self) -> Strategy:
        """The validated strategy; raises ConfigError/StrategyInvalid with every problem listed."""
        if self._strategy is None:
            self._strategy, problems = strategy_load.load(self.strategy_path)
            self.warnings += [p.text() for p in problems]
        return self._strategy

    def strategy_or_default(self) -> Strategy:
        """The strategy file when it exists, else the defaults (for read-only commands)."""
        if self.strategy_path.exists():
            return self.strategy
        return Strategy()

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.state_dir)
        return self._store

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.store, self._ledger_key_file())
        return self._ledger

    def verify_ledger(self, extra_anchor_files: list[Path] | None = None) -> VerifyResult:
        """Check the ledger against its head, checkpoints and anchors; creates nothing (no state
        directory, no database) when there is no ledger."""
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
