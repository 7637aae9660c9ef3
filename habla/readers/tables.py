"""Tables (.csv, .parquet, .jsonl) as streamed slices of one item per row, columns named in `clean.table_columns`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from habla.params import Clean
from habla.readers.decoding import UnreadableFile
from habla.readers.units import split_units


def table_slices(path: Path, settings: Clean, batch_rows: int) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, dict]]:
    """A .csv/.parquet/.jsonl table, one item per row (columns named in `clean.table_columns`), streamed
    `batch_rows` rows at a time so that a table larger than memory can be cleaned."""
    suffix = path.suffix.lower()
    scan = {".csv": pl.scan_csv, ".parquet": pl.scan_parquet, ".jsonl": pl.scan_ndjson}[suffix]
    try:
        table = scan(path)
        present = table.collect_schema().names()
    except Exception as err:  # noqa: BLE001 - polars raises compute/IO errors of several types
        raise UnreadableFile(f"cannot read table: {str(err).splitlines()[0][:160]}") from None
    columns = settings.table_columns
    wanted = {"text": columns.text, "author": columns.author, "title": columns.title, "ts": columns.ts}
    missing = [f"{k}={v}" for k, v in wanted.items() if v and v not in present]
    if missing:
        raise UnreadableFile(f"columns {missing} not in the table (it has {present}); set clean.table_columns")
    units = (
        table.with_row_index("line", offset=2 if suffix == ".csv" else 1)
        .select(
            pl.col("line").cast(pl.UInt32),
            lines=pl.lit(1, dtype=pl.UInt32),
            text=pl.col(columns.text).cast(pl.String).fill_null(""),
            author=pl.col(columns.author).cast(pl.String) if columns.author else pl.lit(None, dtype=pl.String),
            chat=pl.col(columns.title).cast(pl.String) if columns.title else pl.lit(None, dtype=pl.String),
            ts=pl.col(columns.ts).cast(pl.String).str.to_datetime(strict=False)
            if columns.ts
            else pl.lit(None, dtype=pl.Datetime("us")),
        )
        .with_columns(reason=pl.when(pl.col("text").str.strip_chars() == "").then(pl.lit("empty")), raw=pl.col("text"))
    )
    try:
        for batch in units.collect_batches(chunk_size=batch_rows):
            kept, rejected = split_units(batch)
            yield kept, rejected, {"format": f"table ({suffix[1:]})", "unit": "row", "raw_units": batch.height}
    except pl.exceptions.PolarsError as err:
        raise UnreadableFile(f"cannot read table: {str(err).splitlines()[0][:160]}") from None
