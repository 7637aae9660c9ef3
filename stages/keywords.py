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


def top_keywords(texts: list[str], count: int, extra_stop_words: list[str] = ()) -> list[list[str]]:
    """The `count` most distinctive words of each text (lowercase), best first; [] when a text has none."""
    if not texts:
        return []
    stop = sorted(spanish_stop_words() | {w.lower() for w in extra_stop_words})
    words = (
        pl.DataFrame({"doc": range(len(texts)), "text": texts}, schema={"doc": pl.Int64, "text": pl.String})
        .select("doc", word=pl.col("text").str.to_lowercase().str.extract_all(r"\p{L}+"))
        .explode("word")
        .filter(pl.col("word").str.len_chars() >= MIN_WORD_CHARS, ~pl.col("word").is_in(stop))
    )
    scored = (
        words.group_by("doc", "word")
        .agg(tf=pl.len())
        .with_columns(df=pl.len().over("word"), doc_words=pl.col("tf").sum().over("doc"))
        .with_columns(score=pl.col("tf") / pl.col("doc_words") * (((1 + len(texts)) / (1 + pl.col("df"))).log() + 1))
        .sort(["doc", "score", "word"], descending=[False, True, False])
        .group_by("doc", maintain_order=True)
        .agg(pl.col("word").head(count))
    )
    by_doc = dict(scored.iter_rows())
    return [by_doc.get(i, []) for i in range(len(texts))]


def keyword_prompt(template: str, keywords: list[str]) -> str:
    return template.replace("{keywords}", ", ".join(keywords))
