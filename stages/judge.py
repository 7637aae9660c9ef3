"""`judge` stage: which reply sounds more like the persona, base or fine-tuned?

Reads the replies `generate` wrote. Each pair is judged twice, with the answers
in both positions; a pair whose verdict flips with the order is a tie (position
bias is not a preference). A pair that the judge failed on (no answer, or an
answer that is not A, B or C) is reported as failed, by reason, never as a loss.
With the default local judge (the base model itself) the numbers only prove the
plumbing; for conclusions serve a strong model and use the `openai` backend
(see `habla/model/judge_backends.py`).
"""

from __future__ import annotations

import logging

from habla import paths
from habla.errors import UserError, run_stage
from habla.io import read_jsonl, write_json, write_jsonl
from habla.model.judge_backends import RATING_PROMPTS, make_judge, pairwise_template
from habla.model.judging import fill, paired_difference, rating_summary, scores, summarise, verdict
from habla.model.loading import load_tuned
from habla.params import load_params
from habla.plots import outcome_bars, rating_rows

log = logging.getLogger("judge")

GENERATIONS = paths.GENERATIONS
REPORT = paths.report("judge")

PARAMS = ["preset", "evaluate.batch_size", "evaluate.bootstrap", "judge"]
DEPS = [
    paths.BASE_MODEL,
    paths.ADAPTER,
    paths.PREFERRED,
    GENERATIONS,
    paths.PROMPTS,
    "stages/judge.py",
    "habla/model/judging.py",
    "habla/model/judge_backends.py",
    "habla/model/generation.py",
    "habla/llm.py",
    "habla/plots.py",
    "habla/model/scoring.py",
    "habla/model/loading.py",
    "habla/model/templates.py",
    paths.PRESETS,
]
OUTS = [paths.JUDGMENTS, paths.JUDGE_RATINGS_PLOT]
METRICS = [REPORT]
PLOTS = [paths.JUDGE_OUTCOMES_PLOT]


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


def main() -> None:
    params = load_params()
    settings, resamples = params.judge, params.evaluate.bootstrap
    template = pairwise_template(settings)
    cases = read_jsonl(GENERATIONS)
    if not cases:
        raise UserError(f"{GENERATIONS} is empty: the generate stage wrote no replies.")
    against_opponent = any("opponent" in case for case in cases)
    preferred = any("preferred" in case for case in cases)
    models = ["base", "tuned", *(["preferred"] if preferred else []), *(["opponent"] if against_opponent else [])]
    pairs = [
        ("tuned", "base"),
        *([("preferred", "tuned")] if preferred else []),
        *([("tuned", "opponent"), ("base", "opponent")] if against_opponent else []),
        *([("preferred", "opponent")] if preferred and against_opponent else []),
    ]
    rating = RATING_PROMPTS[settings.backend].read_text(encoding="utf-8")
    model, tokenizer = load_tuned() if settings.backend == "local" else (None, None)
    judge, as_judge = make_judge(settings, model, tokenizer, params.evaluate.batch_size)
    with as_judge:  # the local judge is the base model
        judged = {pair: judged_pair(judge, template, cases, pair) for pair in pairs}
        grades = {name: ratings(judge, rating, cases, name) for name in models}
    report = summarise(judged["tuned", "base"]["outcomes"], settings, resamples)
    if preferred:
        report["preferred_vs_tuned"] = summarise(
            judged["preferred", "tuned"]["outcomes"], settings, resamples, "preferred"
        )
    if against_opponent:
        against = {name: judged[name, "opponent"]["outcomes"] for name in models if name != "opponent"}
        report["opponent"] = {
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
    write_json(REPORT, report)
    write_jsonl(
        paths.JUDGMENTS,
        (
            {
                "id": case["id"],
                "pair": f"{pair[0]} vs {pair[1]}",
                "first_as_a": result["as_a"][i],
                "first_as_b": result["as_b"][i],
                "outcome": result["outcomes"][i],
                "rating": {name: grades[name][i] for name in pair},
            }
            for pair, result in judged.items()
            for i, case in enumerate(cases)
        ),
    )
    counts = {
        f"{one} vs {other}": {
            "win": result["outcomes"].count(one),
            "tie": result["outcomes"].count("tie"),
            "loss": result["outcomes"].count(other),
            "failed": result["outcomes"].count("failed"),
        }
        for (one, other), result in judged.items()
    }
    write_json(paths.JUDGE_OUTCOMES_PLOT, outcome_bars(counts))
    write_json(paths.JUDGE_RATINGS_PLOT, rating_rows(grades))
    log.info(
        "judge: %d wins, %d ties, %d losses for the fine-tuned model, %d failed (adjusted win rate %.2f)",
        report["wins"],
        report["ties"],
        report["losses"],
        report["failed"],
        report["adjusted_win_rate"],
    )
    if against_opponent:
        versus = report["opponent"]
        log.info(
            "judge: against %s, adjusted win rate base %.3f, tuned %.3f; tuned − base %+.3f (95%% CI %s, sign p=%.3g)",
            settings.opponent.model,
            versus["base"]["adjusted_win_rate"],
            versus["tuned"]["adjusted_win_rate"],
            versus["tuned_minus_base"]["mean"],
            versus["tuned_minus_base"]["ci95"],
            versus["tuned_minus_base"]["sign_test_p"],
        )


if __name__ == "__main__":
    run_stage(main)
