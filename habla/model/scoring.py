"""NLL of target tokens, batched scoring and perplexity intervals for the evaluation stages."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from habla.stats import bootstrap_interval


def target_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of NLL of `targets` (logits[:, i] predicts targets[:, i]) where `mask` is 1, and their count."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    token_nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = mask.to(token_nll.dtype)
    return (token_nll * mask).sum(dim=1), mask.sum(dim=1)


def sliding_windows(ids: list[int], mask: list[int], window: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """Cut a sequence longer than the model's context into overlapping windows that score each target once.

    Window k ends at `window + k * stride` (the last one at the end) and scores only
    the targets the previous window did not reach, so every scored token sees at
    least `window - stride` tokens of context (all of them near the start). A
    sequence that fits is one window. As in the transformers perplexity guide, but
    anchored at the end so the final window is full and no target is lost.
    """
    if len(ids) <= window:
        return [(ids, mask)]
    out, scored_until, end = [], 0, window
    while scored_until < len(ids):
        end = min(end, len(ids))
        begin = max(0, end - window)
        fresh = [m if begin + i >= scored_until else 0 for i, m in enumerate(mask[begin:end])]
        out.append((ids[begin:end], fresh))
        scored_until, end = end, end + stride
    return out


def perplexity_interval(
    nll: Sequence[float], tokens: Sequence[float], resamples: int, seed: int = 0
) -> tuple[float, float]:
    nll_a, tok_a = np.asarray(nll, dtype=float), np.asarray(tokens, dtype=float)
    return bootstrap_interval(
        len(nll_a), lambda idx: math.exp(nll_a[idx].sum() / max(tok_a[idx].sum(), 1)), resamples, seed
    )


@torch.inference_mode()
def score(model, rows: list[dict], pad_id: int, batch_size: int) -> list[tuple[float, int]]:
    """(sum NLL, target tokens) per row; batches sorted by length so padding stays small.

    Only the positions that predict a scored token get logits (`logits_to_keep` with their indices): a
    vocabulary-wide row for every prompt and padding position cost the local judge 6.3 GB on a 49k-vocabulary
    model, for the few answer tokens it reads.
    """
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    where = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = [rows[i] for i in order[start : start + batch_size]]
        width = max(len(r["input_ids"]) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        loss_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, item in enumerate(chunk):
            n = len(item["input_ids"])
            ids[row, :n] = torch.tensor(item["input_ids"])
            attention[row, :n] = 1
            loss_mask[row, :n] = torch.tensor(item["mask"])
        positions = loss_mask[:, 1:].any(dim=0).nonzero().flatten()  # logits at p predict token p + 1
        logits = model(
            input_ids=ids.to(where), attention_mask=attention.to(where), logits_to_keep=positions.to(where)
        ).logits
        nll, count = target_nll(logits, ids[:, positions + 1].to(where), loss_mask[:, positions + 1].to(where))
        for offset, index in enumerate(order[start : start + batch_size]):
            results[index] = (float(nll[offset]), int(count[offset]))
    return results
