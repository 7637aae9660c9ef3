"""Does it sound like them? Two blind tests by classifier, on held-out replies nobody trained on.

*Attribution* (authorship attribution's standard tool: character n-grams, TF-IDF, a linear classifier) learns the
persona's turns against the other speakers' turns of the train split, then says which held-out replies it takes
for the persona's: a model's share sits between the persona's own real replies (the ceiling) and the other
speakers' (the floor). *Discrimination* asks the harder question: can a classifier trained on nothing but the
persona's real held-out replies and one model's replies to the same prompts tell them apart? Its ROC AUC is
cross-validated with folds by conversation (a prompt's two replies are never split between training and
scoring): 1.0 means always told apart, 0.5 means indistinguishable. Both are deterministic and offline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

from habla.stats import bootstrap_interval

CHAR_NGRAMS = (2, 5)
MAX_FEATURES = 2**18  # the most frequent n-grams: enough for a chat's style, bounded memory for a large export
# Pseudonyms `group` puts before each group-chat speaker's lines (habla/grouping.py): a label would give the
# speaker away, so the classifiers read the words only.
# `group`'s labels: a pseudonym, or a chosen persona's id under `group.speakers: conditioned` (params.PERSONA_ID)
SPEAKER_LABEL = re.compile(r"(?m)^\[(?:Persona \d+|[a-z0-9][a-z0-9_-]{0,31})\]: ")


def unlabelled(text: str) -> str:
    return SPEAKER_LABEL.sub("", text)


def speaker_turns(conversations: Iterable[dict]) -> tuple[list[str], list[str]]:
    """The persona's turns and everybody else's in chat conversations (writing tasks made from documents have no
    other speaker: left out), speaker labels removed."""
    persona, others = [], []
    for conversation in conversations:
        if conversation.get("chat") is None:
            continue
        for message in conversation["messages"]:
            if message["role"] == "assistant":
                persona.append(message["content"])
            elif message["role"] == "user":
                others.append(unlabelled(message["content"]))
    return persona, others


def char_classifier(seed: int = 0):
    """TF-IDF over character 2–5-grams within word boundaries, and a class-balanced logistic regression (so a
    persona who writes a tenth of the chat is not "never them" by prior alone)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=CHAR_NGRAMS,
            sublinear_tf=True,
            lowercase=False,  # capitals are style ("JAJAJA", "Hola." vs "hola")
            max_features=MAX_FEATURES,
            dtype=np.float32,
        ),
        LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed),
    )


def has_ngrams(texts: Sequence[str]) -> bool:
    """Whether any text has a character n-gram to learn from (`char_wb` finds none in empty or blank texts)."""
    return any(len(word) + 2 >= CHAR_NGRAMS[0] for text in texts for word in text.split())


def sample(texts: list[str], limit: int, rng: np.random.Generator) -> list[str]:
    if limit <= 0 or len(texts) <= limit:
        return texts
    return [texts[i] for i in sorted(rng.choice(len(texts), limit, replace=False))]


def fit_attribution(persona: list[str], others: list[str], max_turns: int = 0, seed: int = 0):
    """The attribution classifier, trained on up to `max_turns` turns of each side (a seeded sample)."""
    if not persona or not others or not has_ngrams(persona + others):
        raise ValueError("attribution needs train turns of the persona and of somebody else")
    rng = np.random.default_rng(seed)
    persona, others = sample(persona, max_turns, rng), sample(others, max_turns, rng)
    return char_classifier(seed).fit(persona + others, [1] * len(persona) + [0] * len(others))


def persona_probability(classifier, texts: Sequence[str]) -> np.ndarray:
    return classifier.predict_proba([unlabelled(t) for t in texts])[:, 1]


def attribution_summary(probabilities: np.ndarray, resamples: int) -> dict:
    """The share of replies taken for the persona's (probability above ½), with a bootstrap interval over prompts,
    and the mean probability (which moves before the share does)."""
    attributed = (np.asarray(probabilities) > 0.5).astype(float)
    low, high = bootstrap_interval(len(attributed), lambda idx: float(attributed[idx].mean()), resamples)
    return {
        "n": len(attributed),
        "attributed": float(attributed.mean()) if len(attributed) else math.nan,
        "attributed_ci95": [low, high],
        "mean_probability": float(np.mean(probabilities)) if len(attributed) else math.nan,
    }


def out_of_fold_scores(real: Sequence[str], generated: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """For prompt i, rows (score of real[i], score of generated[i]): the probability of "generated" given by a
    classifier that never saw prompt i. Folds are by prompt, so both replies to a prompt are scored together; a
    fold with nothing to learn from (blank replies only) scores ½."""
    from sklearn.model_selection import GroupKFold

    texts = [unlabelled(t) for pair in zip(real, generated) for t in pair]
    labels = np.tile([0, 1], len(real))
    groups = np.repeat(np.arange(len(real)), 2)
    scores = np.full(len(texts), 0.5)
    for train, held_out in GroupKFold(n_splits=min(folds, len(real))).split(texts, labels, groups):
        learn_from = [texts[i] for i in train]
        if has_ngrams(learn_from):
            classifier = char_classifier(seed).fit(learn_from, labels[train])
            scores[held_out] = classifier.predict_proba([texts[i] for i in held_out])[:, 1]
    return scores.reshape(-1, 2)


def auc(scores: np.ndarray) -> float:
    """ROC AUC of telling generated from real, from rows (real score, generated score): the chance that a
    generated reply scores above a real one, ties counting ½ (Mann–Whitney). Written out because the bootstrap
    asks a thousand times per model and scikit-learn's `roc_auc_score` spends ~6 ms a call checking its input;
    tests/test_voice.py holds the two equal."""
    real, generated = scores[:, 0], scores[:, 1]
    above = (generated[:, None] > real[None, :]).mean()
    tied = (generated[:, None] == real[None, :]).mean()
    return float(above + tied / 2)


def indistinguishability(area: float) -> float:
    """1 when a classifier does no better than chance (AUC ½), 0 when it always tells them apart (AUC 0 or 1)."""
    return 1 - 2 * abs(area - 0.5)


def discrimination(real: Sequence[str], generated: Sequence[str], folds: int, resamples: int, seed: int = 0) -> dict:
    """Cross-validated AUC of telling one model's replies from the persona's real ones, with a bootstrap interval
    over prompts (the out-of-fold scores resampled by prompt), and the same as indistinguishability."""
    if len(real) < 2:
        return {"n": len(real), "auc": math.nan, "auc_ci95": [math.nan, math.nan], "indistinguishability": math.nan}
    scores = out_of_fold_scores(real, generated, folds, seed)
    low, high = bootstrap_interval(len(scores), lambda idx: auc(scores[idx]), resamples)
    area = auc(scores)
    return {
        "n": len(scores),
        "folds": min(folds, len(scores)),
        "auc": area,
        "auc_ci95": [low, high],
        "indistinguishability": indistinguishability(area),
        # the AUC's interval folded about ½: an interval that straddles ½ reaches 1
        "indistinguishability_ci95": folded_interval(low, high),
    }


def folded_interval(low: float, high: float) -> list[float]:
    ends = sorted((indistinguishability(low), indistinguishability(high)))
    return [ends[0], 1.0 if low <= 0.5 <= high else ends[1]]
