"""The columns every reader hands to `clean`: kept items and rejected units, each covering raw lines."""

from __future__ import annotations

import polars as pl

MESSAGES_SCHEMA = {
    "source": pl.String,
    "file": pl.String,
    "line": pl.UInt32,
    "lines": pl.UInt32,
    "chat": pl.String,
    "ts": pl.Datetime("us"),
    "author": pl.String,
    "text": pl.String,
}

REJECTED_SCHEMA = {
    "source": pl.String,
    "file": pl.String,
    "line": pl.UInt32,
    "lines": pl.UInt32,
    "reason": pl.String,
    "raw": pl.String,
}


def split_units(units: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Reader units (line, lines, text, reason, raw, optional author/chat/ts) → kept items and rejected units."""
    kept = units.filter(pl.col("reason").is_null()).drop("reason", "raw")
    absent = {"ts": pl.lit(None, dtype=pl.Datetime("us")), "author": pl.lit(None, dtype=pl.String)}
    kept = kept.with_columns(**{name: value for name, value in absent.items() if name not in kept.columns})
    return kept, units.filter(pl.col("reason").is_not_null()).select("line", "lines", "reason", "raw")
