"""`reference` stage: how close the generated replies are to what the persona really wrote.

chrF and BLEU (sacrebleu) against the held-out replies, distinct-1/2 for
repetitiveness, and a voice-fidelity score: the share of generated words and word
pairs that are characteristic of the persona — n-grams whose weighted log-odds
(Monroe et al. 2008, informative Dirichlet prior) of appearing in the persona's
train turns rather than in the other speakers' is significant (z > 1.96). The
reference replies' own score is reported as the ceiling to compare against.

A per-persona instance (`reference_persona@<id>`) scores the persona's own adapter (`tuned`) and the
speaker-conditioned one (`conditioned`) on that persona's prompts, against its own train turns.
"""

from __future__ import annotations

import logging

from habla import paths
from habla.errors import UserError, run_stage
from habla.io import read_jsonl, write_json
from habla.text.style import characteristic_ngrams, counts, distinct, voice_fidelity, words

log = logging.getLogger("reference")

GENERATIONS = paths.GENERATIONS
TRAIN = paths.split_file("train")
REPORT = paths.report("reference")

PARAMS: list[str] = []
DEPS = [GENERATIONS, TRAIN, "stages/reference.py", "habla/text/style.py"]
METRICS = [REPORT]


def scores(cases: list[dict], conversations: list[dict]) -> dict:
    """chrF, BLEU, distinct-n and voice fidelity of every model that answered every case, and the references'
    own; characteristic n-grams from `conversations`' persona turns against their other speakers'."""
    import sacrebleu

    persona = counts(m["content"] for c in conversations for m in c["messages"] if m["role"] == "assistant")
    others = counts(m["content"] for c in conversations for m in c["messages"] if m["role"] == "user")
    characteristic = characteristic_ngrams(persona, others)
    references = [c["reference"] for c in cases]
    report: dict = {"prompts": len(cases), "characteristic_ngrams": len(characteristic)}
    for model in ("base", "conditioned", "tuned", "preferred", "opponent"):  # loading.MODELS without importing torch
        replies = [c[model] for c in cases if c.get(model) is not None]
        if len(replies) < len(cases):  # no such model in this run (or an opponent that did not answer every prompt)
            continue
        report[model] = {
            "chrf": sacrebleu.corpus_chrf(replies, [references]).score,
            "bleu": sacrebleu.corpus_bleu(replies, [references]).score,
            "distinct_1": distinct(replies, 1),
            "distinct_2": distinct(replies, 2),
            "voice_fidelity": voice_fidelity(replies, characteristic),
            "mean_words": sum(len(words(r)) for r in replies) / len(replies),
        }
    report["reference"] = {
        "distinct_1": distinct(references, 1),
        "distinct_2": distinct(references, 2),
        "voice_fidelity": voice_fidelity(references, characteristic),
        "mean_words": sum(len(words(r)) for r in references) / len(references),
    }
    return report


def main() -> None:
    cases = read_jsonl(GENERATIONS)
    if not cases:
        raise UserError(f"{GENERATIONS} is empty: the generate stage wrote no replies.")
    conversations = read_jsonl(TRAIN)
    report = scores(cases, conversations)
    personas = sorted({case["persona"] for case in cases if case.get("persona")})
    if personas and not paths.PERSONA:  # a speaker-conditioned model: each persona against its own train turns
        report["by_persona"] = {
            ident: scores(
                [case for case in cases if case.get("persona") == ident],
                [c for c in conversations if c.get("persona") == ident],
            )
            for ident in personas
        }
    write_json(REPORT, report)
    log.info(
        "reference: chrF base %.1f → fine-tuned %.1f; voice fidelity %.2f → %.2f (references %.2f)",
        report["base"]["chrf"],
        report["tuned"]["chrf"],
        report["base"]["voice_fidelity"],
        report["tuned"]["voice_fidelity"],
        report["reference"]["voice_fidelity"],
    )


if __name__ == "__main__":
    run_stage(main)
