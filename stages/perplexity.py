"""`perplexity` stage: base vs fine-tuned on the test split, over assistant tokens only.

The number is a token-weighted mean NLL over the persona's reply tokens (and their
end-of-turn token), using the same template and mask as training: no padding, no
system or user tokens. Bits per byte divides by UTF-8 bytes of those replies, so
models with different tokenizers can be compared.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path


from stages.errors import run_stage
from stages.io import read_jsonl, write_json
from stages.metrics_math import perplexity_interval, score
from stages.modeling import encode_chat, load_tuned
from stages.params import load_params

log = logging.getLogger("perplexity")

TEST = Path("data/splits/test.jsonl")
REPORT = Path("metrics/perplexity.json")
PLOT = Path("metrics/plots/perplexity.json")


def encode_all(tokenizer, conversations: list[dict], max_length: int) -> list[dict]:
    rows = []
    for conversation in conversations:
        full = encode_chat(tokenizer, conversation["messages"])
        ids, mask = full["input_ids"][:max_length], full["assistant_masks"][:max_length]
        reply_ids = [i for i, m in zip(ids, mask) if m]
        rows.append({
            "id": conversation["id"], "source": conversation.get("source", "unknown"), "input_ids": ids, "mask": mask,
            "bytes": len(tokenizer.decode(reply_ids, skip_special_tokens=True).encode("utf-8")),
            "truncated": len(full["input_ids"]) > max_length,
        })
    return rows


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
    conversations = read_jsonl(TEST)
    model, tokenizer = load_tuned()
    rows = encode_all(tokenizer, conversations, params.train.max_length)
    start = time.perf_counter()
    with model.disable_adapter():
        base_scores = score(model, rows, tokenizer.pad_token_id, params.evaluate.batch_size)
    tuned_scores = score(model, rows, tokenizer.pad_token_id, params.evaluate.batch_size)
    seconds = time.perf_counter() - start
    report = {
        "base": summarise(rows, base_scores, params.evaluate.bootstrap),
        "tuned": summarise(rows, tuned_scores, params.evaluate.bootstrap),
        "conversations": len(rows),
        "truncated_conversations": sum(r["truncated"] for r in rows),
        "tokens_per_second": 2 * sum(s[1] for s in base_scores) / seconds if seconds else None,
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
