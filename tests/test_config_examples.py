"""The example configurations in config/ stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.scripted import load_script
from gateway.settings import load_settings

CONFIG = Path(__file__).resolve().parent.parent / "config"


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_validates(path: Path) -> None:
    settings = load_settings(path)
    assert settings.models


def test_demo_script_loads() -> None:
    assert len(load_script(CONFIG / "demo-script.jsonl")) >= 3
