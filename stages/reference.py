"""`reference` stage: how close the generated replies are to what the persona really wrote.

chrF and BLEU (sacrebleu) against the held-out replies, distinct-1/2 for
repetitiveness, and a voice-fidelity score: the share of generated words and word
pairs that are characteristic of the persona — n-grams whose weighted log-odds
(Monroe et al. 2008, informative Dirichlet prior) of appearing in the persona's
train turns rather than in the other speakers' is significant (z > 1.96). The
reference replies' own score is reported as the ceiling to compare against.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from stages.errors import UserError, run_stage
from stages.io import read_jsonl, write_json

log = logging.getLogger("reference")

GENERATIONS = Path("metrics/generations.jsonl")
TRAIN = Path("data/splits/train.jsonl")
REPORT = Path("metrics/reference.json")
Z_THRESHOLD = 1.96
PRIOR_STRENGTH = 100.0  # pseudo-counts of the pooled-frequency prior: shrinks rare n-grams, barely touches frequent ones
WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct(texts: Iterable[str], n: int) -> float:
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def counts(texts: Iterable[str]) -> Counter:
    counter: Counter = Counter()
    for text in texts:
        tokens = words(text)
        counter.update(ngrams(tokens, 1) + ngrams(tokens, 2))
    return counter


def characteristic_ngrams(persona: Counter, others: Counter) -> set[tuple[str, ...]]:
    """N-grams whose log-odds z-score for persona vs others exceeds the threshold (prior: both corpora pooled)."""
    pooled = persona + others
    pooled_total = sum(pooled.values())
    total_prior, total_persona, total_others = PRIOR_STRENGTH, sum(persona.values()), sum(others.values())
    chosen = set()
    for gram, pooled_count in pooled.items():
        alpha = PRIOR_STRENGTH * pooled_count / pooled_total
        a, b = persona[gram], others[gram]
        delta = math.log((a + alpha) / (total_persona + total_prior - a - alpha)) - math.log(
            (b + alpha) / (total_others + total_prior - b - alpha)
        )
        variance = 1 / (a + alpha) + 1 / (b + alpha)
        if delta / math.sqrt(variance) > Z_THRESHOLD:
            chosen.add(gram)
    return chosen


def voice_fidelity(texts: Iterable[str], characteristic: set[tuple[str, ...]]) -> float:
    generated = counts(texts)
    total = sum(generated.values())
    return sum(c for g, c in generated.items() if g in characteristic) / total if total else 0.0


def main() -> None:
    import sacrebleu

    cases = read_jsonl(GENERATIONS)
    if not cases:
        raise UserError(f"{GENERATIONS} is empty: the judge stage generated no replies.")
    conversations = read_jsonl(TRAIN)
    persona = counts(m["content"] for c in conversations for m in c["messages"] if m["role"] == "assistant")
    others = counts(m["content"] for c in conversations for m in c["messages"] if m["role"] == "user")
    characteristic = characteristic_ngrams(persona, others)
    references = [c["reference"] for c in cases]
    report: dict = {"prompts": len(cases), "characteristic_ngrams": len(characteristic)}
    for model in ("base", "tuned"):
        replies = [c[model] for c in cases]
        report[model] = {
            "chrf": sacrebleu.corpus_chrf(replies, [references]).score,
            "bleu": sacrebleu.corpus_bleu(replies, [references]).score,
            "distinct_1": distinct(replies, 1), "distinct_2": distinct(replies, 2),
            "voice_fidelity": voice_fidelity(replies, characteristic),
            "mean_words": sum(len(words(r)) for r in replies) / len(replies),
        }
    report["reference"] = {
        "distinct_1": distinct(references, 1), "distinct_2": distinct(references, 2),
        "voice_fidelity": voice_fidelity(references, characteristic),
        "mean_words": sum(len(words(r)) for r in references) / len(references),
    }
    write_json(REPORT, report)
    log.info("reference: chrF base %.1f → fine-tuned %.1f; voice fidelity %.2f → %.2f (references %.2f)",
             report["base"]["chrf"], report["tuned"]["chrf"], report["base"]["voice_fidelity"],
             report["tuned"]["voice_fidelity"], report["reference"]["voice_fidelity"])


if __name__ == "__main__":
    run_stage(main)
