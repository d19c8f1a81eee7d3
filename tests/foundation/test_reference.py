"""The README's configuration reference is the one generated from the models."""

from pathlib import Path

from pveguard.strategy.models import Strategy
from pveguard.strategy.reference import rows, splice

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_is_in_sync_with_the_models() -> None:
    text = README.read_text()
    assert splice(text) == text, "run: python -m pveguard.strategy.reference --write README.md"


def test_reference_covers_every_section() -> None:
    paths = {p for p, *_ in rows()}
    for section in Strategy.model_fields:
        assert section in paths
    assert "containers[].resources.memory" in paths
    assert "monitoring.thresholds.cpu" in paths
