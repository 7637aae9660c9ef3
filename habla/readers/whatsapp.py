"""Parse a WhatsApp chat export into messages, vectorised with polars.

Why our own parser: the notebook regexes accept one Android date format and drop
continuation lines; whatstk misreads Spanish `p. m.` clocks and is slow. Here a
whole file is one polars frame of lines: each line is tested against the header
pattern of the file's format, headers start messages (`cum_sum`), and continuation
lines are joined to the message above them, line breaks kept.

Output rows carry `line` (first raw line, 1-based) and `lines` (how many raw lines
the row covers), so that kept plus rejected lines always add up to the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

INVISIBLE = "[\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
ODD_SPACES = "[\u00a0\u2007\u2009\u202f]"
LRM = "\u200e"

_DATE = r"(?P<d1>\d{1,4})[./-](?P<d2>\d{1,2})[./-](?P<d3>\d{1,4})"
_TIME = r"(?P<hh>\d{1,2})[:.](?P<mi>\d{2})(?:[:.](?P<ss>\d{2}))?"
_AMPM = r"(?:\s?(?P<ampm>[aApP]\.?\s?[mM]\.?))?"
HEADER_PATTERNS = {
    "ios": rf"^\[{_DATE},?\s{_TIME}{_AMPM}\]\s(?P<rest>.*)$",
    "android": rf"^{_DATE},?\s{_TIME}{_AMPM}\s[-–]\s(?P<rest>.*)$",
    "legacy": rf"^{_DATE},?\s{_TIME}{_AMPM}:\s(?P<rest>.*)$",
}
AUTHOR_PATTERN = r"(?s)^(?P<author>[^:\n]{1,80}?): (?P<text>.*)$"

# Header text that is an event, not somebody's message (checked before the author split,
# so the verb must come before any colon: `Ana cambió el asunto de "A" a "B: C"`).
_GROUP_EVENTS = (
    r"creó (el|este) grupo|cambió el asunto|cambió la descripción|cambió (el|la) (ícono|imagen|foto)|"
    r"eliminó la (imagen|foto)|añadió a|te añadió|se unió usando|se unió|salió|eliminó a|te eliminó|"
    r"ahora es admin|ya no es admin|cambió su número|cambió a|"
    r"created (the )?group|changed the subject|changed this group's|changed the group|added|joined using|"
    r"left$|removed|is now an admin|no longer an admin|changed their phone number|changed to|You were added"
)
EVENT_REASONS: list[tuple[str, str]] = [
    ("encryption_notice", r"(?i)cifrados de extremo a extremo|end-to-end encrypted"),
    ("security_code", r"(?i)código de seguridad|security code"),
    ("missed_call", r"(?i)^(llamada|videollamada) perdida|^missed (voice|video) call"),
    ("group_event", rf"(?i)^[^:]*?\b({_GROUP_EVENTS})"),
]
# Whole-text placeholders written by WhatsApp in place of what was sent.
CONTENT_REASONS: list[tuple[str, str]] = [
    (
        "deleted",
        r"(?i)^(se eliminó este mensaje\.?|eliminaste este mensaje\.?"
        r"|this message was deleted\.?|you deleted this message\.?)$",
    ),
    ("view_once", r"^null$"),
    ("location", r"(?i)^(ubicación|location|ubicación en tiempo real compartida|live location shared)\b"),
    ("contact_card", r"(?i)\.vcf(>| \((archivo adjunto|file attached)\))"),
    ("poll", r"(?i)^(encuesta|poll):"),
    ("missed_call", r"(?i)^(llamada|videollamada) perdida|^missed (voice|video) call"),
]
MEDIA_LINE = (
    r"(?i)^(<multimedia omitido>|<media omitted>|"
    r"(imagen|audio|sticker|gif|video|documento|foto|image|sticker|document) omitid[oa]|"
    r"(image|audio|video|sticker|gif|document) omitted|"
    r"<adjunto: [^>]*>|<attached: [^>]*>|\S+\.\w{2,5} \((archivo adjunto|file attached)\))\s*"
)
EDITED_MARK = r"\s*<(Se editó este mensaje\.|This message was edited)>\s*$"


@dataclass(frozen=True)
class DateOrder:
    order: str  # "dmy", "mdy" or "ymd"
    confidence: float  # 1.0 when a field > 12 settles it
    evidence: str


def normalise_lines(lines: pl.Expr) -> pl.Expr:
    return (
        lines.str.replace_all(INVISIBLE, "")
        .str.replace_all(ODD_SPACES, " ")
        .str.replace_all("\u2011", "-")
        .str.strip_chars_end()
    )


def detect_format(lines: pl.Series, sample: int = 2000) -> tuple[str | None, float]:
    """The header format with most matching lines in the file's first lines, and its share."""
    head = pl.DataFrame({"l": lines.head(sample)}).select(normalise_lines(pl.col("l")))["l"]
    non_empty = max(int((head.str.len_chars() > 0).sum()), 1)
    counts = {name: int(head.str.contains(pattern).sum()) for name, pattern in HEADER_PATTERNS.items()}
    best = max(counts, key=lambda name: counts[name])
    return (best, counts[best] / non_empty) if counts[best] else (None, 0.0)


def decide_date_order(d1: pl.Series, d2: pl.Series, d3: pl.Series) -> DateOrder:
    """Day-first or month-first, from the evidence in one file.

    A field above 12 settles it. Otherwise the field that changes more often between
    consecutive messages is the day, and the reading under which the dates run in
    order is preferred; confidence says how clear that was.
    """
    a, b = d1.cast(pl.Int32), d2.cast(pl.Int32)
    if d1.str.len_chars().max() == 4:
        return DateOrder("ymd", 1.0, "four-digit first field")
    if (a > 12).any() and not (b > 12).any():
        return DateOrder("dmy", 1.0, "first field above 12")
    if (b > 12).any() and not (a > 12).any():
        return DateOrder("mdy", 1.0, "second field above 12")
    changes_a = int((a.diff().fill_null(0) != 0).sum())
    changes_b = int((b.diff().fill_null(0) != 0).sum())
    year = d3.cast(pl.Int32)
    dmy_key = year * 10000 + b * 100 + a
    mdy_key = year * 10000 + a * 100 + b
    backwards_dmy = int((dmy_key.diff().fill_null(0) < 0).sum())
    backwards_mdy = int((mdy_key.diff().fill_null(0) < 0).sum())
    score = (changes_a - changes_b) + 2 * (backwards_mdy - backwards_dmy)
    total = changes_a + changes_b + 2 * (backwards_mdy + backwards_dmy)
    if total == 0:
        return DateOrder("dmy", 0.5, "no evidence; Spanish-locale default day-first")
    order = "dmy" if score >= 0 else "mdy"
    return DateOrder(
        order,
        round(0.5 + 0.5 * abs(score) / total, 3),
        f"changes {changes_a}/{changes_b}, backwards {backwards_dmy}/{backwards_mdy}",
    )


def _timestamp(order: str) -> pl.Expr:
    d1, d2, d3 = (pl.col(c).cast(pl.Int32, strict=False) for c in ("d1", "d2", "d3"))
    year, month, day = {"dmy": (d3, d2, d1), "mdy": (d3, d1, d2), "ymd": (d1, d2, d3)}[order]
    year = pl.when(year < 100).then(year + 2000).otherwise(year)
    hour = pl.col("hh").cast(pl.Int32, strict=False)
    ampm = pl.col("ampm").str.to_lowercase().str.replace_all(r"[\s.]", "")
    hour = pl.when(ampm == "am").then(hour % 12).when(ampm == "pm").then(hour % 12 + 12).otherwise(hour)
    second = pl.col("ss").cast(pl.Int32, strict=False).fill_null(0)
    pad = lambda e: e.cast(pl.String).str.zfill(2)  # noqa: E731 - local formatting helper
    stamp = pl.format("{}-{}-{} {}:{}:{}", year, pad(month), pad(day), pad(hour), pl.col("mi"), pad(second))
    return stamp.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False)


def _reason(text: pl.Expr, table: list[tuple[str, str]]) -> pl.Expr:
    expr = pl.lit(None, dtype=pl.String)
    for reason, pattern in reversed(table):
        expr = pl.when(text.str.contains(pattern)).then(pl.lit(reason)).otherwise(expr)
    return expr


def pasted_headers(frame: pl.DataFrame) -> pl.Series:
    """Header-looking lines that are text someone pasted into a message, not messages.

    A real header's author writes elsewhere in the chat and its time does not go
    back; a pasted one (a forwarded quote, a copied log) names an author seen
    nowhere else *and* jumps back in time. Both must hold, so an unusual but real
    message (a one-off author, or a clock correction) still starts a message.
    Only the few lines that go back in time are examined, so this stays cheap.
    """
    previous_ts = pl.when(pl.col("is_header")).then(pl.col("ts")).forward_fill().shift(1)
    back = frame.select((pl.col("is_header") & (pl.col("ts") < previous_ts)).fill_null(False).alias("back"))["back"]
    pasted = pl.Series("pasted", [False] * frame.height, dtype=pl.Boolean)
    if frame.height <= 20 or not back.any():
        return pasted
    headers = frame.filter(pl.col("is_header"))["rest"]
    suspects = (
        frame.with_row_index("row").filter(back).select("row", author=pl.col("rest").str.extract(AUTHOR_PATTERN, 1))
    )
    singles = [
        row
        for row, author in suspects.drop_nulls().iter_rows()
        if int(headers.str.starts_with(f"{author}: ").sum()) == 1
    ]
    return pasted.scatter(singles, True) if singles else pasted


def parse_whatsapp(
    lines: list[str] | pl.Series, date_order: str = "auto", detected: tuple[str | None, float] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Lines of one export → (messages, rejected, report).

    messages: line, lines, ts, author, text. rejected: line, lines, reason, raw.
    `detected` is `detect_format(lines)` when the caller already ran it (it scans a sample of every line).
    """
    frame = pl.DataFrame({"raw": lines}, schema={"raw": pl.String}).with_row_index("line", offset=1)
    fmt, share = detected or detect_format(frame["raw"])
    if fmt is None:
        raise ValueError("no WhatsApp header format matches")
    frame = (
        frame.with_columns(
            norm=normalise_lines(pl.col("raw")),
            marked=pl.col("raw").str.contains(rf"^{LRM}?\[?[^\]]*\]?[^:]*: {LRM}"),
        )
        .with_columns(pl.col("norm").str.extract_groups(HEADER_PATTERNS[fmt]).alias("h"))
        .unnest("h")
    )

    candidates = frame.filter(pl.col("rest").is_not_null())
    decision = (
        DateOrder(date_order, 1.0, "forced by clean.date_order")
        if date_order != "auto"
        else decide_date_order(candidates["d1"], candidates["d2"], candidates["d3"])
    )
    frame = frame.with_columns(ts=_timestamp(decision.order))
    frame = frame.with_columns(is_header=pl.col("rest").is_not_null() & pl.col("ts").is_not_null())
    frame = frame.with_columns(is_header=pl.col("is_header") & ~pasted_headers(frame))
    frame = frame.with_columns(msg=pl.col("is_header").cast(pl.Int32).cum_sum())

    # Most messages are one line: join only the continuation lines, then attach them to their header
    # (a group_by with string joins over every line costs several times more on a million-line export).
    continuation = (
        frame.filter(~pl.col("is_header"))
        .group_by("msg", maintain_order=True)
        .agg(
            first_line=pl.col("line").first(),
            extra=pl.len().cast(pl.UInt32),
            more_body=pl.col("norm").str.join("\n"),
            more_raw=pl.col("raw").str.join("\n"),
        )
    )
    messages = (
        frame.filter(pl.col("is_header"))
        .select("msg", "line", "ts", "marked", "rest", "raw")
        .join(continuation, on="msg", how="left", maintain_order="left")
        .select(
            "msg",
            "line",
            "ts",
            "marked",
            lines=(pl.col("extra").fill_null(0) + 1).cast(pl.UInt32),
            body=pl.when(pl.col("more_body").is_null())
            .then(pl.col("rest"))
            .otherwise(pl.concat_str("rest", pl.lit("\n"), "more_body"))
            .str.strip_chars_end("\n"),
            raw=pl.when(pl.col("more_raw").is_null())
            .then(pl.col("raw"))
            .otherwise(pl.concat_str("raw", pl.lit("\n"), "more_raw")),
        )
    )
    orphan = continuation.filter(pl.col("msg") == 0).select(line="first_line", lines="extra", raw="more_raw")

    split = pl.col("body").str.extract_groups(AUTHOR_PATTERN)
    messages = messages.with_columns(split.struct.field("author"), split.struct.field("text"))
    event = _reason(pl.col("body"), EVENT_REASONS)
    messages = messages.with_columns(
        reason=pl.when(pl.col("author").is_null() | pl.col("author").str.contains('"'))
        .then(event.fill_null("system_message"))
        .when(pl.col("marked"))
        .then(_reason(pl.col("text"), EVENT_REASONS))
        .otherwise(None)
    )
    messages = messages.with_columns(
        text=pl.col("text").str.replace(EDITED_MARK, "").str.replace(MEDIA_LINE, ""),
        had_media=pl.col("text").str.contains(MEDIA_LINE),
    )
    messages = messages.with_columns(
        reason=pl.coalesce(
            pl.col("reason"),
            _reason(pl.col("text"), CONTENT_REASONS),
            pl.when(pl.col("had_media") & (pl.col("text").str.strip_chars() == "")).then(pl.lit("media_omitted")),
            pl.when(pl.col("marked")).then(pl.lit("system_message")),
        ),
        author=pl.col("author").str.strip_chars().str.strip_chars_start("~").str.strip_chars(),
    )
    rejected = pl.concat(
        [
            orphan.select("line", "lines", reason=pl.lit("before_first_message"), raw="raw"),
            messages.filter(pl.col("reason").is_not_null()).select("line", "lines", "reason", "raw"),
        ]
    )
    kept = messages.filter(pl.col("reason").is_null()).select("line", "lines", "ts", "author", "text")
    report = {
        "format": fmt,
        "header_share": round(share, 3),
        "date_order": decision.order,
        "date_order_confidence": decision.confidence,
        "date_order_evidence": decision.evidence,
    }
    return kept, rejected, report
