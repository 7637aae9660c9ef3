"""Batched generation and scoring prompts in the shared chat template (used by `judge`, later chat and serve)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from stages.modeling import device
from stages.params import Sampling


def prompt_batches(tokenizer, conversations: list[list[dict]], batch_size: int) -> Iterator[dict]:
    """Left-padded batches of conversations ending in the assistant prompt, so each row continues from its last token."""
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in conversations[start : start + batch_size]
            ]
            yield tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device())
    finally:
        tokenizer.padding_side = "right"


@torch.inference_mode()
def generate_replies(model, tokenizer, prompts: list[list[dict]], sampling: Sampling, batch_size: int) -> list[str]:
    torch.manual_seed(sampling.seed)
    sample = sampling.temperature > 0
    replies: list[str] = []
    for batch in prompt_batches(tokenizer, prompts, batch_size):
        output = model.generate(
            **batch, max_new_tokens=sampling.max_new_tokens, do_sample=sample,
            temperature=sampling.temperature if sample else None, top_p=sampling.top_p if sample else None,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        replies += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return replies
