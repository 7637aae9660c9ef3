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

import logging
import shutil

import polars as pl

from habla import paths
from habla.errors import run_stage
from habla.gates import run_gate, warm_up
from habla.io import read_jsonl, write_json, write_jsonl
from habla.params import Split, load_params
from habla.plots import split_bars
from habla.splitting import SPLITS, assign, check_sizes, leaking_ids, ratio_tolerance, split_conversations, stats

log = logging.getLogger("split")

IN_DIR = paths.GROUPED
OUT_DIR = paths.SPLITS
REPORT = paths.report("split")

PARAMS = ["split"]
DEPS = [IN_DIR, "stages/split.py", "habla/splitting.py", "habla/text/near_dups.py", "habla/gates.py", "habla/plots.py"]
OUTS = [OUT_DIR]
METRICS = [REPORT, paths.gate_report("split")]
PLOTS = [paths.SPLIT_PLOT]


def gate_frame(frame: pl.DataFrame, settings: Split) -> pl.DataFrame:
    """One row per conversation with what the gate checks: split, leakage, drift from the ratios."""
    wanted = pl.col("split").replace_strict({name: getattr(settings.ratios, name) for name in SPLITS}, default=None)
    share = pl.len().over("split") / pl.len()
    return frame.select(
        pl.col("id").cast(pl.Categorical),
        pl.col("split").cast(pl.Categorical),
        leaks_into_test=pl.col("id").is_in(leaking_ids(frame, settings.overlap_min_chars).implode()),
        ratio_drift=(share - wanted).abs(),
    )


GATE = [
    ("ExpectColumnValuesToBeUnique", {"column": "id", "description": "no conversation in two splits"}),
    (
        "ExpectColumnDistinctValuesToEqualSet",
        {"column": "split", "value_set": list(SPLITS), "description": "train, val and test are all non-empty"},
    ),
    (
        "ExpectColumnValuesToBeInSet",
        {"column": "leaks_into_test", "value_set": [False], "description": "no test persona turn also occurs in train"},
    ),
]


def main() -> None:
    warm_up()  # GX's import runs while the stage works
    params = load_params()
    settings = params.split
    conversations, leakage = split_conversations(pl.read_ndjson(paths.CONVERSATIONS), settings)
    counts = check_sizes(conversations, settings)
    docs = read_jsonl(paths.DOCUMENTS)
    doc_splits = assign([d["id"] for d in docs], settings)
    split_of_document = dict(zip((d["id"] for d in docs), doc_splits))
    tasks = read_jsonl(paths.KEYWORD_TASKS)
    task_splits = [split_of_document[t["document"]] for t in tasks]
    task_frame = pl.DataFrame(tasks).with_columns(split=pl.Series(task_splits, dtype=pl.String)) if tasks else None
    gate = gate_frame(conversations, settings)
    drift = (
        "ExpectColumnValuesToBeBetween",
        {
            "column": "ratio_drift",
            "min_value": 0,
            "max_value": ratio_tolerance(gate.height),
            "description": "each split is near its `split.ratios` share",
        },
    )
    run_gate("split", gate, [*GATE, drift])
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        part = conversations.filter(pl.col("split") == name)
        if task_frame is not None:
            part = pl.concat([part, task_frame.filter(pl.col("split") == name)], how="diagonal_relaxed")
        write_jsonl(paths.split_file(name), part.drop("split").sort("id"))
        write_jsonl(
            paths.document_split(name),
            sorted((d for d, s in zip(docs, doc_splits) if s == name), key=lambda d: d["id"]),
        )
    own = paths.SPLITS / paths.PERSONAS
    shutil.rmtree(own, ignore_errors=True)
    personas = sorted(set(conversations["persona"].drop_nulls())) if "persona" in conversations.columns else []
    for ident in personas:  # each persona's own views, for its own adapter (`train_persona@<id>` in dvc.yaml)
        for name in SPLITS:
            mine = conversations.filter((pl.col("split") == name) & (pl.col("persona") == ident))
            write_jsonl(paths.persona_split(ident, name), mine.drop("split").sort("id"))
    report = {
        "conversations": stats(conversations),
        "leakage": leakage,
        "documents": {name: doc_splits.count(name) for name in SPLITS},
        "keyword_tasks": {name: task_splits.count(name) for name in SPLITS},
    }
    write_json(REPORT, report)
    write_json(paths.SPLIT_PLOT, split_bars(report))
    log.info(
        "split: %s (test conversations moved to train: %d exact overlaps, %d near-duplicates)",
        counts,
        leakage["exact_overlap_moved"],
        leakage["near_duplicates_moved"],
    )


if __name__ == "__main__":
    run_stage(main)
