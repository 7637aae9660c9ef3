"""Pairwise judging maths: prompts filled literally, verdicts from both orders, win rates with intervals.

Each pair is judged twice, with the answers in both positions; a pair whose verdict flips with the order
is a tie (position bias is not a preference). A failed judgment is `failed`, never a loss.
"""

from __future__ import annotations

import numpy as np

from habla.model.scoring import bootstrap_interval
from habla.params import Judge


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
