"""Train / val / test assignment without leakage: the `split` stage's transformations.

A conversation's split is a pure function of its id and the seed (or of time); test conversations that
share a non-trivial persona turn with train, or nearly duplicate one (MinHash), are moved to train.
"""

from __future__ import annotations

import hashlib

import polars as pl

from habla.errors import UserError
from habla.params import Split
from habla.text.near_dups import near_duplicate_pairs

SPLITS = ("train", "val", "test")


def bucket(item_id: str, seed: int) -> float:
    """A uniform number in [0, 1) from the id; blake2b, because polars' hash is not stable across versions."""
    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_by_time(frame: pl.DataFrame, settings: Split) -> pl.DataFrame:
    """The earliest conversations train, the latest test: how a chatbot meets new messages (ties by id).

    The cut points are whole rows (`round(n * ratio)`): polars computes 70/100 as 0.7000000000000001, so
    comparing shares with the ratios would move a boundary conversation on float error alone.
    """
    ratios, index = settings.ratios, pl.int_range(pl.len())
    train_end = round(frame.height * ratios.train)
    val_end = round(frame.height * (ratios.train + ratios.val))
    return frame.sort("start", "id").with_columns(
        split=pl.when(index < train_end)
        .then(pl.lit("train"))
        .when(index < val_end)
        .then(pl.lit("val"))
        .otherwise(pl.lit("test"))
    )


def assign(ids: list[str], settings: Split) -> list[str]:
    train_cut = settings.ratios.train
    val_cut = train_cut + settings.ratios.val
    return [
        "train" if u < train_cut else "val" if u < val_cut else "test" for u in (bucket(i, settings.seed) for i in ids)
    ]


def assistant_texts(frame: pl.DataFrame, min_chars: int) -> pl.DataFrame:
    return (
        frame.select("id", "split", "messages")
        .explode("messages")
        .unnest("messages")
        .filter((pl.col("role") == "assistant") & (pl.col("content").str.len_chars() >= min_chars))
        .select("id", "split", "content")
    )


def leaking_ids(frame: pl.DataFrame, min_chars: int) -> pl.Series:
    """Test conversations with an assistant turn (at least `min_chars` long) that also occurs in train."""
    turns = assistant_texts(frame, min_chars)
    train_texts = turns.filter(pl.col("split") == "train").select("content").unique()
    return turns.filter(pl.col("split") == "test").join(train_texts, on="content", how="semi")["id"].unique()


def move_overlaps(frame: pl.DataFrame, min_chars: int) -> tuple[pl.DataFrame, int]:
    """Move leaking test conversations to train until none leaks, and count them.

    One pass is not enough: a moved conversation takes its turns to train, and a
    test conversation that shared one of them with it now leaks (seen on a
    1M-line corpus). Each pass shrinks test, so this ends.
    """
    moved = 0
    while (leaking := leaking_ids(frame, min_chars)).len():
        before = frame["split"]
        frame = together(
            frame.with_columns(
                split=pl.when(pl.col("id").is_in(leaking.implode())).then(pl.lit("train")).otherwise(pl.col("split"))
            )
        )
        moved += int((frame["split"] != before).sum())
    return frame, moved


def near_duplicate_test_ids(frame: pl.DataFrame, settings: Split) -> list[str]:
    """Test conversations whose persona text (all assistant turns) nearly duplicates a train conversation's."""
    persona_text = (
        assistant_texts(frame, 1)
        .group_by("id", "split", maintain_order=True)
        .agg(pl.col("content").str.join("\n"))
        .filter(pl.col("content").str.len_chars() >= settings.overlap_min_chars)
    )
    test = persona_text.filter(pl.col("split") == "test")
    train = persona_text.filter(pl.col("split") == "train")
    pairs = near_duplicate_pairs(test["content"], train["content"], settings.near_dup_threshold, settings.seed)
    return sorted({test["id"][i] for i, _, _ in pairs})


def together(frame: pl.DataFrame) -> pl.DataFrame:
    """Every speaker's view of one conversation (`conversation`, under `group.speakers: conditioned`) in one
    split, the earliest any view has (train before val before test): one persona's test reply must not be
    another persona's training context."""
    if "conversation" not in frame.columns:
        return frame
    rank = pl.col("split").replace_strict(SPLITS, list(range(len(SPLITS))), return_dtype=pl.Int8)
    earliest = rank.min().over("conversation")
    return frame.with_columns(split=earliest.replace_strict(list(range(len(SPLITS))), SPLITS, return_dtype=pl.String))


def split_conversations(frame: pl.DataFrame, settings: Split) -> tuple[pl.DataFrame, dict]:
    if settings.strategy == "time":
        frame = assign_by_time(frame, settings)
    else:
        key = "conversation" if "conversation" in frame.columns else "id"
        frame = frame.with_columns(split=pl.Series(assign(frame[key].to_list(), settings), dtype=pl.String))
    frame = together(frame)
    frame, exact = move_overlaps(frame, settings.overlap_min_chars)
    near = near_duplicate_test_ids(frame, settings)
    if settings.near_dups == "move":
        frame = together(
            frame.with_columns(split=pl.when(pl.col("id").is_in(near)).then(pl.lit("train")).otherwise(pl.col("split")))
        )
        frame, more = move_overlaps(frame, settings.overlap_min_chars)
        exact += more
    return frame, {
        "exact_overlap_moved": exact,
        "near_duplicates": len(near),
        "near_duplicates_moved": len(near) if settings.near_dups == "move" else 0,
    }


def ratio_tolerance(total: int) -> float:
    """How far a split's share may drift from its ratio: 10 points, or 3 binomial sd on small data."""
    return max(0.1, 1.5 / max(total, 1) ** 0.5)


def check_sizes(frame: pl.DataFrame, settings: Split) -> dict[str, int]:
    counts = {name: frame.filter(pl.col("split") == name).height for name in SPLITS}
    if counts["test"] < settings.min_test or counts["val"] == 0 or counts["train"] == 0:
        raise UserError(
            f"too little data to split: train {counts['train']}, val {counts['val']}, "
            f"test {counts['test']} conversations "
            f"(need test ≥ {settings.min_test}). Add more exports, shorten `group.session_gap_minutes`, "
            "or lower `split.min_test`."
        )
    return counts


def stats(frame: pl.DataFrame) -> dict:
    out = {}
    for name in SPLITS:
        part = frame.filter(pl.col("split") == name)
        chars = part.select(
            pl.col("messages").list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()
        )
        out[name] = {"conversations": part.height, "chars": int(chars.to_series().sum() or 0)}
    return out
