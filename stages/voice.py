"""`voice` stage: does it sound like them? Blind real-or-generated tests on the held-out replies.

For every model that answered (base, tuned, preferred, opponent): the share of its replies a character n-gram
classifier trained on the train split attributes to the persona (between the persona's real held-out replies,
the ceiling, and the other speakers', the floor); how well a classifier tells its replies from the persona's
real ones to the same prompts (cross-validated AUC, 0.5 = indistinguishable); and, with `voice.judge`, how often
the judge (`judge.*`) picks the real reply of the two, in both orders. Every figure has a bootstrap interval over
prompts. docs/metrics.md says what each can and cannot tell.
"""

from __future__ import annotations

import logging

from habla import paths
from habla.errors import UserError, run_stage
from habla.io import read_jsonl, write_json
from habla.model.judging import OPPONENT, blind_orders, blind_summary
from habla.model.loading import MODELS as OURS
from habla.params import load_params
from habla.text.voice import (
    attribution_summary,
    discrimination,
    fit_attribution,
    persona_probability,
    speaker_turns,
    unlabelled,
)

log = logging.getLogger("voice")

GENERATIONS = paths.GENERATIONS
TRAIN = paths.split_file("train")
REPORT = paths.report("voice")
MODELS = (*OURS, OPPONENT)

PARAMS = ["voice", "preset", "evaluate.batch_size", "evaluate.bootstrap", "judge"]
DEPS = [
    paths.BASE_MODEL,
    paths.ADAPTER,
    paths.COMPARED_ADAPTER,
    GENERATIONS,
    TRAIN,
    paths.PROMPTS,
    "stages/voice.py",
    "habla/text/voice.py",
    "habla/stats.py",
    "habla/model/judging.py",
    "habla/model/judge_backends.py",
    "habla/model/generation.py",
    "habla/model/scoring.py",
    "habla/model/loading.py",
    "habla/model/templates.py",
    "habla/llm.py",
    paths.PRESETS,
]
METRICS = [REPORT]
PLOTS = [paths.VOICE_ATTRIBUTION_PLOT, paths.VOICE_TOLD_APART_PLOT]
if paths.PERSONA:  # `voice_persona@<id>`: its report is the metric to compare, its charts are not drawn
    OUTS, PLOTS = PLOTS, []


def last_user_turn(prompt: list[dict]) -> str:
    """What another speaker wrote just before the persona's reply: the floor's real held-out text."""
    return next((unlabelled(m["content"]) for m in reversed(prompt) if m["role"] == "user"), "")


def answered(cases: list[dict]) -> list[str]:
    """The models with a reply to every held-out prompt (an opponent that missed some is judged on the rest)."""
    return [m for m in MODELS if any(case.get(m) is not None for case in cases)]


def blind_judge(params, cases: list[dict], models: list[str]) -> dict:
    from habla.model.judge_backends import BLIND_PROMPTS, make_judge
    from habla.model.loading import load_tuned

    settings = params.judge
    model, tokenizer = load_tuned() if settings.backend == "local" else (None, None)
    judge, as_judge = make_judge(settings, model, tokenizer, params.evaluate.batch_size)
    template = BLIND_PROMPTS[settings.backend].read_text(encoding="utf-8")
    with as_judge:  # the local judge is the base model
        orders = {name: blind_orders(judge, template, cases, name) for name in models}
    return {
        "backend": settings.backend,
        "judge_model": settings.model,
        **{name: blind_summary(found, params.evaluate.bootstrap) for name, found in orders.items()},
        "calls": judge.calls,
        "cache_hits": getattr(judge, "cache_hits", 0),
        "failed_by_reason": dict(sorted(judge.failures.items())),
    }


def attributions(train: list[dict], cases: list[dict], models: list[str], settings, resamples: int) -> dict:
    """The share of each model's replies a classifier of `train`'s chat turns attributes to the persona, between
    the ceiling (its real held-out replies) and the floor (what the others wrote just before them)."""
    persona, others = speaker_turns(train)
    if not persona or not others:
        raise UserError(
            f"{TRAIN} has no chat turns of both the persona and someone else: the voice tests learn who writes "
            "like the persona from a chat export (data/raw/whatsapp, see docs/inputs.md)."
        )
    classifier = fit_attribution(persona, others, settings.max_train_turns, settings.seed)
    found = {
        "train_turns": {"persona": len(persona), "others": len(others)},
        "ceiling": attribution_summary(persona_probability(classifier, [c["reference"] for c in cases]), resamples),
        "floor": attribution_summary(
            persona_probability(classifier, [last_user_turn(c["prompt"]) for c in cases]), resamples
        ),
    }
    for name in models:
        replies = [case[name] for case in cases if case.get(name) is not None]
        found[name] = attribution_summary(persona_probability(classifier, replies), resamples)
    return found


def by_persona(train: list[dict], cases: list[dict], models: list[str], settings, resamples: int) -> dict:
    """A speaker-conditioned model's attribution per persona: each persona's classifier learns its own turns
    against everyone else's (the other personas included), so a reply in cami's voice given as nico's counts
    against it."""
    report = {}
    for ident in sorted({case["persona"] for case in cases if case.get("persona")}):
        own = [case for case in cases if case.get("persona") == ident]
        conversations = [c for c in train if c.get("persona") == ident]
        report[ident] = {
            "prompts": len(own),
            "attribution": attributions(conversations, own, models, settings, resamples),
        }
    return report


def main() -> None:
    params = load_params()
    settings, resamples = params.voice, params.evaluate.bootstrap
    cases = read_jsonl(GENERATIONS)
    if not cases:
        raise UserError(f"{GENERATIONS} is empty: the generate stage wrote no replies.")
    train = read_jsonl(TRAIN)
    models = answered(cases)
    attribution = attributions(train, cases, models, settings, resamples)
    told_apart = {}
    for name in models:
        replied = [case for case in cases if case.get(name) is not None]
        told_apart[name] = discrimination(
            [case["reference"] for case in replied],
            [case[name] for case in replied],
            settings.folds,
            resamples,
            settings.seed,
        )
    report = {"prompts": len(cases), "attribution": attribution, "discrimination": told_apart}
    if any(case.get("persona") for case in cases) and not paths.PERSONA:  # an instance is one persona's already
        report["by_persona"] = by_persona(train, cases, models, settings, resamples)
    if settings.judge:
        report["judge"] = blind_judge(params, cases, models)
    write_json(REPORT, report)
    write_json(paths.VOICE_ATTRIBUTION_PLOT, attribution_rows(attribution, models))
    write_json(paths.VOICE_TOLD_APART_PLOT, told_apart_rows(report, models))
    for name in models:
        log.info(
            "voice: %s attributed to the persona %.2f (real %.2f, others %.2f); told apart AUC %.2f%s",
            name,
            attribution[name]["attributed"],
            attribution["ceiling"]["attributed"],
            attribution["floor"]["attributed"],
            told_apart[name]["auc"],
            f", judge found the real one {report['judge'][name]['accuracy']:.2f}" if settings.judge else "",
        )


def attribution_rows(attribution: dict, models: list[str]) -> list[dict]:
    """Bars from the ceiling down to the floor, each model between them."""
    rows = [{"replies": "the persona, real (ceiling)", "attributed": attribution["ceiling"]["attributed"]}]
    rows += [{"replies": name, "attributed": attribution[name]["attributed"]} for name in models]
    return rows + [{"replies": "other speakers, real (floor)", "attributed": attribution["floor"]["attributed"]}]


def told_apart_rows(report: dict, models: list[str]) -> list[dict]:
    """Each model's classifier AUC and judge accuracy on one scale: 0.5 is chance, 1 always told apart."""
    rows = [{"test": f"{name}: classifier AUC", "told_apart": report["discrimination"][name]["auc"]} for name in models]
    if "judge" in report:
        rows += [{"test": f"{name}: judge", "told_apart": report["judge"][name]["accuracy"]} for name in models]
    return rows


if __name__ == "__main__":
    run_stage(main)
