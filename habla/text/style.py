"""Style measures of generated replies: distinct-n and voice fidelity.

Voice fidelity is the share of generated words and word pairs that are characteristic of the persona:
n-grams whose weighted log-odds (Monroe et al. 2008, informative Dirichlet prior) of appearing in the
persona's train turns rather than in the other speakers' is significant (z > 1.96).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

Z_THRESHOLD = 1.96
PRIOR_STRENGTH = (
    100.0  # pseudo-counts of the pooled-frequency prior: shrinks rare n-grams, barely touches frequent ones
)
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
