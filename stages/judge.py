"""`judge` stage: generate persona replies with base and fine-tuned models, then judge them pairwise.

Each pair is judged twice, with the answers in both positions; a pair whose
verdict flips with the order is a tie (position bias is not a preference).
A pair that the judge failed on (an HTTP error, an answer that is not A, B or C)
is reported as failed, never as a loss. With the default local judge (the base
model itself) the numbers only prove the plumbing; for conclusions serve a strong
model and use the `openai` backend (see `stages/judges.py`).
"""

from __future__ import annotations

import contextlib
import logging
import random
from pathlib import Path

import numpy as np

from stages.errors import UserError, run_stage
from stages.generate import generate_replies
from stages.io import read_jsonl, write_json, write_jsonl
from stages.judges import LocalJudge, OpenAIJudge
from stages.metrics_math import bootstrap_interval
from stages.modeling import load_tuned
from stages.params import Judge, load_params

log = logging.getLogger("judge")

TEST = Path("data/splits/test.jsonl")
GENERATIONS = Path("metrics/generations.jsonl")
REPORT = Path("metrics/judge.json")
CACHE = Path("metrics/judge_cache.jsonl")
PROMPTS = {"local": Path("prompts/judge_pairwise.es.txt"), "openai": Path("prompts/judge_pairwise_json.es.txt")}
RATING_PROMPTS = {"local": Path("prompts/judge_rating.es.txt"), "openai": Path("prompts/judge_rating_json.es.txt")}


def cut_before_reply(conversation: dict, how: str = "last", seed: int = 0) -> tuple[list[dict], str] | None:
    """The conversation up to one persona reply (the last, or a random one), and that reply as the reference.

    The random choice is seeded by `seed` and the conversation's id, so each
    conversation's cut stays put when others are added or the order changes.
    """
    messages = conversation["messages"]
    replies = [i for i in range(1, len(messages)) if messages[i]["role"] == "assistant"]
    if not replies:
        return None
    index = replies[-1] if how == "last" else random.Random(f"{seed}:{conversation['id']}").choice(replies)
    return messages[:index], messages[index]["content"]


def render_transcript(messages: list[dict]) -> str:
    names = {"user": "Usuario", "assistant": "Persona", "system": "Sistema"}
    return "\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def fill(template: str, case: dict, answer_a: str, answer_b: str = "") -> str:
    """Placeholders replaced literally: templates may contain JSON braces that str.format would choke on.

    `{answer}` (rating templates) is the same text as `{answer_a}`."""
    values = {"conversation": render_transcript(case["prompt"]), "reference": case["reference"], "answer_a": answer_a,
              "answer_b": answer_b, "answer": answer_a}
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def verdict(first: str | None, second: str | None) -> str:
    """Combine the two orders. `first`: choice with tuned as A; `second`: choice with tuned as B.

    Either order failing makes the pair `failed`; orders that disagree make a tie.
    """
    if first is None or second is None:
        return "failed"
    tuned_first = {"A": "tuned", "B": "base", "C": "tie"}[first]
    tuned_second = {"A": "base", "B": "tuned", "C": "tie"}[second]
    return tuned_first if tuned_first == tuned_second else "tie"


def win_rate(outcomes: list[str]) -> float:
    judged = [o for o in outcomes if o != "failed"]
    if not judged:
        return float("nan")
    return (judged.count("tuned") + 0.5 * judged.count("tie")) / len(judged)


def summarise(outcomes: list[str], settings: Judge, resamples: int) -> dict:
    judged = [o for o in outcomes if o != "failed"]
    scores = np.array([{"tuned": 1.0, "tie": 0.5, "base": 0.0}[o] for o in judged])
    low, high = bootstrap_interval(len(scores), lambda idx: float(scores[idx].mean()), resamples)
    return {
        "backend": settings.backend, "judge_model": settings.model, "n": len(judged), "failed": outcomes.count("failed"),
        "wins": judged.count("tuned"), "ties": judged.count("tie"), "losses": judged.count("base"),
        "adjusted_win_rate": win_rate(outcomes), "adjusted_win_rate_ci95": [low, high],
        "position_consistency": sum(o != "tie" for o in judged) / len(judged) if judged else float("nan"),
    }


def rating_summary(grades: list[float | None], resamples: int) -> dict:
    valid = np.array([g for g in grades if g is not None], dtype=float)
    low, high = bootstrap_interval(len(valid), lambda idx: float(valid[idx].mean()), resamples)
    return {"mean": float(valid.mean()) if len(valid) else float("nan"), "ci95": [low, high], "n": len(valid),
            "failed": sum(g is None for g in grades)}


def template_path(settings: Judge) -> Path:
    path = PROMPTS[settings.backend] if settings.prompt == "auto" else Path(settings.prompt)
    if not path.exists():
        raise UserError(f"judge.prompt: {path} does not exist.")
    return path


def main() -> None:
    params = load_params()
    settings = params.judge
    if settings.backend == "local" and settings.model != "base":
        raise UserError("judge.model: the local backend judges with `base`; for another judge serve it and use backend `openai`.")
    template = template_path(settings).read_text(encoding="utf-8")
    cases = []
    for conversation in read_jsonl(TEST)[: params.evaluate.max_prompts]:
        cut = cut_before_reply(conversation, params.evaluate.cut, params.evaluate.cut_seed)
        if cut:
            cases.append({"id": conversation["id"], "source": conversation.get("source"), "prompt": cut[0], "reference": cut[1]})
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
    tuned_as_a = [fill(template, c, c["tuned"], c["base"]) for c in cases]
    tuned_as_b = [fill(template, c, c["base"], c["tuned"]) for c in cases]
    rating = RATING_PROMPTS[settings.backend].read_text(encoding="utf-8")
    rate_base = [fill(rating, c, c["base"]) for c in cases]
    rate_tuned = [fill(rating, c, c["tuned"]) for c in cases]
    local = settings.backend == "local"
    judge = LocalJudge(model, tokenizer, batch) if local else OpenAIJudge(settings, CACHE)
    with model.disable_adapter() if local else contextlib.nullcontext():  # the local judge is the base model
        first, second = judge.choose(tuned_as_a), judge.choose(tuned_as_b)
        grades = {"base": judge.rate(rate_base), "tuned": judge.rate(rate_tuned)}
    outcomes = [verdict(a, b) for a, b in zip(first, second)]
    report = summarise(outcomes, settings, params.evaluate.bootstrap)
    report["rating"] = {name: rating_summary(values, params.evaluate.bootstrap) for name, values in grades.items()}
    report["calls"] = judge.calls
    report["cache_hits"] = getattr(judge, "cache_hits", 0)
    write_json(REPORT, report)
    log.info("judge: %d wins, %d ties, %d losses for the fine-tuned model, %d failed (adjusted win rate %.2f)",
             report["wins"], report["ties"], report["losses"], report["failed"], report["adjusted_win_rate"])


if __name__ == "__main__":
    run_stage(main)
