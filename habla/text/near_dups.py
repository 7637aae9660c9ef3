"""Near-duplicate detection between splits: MinHash over word shingles with LSH banding.

Written here rather than taken from datasketch because it runs on whole polars
columns at once (one numpy pass per permutation block instead of a Python object
per text) and adds no dependency. Shingles are hashed with polars' seeded hash,
which is stable for the pinned polars version, so the split stays reproducible.
"""

from __future__ import annotations

import numpy as np
import polars as pl

PRIME = (1 << 31) - 1
PERMUTATIONS = 64
BANDS = 16  # 16 bands of 4 rows: pairs above ~0.5 Jaccard become candidates, then are verified
CHUNK = 2**20  # candidate pairs verified at once


def exact_key(text: str) -> str:
    """The text with case and spacing folded away: two texts with the same key are exact duplicates
    (casefold, not lower: "Straße" and "STRASSE" are one text)."""
    return " ".join(text.casefold().split())


def signatures(texts: pl.Series, shingle: int = 3, seed: int = 0) -> np.ndarray:
    """(len(texts), PERMUTATIONS) MinHash signatures of the word `shingle`-grams of each text."""
    words = (
        pl.DataFrame({"doc": np.arange(len(texts), dtype=np.int64), "text": texts.str.to_lowercase()})
        .with_columns(word=pl.col("text").str.extract_all(r"\w+"))
        .with_columns(
            gram=pl.col("word").list.eval(
                pl.concat_str([pl.element().shift(-i) for i in range(shingle)], separator=" ").drop_nulls()
            )
        )
        .with_columns(pl.when(pl.col("gram").list.len() > 0).then("gram").otherwise(pl.concat_list(pl.col("text"))))
        .select("doc", "gram")
        .explode("gram")
        .with_columns(h=(pl.col("gram").hash(seed) % PRIME).cast(pl.Int64))
        .sort("doc")
    )
    docs, hashes = words["doc"].to_numpy(), words["h"].to_numpy()
    starts = np.searchsorted(docs, np.arange(len(texts)))
    rng = np.random.default_rng(seed)
    a = rng.integers(1, PRIME, PERMUTATIONS, dtype=np.int64)
    b = rng.integers(0, PRIME, PERMUTATIONS, dtype=np.int64)
    out = np.empty((len(texts), PERMUTATIONS), dtype=np.int64)
    for k in range(PERMUTATIONS):
        permuted = (a[k] * hashes + b[k]) % PRIME
        out[:, k] = np.minimum.reduceat(permuted, starts) if len(permuted) else PRIME
    return out


def near_duplicate_pairs(
    left: pl.Series, right: pl.Series, threshold: float, seed: int = 0
) -> list[tuple[int, int, float]]:
    """(i, j, estimated Jaccard): for each text left[i] with a near duplicate in `right`, its closest right[j].

    Identical signatures are collapsed first (chat data repeats short replies a
    lot, and every copy would otherwise pair with every other copy in each band),
    and candidates are verified band by band, so memory follows the number of
    distinct texts rather than the number of candidate pairs.
    """
    if len(left) == 0 or len(right) == 0:
        return []
    sig_left, sig_right = signatures(left, seed=seed), signatures(right, seed=seed)
    unique_left, left_group = np.unique(sig_left, axis=0, return_inverse=True)
    unique_right, right_first = np.unique(sig_right, axis=0, return_index=True)
    rows = PERMUTATIONS // BANDS
    mix = np.random.default_rng(seed + 1).integers(1, 2**62, rows, dtype=np.int64)
    best_similarity = np.zeros(len(unique_left))
    best_match = np.full(len(unique_left), len(right), dtype=np.int64)
    for band in range(BANDS):
        block = slice(band * rows, (band + 1) * rows)
        # One int64 per band (wrapping arithmetic); a collision only adds a candidate, which is verified below.
        keys_left = pl.DataFrame({"i": np.arange(len(unique_left)), "key": unique_left[:, block] @ mix})
        keys_right = pl.DataFrame(
            {"u": np.arange(len(unique_right)), "j": right_first, "key": unique_right[:, block] @ mix}
        )
        candidates = keys_left.join(keys_right, on="key").select("i", "u", "j")
        i, u = candidates["i"].to_numpy(), candidates["u"].to_numpy()
        similarity = (
            np.concatenate(
                [
                    (unique_left[i[k : k + CHUNK]] == unique_right[u[k : k + CHUNK]]).mean(axis=1)
                    for k in range(0, len(i), CHUNK)
                ]
            )
            if len(i)
            else np.empty(0)
        )
        closest = (
            candidates.with_columns(similarity=similarity)
            .sort(["i", "similarity", "j"], descending=[False, True, False])
            .unique("i", keep="first", maintain_order=True)
        )
        ci, cj, cs = (closest[name].to_numpy() for name in ("i", "j", "similarity"))
        better = (cs > best_similarity[ci]) | ((cs == best_similarity[ci]) & (cj < best_match[ci]))
        best_similarity[ci[better]], best_match[ci[better]] = cs[better], cj[better]
    similarity, match = best_similarity[left_group.ravel()], best_match[left_group.ravel()]
    hits = np.flatnonzero((match < len(right)) & (similarity >= threshold))
    return list(zip(hits.tolist(), match[hits].tolist(), similarity[hits].tolist()))
