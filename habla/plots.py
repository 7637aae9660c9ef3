"""Rows for `dvc plots`: aggregates the stages already compute, shaped as DVC's templates read them.

Plot files are committed to git (`cache: false`), so they hold counts only: never message text,
never a speaker's name (the persona is "persona", everybody else "others").
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping

import polars as pl

OUTCOMES = ("win", "tie", "loss", "failed")


def reason_bars(totals: Mapping) -> list[dict]:
    """Kept units, then rejected units by reason, largest first: what the clean stage did with each raw line."""
    rejected = sorted(totals["rejected_by_reason"].items(), key=lambda item: (-item[1], item[0]))
    return [{"outcome": "kept", "units": totals["kept"]}] + [
        {"outcome": f"rejected: {reason}", "units": count} for reason, count in rejected
    ]


def histogram(values: Iterable[int], width: int, label: str, count: str) -> list[dict]:
    """Counts per bin of `width`, labelled by the bin's first value (numbers, so charts sort them as numbers);
    every bin from the smallest to the largest present is listed, so gaps show as zero."""
    counts = Counter(value // width for value in values)
    bins = range(min(counts), max(counts) + 1) if counts else ()
    return [{label: low * width, count: counts.get(low, 0)} for low in bins]


def bin_width(largest: int, bins: int = 20) -> int:
    """A round bin width (1, 2, 5, 10, 20, 50…) giving fewer than `bins` bins up to `largest`."""
    width, factors = 1, itertools.cycle((2, 2.5, 2))
    while largest // width >= bins:
        width = int(width * next(factors))
    return width


def monthly_messages(chats: pl.LazyFrame, persona_authors: list[str]) -> list[dict]:
    """Chat messages per calendar month, persona vs everybody else; months without messages count zero."""
    counts = (
        chats.select(
            month=pl.col("ts").dt.truncate("1mo").dt.date(),
            persona=pl.col("author").is_in(persona_authors),
        )
        .drop_nulls("month")
        .group_by("month")
        .agg(persona=pl.col("persona").sum(), others=(~pl.col("persona")).sum())
        .collect()
    )
    if counts.is_empty():
        return []
    months = pl.DataFrame({"month": pl.date_range(counts["month"].min(), counts["month"].max(), "1mo", eager=True)})
    filled = months.join(counts, on="month", how="left").fill_null(0).sort("month")
    return [
        {"month": month.strftime("%Y-%m"), "persona": int(persona), "others": int(others)}
        for month, persona, others in filled.iter_rows()
    ]


def split_bars(report: Mapping) -> list[dict]:
    """Examples per split and kind, in the order a reader expects (train, val, test)."""
    rows = []
    for split, figures in report["conversations"].items():
        rows.append({"split": f"{split} · conversations", "examples": figures["conversations"]})
    for kind in ("documents", "keyword_tasks"):
        for split, count in report[kind].items():
            rows.append({"split": f"{split} · {kind.replace('_', ' ')}", "examples": count})
    return rows


def outcome_bars(outcomes_by_pair: Mapping[str, Mapping[str, int]]) -> list[dict]:
    """One row per (pair, outcome): the judge's wins, ties, losses and failures for each compared pair."""
    return [
        {"pair": f"{pair}: {outcome}", "pairs": counts.get(outcome, 0)}
        for pair, counts in outcomes_by_pair.items()
        for outcome in OUTCOMES
    ]


def rating_rows(grades: Mapping[str, list[float | None]], scale: range = range(1, 11)) -> list[dict]:
    """How many replies of each model got each rating, rounded (failed ratings are counted in the report)."""
    counts = {name: Counter(round(v) for v in values if v is not None) for name, values in grades.items()}
    return [{"rating": rating, **{name: count.get(rating, 0) for name, count in counts.items()}} for rating in scale]
