"""Shared test setup: offline, quiet, and helpers that build realistic inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run a stage in an empty working folder with the repository's params.yaml."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def android(day: int, month: int, year: int, clock: str, author: str | None, text: str) -> str:
    """A Spanish Android export line, e.g. `3/3/23, 8:04 p. m. - Cami: hola`."""
    head = f"{day}/{month}/{year % 100:02d}, {clock} - "
    return head + (f"{author}: {text}" if author else text)
