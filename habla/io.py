"""Reading and writing the pipeline's files in one stable form.

JSON is written with sorted keys and a trailing newline and JSONL one object per
line in UTF-8, so that two runs on the same input give byte-identical files and
DVC sees no spurious change.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import polars as pl


def stable_id(*parts: str) -> str:
    """A short id that stays the same across runs, machines and library versions."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()


def _clean_floats(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _clean_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_floats(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(_clean_floats(data), ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


class JsonlWriter:
    """The one way to write JSONL: dicts with sorted keys, or polars frames straight from polars (column order, no
    Python dict per row: for the large conversation files), appended as they come; a context manager."""

    def __init__(self, path: str | Path, mode: str = "w"):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open(mode + "b")

    def write(self, rows: Iterable[dict] | pl.DataFrame) -> int:
        """Append `rows`; returns how many."""
        if isinstance(rows, pl.DataFrame):
            rows.write_ndjson(self.handle)
            written = rows.height
        else:
            written = 0
            for row in rows:
                self.handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True).encode() + b"\n")
                written += 1
        return written

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def write_jsonl(path: str | Path, rows: Iterable[dict] | pl.DataFrame) -> int:
    """`rows` as the whole of `path`; returns how many."""
    with JsonlWriter(path) as writer:
        return writer.write(rows)


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """`rows` added at the end of `path` (an answer cache grows one line per paid call)."""
    with JsonlWriter(path, "a") as writer:
        return writer.write(rows)


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class ParquetParts:
    """Frames spilled to parquet parts as they come and joined into one file per stream at the end.

    A stage that adds its rows here holds at most about `batch_rows` of them (plus
    the item it is working on), however large its input. Each stream's parts are
    written in the order they were added, and `checks` (e.g. a gate) see every part
    of their stream before it is written.
    """

    def __init__(self, folder: Path, batch_rows: int, checks: dict[str, Callable[[pl.DataFrame], None]] | None = None):
        self.folder, self.batch_rows, self.checks = Path(folder), batch_rows, checks or {}
        self.buffers: dict[str, list[pl.DataFrame]] = {}
        self.parts: dict[str, list[Path]] = {}

    def add(self, **frames: pl.DataFrame) -> None:
        for stream, frame in frames.items():
            self.buffers.setdefault(stream, []).append(frame)
        if any(sum(f.height for f in buffered) >= self.batch_rows for buffered in self.buffers.values()):
            self.flush()

    def flush(self) -> None:
        for stream, buffered in self.buffers.items():
            if not buffered:
                continue
            frame = pl.concat(buffered, rechunk=False)
            buffered.clear()
            for start in range(0, frame.height, self.batch_rows):
                part = frame.slice(start, self.batch_rows)
                if stream in self.checks:
                    self.checks[stream](part)
                path = self.folder / f"{stream}-{len(self.parts.get(stream, [])):06d}.parquet"
                part.write_parquet(path)
                self.parts.setdefault(stream, []).append(path)

    def merge(self, outputs: dict[str, Path], schemas: dict[str, dict]) -> None:
        """Each stream's parts, in order, into its output file (streamed, never all in memory)."""
        self.flush()
        for stream, path in outputs.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            parts = self.parts.get(stream)
            if parts:
                pl.scan_parquet(parts).sink_parquet(path)
            else:
                pl.DataFrame(schema=schemas[stream]).write_parquet(path)
