"""Preference pairs for persona DPO, and the TRL settings that train on them.

Self-play preference tuning (SPIN, Chen et al. 2024) on the pairs we get for free: for a persona reply in the
training split, the real reply is chosen and the SFT model's own sample for the same context is rejected. The
reference model is the SFT model itself: the trainer gets base + SFT adapter, with the adapter trainable and no
new adapter config, so TRL copies the adapter as a frozen `ref` adapter. (Passing a fresh LoRA config, or a
reference with adapters disabled, makes the base model the reference: the trap behind many SFT → DPO chains
whose margins start far from zero or whose loss never leaves 0.693.) `check_reference` proves it before a step.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import torch

from habla import paths
from habla.errors import UserError
from habla.io import stable_id
from habla.model.fast_paths import cheapen_lora_steps
from habla.model.generation import generate_replies
from habla.model.judge_backends import make_judge, pairwise_template
from habla.model.judging import fill, verdict
from habla.model.loading import special_separator
from habla.model.training import runtime_args, schedule_args
from habla.params import Params
from habla.text.near_dups import exact_key


def preference_prompts(rows: list[dict], per_conversation: int, max_pairs: int, seed: int) -> list[dict]:
    """Contexts cut before persona replies: up to `per_conversation` per conversation (seeded by its id), at most
    `max_pairs` in all (a seeded choice). Each has the prompt messages, the real reply, and where it came from."""
    prompts = []
    for row in rows:
        messages = row["messages"]
        replies = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0 and m["content"].strip()]
        chosen = random.Random(f"{seed}\x1f{row['id']}").sample(replies, min(per_conversation, len(replies)))
        prompts += [
            {
                "id": stable_id(row["id"], str(i)),
                "conversation": row["id"],
                "source": row.get("source", ""),
                "prompt": messages[:i],
                "chosen": messages[i]["content"],
            }
            for i in sorted(chosen)
        ]
    if len(prompts) > max_pairs:
        prompts = sorted(random.Random(seed).sample(prompts, max_pairs), key=lambda p: p["id"])
    return prompts


def pair_up(prompts: list[dict], samples: list[str], max_similarity: float) -> tuple[list[dict], Counter]:
    """Pairs of (real reply, model sample); a sample that is empty, identical or nearly identical to the real reply
    teaches nothing (and an identical one would push the real reply down), so it is dropped and counted."""
    from rapidfuzz import fuzz

    pairs, dropped = [], Counter()
    for prompt, sample in zip(prompts, samples):
        real, model = exact_key(prompt["chosen"]), exact_key(sample)
        if not model:
            dropped["empty_sample"] += 1
        elif real == model:
            dropped["identical"] += 1
        elif fuzz.ratio(real, model) >= max_similarity:
            dropped["near_identical"] += 1
        else:
            pairs.append({**prompt, "rejected": sample})
    return pairs, dropped


def judged_by_real_preference(params: Params, model, tokenizer, pairs: list[dict]) -> tuple[list[dict], int]:
    """`prefer.filter: judge`: the pairs where the judge prefers the real reply in both orders (failed and flipped
    verdicts are left out); the judge is the one `judge.*` configures, with its cache."""
    template = pairwise_template(params.judge)
    cases = [{"prompt": p["prompt"], "reference": "(sin referencia)"} for p in pairs]
    judge, as_judge = make_judge(params.judge, model, tokenizer, params.evaluate.batch_size)
    with as_judge:
        first = judge.choose([fill(template, c, p["chosen"], p["rejected"]) for c, p in zip(cases, pairs)])
        second = judge.choose([fill(template, c, p["rejected"], p["chosen"]) for c, p in zip(cases, pairs)])
    kept = [p for p, a, b in zip(pairs, first, second) if verdict(a, b, ("real", "model")) == "real"]
    return kept, len(pairs) - len(kept)


def build_pairs(params: Params, model, tokenizer, prompts: list[dict]) -> tuple[list[dict], dict]:
    """The SFT model samples a reply to each prompt; the pairs that survive `pair_up` (and the judge, with
    `prefer.filter: judge`), and their counts for the report. No pair left is the user's to fix: one sentence."""
    settings = params.prefer
    separator = special_separator(params.group.separator)
    model.eval()
    started = time.perf_counter()
    replies = generate_replies(
        model,
        tokenizer,
        [p["prompt"] for p in prompts],
        settings.sampling,
        params.evaluate.batch_size,
        keep_tokens=[separator] if separator else [],
    )
    seconds = time.perf_counter() - started
    pairs, dropped = pair_up(prompts, [reply.text for reply in replies], settings.max_similarity)
    judged_out = 0
    if settings.filter == "judge":
        pairs, judged_out = judged_by_real_preference(params, model, tokenizer, pairs)
    if not pairs:
        raise UserError(
            f"no preference pairs left ({len(prompts)} built, dropped {dict(dropped)}, {judged_out} by the judge): "
            "raise prefer.max_similarity or prefer.sampling.temperature, or set prefer.filter: none."
        )
    return pairs, {
        "pairs_built": len(prompts),
        "pairs_dropped": dict(sorted(dropped.items())),
        "judge_filtered_out": judged_out,
        "pairs": len(pairs),
        "sampling_seconds": seconds,
        "pairs_per_second": len(prompts) / seconds if seconds else None,
    }


def as_dataset_rows(pairs: list[dict]) -> list[dict]:
    """TRL's conversational preference format: the prompt's turns, then one assistant turn per side."""
    return [
        {
            "prompt": pair["prompt"],
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}],
        }
        for pair in pairs
    ]


def dpo_config(params: Params, output_dir: Path = paths.PREFER_CHECKPOINTS):
    from trl import DPOConfig

    settings = params.prefer
    return DPOConfig(
        output_dir=str(output_dir),
        **schedule_args(settings),
        beta=settings.beta,
        loss_type=[settings.loss_type],
        max_length=settings.max_length,
        activation_checkpointing=params.train.gradient_checkpointing,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        logging_steps=1,
        **runtime_args(),
    )


def build_dpo_trainer(params: Params, model, tokenizer, pairs: list[dict], output_dir: Path = paths.PREFER_CHECKPOINTS):
    """The one DPOTrainer construction: `model` is base + the SFT adapter, trainable, and no PEFT config is passed,
    so TRL continues that adapter and keeps a frozen copy of it (`ref`) as the reference."""
    from datasets import Dataset
    from trl import DPOTrainer

    model.train()
    trainer = DPOTrainer(
        model=model,
        args=dpo_config(params, output_dir),
        train_dataset=Dataset.from_list(as_dataset_rows(pairs)),
        processing_class=tokenizer,
    )
    cheapen_lora_steps(trainer.model)  # after TRL copied the adapter to `ref`, so both get it
    return trainer


def check_reference(trainer, rows: int = 4) -> dict:
    """Before any step the policy and the reference must be the same model (the SFT model): equal log-probabilities
    on the first pairs, so every reward and margin starts at 0. Returns the largest difference seen."""
    from trl.trainer.utils import use_adapter

    model = trainer.model
    if "ref" not in getattr(model, "peft_config", {}):
        raise RuntimeError("the DPO trainer made no `ref` adapter: its reference would be the base model, not SFT")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(min(rows, len(trainer.train_dataset)))])
    inputs = {k: v.to(model.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    with torch.inference_mode():
        policy = model(**inputs).logits
        with use_adapter(model, "ref"):
            reference = model(**inputs).logits
    difference = float((policy - reference).abs().max())
    if difference > 1e-5:
        raise RuntimeError(f"the reference is not the SFT model: logits differ by {difference:.3g} before training")
    return {"max_logit_difference": difference}


def trained_tokens(log_history: list[dict]) -> float:
    """Tokens (prompt and both replies, padding excluded) the trainer went through, from its last log entry."""
    return max((float(entry["num_tokens"]) for entry in log_history if "num_tokens" in entry), default=0.0)


def training_report(counts: dict, result, log_history: list[dict], steps: list[dict], reference: dict) -> dict:
    """`metrics/prefer.json`: the pairs' counts, the run's loss, speed and last step, and the reference check."""
    last = steps[-1] if steps else {}
    return {
        "enabled": True,
        **counts,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "train_seconds": result.metrics["train_runtime"],
        "train_tokens_per_second": trained_tokens(log_history) / result.metrics["train_runtime"],
        "final": {k: v for k, v in last.items() if k != "step"},
        "reference_check": reference,
    }
