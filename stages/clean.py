"""`clean` stage: raw exports under data/raw → cleaned messages and rejected lines.

Every raw line of every file ends up in `data/cleaned/messages.parquet` or in
`data/cleaned/rejected.parquet` with a reason; `metrics/clean.json` reconciles
the counts per file. Text keeps its case, emojis and punctuation: that is the
voice the model is meant to learn.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import polars as pl

from habla import paths
from habla.cleaning import account, finish, length_bound, merge_entries, report, report_name
from habla.errors import UserError, run_stage
from habla.gates import Gate
from habla.io import ParquetParts, write_json
from habla.params import Clean, load_params
from habla.plots import reason_bars
from habla.readers.files import discover, item_order, read_items
from habla.readers.units import MESSAGES_SCHEMA, REJECTED_SCHEMA
from habla.readers.whatsapp import check_header_format

log = logging.getLogger("clean")

RAW_DIR = paths.RAW
OUT_DIR = paths.CLEANED
REPORT = paths.report("clean")

PARAMS = ["clean"]
DEPS = [
    RAW_DIR,
    "stages/clean.py",
    "habla/readers",
    "habla/cleaning.py",
    "habla/text/redact.py",
    "habla/gates.py",
    "habla/plots.py",
]
OUTS = [OUT_DIR]
METRICS = [REPORT, paths.gate_report("clean")]
PLOTS = [paths.CLEAN_OUTCOMES_PLOT]
SOURCES = ["whatsapp", "transcript", "lyrics", "table"]


GATE = [
    ("ExpectTableRowCountToBeBetween", {"min_value": 1, "description": "at least one message is kept"}),
    ("ExpectColumnValuesToNotBeNull", {"column": "text_chars", "description": "every message has text"}),
    ("ExpectColumnValuesToBeBetween", {"column": "text_chars", "min_value": 1, "description": "no empty message"}),
    (
        "ExpectColumnValuesToBeBetween",
        {
            "column": "chars_over_bound",
            "max_value": 0,
            "description": "no message over clean.max_chars, no document over clean.max_document_chars",
        },
    ),
    (
        "ExpectColumnValuesToBeInSet",
        {"column": "source", "value_set": SOURCES, "description": "every source is a known one"},
    ),
    (
        "ExpectCompoundColumnsToBeUnique",
        {"column_list": ["file_hash", "line"], "description": "each raw line is kept at most once"},
    ),
    (
        "ExpectColumnValuesToBeBetween",
        {
            "column": "year",
            "min_value": 2009,
            "max_value": 2100,
            "description": "chat dates are plausible (WhatsApp exists since 2009): check clean.date_order",
        },
    ),
    (
        "ExpectColumnValuesToNotBeNull",
        {"column": "chat_author_chars", "description": "every chat message has an author"},
    ),
]


def gate_frame(kept: pl.DataFrame, settings: Clean) -> pl.DataFrame:
    """What the gate checks, derived from the kept rows: lengths, bounds, years and keys, no text and no names."""
    chars = pl.col("text").str.len_chars().cast(pl.Int64)
    return kept.select(
        pl.col("source").cast(pl.Categorical),
        pl.col("line"),
        file_hash=pl.col("file").hash(),  # a file can span batches: its key must not depend on the batch
        text_chars=chars,
        chars_over_bound=chars - length_bound(settings),
        year=pl.col("ts").dt.year().cast(pl.Float64),  # float64: GX checks it vectorised (nullable ints go row by row)
        chat_author_chars=pl.when(pl.col("source") == "whatsapp")
        .then(pl.col("author").str.len_chars().cast(pl.Int64))
        .otherwise(0),
    )


def main() -> None:
    params = load_params()
    settings = params.clean
    check_header_format(settings.header_format)
    files = sorted(discover(RAW_DIR), key=lambda path: item_order(path, RAW_DIR))
    gate = Gate("clean", GATE)
    entries: dict[str, dict] = {}
    kept_by_source: Counter = Counter()
    OUT_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT_DIR.parent, prefix=".clean-") as spill:
        parts = ParquetParts(
            Path(spill),
            params.resources.batch_rows,
            checks={"messages": lambda batch: gate.check(gate_frame(batch, settings))},
        )
        for path in files:
            for name, source, kept, rejected, entry in read_items(
                path, path.relative_to(RAW_DIR), settings, params.resources.batch_rows
            ):
                kept, more_rejected = finish(kept, settings)
                kept, rejected = kept.sort("line"), pl.concat([rejected, more_rejected]).sort("line")
                entries[name] = merge_entries(entries.get(name), account(entry, kept, rejected))
                kept_by_source[source] += kept.height
                log.info(
                    "%s: %s, %d items kept, %d rejected",
                    name,
                    entry.get("format", entry.get("error")),
                    kept.height,
                    rejected.height,
                )
                parts.add(messages=kept, rejected=rejected)
        summary = report(entries, +kept_by_source)
        if not summary["totals"]["kept"]:
            problems = "\n".join(f"  - {name}: {e.get('error') or 'nothing kept'}" for name, e in entries.items())
            raise UserError(
                f"no usable messages in {RAW_DIR}/:\n{problems}\n"
                "Check the files above; supported inputs are listed in docs/inputs.md."
            )
        names = {name: report_name(name, settings.report_file_names) for name in summary["files"]}
        for name, entry in summary["files"].items():
            if flag := entry.get("flagged"):
                log.warning(
                    "%s: %.0f%% of its units were rejected as %s; see %s in metrics/clean.json and docs/inputs.md",
                    name,
                    100 * flag["share"],
                    flag["reason"],
                    names[name],
                )
        parts.flush()
        gate.close()
        parts.merge(
            {"messages": paths.MESSAGES, "rejected": paths.REJECTED},
            {"messages": MESSAGES_SCHEMA, "rejected": REJECTED_SCHEMA},
        )
    write_json(REPORT, {**summary, "files": {names[name]: entry for name, entry in summary["files"].items()}})
    write_json(paths.CLEAN_OUTCOMES_PLOT, reason_bars(summary["totals"]))
    totals = summary["totals"]
    log.info("kept %d messages, rejected %d (%s)", totals["kept"], totals["rejected"], totals["rejected_by_reason"])


if __name__ == "__main__":
    run_stage(main)
