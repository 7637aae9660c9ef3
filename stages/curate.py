"""`curate` stage: transcripts, lyrics and table documents → the units worth training on, with what they are about.

`curate.backend: passages` (default, offline) cuts passages and names them with keyphrases; `openai` asks any
OpenAI-compatible model for the units a prompt set describes (the jokes of a routine, say), keeps each as the
source text at its span, and filters them (see `habla/curation.py`). Chats are untouched: they go from `clean`
straight to `group`. Every answer received is cached in `data/cache/curate.jsonl` (git-ignored: it quotes the
transcripts), so a rerun or a filter change buys nothing twice.
"""

from __future__ import annotations

import logging

import polars as pl

from habla import paths
from habla.curation import (
    SCHEMA,
    Tally,
    chunk_spans,
    curated,
    load_prompt_set,
    merge_overlapping,
    passage_units,
    place,
    proposals,
    source_documents,
)
from habla.errors import UserError, run_stage
from habla.gates import run_gate, warm_up
from habla.io import write_json, write_jsonl
from habla.llm import ChatEndpoint
from habla.params import Curate, load_params
from habla.text.keywords import keyword_prompt

log = logging.getLogger("curate")

REPORT = paths.report("curate")
PARAMS = ["curate"]
DEPS = [
    paths.MESSAGES,
    paths.PROMPTS,
    "stages/curate.py",
    "habla/curation.py",
    "habla/text/keywords.py",
    "habla/text/near_dups.py",
    "habla/llm.py",
    "habla/gates.py",
]
OUTS = [paths.CURATED]
METRICS = [REPORT, paths.gate_report("curate")]

GATE = [
    ("ExpectColumnValuesToBeBetween", {"column": "text_chars", "min_value": 1, "description": "no empty unit"}),
    (
        "ExpectColumnValuesToBeInSet",
        {
            "column": "verbatim",
            "value_set": [True],
            "description": "every unit is the source text at its span, never a model's rewording",
        },
    ),
    ("ExpectColumnValuesToBeUnique", {"column": "id", "description": "one unit per place in a document"}),
]


def gate_frame(units: list[dict], documents: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [u["id"] for u in units],
            "text_chars": [len(u["text"]) for u in units],
            "verbatim": [documents[u["document"]][u["span"][0] : u["span"][1]] == u["text"] for u in units],
        },
        schema={"id": pl.Categorical, "text_chars": pl.Int64, "verbatim": pl.Boolean},
    )


def proposed_units(documents: list[dict], settings: Curate, prompt: str, tally: Tally) -> tuple[list[dict], dict]:
    """Ask the endpoint about every chunk (cached answers reused), place what it proposes; the endpoint's bill."""
    endpoint = ChatEndpoint(settings, paths.CURATE_CACHE, "curate")
    jobs = [
        (d, span) for d in documents for span in chunk_spans(d["text"], settings.chunk_chars, settings.overlap_chars)
    ]
    tally.chunks = len(jobs)

    def ask(job):
        document, (start, end) = job
        question = prompt.replace("{chunk}", document["text"][start:end])
        return endpoint.complete([{"role": "user", "content": question}], settings.max_tokens, SCHEMA)

    units = []
    for (document, span), answer in zip(jobs, endpoint.map(ask, jobs)):
        if answer is None:
            tally.failed["no_answer"] += 1
            continue
        found, reason = proposals(answer)
        if reason:
            log.warning("%s: an answer about %s was not usable (%s)", settings.model, document["file"], reason)
            tally.failed[reason] += 1
            continue
        units += place(document, span, found, settings, tally)
    return units, endpoint.report()


def main() -> None:
    warm_up()  # GX's import runs while the stage works
    params = load_params()
    settings = params.curate
    prompt_set = load_prompt_set(settings.prompt_set)
    # bounds are on fields the model returns: passages have none
    bounds = {**prompt_set.field_bounds, **settings.field_bounds} if settings.backend == "openai" else {}
    messages = pl.read_parquet(paths.MESSAGES, columns=["source", "file", "chat", "line", "text", "start_s", "end_s"])
    documents = source_documents(messages)
    tally, bill = Tally(), {}
    if settings.backend == "passages":
        units = [u for d in documents for u in passage_units(d, settings)]
        tally.chunks = tally.proposed = len(units)
    else:
        units, bill = proposed_units(documents, settings, prompt_set.curate_prompt, tally)
        if tally.chunks and sum(tally.failed.values()) == tally.chunks:
            raise UserError(
                f"curate read nothing from any of the {tally.chunks} chunks: {settings.model} at {settings.base_url} "
                f"gave {dict(sorted(tally.failed.items()))}. Check the endpoint (the log says what went wrong) and "
                "rerun: every answer received is cached."
            )
    units = curated(merge_overlapping(units, tally), settings, bounds, tally)
    for unit in units:
        template = prompt_set.song_task if unit["source"] == "lyrics" else prompt_set.task
        unit["task"] = keyword_prompt(template, unit["keywords"]) if unit["keywords"] else None
    run_gate("curate", gate_frame(units, {d["id"]: d["text"] for d in documents}), GATE)
    write_jsonl(paths.UNITS, sorted(units, key=lambda u: (u["document"], u["span"][0])))
    write_jsonl(paths.CURATE_REJECTED, tally.rejected_units)
    report = {
        "backend": settings.backend,
        "prompt_set": prompt_set.name,
        "documents": len(documents),
        "chunks": tally.chunks,
        **({"calls": 0, "cache_hits": 0, "tokens": {"prompt": 0, "completion": 0}} | bill),
        "failed": sum(tally.failed.values()),
        "failed_by_reason": dict(sorted(tally.failed.items())),
        "proposed": tally.proposed,
        "kept": len(units),
        "rejected": sum(tally.rejected.values()),
        "rejected_by_reason": dict(sorted(tally.rejected.items())),
        "field_bounds": bounds,
    }
    write_json(REPORT, report)
    log.info(
        "curate (%s): %d documents, %d chunks, %d proposed, %d kept, rejected %s, failed %s",
        settings.backend,
        len(documents),
        tally.chunks,
        tally.proposed,
        len(units),
        report["rejected_by_reason"],
        report["failed_by_reason"],
    )


if __name__ == "__main__":
    run_stage(main)
