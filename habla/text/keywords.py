"""Keyword tasks: "write something about X, Y, Z" → a passage of the corpus.

The seed notebooks built "a joke from a keyword" by hand-picking words. Here the
keywords of each passage are its highest TF-IDF words against the whole corpus of
passages (smoothed idf as in scikit-learn), with Spanish stop words from the
`stop-words` package plus the user's own (fillers such as "po" or "weón" are
style, not topic). Ties are broken alphabetically, so the same corpus always
gives the same tasks. Scores are computed with polars expressions over one row
per (passage, word), not a Python loop over passages.
"""

from __future__ import annotations

from functools import cache

import polars as pl
from stop_words import get_stop_words

MIN_WORD_CHARS = 3


@cache
def spanish_stop_words() -> frozenset[str]:
    return frozenset(get_stop_words("es"))


def _words(texts: list[str], extra_stop_words: list[str]) -> pl.DataFrame:
    """One row per (text index, word) occurrence, stop words and short words left out."""
    stop = sorted(spanish_stop_words() | {w.lower() for w in extra_stop_words})
    return (
        pl.DataFrame({"doc": range(len(texts)), "text": texts}, schema={"doc": pl.Int64, "text": pl.String})
        .select("doc", word=pl.col("text").str.to_lowercase().str.extract_all(r"\p{L}+"))
        .explode("word")
        .filter(pl.col("word").str.len_chars() >= MIN_WORD_CHARS, ~pl.col("word").is_in(stop))
    )


def document_frequencies(texts: list[str], extra_stop_words: list[str] = ()) -> pl.DataFrame:
    """How many texts hold each word (`word`, `df`): add up over batches with `merge_frequencies`."""
    return _words(texts, extra_stop_words).unique(["doc", "word"]).group_by("word").agg(df=pl.len())


def merge_frequencies(parts: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(parts).group_by("word").agg(pl.col("df").sum())


def top_keywords(
    texts: list[str], count: int, extra_stop_words: list[str] = (), corpus: tuple[pl.DataFrame, int] | None = None
) -> list[list[str]]:
    """The `count` most distinctive words of each text (lowercase), best first; [] when a text has none.

    `corpus` is (document frequencies, number of texts) of the whole corpus when
    `texts` is one batch of it; without it the texts are the corpus.
    """
    if not texts:
        return []
    frequencies, corpus_size = (
        corpus if corpus is not None else (document_frequencies(texts, extra_stop_words), len(texts))
    )
    scored = (
        _words(texts, extra_stop_words)
        .group_by("doc", "word")
        .agg(tf=pl.len())
        .join(frequencies, on="word", how="left")
        .with_columns(doc_words=pl.col("tf").sum().over("doc"))
        .with_columns(score=pl.col("tf") / pl.col("doc_words") * (((1 + corpus_size) / (1 + pl.col("df"))).log() + 1))
        .sort(["doc", "score", "word"], descending=[False, True, False])
        .group_by("doc", maintain_order=True)
        .agg(pl.col("word").head(count))
    )
    by_doc = dict(scored.iter_rows())
    return [by_doc.get(i, []) for i in range(len(texts))]


def keyword_prompt(template: str, keywords: list[str]) -> str:
    return template.replace("{keywords}", ", ".join(keywords))
