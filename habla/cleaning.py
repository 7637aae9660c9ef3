"""Cleaning of read items: normalised and redacted text, duplicates and over-long messages rejected, and the
per-file accounting that proves every raw line was kept or rejected exactly once.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import PurePosixPath

import polars as pl

from habla.params import Clean
from habla.readers.units import REJECTED_SCHEMA
from habla.text.redact import redact_frame


def normalise_text(text: pl.Expr) -> pl.Expr:
    """NFC, one space between words, no trailing spaces on lines, at most one blank line."""
    return (
        text.str.normalize("NFC")
        .str.replace_all(r"[ \t]+", " ")
        .str.replace_all(r" ?\n ?", "\n")
        .str.replace_all(r"\n{3,}", "\n\n")
        .str.strip_chars()
    )


def length_bound(settings: Clean) -> pl.Expr:
    """Chat messages and documents have their own bounds: a 40,000-character keynote transcript is one normal
    document (`group` cuts it into passages), while a 40,000-character chat message is a pasted log."""
    return pl.when(pl.col("source") == "whatsapp").then(settings.max_chars).otherwise(settings.max_document_chars)


def finish(messages: pl.DataFrame, settings: Clean) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Normalise and redact text; move empty, over-long (see `length_bound`) and duplicate messages to rejected.

    Duplicates are looked for within a chat, and a chat is one item, so items can be finished one at a time.
    """
    messages = redact_frame(messages.with_columns(normalise_text(pl.col("text"))), settings.redact)
    minute = pl.col("ts").dt.truncate("1m")
    duplicate = (pl.col("source") == "whatsapp") & ~pl.struct("chat", "author", "text", minute).is_first_distinct()
    reason = (
        pl.when(pl.col("text") == "")
        .then(pl.lit("empty"))
        .when(pl.col("text").str.len_chars() > length_bound(settings))
        .then(pl.lit("too_long"))
        .when(duplicate)
        .then(pl.lit("duplicate"))
    )
    messages = messages.with_columns(reason=reason)
    rejected = messages.filter(pl.col("reason").is_not_null()).select(
        "source", "file", "line", "lines", "reason", raw=pl.col("text")
    )
    return messages.filter(pl.col("reason").is_null()).drop("reason"), rejected.cast(REJECTED_SCHEMA)


def account(entry: dict, kept: pl.DataFrame, rejected: pl.DataFrame) -> dict:
    """One piece's report entry with its counts; refuses to go on if kept and rejected do not cover its raw lines."""
    covered = int(kept["lines"].sum()) + int(rejected["lines"].sum())
    if "raw_units" in entry and covered != entry["raw_units"]:
        raise RuntimeError(f"accounting broken: {covered} of {entry['raw_units']} {entry['unit']}s covered")
    return {**entry, "kept": kept.height, "rejected": dict(rejected.group_by("reason").len().iter_rows())}


def merge_entries(old: dict | None, new: dict) -> dict:
    """The report entry of an item read in several slices: counts add up."""
    if old is None:
        return {**new, "rejected": dict(sorted(new["rejected"].items()))}
    merged = {
        **old,
        "kept": old["kept"] + new["kept"],
        "rejected": dict(sorted((Counter(old["rejected"]) + Counter(new["rejected"])).items())),
    }
    if "raw_units" in new:
        merged["raw_units"] = old.get("raw_units", 0) + new["raw_units"]
    if "error" in new:
        merged["error"] = new["error"]
    return merged


def heavy_loss(entry: dict) -> dict | None:
    """The one reason that took more than half of a file's units, if any: a safety net for every silent loss
    (a format read wrong, a bound meant for something else) that would otherwise leave the stage green."""
    units = entry["kept"] + sum(entry["rejected"].values())
    if not entry["rejected"] or not units:
        return None
    reason, count = max(entry["rejected"].items(), key=lambda item: item[1])
    return {"reason": reason, "share": round(count / units, 3)} if count / units > 0.5 else None


def report_name(name: str, real_names: bool) -> str:
    """How a committed report names a file: its folder and a stable short hash, since WhatsApp names exports after
    the contact ("Chat de WhatsApp con Cami.txt") and `git push` would publish the name. `clean.report_file_names`
    keeps real names for a corpus that is not private."""
    if real_names:
        return name
    folder, _, _ = name.rpartition("/")
    top = folder.split("/")[0] if folder else ""
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    suffix = PurePosixPath(name).suffix
    return f"{top}/{digest}{suffix}" if top else f"{digest}{suffix}"


def report(entries: dict[str, dict], kept_by_source: Counter) -> dict:
    for entry in entries.values():
        if flag := heavy_loss(entry):
            entry["flagged"] = flag
    rejected_by_reason = sum((Counter(e["rejected"]) for e in entries.values()), Counter())
    return {
        "files": entries,
        "totals": {
            "files": len(entries),
            "raw_units": sum(e.get("raw_units", 0) for e in entries.values()),
            "kept": sum(e["kept"] for e in entries.values()),
            "rejected": sum(rejected_by_reason.values()),
            "rejected_by_reason": dict(sorted(rejected_by_reason.items())),
            "by_source": dict(sorted(kept_by_source.items())),
            "flagged_files": sum("flagged" in e for e in entries.values()),
        },
    }
