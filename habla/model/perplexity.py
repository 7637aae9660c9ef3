"""Perplexity over the persona's reply tokens (conversations) and over every token (documents).

The same template and mask as training; texts longer than the model's window are scored over sliding
windows; bits per byte divide by the UTF-8 bytes of what was scored, so tokenizers can be compared.
"""

from __future__ import annotations

import math

from habla.model.loading import encode_chat
from habla.model.scoring import perplexity_interval, score, sliding_windows


def encode_conversations(tokenizer, conversations: list[dict]) -> list[dict]:
    rows = []
    for conversation in conversations:
        full = encode_chat(tokenizer, conversation["messages"])
        ids, mask = full["input_ids"], full["assistant_masks"]
        reply_ids = [i for i, m in zip(ids, mask) if m]
        rows.append(
            {
                "id": conversation["id"],
                "source": conversation.get("source", "unknown"),
                "persona": conversation.get("persona"),
                "input_ids": ids,
                "mask": mask,
                "bytes": len(tokenizer.decode(reply_ids, skip_special_tokens=True).encode("utf-8")),
            }
        )
    return rows


def encode_documents(tokenizer, documents: list[dict]) -> list[dict]:
    """Every token of a passage is a target (the first has nothing to be predicted from)."""
    rows = []
    for document in documents:
        ids = tokenizer(document["text"])["input_ids"]
        rows.append(
            {
                "id": document["id"],
                "source": document["source"],
                "input_ids": ids,
                "mask": [0] + [1] * (len(ids) - 1),
                "bytes": len(tokenizer.decode(ids[1:], skip_special_tokens=True).encode("utf-8")),
            }
        )
    return rows


def score_windowed(
    model, rows: list[dict], pad_id: int, batch_size: int, window: int, stride: int
) -> list[tuple[float, int]]:
    """(sum NLL, targets) per row, rows longer than `window` scored over sliding windows and summed back."""
    pieces, owner = [], []
    for index, row in enumerate(rows):
        for ids, mask in sliding_windows(row["input_ids"], row["mask"], window, stride):
            pieces.append({"input_ids": ids, "mask": mask})
            owner.append(index)
    totals = [[0.0, 0] for _ in rows]
    for index, (nll, count) in zip(owner, score(model, pieces, pad_id, batch_size)):
        totals[index][0] += nll
        totals[index][1] += count
    return [(nll, count) for nll, count in totals]


def summarise(rows: list[dict], scores: list[tuple[float, int]], resamples: int) -> dict:
    nll = [s[0] for s in scores]
    tokens = [s[1] for s in scores]
    total_nll, total_tokens, total_bytes = sum(nll), sum(tokens), sum(r["bytes"] for r in rows)
    low, high = perplexity_interval(nll, tokens, resamples)
    return {
        "perplexity": math.exp(total_nll / max(total_tokens, 1)),
        "perplexity_ci95": [low, high],
        "nll_per_token": total_nll / max(total_tokens, 1),
        "bits_per_byte": total_nll / math.log(2) / max(total_bytes, 1),
        "tokens": total_tokens,
        "bytes": total_bytes,
    }


def by_field(rows: list[dict], scores: dict[str, list[tuple[float, int]]], field: str) -> dict[str, dict[str, float]]:
    """Token-weighted perplexity per value of `field` for each model: per source (whatsapp, transcript, …), where
    the fine-tune helped, or per persona of a speaker-conditioned model, whose voice it learned. Rows without
    the field are left out."""
    totals: dict[str, dict[str, list[float]]] = {}
    for name, model_scores in scores.items():
        for row, (nll, count) in zip(rows, model_scores):
            if row.get(field) is None:
                continue
            total = totals.setdefault(row[field], {}).setdefault(name, [0.0, 0])
            total[0] += nll
            total[1] += count
    return {
        value: {name: math.exp(nll / max(count, 1)) for name, (nll, count) in models.items()}
        for value, models in sorted(totals.items())
    }
