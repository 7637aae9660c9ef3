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

import contextlib
import logging
from pathlib import Path

from habla import paths
from habla.errors import UserError, run_stage
from habla.io import read_jsonl, write_json, write_jsonl
from habla.model.judge_backends import LocalJudge, OpenAIJudge
from habla.model.judging import fill, rating_summary, summarise, verdict
from habla.model.loading import load_tuned
from habla.params import Judge, load_params
from habla.plots import outcome_bars, rating_rows

log = logging.getLogger("judge")

GENERATIONS = paths.GENERATIONS
REPORT = paths.report("judge")
CACHE = paths.JUDGE_CACHE
PROMPTS = {"local": paths.PROMPTS / "judge_pairwise.es.txt", "openai": paths.PROMPTS / "judge_pairwise_json.es.txt"}
RATING_PROMPTS = {"local": paths.PROMPTS / "judge_rating.es.txt", "openai": paths.PROMPTS / "judge_rating_json.es.txt"}

PARAMS = ["preset", "evaluate.batch_size", "evaluate.bootstrap", "judge"]
DEPS = [
    paths.BASE_MODEL,
    paths.ADAPTER,
    GENERATIONS,
    paths.PROMPTS,
    "stages/judge.py",
    "habla/model/judging.py",
    "habla/model/judge_backends.py",
    "habla/llm.py",
    "habla/plots.py",
    "habla/model/scoring.py",
    "habla/model/loading.py",
    paths.PRESETS,
]
OUTS = [paths.JUDGMENTS, paths.JUDGE_RATINGS_PLOT]
METRICS = [REPORT]
PLOTS = [paths.JUDGE_OUTCOMES_PLOT]


def template_path(settings: Judge) -> Path:
    path = PROMPTS[settings.backend] if settings.prompt == "auto" else Path(settings.prompt)
    if not path.exists():
        raise UserError(f"judge.prompt: {path} does not exist.")
    return path


def main() -> None:
    params = load_params()
    settings = params.judge
    if settings.backend == "local" and settings.model != "base":
        raise UserError(
            "judge.model: the local backend judges with `base`; for another judge serve it and use backend `openai`."
        )
    template = template_path(settings).read_text(encoding="utf-8")
    cases = read_jsonl(GENERATIONS)
    if not cases:
        raise UserError(f"{GENERATIONS} is empty: the generate stage wrote no replies.")
    tuned_as_a = [fill(template, c, c["tuned"], c["base"]) for c in cases]
    tuned_as_b = [fill(template, c, c["base"], c["tuned"]) for c in cases]
    rating = RATING_PROMPTS[settings.backend].read_text(encoding="utf-8")
    rate_base = [fill(rating, c, c["base"]) for c in cases]
    rate_tuned = [fill(rating, c, c["tuned"]) for c in cases]
    if settings.backend == "local":
        model, tokenizer = load_tuned()
        judge, as_judge = LocalJudge(model, tokenizer, params.evaluate.batch_size), model.disable_adapter()
    else:
        judge, as_judge = OpenAIJudge(settings, CACHE), contextlib.nullcontext()
    with as_judge:  # the local judge is the base model
        first, second = judge.choose(tuned_as_a), judge.choose(tuned_as_b)
        grades = {"base": judge.rate(rate_base), "tuned": judge.rate(rate_tuned)}
    outcomes = [verdict(a, b) for a, b in zip(first, second)]
    report = summarise(outcomes, settings, params.evaluate.bootstrap)
    report["rating"] = {name: rating_summary(values, params.evaluate.bootstrap) for name, values in grades.items()}
    report["calls"] = judge.calls
    report["cache_hits"] = getattr(judge, "cache_hits", 0)
    report["failed_by_reason"] = dict(sorted(judge.failures.items()))
    write_json(REPORT, report)
    write_jsonl(
        paths.JUDGMENTS,
        (
            {
                "id": case["id"],
                "pair": "tuned vs base",
                "first_as_a": a,
                "first_as_b": b,
                "outcome": outcome,
                "rating": {name: values[i] for name, values in grades.items()},
            }
            for i, (case, a, b, outcome) in enumerate(zip(cases, first, second, outcomes))
        ),
    )
    counts = {"win": report["wins"], "tie": report["ties"], "loss": report["losses"], "failed": report["failed"]}
    write_json(paths.JUDGE_OUTCOMES_PLOT, outcome_bars({"tuned vs base": counts}))
    write_json(paths.JUDGE_RATINGS_PLOT, rating_rows(grades))
    log.info(
        "judge: %d wins, %d ties, %d losses for the fine-tuned model, %d failed (adjusted win rate %.2f)",
        report["wins"],
        report["ties"],
        report["losses"],
        report["failed"],
        report["adjusted_win_rate"],
    )


if __name__ == "__main__":
    run_stage(main)
