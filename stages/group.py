"""`group` stage: cleaned chat messages → conversations; curated units → documents and keyword tasks.

Chats go through `habla.grouping` (sessions, bursts, turns, persona = `assistant`)
batch by batch; under `group.speakers: conditioned`, once per chosen persona, each
view under a system turn naming its speaker. Each unit `curate` kept (a transcript passage, a song, a joke) is a
plain-text document for language modelling and, when `group.keyword_tasks.enabled`,
an instruction example: the request its prompt set words ("write a joke about …")
answered by the unit's own text.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import polars as pl

from habla import paths
from habla.errors import UserError, run_stage
from habla.gates import Gate
from habla.grouping import (
    MESSAGES_DTYPE,
    ROLES,
    Summary,
    batches,
    check_persona,
    chosen_personas,
    conversations,
    filter_messages,
    flatten,
    speaker_conversations,
    turn_taking,
    turns,
    unit_tasks,
)
from habla.io import JsonlWriter, read_jsonl, write_json, write_jsonl
from habla.params import load_params
from habla.plots import bin_width, histogram, monthly_messages

log = logging.getLogger("group")

MESSAGES = paths.MESSAGES
OUT_DIR = paths.GROUPED
REPORT = paths.report("group")

PARAMS = ["persona", "personas", "group"]
DEPS = [MESSAGES, paths.UNITS, "stages/group.py", "habla/grouping.py", "habla/gates.py", "habla/plots.py"]
OUTS = [OUT_DIR, paths.MONTHLY_PLOT]
METRICS = [REPORT, paths.gate_report("group")]
PLOTS = [paths.TURNS_PLOT]


GATE = [
    ("ExpectTableRowCountToBeBetween", {"min_value": 1, "description": "at least one example"}),
    ("ExpectColumnValuesToNotBeNull", {"column": "content_chars", "description": "every turn has content"}),
    ("ExpectColumnValuesToBeBetween", {"column": "content_chars", "min_value": 1, "description": "no empty turn"}),
    (
        "ExpectColumnValuesToBeInSet",
        {"column": "role", "value_set": ROLES, "description": "roles are system, user or assistant"},
    ),
    (
        "ExpectColumnValuesToBeBetween",
        {"column": "assistant_turns", "min_value": 1, "description": "every example has a persona turn"},
    ),
    (
        "ExpectColumnValuesToBeInSet",
        {
            "column": "role_repeats",
            "value_set": [False],
            "description": "roles alternate (no two turns in a row with one role)",
        },
    ),
    (
        "ExpectColumnValuesToBeInSet",
        {"column": "system_not_first", "value_set": [False], "description": "a system turn only comes first"},
    ),
]


def gate_frame(flat: pl.DataFrame) -> pl.DataFrame:
    """The gate's columns of `flatten(examples)`: each turn's role and length, never its words."""
    return flat.select(
        pl.col("role").cast(pl.Categorical),
        pl.col("assistant_turns").cast(pl.Int64),
        "role_repeats",
        "system_not_first",
        content_chars=pl.col("content").str.len_chars().cast(pl.Int64),
    )


def main() -> None:
    params = load_params()
    persona, settings, batch_rows = params.persona, params.group, params.resources.batch_rows
    conditioned = settings.speakers == "conditioned"
    personas = chosen_personas(params)
    speakers = [name for chosen in personas.values() for name in chosen.authors]
    messages = pl.scan_parquet(MESSAGES)
    chats = messages.filter(pl.col("source") == "whatsapp")
    author_counts = chats.group_by("author").len().collect()
    if author_counts.is_empty():
        raise UserError("no chat messages in data/cleaned/messages.parquet: add WhatsApp exports under data/raw/.")
    for ident, chosen in personas.items():
        check_persona(author_counts, chosen, f"personas.{ident}" if conditioned else "persona.authors")
    gate, summary, dropped, taking = Gate("group", GATE), Summary(), Counter(), []
    OUT_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT_DIR.parent, prefix=".group-") as spill:
        spill = Path(spill)
        with JsonlWriter(spill / "conversations.jsonl") as out:
            for batch in batches(chats, "chat", batch_rows):
                kept_messages, dropped_messages = filter_messages(batch, speakers, settings)
                examples, dropped_examples = (
                    speaker_conversations(kept_messages, personas, settings)
                    if conditioned
                    else conversations(turns(kept_messages, persona, settings), persona, settings)
                )
                dropped.update(dropped_messages)
                dropped.update(dropped_examples)
                if conditioned:
                    taking.append(turn_taking(kept_messages, personas, settings))
                flat = flatten(examples)
                gate.check(gate_frame(flat))
                summary.add_conversations(examples, flat)
                out.write(examples)
        units = read_jsonl(paths.UNITS)
        summary.documents = write_jsonl(
            spill / "documents.jsonl",
            ({"id": u["id"], "source": u["source"], "file": u["file"], "text": u["text"]} for u in units),
        )
        tasks, dropped["documents_without_keywords"] = (
            unit_tasks(units, persona) if settings.keyword_tasks.enabled else ([], 0)
        )
        gate.check(gate_frame(flatten(pl.DataFrame(tasks, schema={"id": pl.String, "messages": MESSAGES_DTYPE}))))
        summary.tasks = write_jsonl(spill / "keyword_tasks.jsonl", tasks)
        gate.close()
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("conversations.jsonl", "documents.jsonl", "keyword_tasks.jsonl"):
            (spill / name).replace(OUT_DIR / name)
    by_source = dict(sorted(messages.group_by("source").len().collect().iter_rows()))
    stats = summary.report(dict(dropped), by_source)
    if conditioned:
        stats["turn_taking"] = taking_counts(taking)
    write_json(REPORT, stats)
    write_json(paths.MONTHLY_PLOT, monthly_messages(chats, speakers))
    turn_counts = summary.turn_counts()
    write_json(
        paths.TURNS_PLOT,
        histogram(turn_counts, bin_width(max(turn_counts, default=0)), "turns", "conversations"),
    )
    log.info(
        "%d conversations, %d documents, %d keyword tasks, filtered %s",
        stats["conversations"],
        stats["documents"],
        summary.tasks,
        stats["filtered"],
    )


def taking_counts(batches: list[pl.DataFrame]) -> dict[str, dict[str, int]]:
    """Turn-taking counts of every batch of chats, summed: after → speaker → count (ids and counts, no text), read
    by group mode in `habla chat` and `habla serve` (`grouping.answer_order`)."""
    counts: dict[str, dict[str, int]] = {}
    if batches:
        for after, speaker, n in pl.concat(batches).group_by("after", "speaker").agg(pl.col("len").sum()).iter_rows():
            counts.setdefault(after, {})[speaker] = int(n)
    return {after: dict(sorted(row.items())) for after, row in sorted(counts.items())}


if __name__ == "__main__":
    run_stage(main)
