"""Replace personal data in message text with placeholder tokens.

E-mails, URLs and national ids are regular enough for vectorised polars regexes.
Phone numbers are not: a regex either misses real formats or eats amounts and
dates, so candidates (texts with a run of 7+ digits) go through Google's
`phonenumbers` matcher at VALID leniency, once per configured region. Only those
candidate rows take the Python path, which keeps the stage fast on large chats.
"""

from __future__ import annotations

import re

import phonenumbers
import polars as pl

from habla.params import Redaction

EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
URL = r"(?i)\b(?:https?://|www\.)[^\s<>\"]+"
ID_PATTERNS = [
    ("<RUT>", r"\b\d{1,2}\.?\d{3}\.?\d{3}-[\dkK]\b"),
    ("<CURP>", r"\b[A-Z]{4}\d{6}[HM][A-Z]{5}[A-Z0-9]\d\b"),
    ("<DNI>", r"\b(?:\d{8}|[XYZ]\d{7})-?[A-HJ-NP-TV-Z]\b"),
]
PHONE_TOKEN = "<TELEFONO>"
PHONE_CANDIDATE = r"\d[\d\s().\-‑]{5,}\d"
OLD_MEXICAN_MOBILE = re.compile(r"\+52[\s-]?1[\s-]?(?=\d{2,3}[\s-]?\d{3,4}[\s-]?\d{4}\b)")
AMOUNT_BEFORE = re.compile(r"[$€£]\s?$")


def redact_phones(text: str, regions: tuple[str, ...]) -> str:
    # `+52 1 55 1234 5678` is the pre-2019 Mexican mobile form; phonenumbers rejects
    # the extra 1, so it is dropped before matching and the whole span replaced.
    probe = OLD_MEXICAN_MOBILE.sub("+52 ", text)
    spans: list[tuple[int, int]] = []
    for region in regions:
        for match in phonenumbers.PhoneNumberMatcher(probe, region, leniency=phonenumbers.Leniency.VALID):
            if AMOUNT_BEFORE.search(probe[: match.start]):
                continue
            spans.append((match.start, match.end))
    if not spans:
        return text
    if probe != text:
        text = probe
    out, last = [], 0
    for start, end in sorted(set(spans)):
        if start < last:
            continue
        out.append(text[last:start] + PHONE_TOKEN)
        last = end
    return "".join(out) + text[last:]


def redact_frame(frame: pl.DataFrame, settings: Redaction, column: str = "text") -> pl.DataFrame:
    """Return `frame` with `column` redacted as the settings say."""
    text = pl.col(column)
    if settings.emails:
        text = text.str.replace_all(EMAIL, "<EMAIL>")
    if settings.urls:
        text = text.str.replace_all(URL, "<URL>")
    if settings.ids:
        for token, pattern in ID_PATTERNS:
            text = text.str.replace_all(pattern, token)
    frame = frame.with_columns(text.alias(column))
    if not settings.phones or frame.is_empty():
        return frame
    regions = tuple(settings.phone_regions)
    candidates = frame.select(pl.arg_where(pl.col(column).str.contains(PHONE_CANDIDATE).fill_null(False)))
    indices = candidates.to_series()
    if indices.is_empty():
        return frame
    values = frame[column].gather(indices)
    redacted = pl.Series([redact_phones(value, regions) for value in values], dtype=pl.String)
    return frame.with_columns(frame[column].scatter(indices, redacted).alias(column))
