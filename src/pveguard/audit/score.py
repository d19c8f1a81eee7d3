"""The compliance score: 100 minus a fixed penalty per finding by severity, never below 0.

Deliberately simple so an admin can recompute it from the findings list: the report prints the
formula and the counts next to the number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pveguard.audit.findings import SEVERITIES, Finding

PENALTY = {"critical": 25, "high": 10, "medium": 5, "low": 2, "info": 0}
FORMULA = "score = max(0, 100 - 25*critical - 10*high - 5*medium - 2*low); info findings cost nothing"


@dataclass(frozen=True)
class Score:
    value: int
    counts: dict[str, int]
    penalty: int
    formula: str = FORMULA

    @property
    def explanation(self) -> str:
        """The formula with this host's counts filled in, e.g. `100 - 10*2 - 5*1 = 75`."""
        terms = " - ".join(f"{PENALTY[s]}*{self.counts[s]}" for s in SEVERITIES if PENALTY[s] and self.counts[s])
        if not terms:
            return "100 (no penalised findings)"
        text = f"100 - {terms} = {100 - self.penalty}"
        return text + " -> 0" if self.penalty > 100 else text


def compute(findings: Iterable[Finding]) -> Score:
    counts: dict[str, int] = {s: 0 for s in SEVERITIES}
    for f in findings:
        counts[f.severity] += 1
    penalty = sum(PENALTY[s] * n for s, n in counts.items())
    return Score(max(0, 100 - penalty), counts, penalty)
