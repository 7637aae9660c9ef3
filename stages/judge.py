"""`judge` stage: generate persona replies with base and fine-tuned models, then judge them pairwise.

Each pair is judged twice, with the answers in both positions; a pair whose
verdict flips with the order is a tie (position bias is not a preference).
The local backend reads the verdict from the judge's next-token probabilities
of `A`, `B` and `C`, so there is no free text to parse and nothing can fail to
parse. With the default judge (the base model itself) the numbers only prove the
plumbing; use a strong judge for conclusions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from stages.errors import UserError, run_stage
from stages.generate import generate_replies, prompt_batches
from stages.io import read_jsonl, write_json, write_jsonl
from stages.metrics_math import bootstrap_interval
from stages.modeling import load_tuned
from stages.params import load_params

log = logging.getLogger("judge")

TEST = Path("data/splits/test.jsonl")
GENERATIONS = Path("metrics/generations.jsonl")
REPORT = Path("metrics/judge.json")
CHOICES = ("A", "B", "C")


def cut_before_last_reply(messages: list[dict]) -> tuple[list[dict], str] | None:
    """The conversation up to the persona's last reply, and that reply as the reference."""
    for index in range(len(messages) - 1, 0, -1):
        if messages[index]["role"] == "assistant":
            return messages[:index], messages[index]["content"]
    return None


def render_transcript(messages: list[dict]) -> str:
    names = {"user": "Usuario", "assistant": "Persona", "system": "Sistema"}
    return "\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def verdict(first: str, second: str) -> str:
    """Combine the two orders. `first`: choice with tuned as A; `second`: choice with tuned as B."""
    tuned_first = {"A": "tuned", "B": "base", "C": "tie"}[first]
    tuned_second = {"A": "base", "B": "tuned", "C": "tie"}[second]
    return tuned_first if tuned_first == tuned_second else "tie"


def win_rate(outcomes: list[str]) -> float:
    if not outcomes:
        return float("nan")
    return (outcomes.count("tuned") + 0.5 * outcomes.count("tie")) / len(outcomes)


@torch.inference_mode()
def choose(model, tokenizer, prompts: list[str], batch_size: int) -> list[str]:
    """The judge's most likely next token among A, B and C, for each prompt."""
    choice_ids = [tokenizer.encode(c, add_special_tokens=False)[0] for c in CHOICES]
    picks: list[str] = []
    for batch in prompt_batches(tokenizer, [[{"role": "user", "content": p}] for p in prompts], batch_size):
        logits = model(**batch).logits[:, -1, choice_ids]
        picks += [CHOICES[i] for i in logits.argmax(dim=-1).tolist()]
    return picks


def main() -> None:
    params = load_params()
    if params.judge.model != "base":
        raise UserError("judge.model: only `base` is available with the local backend for now.")
    template = Path(params.judge.prompt).read_text(encoding="utf-8")
    cases = []
    for conversation in read_jsonl(TEST)[: params.evaluate.max_prompts]:
        cut = cut_before_last_reply(conversation["messages"])
        if cut:
            cases.append({"id": conversation["id"], "prompt": cut[0], "reference": cut[1]})
    if not cases:
        raise UserError("no test conversation has a persona reply to judge.")
    model, tokenizer = load_tuned()
    batch = params.evaluate.batch_size
    prompts = [c["prompt"] for c in cases]
    with model.disable_adapter():
        base_replies = generate_replies(model, tokenizer, prompts, params.evaluate.sampling, batch)
    tuned_replies = generate_replies(model, tokenizer, prompts, params.evaluate.sampling, batch)
    for case, base, tuned in zip(cases, base_replies, tuned_replies):
        case.update(base=base, tuned=tuned)
    write_jsonl(GENERATIONS, cases)

    def fill(case: dict, a: str, b: str) -> str:
        return template.format(conversation=render_transcript(case["prompt"]), reference=case["reference"], answer_a=a, answer_b=b)

    with model.disable_adapter():
        tuned_as_a = choose(model, tokenizer, [fill(c, c["tuned"], c["base"]) for c in cases], batch)
        tuned_as_b = choose(model, tokenizer, [fill(c, c["base"], c["tuned"]) for c in cases], batch)
    outcomes = [verdict(a, b) for a, b in zip(tuned_as_a, tuned_as_b)]
    scores = np.array([{"tuned": 1.0, "tie": 0.5, "base": 0.0}[o] for o in outcomes])
    low, high = bootstrap_interval(len(scores), lambda idx: float(scores[idx].mean()), params.evaluate.bootstrap)
    report = {
        "backend": params.judge.backend, "judge_model": params.judge.model, "n": len(outcomes),
        "wins": outcomes.count("tuned"), "ties": outcomes.count("tie"), "losses": outcomes.count("base"),
        "failed": 0, "adjusted_win_rate": win_rate(outcomes), "adjusted_win_rate_ci95": [low, high],
        "position_consistency": sum(o != "tie" for o in outcomes) / len(outcomes),
    }
    write_json(REPORT, report)
    log.info("judge: %d wins, %d ties, %d losses for the fine-tuned model (adjusted win rate %.2f)",
             report["wins"], report["ties"], report["losses"], report["adjusted_win_rate"])


if __name__ == "__main__":
    run_stage(main)
