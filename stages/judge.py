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
from habla.model.judging import comparisons, judge_report, judged_pair, judgment_rows, outcome_counts, ratings
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
    paths.COMPARED_ADAPTER,
    GENERATIONS,
    paths.PROMPTS,
    "stages/judge.py",
    "habla/model/judging.py",
    "habla/model/judge_backends.py",
    "habla/model/generation.py",
    "habla/llm.py",
    "habla/plots.py",
    "habla/model/scoring.py",
    "habla/stats.py",
    "habla/model/loading.py",
    "habla/model/templates.py",
    paths.PRESETS,
]
OUTS = [paths.JUDGMENTS, paths.JUDGE_RATINGS_PLOT]
METRICS = [REPORT]
PLOTS = [paths.JUDGE_OUTCOMES_PLOT]
if paths.PERSONA:  # `judge_persona@<id>`: its persona's own adapter against the conditioned one; charts not drawn
    OUTS, PLOTS = [*OUTS, *PLOTS], []


def main() -> None:
    params = load_params()
    settings = params.judge
    cases = read_jsonl(GENERATIONS)
    if not cases:
        raise UserError(f"{GENERATIONS} is empty: the generate stage wrote no replies.")
    models, pairs = comparisons(cases)
    pairwise, rating = pairwise_template(settings), RATING_PROMPTS[settings.backend].read_text(encoding="utf-8")
    model, tokenizer = load_tuned() if settings.backend == "local" else (None, None)
    judge, as_judge = make_judge(settings, model, tokenizer, params.evaluate.batch_size)
    with as_judge:  # the local judge is the base model
        judged = {pair: judged_pair(judge, pairwise, cases, pair) for pair in pairs}
        grades = {name: ratings(judge, rating, cases, name) for name in models}
    report = judge_report(judge, judged, grades, settings, params.evaluate.bootstrap)
    write_json(REPORT, report)
    write_jsonl(paths.JUDGMENTS, judgment_rows(cases, judged, grades))
    write_json(paths.JUDGE_OUTCOMES_PLOT, outcome_bars(outcome_counts(judged)))
    write_json(paths.JUDGE_RATINGS_PLOT, rating_rows(grades))
    log.info(
        "judge: %d wins, %d ties, %d losses for the fine-tuned model, %d failed (adjusted win rate %.2f)",
        report["wins"],
        report["ties"],
        report["losses"],
        report["failed"],
        report["adjusted_win_rate"],
    )
    if own := report.get("tuned_vs_conditioned"):
        log.info(
            "judge: %s's own adapter against the speaker-conditioned one: %d wins, %d ties, %d losses, %d failed",
            paths.PERSONA,
            own["wins"],
            own["ties"],
            own["losses"],
            own["failed"],
        )
    if report["n"] == 0 and settings.backend != "local":
        log.warning(
            "judge: %s at %s gave no verdict on any of %d prompts (%s): the numbers above mean nothing",
            settings.model,
            settings.base_url,
            report["failed"],
            report["failed_by_reason"],
        )
    if versus := report.get("opponent"):
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
