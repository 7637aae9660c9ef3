"""The rows behind `dvc plots`: aggregates that add up to the reports, never text or names."""

from __future__ import annotations

import datetime as dt

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from habla.plots import bin_width, histogram, monthly_messages, outcome_bars, rating_rows, reason_bars, split_bars


def test_reason_bars_put_kept_first_then_reasons_largest_first_and_add_up():
    totals = {"kept": 50, "rejected": 9, "rejected_by_reason": {"deleted": 2, "media_omitted": 6, "group_event": 1}}
    rows = reason_bars(totals)
    assert [r["outcome"] for r in rows] == [
        "kept",
        "rejected: media_omitted",
        "rejected: deleted",
        "rejected: group_event",
    ]
    assert sum(r["units"] for r in rows) == totals["kept"] + totals["rejected"]


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=300), st.integers(min_value=1, max_value=100))
def test_histogram_counts_every_value_once_in_its_bin_with_no_gaps(values, width):
    rows = histogram(values, width, "tokens", "conversations")
    assert sum(r["conversations"] for r in rows) == len(values)
    first = min(values, default=0) // width * width
    assert [r["tokens"] for r in rows] == list(range(first, first + len(rows) * width, width))
    for value in values:
        (row,) = [r for r in rows if r["tokens"] <= value < r["tokens"] + width]
        assert row["conversations"] >= 1
    if values:
        assert rows[-1]["tokens"] <= max(values) < rows[-1]["tokens"] + width


@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=2, max_value=60))
def test_bin_width_is_round_and_gives_fewer_bins_than_asked(largest, bins):
    width = bin_width(largest, bins)
    assert largest // width < bins
    digits = str(width).rstrip("0")
    assert digits in ("1", "2", "5")
    lead = int(digits)
    scale = width // lead
    previous = {1: 5 * scale // 10, 2: scale, 5: 2 * scale}[lead]
    if previous:  # the next smaller round width would give too many bins
        assert largest // previous >= bins


def test_monthly_messages_split_persona_from_others_and_fill_empty_months():
    stamps = [dt.datetime(2023, 1, 5), dt.datetime(2023, 1, 30), dt.datetime(2023, 4, 1), dt.datetime(2023, 4, 2)]
    chats = pl.LazyFrame({"ts": stamps, "author": ["Cami", "Ana", "Cami", "Cami"], "text": ["a", "b", "c", "d"]})
    rows = monthly_messages(chats, ["Cami"])
    assert rows == [
        {"month": "2023-01", "persona": 1, "others": 1},
        {"month": "2023-02", "persona": 0, "others": 0},
        {"month": "2023-03", "persona": 0, "others": 0},
        {"month": "2023-04", "persona": 2, "others": 0},
    ]
    assert "Cami" not in str(rows) and "Ana" not in str(rows)
    empty = pl.LazyFrame(schema={"ts": pl.Datetime("us"), "author": pl.String})
    assert monthly_messages(empty, ["Cami"]) == []


def test_split_outcome_and_rating_rows_keep_every_count():
    report = {
        "conversations": {"train": {"conversations": 8, "chars": 1}, "val": {"conversations": 1, "chars": 1}},
        "documents": {"train": 2, "val": 0},
        "keyword_tasks": {"train": 2, "val": 0},
    }
    rows = split_bars(report)
    assert {"split": "train · conversations", "examples": 8} in rows
    assert {"split": "val · keyword tasks", "examples": 0} in rows
    assert sum(r["examples"] for r in rows) == 13
    bars = outcome_bars({"tuned vs base": {"win": 3, "tie": 1, "loss": 2}})
    assert [b["pairs"] for b in bars] == [3, 1, 2, 0]
    ratings = rating_rows({"base": [2.4, 2.6, None, 10.0], "tuned": [7.0]})
    assert ratings[1] == {"rating": 2, "base": 1, "tuned": 0} and ratings[2] == {"rating": 3, "base": 1, "tuned": 0}
    assert sum(r["base"] for r in ratings) == 3 and ratings[-1]["base"] == 1
