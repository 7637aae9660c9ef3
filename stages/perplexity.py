"""`perplexity` stage: base vs fine-tuned on the test split, over assistant tokens only.

The number is a token-weighted mean NLL over the persona's reply tokens (and their
end-of-turn token), using the same template and mask as training: no padding, no
system or user tokens. Bits per byte divides by UTF-8 bytes of those replies, so
models with different tokenizers can be compared. Test documents (transcripts,
lyrics) are scored on every token, apart. Anything longer than
`train.max_length` is scored with overlapping windows (`evaluate.stride`) instead
of being cut, so long conversations and documents count whole.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path


from stages.errors import run_stage
from stages.io import read_jsonl, write_json
from stages.metrics_math import perplexity_interval, score, sliding_windows
from stages.modeling import encode_chat, load_tuned
from stages.params import load_params

log = logging.getLogger("perplexity")

TEST = Path("data/splits/test.jsonl")
TEST_DOCUMENTS = Path("data/splits/documents/test.jsonl")
REPORT = Path("metrics/perplexity.json")
PLOT = Path("metrics/plots/perplexity.json")


def encode_conversations(tokenizer, conversations: list[dict]) -> list[dict]:
    rows = []
    for conversation in conversations:
        full = encode_chat(tokenizer, conversation["messages"])
        ids, mask = full["input_ids"], full["assistant_masks"]
        reply_ids = [i for i, m in zip(ids, mask) if m]
        rows.append({
            "id": conversation["id"], "source": conversation.get("source", "unknown"), "input_ids": ids, "mask": mask,
            "bytes": len(tokenizer.decode(reply_ids, skip_special_tokens=True).encode("utf-8")),
        })
    return rows


def encode_documents(tokenizer, documents: list[dict]) -> list[dict]:
    """Every token of a passage is a target (the first has nothing to be predicted from)."""
    rows = []
    for document in documents:
        ids = tokenizer(document["text"])["input_ids"]
        rows.append({
            "id": document["id"], "source": document["source"], "input_ids": ids, "mask": [0] + [1] * (len(ids) - 1),
            "bytes": len(tokenizer.decode(ids[1:], skip_special_tokens=True).encode("utf-8")),
        })
    return rows


def score_windowed(model, rows: list[dict], pad_id: int, batch_size: int, window: int, stride: int) -> list[tuple[float, int]]:
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


def main() -> None:
    params = load_params()
    window, stride = params.train.max_length, params.evaluate.stride
    model, tokenizer = load_tuned()
    rows = encode_conversations(tokenizer, read_jsonl(TEST))
    documents = encode_documents(tokenizer, read_jsonl(TEST_DOCUMENTS)) if TEST_DOCUMENTS.exists() else []
    everything = rows + documents

    def score_all():
        return score_windowed(model, everything, tokenizer.pad_token_id, params.evaluate.batch_size, window, stride)

    start = time.perf_counter()
    with model.disable_adapter():
        base_all = score_all()
    tuned_all = score_all()
    seconds = time.perf_counter() - start
    base_scores, tuned_scores = base_all[: len(rows)], tuned_all[: len(rows)]
    report = {
        "base": summarise(rows, base_scores, params.evaluate.bootstrap),
        "tuned": summarise(rows, tuned_scores, params.evaluate.bootstrap),
        "conversations": len(rows),
        "windowed_conversations": sum(len(r["input_ids"]) > window for r in rows),
        "tokens_per_second": 2 * sum(s[1] for s in base_all) / seconds if seconds else None,
    }
    if documents:
        report["documents"] = {
            "count": len(documents),
            "windowed": sum(len(d["input_ids"]) > window for d in documents),
            "base": summarise(documents, base_all[len(rows):], params.evaluate.bootstrap),
            "tuned": summarise(documents, tuned_all[len(rows):], params.evaluate.bootstrap),
        }
    sources = sorted({r["source"] for r in rows})
    if len(sources) > 1:
        report["by_source"] = {
            source: {
                name: summarise([r for r in rows if r["source"] == source], [s for r, s in zip(rows, scores) if r["source"] == source], params.evaluate.bootstrap)["perplexity"]
                for name, scores in (("base", base_scores), ("tuned", tuned_scores))
            }
            for source in sources
        }
    write_json(REPORT, report)
    write_json(PLOT, [
        {"id": r["id"], "base": math.exp(b[0] / max(b[1], 1)), "tuned": math.exp(t[0] / max(t[1], 1))}
        for r, b, t in zip(rows, base_scores, tuned_scores)
    ])
    log.info("perplexity on %d test conversations: base %.2f → fine-tuned %.2f", len(rows),
             report["base"]["perplexity"], report["tuned"]["perplexity"])


if __name__ == "__main__":
    run_stage(main)
