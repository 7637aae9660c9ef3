"""`generate` stage: replies of the base and the fine-tuned model (and an opponent's) to held-out prompts.

Each test conversation is cut before one persona reply (the last, or a seeded
random one); both models answer the same prompt with the same sampling settings.
With `judge.opponent` set, a third model behind an OpenAI-compatible endpoint answers
the same prompts at temperature 0 (each reply received is cached, as the judge's are);
a prompt it never answered has `opponent: null` and its judgments count as failed.
The replies are the input of `judge` and `reference`, and they hold test-set
text, so `metrics/generations.jsonl` is a DVC-cached output (pushed to the DVC
remote), never a file committed to git.
"""

from __future__ import annotations

import logging

from habla import paths
from habla.errors import UserError, run_stage
from habla.io import read_jsonl, write_jsonl
from habla.llm import ChatEndpoint
from habla.model.generation import cut_before_reply, generate_replies
from habla.model.loading import as_model, has_preferred, load_tuned
from habla.params import Opponent, load_params

log = logging.getLogger("generate")

TEST = paths.split_file("test")
GENERATIONS = paths.GENERATIONS

PARAMS = [
    "preset",
    "evaluate.batch_size",
    "evaluate.max_prompts",
    "evaluate.cut",
    "evaluate.cut_seed",
    "evaluate.sampling",
    "judge.opponent",
]
DEPS = [
    paths.BASE_MODEL,
    paths.ADAPTER,
    paths.PREFERRED,
    TEST,
    "stages/generate.py",
    "habla/model/generation.py",
    "habla/model/loading.py",
    "habla/model/templates.py",
    "habla/llm.py",
    paths.PRESETS,
]
OUTS = [GENERATIONS]


def opponent_replies(cases: list[dict], opponent: Opponent) -> list[str | None]:
    """The opponent's reply to each held-out prompt, at temperature 0; None where none arrived."""
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
    return [r.strip() if r is not None else None for r in replies]


def main() -> None:
    params = load_params()
    evaluate = params.evaluate
    cases = []
    for conversation in read_jsonl(TEST)[: evaluate.max_prompts]:
        cut = cut_before_reply(conversation, evaluate.cut, evaluate.cut_seed)
        if cut:
            cases.append(
                {"id": conversation["id"], "source": conversation.get("source"), "prompt": cut[0], "reference": cut[1]}
            )
    if not cases:
        raise UserError("no test conversation has a persona reply to answer: check data/splits/test.jsonl.")
    model, tokenizer = load_tuned(preferred=True)
    prompts = [c["prompt"] for c in cases]
    for name in ["base", "tuned", *(["preferred"] if has_preferred() else [])]:
        with as_model(model, name):
            replies = generate_replies(model, tokenizer, prompts, evaluate.sampling, evaluate.batch_size)
        for case, reply in zip(cases, replies):
            case[name] = reply
    if params.judge.opponent.model:
        for case, reply in zip(cases, opponent_replies(cases, params.judge.opponent)):
            case["opponent"] = reply
    write_jsonl(GENERATIONS, cases)
    log.info("generate: %d held-out prompts answered by the base and the fine-tuned model", len(cases))


if __name__ == "__main__":
    run_stage(main)
