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
    # seconds into the recording where the source is timed (subtitles, json3, Whisper); null elsewhere
    "start_s": pl.Float64,
    "end_s": pl.Float64,
}

REJECTED_SCHEMA = {
    "source": pl.String,
    "file": pl.String,
    "line": pl.UInt32,
    "lines": pl.UInt32,
    "reason": pl.String,
    "raw": pl.String,
}


def with_message_columns(kept: pl.DataFrame) -> pl.DataFrame:
    """Every `MESSAGES_SCHEMA` column, in order and type; those a format lacks (a chat's cue times, a transcript's
    author) are null."""
    absent = {name: pl.lit(None, dtype=dtype) for name, dtype in MESSAGES_SCHEMA.items() if name not in kept.columns}
    return kept.with_columns(**absent).select(list(MESSAGES_SCHEMA)).cast(MESSAGES_SCHEMA)


def split_units(units: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Reader units (line, lines, text, reason, raw, and any other `MESSAGES_SCHEMA` columns the format has) → kept
    items and rejected units; `with_message_columns` fills in the columns a format does not have."""
    kept = units.filter(pl.col("reason").is_null()).drop("reason", "raw")
    return kept, units.filter(pl.col("reason").is_not_null()).select("line", "lines", "reason", "raw")
