"""`generate` stage: replies of the base and the fine-tuned model (and an opponent's) to held-out prompts.

Each test conversation is cut before one persona reply (the last, or a seeded
random one); both models answer the same prompt with the same sampling settings.
With `judge.opponent` set, a third model behind an OpenAI-compatible endpoint answers
the same prompts at temperature 0 (each reply received is cached, as the judge's are);
a prompt it never answered has `opponent: null` and its judgments count as failed.
The replies are the input of `judge` and `reference`, and they hold test-set
text, so `metrics/generations.jsonl` is a DVC-cached output (pushed to the DVC
remote), never a file committed to git. `metrics/generate.json` (counts only) says
per model how its replies ended: with an end-of-turn token, or cut at
`evaluate.sampling.max_new_tokens` (a persona that never learned to stop), and
which held-out conversations were left out and why.

A per-persona instance (`generate_persona@<id>`) answers its persona's held-out
prompts with the base, the speaker-conditioned adapter (`conditioned`) and the
persona's own adapter (`tuned`), loaded together on one base, so `voice_persona`
and `judge_persona` compare the two adapters on the same prompts and sampling.
"""

from __future__ import annotations

import logging

from habla import paths
from habla.errors import UserError, run_stage
from habla.io import read_jsonl, write_json, write_jsonl
from habla.llm import ChatEndpoint
from habla.model.generation import Reply, ending_stats, generate_replies, held_out_cases
from habla.model.loading import as_model, load_evaluated, models_in
from habla.params import Opponent, load_params

log = logging.getLogger("generate")

TEST = paths.split_file("test")
GENERATIONS = paths.GENERATIONS
REPORT = paths.report("generate")

PARAMS = [
    "preset",
    "evaluate.batch_size",
    "evaluate.max_prompts",
    "evaluate.cut",
    "evaluate.cut_seed",
    "evaluate.sampling",
    *([] if paths.PERSONA else ["judge.opponent"]),  # an instance compares habla's two adapters, no one else
]
DEPS = [
    paths.BASE_MODEL,
    paths.ADAPTER,
    paths.COMPARED_ADAPTER,
    TEST,
    "stages/generate.py",
    "habla/model/generation.py",
    "habla/model/loading.py",
    "habla/model/templates.py",
    "habla/llm.py",
    paths.PRESETS,
]
OUTS = [GENERATIONS]
METRICS = [REPORT]


def opponent_replies(cases: list[dict], opponent: Opponent) -> tuple[list[str | None], dict]:
    """The opponent's reply to each held-out prompt, at temperature 0 (None where none arrived), and how its
    replies ended by the server's own `finish_reason`."""
    endpoint = ChatEndpoint(opponent, paths.OPPONENT_CACHE, "judge.opponent")
    replies = endpoint.map(lambda case: endpoint.complete(case["prompt"], opponent.max_tokens), cases)
    log.info(
        "generate: opponent %s answered %d of %d prompts (%d calls, %d from its cache)",
        opponent.model,
        sum(r is not None for r in replies),
        len(cases),
        endpoint.calls,
        endpoint.cache_hits,
    )
    endings = [endpoint.ending(case["prompt"]) if reply is not None else None for case, reply in zip(cases, replies)]
    stats = ending_stats([Reply("", e[0], e[1] == "stop") if e else None for e in endings])
    stats["no_reply"] = len(cases) - stats["replies"]
    stats["finish_unknown"] = sum(e is not None and e[1] not in ("stop", "length") for e in endings)
    return [r.strip() if r is not None else None for r in replies], stats


def main() -> None:
    params = load_params()
    evaluate = params.evaluate
    cases, left_out = held_out_cases(read_jsonl(TEST), evaluate)
    if not cases:
        raise UserError("no test conversation has a persona reply to answer: check data/splits/test.jsonl.")
    model, tokenizer = load_evaluated()
    prompts = [c["prompt"] for c in cases]
    endings = {}
    for name in models_in(model):
        with as_model(model, name):
            replies = generate_replies(model, tokenizer, prompts, evaluate.sampling, evaluate.batch_size)
        for case, reply in zip(cases, replies):
            case[name] = reply.text
        endings[name] = ending_stats(replies)
    if params.judge.opponent.model and not paths.PERSONA:
        answers, endings["opponent"] = opponent_replies(cases, params.judge.opponent)
        for case, reply in zip(cases, answers):
            case["opponent"] = reply
    write_jsonl(GENERATIONS, cases)
    write_json(
        REPORT,
        {
            "prompts": len(cases),
            "left_out": left_out,
            "max_new_tokens": evaluate.sampling.max_new_tokens,
            "models": endings,
        },
    )
    log.info(
        "generate: %d held-out prompts answered; replies that stopped on their own: %s",
        len(cases),
        ", ".join(f"{name} {stats['stopped']}/{stats['replies']}" for name, stats in endings.items()),
    )


if __name__ == "__main__":
    run_stage(main)
