"""Batched reply generation with the shared chat template (used by `judge`, and by chat and serve later)."""

from __future__ import annotations

import torch

from stages.modeling import device
from stages.params import Sampling


@torch.inference_mode()
def generate_replies(model, tokenizer, prompts: list[list[dict]], sampling: Sampling, batch_size: int) -> list[str]:
    """One reply per conversation prompt; left padding so every row continues from its own last token."""
    torch.manual_seed(sampling.seed)
    tokenizer.padding_side = "left"
    replies: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts[start : start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device())
        output = model.generate(
            **batch, max_new_tokens=sampling.max_new_tokens, do_sample=sampling.temperature > 0,
            temperature=sampling.temperature if sampling.temperature > 0 else None,
            top_p=sampling.top_p if sampling.temperature > 0 else None,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        replies += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    tokenizer.padding_side = "right"
    return replies
