"""`generate` stage: replies of the base and the fine-tuned model to held-out prompts.

Each test conversation is cut before one persona reply (the last, or a seeded
random one); both models answer the same prompt with the same sampling settings.
The replies are the input of `judge` and `reference`, and they hold test-set
text, so `metrics/generations.jsonl` is a DVC-cached output (pushed to the DVC
remote), never a file committed to git.
"""

from __future__ import annotations

import logging

from habla import paths
from habla.errors import UserError, run_stage
from habla.io import read_jsonl, write_jsonl
from habla.model.generation import cut_before_reply, generate_replies
from habla.model.loading import load_tuned
from habla.params import load_params

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
]
DEPS = [
    paths.BASE_MODEL,
    paths.ADAPTER,
    TEST,
    "stages/generate.py",
    "habla/model/generation.py",
    "habla/model/loading.py",
    paths.PRESETS,
]
OUTS = [GENERATIONS]


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
    model, tokenizer = load_tuned()
    prompts = [c["prompt"] for c in cases]
    with model.disable_adapter():
        base_replies = generate_replies(model, tokenizer, prompts, evaluate.sampling, evaluate.batch_size)
    tuned_replies = generate_replies(model, tokenizer, prompts, evaluate.sampling, evaluate.batch_size)
    for case, base, tuned in zip(cases, base_replies, tuned_replies):
        case.update(base=base, tuned=tuned)
    write_jsonl(GENERATIONS, cases)
    log.info("generate: %d held-out prompts answered by the base and the fine-tuned model", len(cases))


if __name__ == "__main__":
    run_stage(main)
