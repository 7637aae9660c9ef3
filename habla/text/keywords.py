"""Keyphrases for "write about X, Y" tasks: what a passage is about, as a person would name it.

The seed notebooks hand-picked a keyword per joke; TF-IDF words (what this module did before) came out as rare
verbs rather than topics on real transcripts ("fenómenos, afectan, pidiera"). YAKE (a maintained, offline,
unsupervised extractor: statistics of one text, Spanish stop words built in) proposes one- to three-word
phrases; we then prefer the ones that look like noun phrases. Without a part-of-speech tagger (spaCy's Spanish
models are a download, which the default pipeline may not need), a phrase "looks verbal" when one of its words
has an infinitive, gerund or conditional ending, optionally with clitics, or is one of the commonest finite verbs.
Such phrases are used only when too few others remain. Ties keep YAKE's order, which is deterministic.
"""

from __future__ import annotations

import re
from functools import cache

MAX_WORDS = 3
VERB_ENDING = re.compile(
    r"(?:[aei]r|ando|[iy]endo|[aei]rían?|aban?|íamos|ábamos)(?:l[oa]s?|les?|se|me|te|nos)?$", re.IGNORECASE
)
COMMON_VERBS = frozenset(
    "es son era eran fue fueron está están estaba estaban hay había tiene tienen tenemos tengo hace hacen hacemos "
    "puede pueden podemos quiere quieren dice dicen digo va van vamos voy sé sabe creo cree veo vemos ves ven "
    "importa parece sirve funciona queda pasa pasó llega sale tiro cacha cachai".split()
)


# Common nouns with an infinitive's ending.
NOUNS_LIKE_VERBS = frozenset("lugar mujer hogar mar bar par collar dólar taller poder placer deber altar pilar".split())


def looks_verbal(phrase: str) -> bool:
    """A word with a verb's ending or one of the commonest verbs; capitalised words are names, never verbs."""
    return any(
        not word[:1].isupper()
        and word.lower() not in NOUNS_LIKE_VERBS
        and (VERB_ENDING.search(word) or word.lower() in COMMON_VERBS)
        for word in phrase.split()
    )


@cache
def _extractor(count: int, stop_words: frozenset[str]):
    import yake

    extractor = yake.KeywordExtractor(lan="es", n=MAX_WORDS, top=count * 4, dedupLim=0.7)
    if stop_words:
        extractor.stopword_set = extractor.stopword_set | stop_words
    return extractor


def keyphrases(text: str, count: int, extra_stop_words: list[str] = ()) -> list[str]:
    """The `count` best keyphrases of `text` (lowercase), noun-like ones first; [] when it has none."""
    if not text.strip():
        return []
    extractor = _extractor(count, frozenset(w.lower() for w in extra_stop_words))
    stop = {w.lower() for w in extra_stop_words}
    found = [p for p, _ in extractor.extract_keywords(text) if not stop & set(p.lower().split())]
    ranked = [p for p in found if not looks_verbal(p)] + [p for p in found if looks_verbal(p)]
    return list(dict.fromkeys(p.lower() for p in ranked))[:count]


def keyword_prompt(template: str, keywords: list[str]) -> str:
    return template.replace("{keywords}", ", ".join(keywords))
