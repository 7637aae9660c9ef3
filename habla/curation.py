"""`curate`: which parts of transcripts, lyrics and table documents become training units, and what they are about.

Two backends produce the same units (`id`, `source`, `file`, `document`, `span`, `text`, `keywords`, `score`,
any extra fields a prompt asks for):

- `passages` (offline): each transcript cut at sentence ends into passages of about `passage_chars`, each song
  whole; keyphrases from `habla.text.keywords`.
- `openai`: a model behind any OpenAI-compatible endpoint reads overlapping chunks and proposes units (the jokes
  of a comedy routine, say). A proposal is kept only as the **source text** at the span where it is found, never
  in the model's wording, so the dialect being learned is never rewritten by another model.

Every proposal ends counted: failed answers by reason, proposals rejected by reason, units kept.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import yaml

from habla import paths
from habla.errors import UserError
from habla.io import stable_id
from habla.llm import first_json_object
from habla.params import Curate
from habla.text.keywords import keyphrases
from habla.text.near_dups import exact_key, near_duplicate_pairs

SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
DOCUMENT_SOURCES = ["transcript", "lyrics", "table"]
OPENING, CLOSING = "¿¡«“\"'(", ".!?…»”\"')"
UNIT_FIELDS = {"text", "keywords", "score"}
SCHEMA = {
    "type": "object",
    "properties": {
        "units": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "text": {"type": "string"},
                    "keywords": {"type": "array", "items": {"type": "string"}},
                    "score": {"type": "integer", "minimum": 1, "maximum": 10},
                },
                "required": ["text", "keywords", "score"],
            },
        }
    },
    "required": ["units"],
}


@dataclass(frozen=True)
class PromptSet:
    """What a kind of unit is: the question asked of each chunk, the request a unit answers, bounds on extra fields."""

    name: str
    curate_prompt: str
    task: str
    song_task: str
    field_bounds: dict = field(default_factory=dict)


def load_prompt_set(name: str, folder: Path = paths.PROMPT_SETS) -> PromptSet:
    path = folder / f"{name}.yaml"
    if not path.exists():
        available = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise UserError(f"curate.prompt_set: {path} does not exist. Available: {available}.")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    prompt = folder.parent / raw.get("curate_prompt", "")
    if not prompt.is_file():
        raise UserError(f"{path}: curate_prompt names {prompt}, which does not exist.")
    chosen = PromptSet(
        name=name,
        curate_prompt=prompt.read_text(encoding="utf-8"),
        task=raw.get("task", ""),
        song_task=raw.get("song_task", raw.get("task", "")),
        field_bounds=raw.get("field_bounds") or {},
    )
    if "{keywords}" not in chosen.task or "{keywords}" not in chosen.song_task or "{chunk}" not in chosen.curate_prompt:
        raise UserError(f"{path}: `task` and `song_task` need {{keywords}}, and the curate prompt needs {{chunk}}.")
    return chosen


def source_documents(messages: pl.DataFrame) -> list[dict]:
    """One document per transcript file, song or table title: its kept lines in order, one per line, and where the
    source is timed, each line's character range with its time in the recording (`timing`)."""
    texts = messages.filter(pl.col("source").is_in(DOCUMENT_SOURCES)).sort("file", "line")
    by_document = texts.group_by("source", "file", "chat", maintain_order=True).agg("text", "start_s", "end_s")
    documents = []
    for source, file, chat, lines, starts, ends in by_document.iter_rows():
        text, timing, offset = "\n".join(lines), [], 0
        for line, start, end in zip(lines, starts, ends):
            if start is not None:
                timing.append((offset, offset + len(line), start, end))
            offset += len(line) + 1
        documents.append(
            {"id": stable_id(file, chat or ""), "source": source, "file": file, "text": text, "timing": timing}
        )
    return documents


def time_range(document: dict, span: tuple[int, int]) -> list[float] | None:
    """Seconds into the recording from the first to the last timed line the span touches; None if untimed."""
    touched = [(start, end) for first, last, start, end in document["timing"] if first < span[1] and last > span[0]]
    return [min(s for s, _ in touched), max(e for _, e in touched)] if touched else None


def sentence_ends(text: str) -> list[int]:
    """Offsets where a sentence (or a line) ends and the next begins."""
    return sorted({m.end() for m in SENTENCE_END.finditer(text)} | {m.end() for m in re.finditer(r"\n+", text)})


def passage_spans(text: str, target_chars: int) -> list[tuple[int, int]]:
    """Spans of about `target_chars`, cut at sentence ends (a longer sentence is a passage of its own)."""
    spans, start = [], 0
    for end in [*sentence_ends(text), len(text)]:
        if end - start >= target_chars or end == len(text):
            if text[start:end].strip():
                spans.append((start, end))
            start = end
    return spans


def chunk_spans(text: str, chunk_chars: int, overlap_chars: int) -> list[tuple[int, int]]:
    """Windows of at most `chunk_chars` ending at sentence ends where one is near, each starting at a sentence end at
    least `overlap_chars` before the previous window's end: any passage up to `overlap_chars` long lies whole in
    some window, so a joke at a boundary is never cut in two."""
    if len(text) <= chunk_chars:
        return [(0, len(text))]
    ends = sentence_ends(text)
    spans, start = [], 0
    while True:
        limit = start + chunk_chars
        if limit >= len(text):
            spans.append((start, len(text)))
            return spans
        fitting = [e for e in ends if start + overlap_chars < e <= limit]
        end = fitting[-1] if fitting and fitting[-1] > start + chunk_chars // 2 else limit
        spans.append((start, end))
        candidates = [e for e in ends if start < e <= end - overlap_chars]
        start = candidates[-1] if candidates else max(end - overlap_chars, start + 1)


def _normalised(text: str) -> tuple[str, list[int]]:
    """Lowercase with every whitespace run as one space, and each character's offset in the original."""
    out, offsets, previous_space = [], [], False
    for index, char in enumerate(text):
        if char.isspace():
            if previous_space:
                continue
            char, previous_space = " ", True
        else:
            previous_space = False
        out.append(char.lower())
        offsets.append(index)
    return "".join(out), offsets


def locate(unit: str, chunk: str, min_similarity: float) -> tuple[int, int] | None:
    """The span of `chunk` that `unit` quotes, whitespace- and case-insensitive, tolerating small differences
    (rapidfuzz's best partial alignment, at least `min_similarity` of 100), widened to whole words; None if absent."""
    from rapidfuzz import fuzz

    needle, _ = _normalised(unit.strip())
    haystack, offsets = _normalised(chunk)
    if not needle or len(needle) > len(haystack):
        return None
    at = haystack.find(needle)
    if at >= 0:
        start, end = at, at + len(needle)
    else:
        alignment = fuzz.partial_ratio_alignment(needle, haystack)
        if alignment.score < min_similarity:
            return None
        start, end = alignment.dest_start, alignment.dest_end
    first, last = offsets[start], offsets[end - 1] + 1
    while first > 0 and (chunk[first - 1].isalnum() or (chunk[first - 1] in OPENING and needle[0] in OPENING)):
        first -= 1
    while last < len(chunk) and (chunk[last].isalnum() or (chunk[last] in CLOSING and needle[-1] in CLOSING)):
        last += 1
    return first, last


def proposals(answer: str) -> tuple[list[dict], str | None]:
    """The units an answer proposes, or the reason it proposes none we can read: `not_json` or `wrong_shape`."""
    data = first_json_object(answer)
    if data is None:
        return [], "not_json"
    units = data.get("units")
    if not isinstance(units, list):
        return [], "wrong_shape"
    good = [
        u
        for u in units
        if isinstance(u, dict)
        and isinstance(u.get("text"), str)
        and u["text"].strip()
        and isinstance(u.get("keywords", []), list)
        and all(isinstance(k, str) for k in u.get("keywords", []))
    ]
    return (good, None) if len(good) == len(units) else ([], "wrong_shape")


@dataclass
class Tally:
    """What became of every chunk and proposal, for `metrics/curate.json`."""

    chunks: int = 0
    proposed: int = 0

    def __post_init__(self):
        self.failed: Counter = Counter()
        self.rejected: Counter = Counter()
        self.rejected_units: list[dict] = []

    def reject(self, reason: str, document: dict, text: str, span: list[int] | None = None) -> None:
        """Count a proposal left out, and keep it with its reason for `data/curated/rejected.jsonl`."""
        self.rejected[reason] += 1
        self.rejected_units.append(
            {"reason": reason, "file": document["file"], "document": document["id"], "span": span, "text": text}
        )


def place(document: dict, chunk: tuple[int, int], proposed: list[dict], settings: Curate, tally: Tally) -> list[dict]:
    """Proposals of one chunk as units of the document, each the source text at its span."""
    start, end = chunk
    text = document["text"][start:end]
    units = []
    for proposal in proposed:
        tally.proposed += 1
        found = locate(proposal["text"], text, settings.min_similarity)
        if found is None:
            tally.reject("not_in_source", document, proposal["text"])
            continue
        first, last = start + found[0], start + found[1]
        extra = {k: v for k, v in proposal.items() if k not in UNIT_FIELDS}
        units.append(
            unit(document, (first, last), [str(k).lower() for k in proposal.get("keywords", [])], proposal, extra)
        )
    return units


def unit(document: dict, span: tuple[int, int], keywords: list[str], proposal: dict | None, extra: dict) -> dict:
    score = proposal.get("score") if proposal else None
    return {
        "id": stable_id(document["id"], str(span[0]), str(span[1])),
        "source": document["source"],
        "file": document["file"],
        "document": document["id"],
        "span": list(span),
        "time": time_range(document, span),
        "text": document["text"][span[0] : span[1]],
        "keywords": keywords,
        "score": score if isinstance(score, (int, float)) and not isinstance(score, bool) else None,
        **extra,
    }


def passage_units(document: dict, settings: Curate) -> list[dict]:
    """The offline backend: passages (a song whole) with their keyphrases."""
    text = document["text"]
    spans = [(0, len(text))] if document["source"] == "lyrics" else passage_spans(text, settings.passage_chars)
    return [
        unit(
            document, span, keyphrases(text[span[0] : span[1]], settings.keywords, settings.extra_stop_words), None, {}
        )
        for span in spans
    ]


def _document_of(candidate: dict) -> dict:
    """What `Tally.reject` needs of a unit's document."""
    return {"id": candidate["document"], "file": candidate["file"]}


def merge_overlapping(units: list[dict], tally: Tally) -> list[dict]:
    """One unit per place in a document: proposals found again through an overlapping chunk (spans overlapping by
    more than half of the shorter) are merged into the first found."""
    kept: list[dict] = []
    for candidate in sorted(units, key=lambda u: (u["file"], u["document"], u["span"][0], -u["span"][1])):
        previous = kept[-1] if kept and kept[-1]["document"] == candidate["document"] else None
        if previous:
            overlap = min(previous["span"][1], candidate["span"][1]) - max(previous["span"][0], candidate["span"][0])
            shorter = min(previous["span"][1] - previous["span"][0], candidate["span"][1] - candidate["span"][0])
            if overlap * 2 > shorter:
                tally.reject("found_twice", _document_of(candidate), candidate["text"], candidate["span"])
                continue
        kept.append(candidate)
    return kept


def rejection(candidate: dict, settings: Curate, bounds: dict[str, list[float]]) -> str | None:
    """Why a unit fails the params' filters, or None."""
    words = len(candidate["text"].split())
    if words < settings.min_words:
        return "too_few_words"
    if settings.max_words and words > settings.max_words:
        return "too_many_words"
    if settings.min_score and candidate["score"] is not None and candidate["score"] < settings.min_score:
        return "score_below_min"
    for name, (low, high) in bounds.items():
        value = candidate.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{name}_missing"
        if not low <= value <= high:
            return f"{name}_out_of_bounds"
    return None


def without_duplicates(units: list[dict], threshold: float, tally: Tally) -> list[dict]:
    """Exact duplicates (same text, case and spacing aside) and MinHash near duplicates of a unit kept from an
    earlier document (in file order, as `merge_overlapping` leaves them) are dropped, each counted."""
    kept: list[dict] = []
    seen: set[str] = set()
    by_document: dict[str, list[dict]] = {}
    for candidate in units:
        by_document.setdefault(candidate["document"], []).append(candidate)
    for group in by_document.values():
        fresh = []
        for candidate in group:
            if exact_key(candidate["text"]) in seen:
                tally.reject("duplicate", _document_of(candidate), candidate["text"], candidate["span"])
            else:
                fresh.append(candidate)
        texts = pl.Series([u["text"] for u in fresh], dtype=pl.String)
        near = {i for i, _, _ in near_duplicate_pairs(texts, pl.Series([u["text"] for u in kept]), threshold)}
        for index, candidate in enumerate(fresh):
            if index in near:
                tally.reject("near_duplicate", _document_of(candidate), candidate["text"], candidate["span"])
            else:
                kept.append(candidate)
                seen.add(exact_key(candidate["text"]))
    return kept


def curated(units: list[dict], settings: Curate, bounds: dict[str, list[float]], tally: Tally) -> list[dict]:
    """Filters, then duplicates across documents."""
    passing = []
    for candidate in units:
        reason = rejection(candidate, settings, bounds)
        if reason:
            tally.reject(reason, _document_of(candidate), candidate["text"], candidate["span"])
        else:
            passing.append(candidate)
    return without_duplicates(passing, settings.near_duplicate_threshold, tally)
