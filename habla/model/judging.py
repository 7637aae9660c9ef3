"""Judging the models that answered: which pairs, both orders of each, ratings, and win rates with intervals.

Each pair is judged twice, with the answers in both positions; a pair whose verdict flips with the order
is a tie (position bias is not a preference). A failed judgment is `failed`, never a loss; a case where a
model never answered (an opponent's timeout) is failed without asking the judge. The judge itself (local
or an endpoint) comes from `habla/model/judge_backends.py`: here it is anything with `choose`, `rate`,
`failures` and `calls`.
"""

from __future__ import annotations

import math

import numpy as np

from habla.model.loading import MODELS
from habla.params import Judge
from habla.stats import bootstrap_interval

OPPONENT = "opponent"
LATER = (("preferred", "tuned"), ("tuned", "conditioned"))  # each judged against the model it is meant to beat
BLIND = ("A", "B")  # which of two replies the person wrote: no tie to hide behind


def comparisons(cases: list[dict]) -> tuple[list[str], list[tuple[str, str]]]:
    """The models with replies in `cases` (habla's in report order, then the opponent) and the pairs to judge:
    tuned against base, preferred against tuned, a persona's own adapter against the speaker-conditioned one, and
    every one of ours against the opponent."""
    models = [name for name in (*MODELS, OPPONENT) if any(name in case for case in cases)]
    ours = [name for name in models if name != OPPONENT]
    pairs = [("tuned", "base"), *((one, other) for one, other in LATER if one in ours and other in ours)]
    if OPPONENT in models:
        pairs += [(name, OPPONENT) for name in ("tuned", "base", "preferred") if name in ours]
    return models, pairs


def where_answered(cases: list[dict], models: tuple[str, ...], ask) -> list:
    """`ask(prompts built from cases)` for the cases where every one of `models` has a reply, None for the others
    (an opponent that never answered): those are failed without asking the judge."""
    usable = [i for i, case in enumerate(cases) if all(case.get(m) is not None for m in models)]
    out: list = [None] * len(cases)
    for i, answer in zip(usable, ask([cases[i] for i in usable])):
        out[i] = answer
    return out


def judged_pair(judge, template: str, cases: list[dict], pair: tuple[str, str]) -> dict:
    """Both orders of `pair` on every case: the letters, and the outcome (a model, `tie` or `failed`) per case."""
    one, other = pair
    as_a = where_answered(cases, pair, lambda cs: judge.choose([fill(template, c, c[one], c[other]) for c in cs]))
    as_b = where_answered(cases, pair, lambda cs: judge.choose([fill(template, c, c[other], c[one]) for c in cs]))
    missing = sum(not all(case.get(m) is not None for m in pair) for case in cases)
    if missing:
        judge.failures["no_reply"] += missing
    return {"as_a": as_a, "as_b": as_b, "outcomes": [verdict(a, b, pair) for a, b in zip(as_a, as_b)]}


def ratings(judge, template: str, cases: list[dict], model: str) -> list[float | None]:
    return where_answered(cases, (model,), lambda cs: judge.rate([fill(template, c, c[model]) for c in cs]))


def judge_report(judge, judged: dict, grades: dict, settings: Judge, resamples: int) -> dict:
    """`metrics/judge.json`: tuned against base (top level), preferred against tuned (`preferred_vs_tuned`), in a
    per-persona instance its own adapter against the conditioned one (`tuned_vs_conditioned`), each of ours against
    the opponent with the paired tuned − base difference, the ratings, and what the judge cost and failed on."""
    report = summarise(judged["tuned", "base"]["outcomes"], settings, resamples)
    for one, other in LATER:
        if (one, other) in judged:
            report[f"{one}_vs_{other}"] = summarise(judged[one, other]["outcomes"], settings, resamples, one)
    against = {one: result["outcomes"] for (one, other), result in judged.items() if other == OPPONENT}
    if against:
        report[OPPONENT] = {
            "model": settings.opponent.model,
            **{name: summarise(outcomes, settings, resamples, name) for name, outcomes in against.items()},
            "tuned_minus_base": paired_difference(
                scores(against["tuned"], "tuned"), scores(against["base"], "base"), resamples
            ),
        }
    report["rating"] = {name: rating_summary(values, resamples) for name, values in grades.items()}
    report["calls"] = judge.calls
    report["cache_hits"] = getattr(judge, "cache_hits", 0)
    report["failed_by_reason"] = dict(sorted(judge.failures.items()))
    return report


def judgment_rows(cases: list[dict], judged: dict, grades: dict):
    """Per pair and prompt: both letters, the outcome and both ratings (`metrics/judgments.jsonl`)."""
    for pair, result in judged.items():
        for i, case in enumerate(cases):
            yield {
                "id": case["id"],
                "pair": f"{pair[0]} vs {pair[1]}",
                "first_as_a": result["as_a"][i],
                "first_as_b": result["as_b"][i],
                "outcome": result["outcomes"][i],
                "rating": {name: grades[name][i] for name in pair},
            }


def outcome_counts(judged: dict) -> dict[str, dict[str, int]]:
    """Wins, ties, losses and failures of each pair's first model, for the outcome bars."""
    return {
        f"{one} vs {other}": {
            "win": result["outcomes"].count(one),
            "tie": result["outcomes"].count("tie"),
            "loss": result["outcomes"].count(other),
            "failed": result["outcomes"].count("failed"),
        }
        for (one, other), result in judged.items()
    }


def render_transcript(messages: list[dict]) -> str:
    names = {"user": "Usuario", "assistant": "Persona", "system": "Sistema"}
    return "\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def fill(template: str, case: dict, answer_a: str, answer_b: str = "") -> str:
    """Placeholders replaced literally: templates may contain JSON braces that str.format would choke on.

    `{answer}` (rating templates) is the same text as `{answer_a}`."""
    values = {
        "conversation": render_transcript(case["prompt"]),
        "reference": case["reference"],
        "answer_a": answer_a,
        "answer_b": answer_b,
        "answer": answer_a,
    }
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def verdict(first: str | None, second: str | None, pair: tuple[str, str] = ("tuned", "base")) -> str:
    """Combine the two orders. `first`: choice with pair[0] as A; `second`: choice with pair[0] as B.

    Returns the model preferred in both orders; either order failing makes the pair `failed`; orders that
    disagree make a tie.
    """
    if first is None or second is None:
        return "failed"
    one, other = pair
    in_first, in_second = chosen_model(first, one, other), chosen_model(second, other, one)
    return in_first if in_first == in_second else "tie"


def chosen_model(letter: str, shown_as_a: str, shown_as_b: str) -> str:
    """The model a judge's letter names: A, B, or `tie` for C."""
    return {"A": shown_as_a, "B": shown_as_b, "C": "tie"}[letter]


def scores(outcomes: list[str], model: str = "tuned") -> list[float | None]:
    """Per prompt: 1 when `model` won, ½ for a tie, 0 when it lost, None when the judgment failed."""
    return [None if o == "failed" else 1.0 if o == model else 0.5 if o == "tie" else 0.0 for o in outcomes]


def win_rate(outcomes: list[str], model: str = "tuned") -> float:
    judged = [s for s in scores(outcomes, model) if s is not None]
    return sum(judged) / len(judged) if judged else float("nan")


def summarise(outcomes: list[str], settings: Judge, resamples: int, model: str = "tuned") -> dict:
    """Wins, ties and losses of `model` over the judged prompts, its adjusted win rate (win + ½ tie) with a
    bootstrap interval; failed judgments are counted apart, never as losses."""
    judged = np.array([s for s in scores(outcomes, model) if s is not None])
    low, high = bootstrap_interval(len(judged), lambda idx: float(judged[idx].mean()), resamples)
    return {
        "backend": settings.backend,
        "judge_model": settings.model,
        "n": len(judged),
        "failed": outcomes.count("failed"),
        "wins": int((judged == 1.0).sum()),
        "ties": int((judged == 0.5).sum()),
        "losses": int((judged == 0.0).sum()),
        "adjusted_win_rate": win_rate(outcomes, model),
        "adjusted_win_rate_ci95": [low, high],
        "position_consistency": float((judged != 0.5).mean()) if len(judged) else float("nan"),
    }


def sign_test(positive: int, negative: int) -> float:
    """Two-sided exact binomial test of `positive` vs `negative` (ties left out) under no difference."""
    n = positive + negative
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(positive, negative) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(tuned: list[float | None], base: list[float | None], resamples: int) -> dict:
    """How much more often the tuned model than the base beats the same opponent on the same prompts:
    the mean per-prompt difference of scores with a paired bootstrap interval (prompts resampled, pairs kept
    together) and a sign-test p-value; prompts where either judgment failed are left out and counted."""
    pairs = [(t, b) for t, b in zip(tuned, base) if t is not None and b is not None]
    differences = np.array([t - b for t, b in pairs])
    low, high = bootstrap_interval(len(differences), lambda idx: float(differences[idx].mean()), resamples)
    positive, negative = int((differences > 0).sum()), int((differences < 0).sum())
    return {
        "n": len(pairs),
        "left_out": len(tuned) - len(pairs),
        "mean": float(differences.mean()) if len(pairs) else float("nan"),
        "ci95": [low, high],
        "tuned_better": positive,
        "base_better": negative,
        "same": len(pairs) - positive - negative,
        "sign_test_p": sign_test(positive, negative),
    }


def rating_summary(grades: list[float | None], resamples: int) -> dict:
    valid = np.array([g for g in grades if g is not None], dtype=float)
    low, high = bootstrap_interval(len(valid), lambda idx: float(valid[idx].mean()), resamples)
    return {
        "mean": float(valid.mean()) if len(valid) else float("nan"),
        "ci95": [low, high],
        "n": len(valid),
        "failed": sum(g is None for g in grades),
    }


def blind_orders(judge, template: str, cases: list[dict], model: str) -> dict:
    """The blind test of one model: each prompt's real reply and the model's, real first then real second; the
    judge says which one the person wrote. Per prompt, each order's pick is `real`, `generated` or None (failed)."""
    as_a = where_answered(
        cases, (model,), lambda cs: judge.choose([fill(template, c, c["reference"], c[model]) for c in cs], BLIND)
    )
    as_b = where_answered(
        cases, (model,), lambda cs: judge.choose([fill(template, c, c[model], c["reference"]) for c in cs], BLIND)
    )
    missing = sum(case.get(model) is None for case in cases)
    if missing:
        judge.failures["no_reply"] += missing
    return {
        "real_as_a": [picked_real(letter, "A") for letter in as_a],
        "real_as_b": [picked_real(letter, "B") for letter in as_b],
    }


def picked_real(letter: str | None, real_shown_as: str) -> str | None:
    return None if letter is None else "real" if letter == real_shown_as else "generated"


def blind_summary(orders: dict, resamples: int) -> dict:
    """How often the judge found the real reply: per prompt the share of its two orders it got right (orders that
    failed left out), accuracy over prompts with a bootstrap interval. 0.5 is chance: a judge that always says A
    is right once per prompt; below 0.5 the model reads more like the person than the person does."""
    per_prompt = []
    for first, second in zip(orders["real_as_a"], orders["real_as_b"]):
        answered = [pick == "real" for pick in (first, second) if pick is not None]
        if answered:
            per_prompt.append(sum(answered) / len(answered))
    correct = np.array(per_prompt)
    low, high = bootstrap_interval(len(correct), lambda idx: float(correct[idx].mean()), resamples)
    judgments = orders["real_as_a"] + orders["real_as_b"]
    return {
        "n": len(correct),
        "judgments": sum(pick is not None for pick in judgments),
        "failed": judgments.count(None),
        "accuracy": float(correct.mean()) if len(correct) else math.nan,
        "accuracy_ci95": [low, high],
        "first_position_bias": first_position_share(orders),
    }


def first_position_share(orders: dict) -> float:
    """The share of answered judgments that picked answer A, whichever it was: 0.5 for a judge without position
    bias; near 1 (or 0) and an accuracy near 0.5 means the judge read the positions, not the replies."""
    letters = [("A" if pick == "real" else "B") for pick in orders["real_as_a"] if pick is not None]
    letters += [("B" if pick == "real" else "A") for pick in orders["real_as_b"] if pick is not None]
    return letters.count("A") / len(letters) if letters else math.nan
