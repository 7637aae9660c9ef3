"""`split` stage: conversations and documents → train / val / test.

With `split.strategy: hash` a conversation's split is a pure function of its id
(chat + start time) and `split.seed`, so adding a new export never moves old
conversations between splits; with `time` the latest conversations are the test
set. Documents are split by hash of their id and a keyword task goes where its
document goes, because the builtin base model is pretrained on train documents.
Test conversations that share a non-trivial assistant turn with train,
or whose persona text nearly duplicates a train conversation's (MinHash), are
moved to train, so the test set measures generalisation, not recall.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import polars as pl

from stages.errors import UserError, run_stage
from stages.gates import run_gate
from stages.io import read_jsonl, write_frame_jsonl, write_json, write_jsonl
from stages.near_dups import near_duplicate_pairs
from stages.params import Split, load_params

log = logging.getLogger("split")

IN_DIR = Path("data/grouped")
OUT_DIR = Path("data/splits")
REPORT = Path("metrics/split.json")
SPLITS = ("train", "val", "test")


def bucket(item_id: str, seed: int) -> float:
    """A uniform number in [0, 1) from the id; blake2b, because polars' hash is not stable across versions."""
    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_by_time(frame: pl.DataFrame, settings: Split) -> pl.DataFrame:
    """The earliest conversations train, the latest test: how a chatbot meets new messages (ties by id)."""
    share = pl.int_range(pl.len()) / pl.len()
    ratios = settings.ratios
    return frame.sort("start", "id").with_columns(
        split=pl.when(share < ratios.train).then(pl.lit("train"))
        .when(share < ratios.train + ratios.val).then(pl.lit("val"))
        .otherwise(pl.lit("test"))
    )


def assign(ids: list[str], settings: Split) -> list[str]:
    train_cut = settings.ratios.train
    val_cut = train_cut + settings.ratios.val
    return ["train" if u < train_cut else "val" if u < val_cut else "test" for u in (bucket(i, settings.seed) for i in ids)]


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
        frame = frame.with_columns(
            split=pl.when(pl.col("id").is_in(leaking.implode())).then(pl.lit("train")).otherwise(pl.col("split"))
        )
        moved += leaking.len()
    return frame, moved


def near_duplicate_test_ids(frame: pl.DataFrame, settings: Split) -> list[str]:
    """Test conversations whose persona text (all assistant turns) nearly duplicates a train conversation's."""
    persona_text = (
        assistant_texts(frame, 1).group_by("id", "split", maintain_order=True).agg(pl.col("content").str.join("\n"))
        .filter(pl.col("content").str.len_chars() >= settings.overlap_min_chars)
    )
    test = persona_text.filter(pl.col("split") == "test")
    train = persona_text.filter(pl.col("split") == "train")
    pairs = near_duplicate_pairs(test["content"], train["content"], settings.near_dup_threshold, settings.seed)
    return sorted({test["id"][i] for i, _, _ in pairs})


def split_conversations(frame: pl.DataFrame, settings: Split) -> tuple[pl.DataFrame, dict]:
    if settings.strategy == "time":
        frame = assign_by_time(frame, settings)
    else:
        frame = frame.with_columns(split=pl.Series(assign(frame["id"].to_list(), settings), dtype=pl.String))
    frame, exact = move_overlaps(frame, settings.overlap_min_chars)
    near = near_duplicate_test_ids(frame, settings)
    if settings.near_dups == "move":
        frame = frame.with_columns(
            split=pl.when(pl.col("id").is_in(near)).then(pl.lit("train")).otherwise(pl.col("split"))
        )
        frame, more = move_overlaps(frame, settings.overlap_min_chars)
        exact += more
    return frame, {"exact_overlap_moved": exact, "near_duplicates": len(near),
                   "near_duplicates_moved": len(near) if settings.near_dups == "move" else 0}


def ratio_tolerance(total: int) -> float:
    """How far a split's share may drift from its ratio: 10 points, or 3 binomial sd on small data."""
    return max(0.1, 1.5 / max(total, 1) ** 0.5)


def gate_frame(frame: pl.DataFrame, settings: Split) -> pl.DataFrame:
    """One row per conversation with what the gate checks: split, leakage, drift from the ratios."""
    wanted = pl.col("split").replace_strict({name: getattr(settings.ratios, name) for name in SPLITS}, default=None)
    share = pl.len().over("split") / pl.len()
    return frame.select(
        "id", "split",
        leaks_into_test=pl.col("id").is_in(leaking_ids(frame, settings.overlap_min_chars).implode()),
        ratio_drift=(share - wanted).abs(),
    )


GATE = [
    ("ExpectColumnValuesToBeUnique", {"column": "id", "description": "no conversation in two splits"}),
    ("ExpectColumnDistinctValuesToEqualSet", {"column": "split", "value_set": list(SPLITS), "description": "train, val and test are all non-empty"}),
    ("ExpectColumnValuesToBeInSet", {"column": "leaks_into_test", "value_set": [False], "description": "no test persona turn also occurs in train"}),
]


def check_sizes(frame: pl.DataFrame, settings: Split) -> dict[str, int]:
    counts = {name: frame.filter(pl.col("split") == name).height for name in SPLITS}
    if counts["test"] < settings.min_test or counts["val"] == 0 or counts["train"] == 0:
        raise UserError(
            f"too little data to split: train {counts['train']}, val {counts['val']}, test {counts['test']} conversations "
            f"(need test ≥ {settings.min_test}). Add more exports, shorten `group.session_gap_minutes`, "
            "or lower `split.min_test`."
        )
    return counts


def stats(frame: pl.DataFrame) -> dict:
    out = {}
    for name in SPLITS:
        part = frame.filter(pl.col("split") == name)
        chars = part.select(pl.col("messages").list.eval(pl.element().struct.field("content").str.len_chars()).list.sum())
        out[name] = {"conversations": part.height, "chars": int(chars.to_series().sum() or 0)}
    return out


def main() -> None:
    params = load_params()
    settings = params.split
    conversations, leakage = split_conversations(pl.read_ndjson(IN_DIR / "conversations.jsonl"), settings)
    counts = check_sizes(conversations, settings)
    docs = read_jsonl(IN_DIR / "documents.jsonl")
    doc_splits = assign([d["id"] for d in docs], settings)
    split_of_document = dict(zip((d["id"] for d in docs), doc_splits))
    tasks = read_jsonl(IN_DIR / "keyword_tasks.jsonl")
    task_splits = [split_of_document[t["document"]] for t in tasks]
    task_frame = pl.DataFrame(tasks).with_columns(split=pl.Series(task_splits, dtype=pl.String)) if tasks else None
    gate = gate_frame(conversations, settings)
    drift = ("ExpectColumnValuesToBeBetween", {"column": "ratio_drift", "min_value": 0, "max_value": ratio_tolerance(gate.height),
                                                "description": "each split is near its `split.ratios` share"})
    run_gate("split", gate, [*GATE, drift])
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        part = conversations.filter(pl.col("split") == name)
        if task_frame is not None:
            part = pl.concat([part, task_frame.filter(pl.col("split") == name)], how="diagonal_relaxed")
        write_frame_jsonl(OUT_DIR / f"{name}.jsonl", part.drop("split").sort("id"))
        write_jsonl(OUT_DIR / "documents" / f"{name}.jsonl", sorted((d for d, s in zip(docs, doc_splits) if s == name), key=lambda d: d["id"]))
    report = {"conversations": stats(conversations), "leakage": leakage,
              "documents": {name: doc_splits.count(name) for name in SPLITS},
              "keyword_tasks": {name: task_splits.count(name) for name in SPLITS}}
    write_json(REPORT, report)
    log.info("split: %s (test conversations moved to train: %d exact overlaps, %d near-duplicates)", counts,
             leakage["exact_overlap_moved"], leakage["near_duplicates_moved"])


if __name__ == "__main__":
    run_stage(main)
