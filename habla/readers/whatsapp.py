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

import re
from dataclasses import dataclass

import polars as pl

from habla.errors import UserError
from habla.readers.whatsapp_locales import PATTERNS

# Formatting, not meaning: directional marks (LRM, RLM, ALM, embeddings, isolates), zero-width space, BOM.
INVISIBLE = "[\u061c\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
ODD_SPACES = "[\u00a0\u2007\u2009\u202f]"

# Digits as WhatsApp writes them in Arabic, Persian and Devanagari locales, mapped to ASCII in the header fields only
# (a message's own digits are the author's).
_LOCAL_DIGITS = (
    "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"
    "\u06f0\u06f1\u06f2\u06f3\u06f4\u06f5\u06f6\u06f7\u06f8\u06f9"
    "\u0966\u0967\u0968\u0969\u096a\u096b\u096c\u096d\u096e\u096f"
)
_DIGIT = f"[0-9{_LOCAL_DIGITS}]"
_ERA = "[RH]"  # Reiwa (2019–) and Heisei (1989–2019): year n is 2018 + n and 1988 + n
_ERA_START = {"R": 2018, "H": 1988}
# The middle field is a year in month/year/day exports (`[06/2018/13, …]`); the last may be a Japanese-era year
# (`3/27/R4`: Reiwa 4), which iOS writes with the Japanese calendar.
_DATE = (
    rf"(?P<d1>{_DIGIT}{{1,4}})[./-]\s?(?P<d2>{_DIGIT}{{4}}|{_DIGIT}{{1,2}})[./-]\s?"
    rf"(?P<d3>{_ERA}?{_DIGIT}{{1,4}})\.?"
)
# Twelve-hour markers: after the time (a. m., PM, م, μ.μ.) or, in East Asian locales, before it (午後, 오후, 下午).
# English phones set to a "day period" clock write `9:15 in the morning`, `3:07 in the afternoon`, `11:40 at night`.
_AM_PM_AFTER = (
    r"(?:\s?(?P<ampm>[aApP]\.?\s?[mM]\.?|ص|م|[πμ]\.\s?μ\.|[πμ]μ"
    r"|in the morning|in the afternoon|in the evening|at night|noon))?"
)
_AM_PM_BEFORE = r"(?P<pre>午前|午後|오전|오후|上午|下午)\s?"
_TIME_24 = rf"(?P<hh>{_DIGIT}{{1,2}})[:.](?P<mi>{_DIGIT}{{2}})(?:[:.](?P<ss>{_DIGIT}{{2}}))?"
_TIME = _TIME_24 + _AM_PM_AFTER
# Between date and time: a comma (Latin or Arabic) and, in some languages, a word (à, klo, um, at, às, alle, om, kl.).
_BETWEEN = rf"[,،]?\s+(?:{_AM_PM_BEFORE}|[^\d\s\[\]]{{1,4}}\.?\s+)?"
# Each pattern is a header up to where the message starts (the rest of the line is the message): matching only the
# header lets the regex engine capture fields on a few characters instead of on the whole line, twice as fast.
HEADER_PATTERNS = {
    "ios": rf"^\s*\[{_DATE}{_BETWEEN}{_TIME}\]\s*",
    "ios_time_first": rf"^\s*\[{_TIME}[,،]\s*{_DATE}\]\s*",
    "android": rf"^\s*{_DATE}{_BETWEEN}{_TIME}\s+[-–]\s",
    "legacy": rf"^\s*{_DATE}{_BETWEEN}{_TIME}[:;]\s",  # `13.06.18 21.25.15: a: m`, `12.07.2017 - 22:35:22; a: m`
    # Nothing between the time and the author: Croatian and Serbian phones (`13. 6. 2018. 21:25:15 a: m`) and an export
    # in automaciej/whatsapp-archive#4 (`02-12-18 22:55:45 a: m`). A 24-hour time only: a 12-hour marker could not be
    # told from an author named Amanda. Last, so a file that another format reads as well goes to that one
    # (detection keeps the first of equal counts).
    "bare": rf"^\s*{_DATE}\s+{_TIME_24}\s+",
}
# `clean.header_format` names its groups for people; the parser's own names are positional.
CUSTOM_GROUPS = {"day": "d1", "month": "d2", "year": "d3", "hour": "hh", "minute": "mi", "second": "ss", "ampm": "ampm"}
REQUIRED_CUSTOM_GROUPS = ("day", "month", "year", "hour", "minute", "rest")
AUTHOR_PATTERN = r"(?s)^(?P<author>[^:\n]{1,80}?)\s?: (?P<text>.*)$"
# iOS begins the text of each of its placeholders and system lines with a directional mark (U+200E; U+200F in
# right-to-left languages) in every app language, and the whole line too for attachments and placeholders: evidence
# that needs no wording, for the languages the locale table lacks. Read on the raw first line (normalising removes
# marks), after the first `: ` (the author's): a mark opening the text, or after a file name (`Resume.pdf • ‎2 pages
# ‎document omitted`); a mark before `<…>` counts only before an attachment's numbered name, not an edit notice.
_MARK = "[\u200e\u200f]"
MARKED_TEXT = rf"^(?:[^:\n]|:[^ \n])*: (?:[^\n]*?\.\w{{1,8}} (?:• [^\n]*?)?)?{_MARK}(?:[^<\n]|<[^>\n]*\d{{8}}-)"
MARKED_LINE = rf"^\s*{_MARK}"
NUMBERED_ATTACHMENT = r"<[^>\n]*\d{8}-[^>\n]*>"
URL = r"https?://"
# Android writes a shared document as `<Media omitted>` with the file's name on the next line, where a caption goes:
# a lone file name there is the document's, not words the person typed.
DOCUMENT_NAME = (
    r"(?i)^[^\n]{1,160}\.(?:pdf|docx?|xlsx?|pptx?|odt|ods|odp|rtf|txt|csv|json|xml|html?|epub|zip|rar|7z|apk|vcf"
    r"|mp3|m4a|wav|ogg|opus|aac|mp4|mov|avi|mkv|3gp|jpe?g|png|gif|webp|heic)\s*$"
)
# Lines that start like a chat export (a date, or an iOS time-first header), whatever follows.
CHAT_LIKE_START = (
    rf"^\s*\[?(?:{_DIGIT}{{1,4}}[./-]\s?{_DIGIT}{{1,2}}[./-]"
    rf"|{_DIGIT}{{1,2}}[:.]{_DIGIT}{{2}}(?:[:.]{_DIGIT}{{2}})?[,،]\s*{_DIGIT})"
)
_AM = ("am", "ص", "πμ", "午前", "오전", "上午", "inthemorning")
_PM = ("pm", "م", "μμ", "午後", "오후", "下午", "intheafternoon", "intheevening", "noon")
_NIGHT = "atnight"  # 9–11 at night are evening hours, 12–5 at night the small hours


@dataclass(frozen=True)
class DateOrder:
    order: str  # "dmy", "mdy", "ymd" or "myd" (month/year/day, as some exports write it)
    confidence: float  # 1.0 when a field > 12 settles it
    evidence: str


def normalise_lines(lines: pl.Expr) -> pl.Expr:
    return (
        lines.str.replace_all(INVISIBLE, "")
        .str.replace_all(ODD_SPACES, " ")
        .str.replace_all("\u2011", "-")
        .str.strip_chars_end()
    )


def custom_pattern(header_format: str) -> str:
    """`clean.header_format` (groups named day, month, year, hour, minute, second, ampm, rest) in the parser's names."""
    for name, internal in CUSTOM_GROUPS.items():
        header_format = header_format.replace(f"(?P<{name}>", f"(?P<{internal}>")
    return header_format


def check_header_format(header_format: str) -> None:
    """A user's own header regex must compile and name the fields the parser needs: one sentence if not."""
    if not header_format:
        return
    missing = [name for name in REQUIRED_CUSTOM_GROUPS if f"(?P<{name}>" not in header_format]
    if missing:
        raise UserError(
            f"params: `clean.header_format` must name the groups {', '.join(REQUIRED_CUSTOM_GROUPS)} "
            f"(missing: {', '.join(missing)}), e.g. "
            r"'^(?P<day>\d+)/(?P<month>\d+)/(?P<year>\d+) (?P<hour>\d+):(?P<minute>\d+) - (?P<rest>.*)$'."
        )
    try:
        pl.Series([""]).str.extract_groups(custom_pattern(header_format))
    except pl.exceptions.ComputeError as err:
        reason = str(err).splitlines()[0]
        raise UserError(f"params: `clean.header_format` is not a valid regex ({reason}).") from None


def header_patterns(header_format: str = "") -> dict[str, str]:
    return {"custom": custom_pattern(header_format), **HEADER_PATTERNS} if header_format else HEADER_PATTERNS


def _sample(lines: pl.Series, sample: int) -> tuple[pl.Series, int]:
    """The file's first lines, normalised, and how many are not empty (at least 1, to divide by)."""
    head = pl.DataFrame({"l": lines.head(sample)}).select(normalise_lines(pl.col("l")))["l"]
    return head, max(int((head.str.len_chars() > 0).sum()), 1)


def detect_format(lines: pl.Series, sample: int = 2000, header_format: str = "") -> tuple[str | None, float]:
    """The header format with most matching lines in the file's first lines, and its share.

    A user's `clean.header_format` is tried first and wins ties: it exists to override what is detected.
    """
    head, non_empty = _sample(lines, sample)
    counts = {name: int(head.str.contains(pattern).sum()) for name, pattern in header_patterns(header_format).items()}
    best = max(counts, key=lambda name: counts[name])
    return (best, counts[best] / non_empty) if counts[best] else (None, 0.0)


def chat_like_share(lines: pl.Series, sample: int = 2000) -> float:
    """Share of non-empty lines that start like a chat export's header, whether or not a known format matches."""
    head, non_empty = _sample(lines, sample)
    return int(head.str.contains(CHAT_LIKE_START).sum()) / non_empty


def header_shapes(lines: pl.Series, count: int = 3, width: int = 40) -> list[dict]:
    """What the first chat-like lines look like, without what they say: digits become 9, letters a, the rest stays.

    Enough for a maintainer to write the header pattern of an unknown format, and safe to put in a report.
    """
    frame = pl.DataFrame({"l": lines}).select(normalise_lines(pl.col("l")))
    starts = frame.filter(pl.col("l").str.contains(CHAT_LIKE_START)).head(count)["l"]
    return [
        {"length": len(line), "shape": re.sub(r"[^\W\d]", "a", re.sub(r"\d", "9", line[:width]))} for line in starts
    ]


def decide_date_order(d1: pl.Series, d2: pl.Series, d3: pl.Series) -> DateOrder:
    """Day-first or month-first, from the evidence in one file.

    A field above 12 settles it. Otherwise the field that changes more often between
    consecutive messages is the day, and the reading under which the dates run in
    order is preferred; confidence says how clear that was.
    """
    if d2.str.len_chars().max() == 4:
        return DateOrder("myd", 1.0, "four-digit middle field")
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


def _ascii_digits(field: pl.Expr) -> pl.Expr:
    local = list(_LOCAL_DIGITS)
    return field.str.replace_many(local, [str(i % 10) for i in range(len(local))])


def _gregorian_year(field: pl.Expr) -> pl.Expr:
    """A Japanese-era year (`R4`) as its Gregorian year (`2022`); other years as they are."""
    era, year = field.str.slice(0, 1), field.str.slice(1).cast(pl.Int32, strict=False)
    converted = pl.coalesce(*(pl.when(era == name).then(year + start) for name, start in _ERA_START.items()))
    return pl.when(field.str.contains(f"^{_ERA}")).then(converted.cast(pl.String)).otherwise(field)


def _timestamp(order: str) -> pl.Expr:
    d1, d2, d3 = (pl.col(c).cast(pl.Int32, strict=False) for c in ("d1", "d2", "d3"))
    year, month, day = {"dmy": (d3, d2, d1), "mdy": (d3, d1, d2), "ymd": (d1, d2, d3), "myd": (d2, d1, d3)}[order]
    year = pl.when(year < 100).then(year + 2000).when(year >= 2400).then(year - 543).otherwise(year)  # Buddhist era
    hour = pl.col("hh").cast(pl.Int32, strict=False)
    marker = pl.coalesce(pl.col("ampm"), pl.col("pre")).str.to_lowercase().str.replace_all(r"[\s.]", "")
    hour = (
        pl.when(marker.is_in(_AM))
        .then(hour % 12)
        .when(marker.is_in(_PM))
        .then(hour % 12 + 12)
        .when(marker == _NIGHT)
        .then(pl.when((hour >= 6) & (hour < 12)).then(hour + 12).otherwise(hour % 12))
        .otherwise(hour)
    )
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


def header_fields(frame: pl.DataFrame, pattern: str) -> pl.DataFrame:
    """The date and time fields of every header line, and `rest`: the message after the header (null: no header).

    A user's `clean.header_format` names the message itself (`rest`); the built-in patterns stop at the header.
    """
    if "(?P<rest>" in pattern:
        return frame.with_columns(pl.col("norm").str.extract_groups(pattern).alias("h")).unnest("h")
    frame = frame.with_columns(pl.col("norm").str.extract_groups(f"(?P<head>{pattern})").alias("h")).unnest("h")
    return frame.with_columns(rest=pl.col("norm").str.slice(pl.col("head").str.len_chars())).drop("head")


def parse_whatsapp(
    lines: list[str] | pl.Series,
    date_order: str = "auto",
    detected: tuple[str | None, float] | None = None,
    header_format: str = "",
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Lines of one export → (messages, rejected, report).

    messages: line, lines, ts, author, text. rejected: line, lines, reason, raw.
    `detected` is `detect_format(lines)` when the caller already ran it (it scans a sample of every line).
    """
    frame = pl.DataFrame({"raw": lines}, schema={"raw": pl.String}).with_row_index("line", offset=1)
    fmt, share = detected or detect_format(frame["raw"], header_format=header_format)
    if fmt is None:
        raise ValueError("no WhatsApp header format matches")
    frame = header_fields(frame.with_columns(norm=normalise_lines(pl.col("raw"))), header_patterns(header_format)[fmt])
    frame = frame.with_columns(
        pl.lit(None, pl.String).alias(c) for c in ("ss", "ampm", "pre") if c not in frame.columns
    )
    if frame["d1"].str.contains(f"[{_LOCAL_DIGITS}]").any() or frame["hh"].str.contains(f"[{_LOCAL_DIGITS}]").any():
        frame = frame.with_columns(_ascii_digits(pl.col(c)) for c in ("d1", "d2", "d3", "hh", "mi", "ss"))
    if frame["d3"].str.contains(_ERA).any():
        frame = frame.with_columns(d3=_gregorian_year(pl.col("d3")))

    candidates = frame.filter(pl.col("rest").is_not_null())
    decision = (
        DateOrder(date_order, 1.0, "forced by clean.date_order")
        if date_order != "auto"
        else DateOrder("dmy", 1.0, "named by clean.header_format")
        if fmt == "custom"
        else decide_date_order(candidates["d1"], candidates["d2"], candidates["d3"])
    )
    frame = frame.with_columns(ts=_timestamp(decision.order)).drop("d1", "d2", "d3", "hh", "mi", "ss", "ampm", "pre")
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
        .select("msg", "line", "ts", "rest", "raw")
        .join(continuation, on="msg", how="left", maintain_order="left")
        .select(
            "msg",
            "line",
            "ts",
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
    messages = classify(messages)
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


def classify(messages: pl.DataFrame) -> pl.DataFrame:
    """Split each message's body into author and text, and name the reason of those that are not messages.

    A line with no `Author: ` is WhatsApp's own (Android writes system lines without one). With an author, the text
    decides: placeholders and notices in any language of the locale table, whoever appears as author. Group events
    are whole-text templates (`Cami salió`) that a person could also type, so with an author they count only when
    that author is the chat's own name, which iOS puts on its system lines: an author who never wrote anything
    but notices and group events (in a one-to-one chat, the contact also signs the encryption notice, but writes
    real messages too, and `me salió caro` stays theirs).

    Every table regex is a pass over every message; one screening pass (and one for group events) finds the few
    messages that need a closer look, and only those get it, which keeps a million-line export near its old time.
    """
    messages = messages.with_columns(pl.col("body").str.extract_groups(AUTHOR_PATTERN).alias("split")).unnest("split")
    is_system_line = pl.col("author").is_null() | pl.col("author").str.contains('"')
    system_lines = messages.filter(is_system_line).with_columns(
        reason=pl.coalesce(
            _reason(pl.col("body"), PATTERNS.notices),
            pl.when(pl.col("body").str.contains(PATTERNS.group_event)).then(pl.lit("group_event")),
            pl.lit("system_message"),
        )
    )
    authored = messages.filter(~is_system_line).with_columns(
        screened=pl.col("text").str.contains(PATTERNS.screen),
        group_event=pl.col("text").str.contains(PATTERNS.group_event),
        notice_like=pl.col("text").str.contains("|".join(pattern for _, pattern in PATTERNS.notices)),
        has_mark=pl.col("raw").str.contains(_MARK),  # a cheap screen: the evidence itself is read on these only
    )
    authored = authored.with_columns(chat_name=(pl.col("notice_like") | pl.col("group_event")).all().over("author"))
    needs_look = pl.col("screened") | pl.col("group_event") | pl.col("has_mark")
    plain = authored.filter(~needs_look).with_columns(reason=pl.lit(None, pl.String))
    looked_at = (
        authored.filter(needs_look)
        .with_columns(marked=pl.col("raw").str.contains(MARKED_TEXT))
        .with_columns(
            notice=_reason(pl.col("text"), PATTERNS.notices),
            media=pl.col("text").str.contains(PATTERNS.media_line),
            # a marked text on a marked line: a placeholder or attachment in a language the table lacks
            marked_media=pl.col("marked") & pl.col("raw").str.contains(MARKED_LINE),
            text=pl.col("text").str.replace(PATTERNS.edited_mark, ""),
        )
        .with_columns(marked_media=pl.col("marked_media") & ~pl.col("media"))
    )
    media_kind = (
        pl.when(pl.col("marked_media") & pl.col("text").str.contains(f"^[^\n]*{NUMBERED_ATTACHMENT}"))
        .then(pl.lit("attachment"))
        .when(pl.col("marked_media"))
        .then(pl.lit("media_omitted"))
        .when(~pl.col("media"))
        .then(None)
        .when(pl.col("text").str.contains(PATTERNS.contact_file))
        .then(pl.lit("contact_card"))
        .when(pl.col("text").str.contains(PATTERNS.attachment_line))
        .then(pl.lit("attachment"))
        .otherwise(pl.lit("media_omitted"))
    )
    looked_at = (
        looked_at.with_columns(
            media=media_kind,
            text=pl.when("marked_media")
            .then(pl.col("text").str.replace(r"^[^\n]*\n?", ""))
            .when("media")
            .then(pl.col("text").str.replace(PATTERNS.media_line, ""))
            .otherwise("text"),
        )
        .with_columns(
            text=pl.when(pl.col("media").is_not_null() & pl.col("text").str.contains(DOCUMENT_NAME))
            .then(pl.lit(""))
            .otherwise("text")
        )
        .with_columns(
            reason=pl.coalesce(
                "notice",
                pl.when(pl.col("group_event") & pl.col("chat_name")).then(pl.lit("group_event")),
                _reason(pl.col("text"), PATTERNS.content),
                pl.when(pl.col("text").str.strip_chars() == "").then(pl.col("media")),
                # a marked text alone: one of WhatsApp's own lines (a shared location, a deleted message, a notice)
                pl.when(pl.col("marked") & pl.col("media").is_null()).then(
                    pl.when(pl.col("text").str.contains(URL))
                    .then(pl.lit("location"))
                    .otherwise(pl.lit("system_message"))
                ),
            )
        )
    )
    columns = ["line", "lines", "ts", "author", "text", "reason", "raw"]
    # A caption typed under an attachment is the author's message: the attachment line (always the first, the caption
    # follows on its own lines) is rejected with its reason and the caption kept from the next line on.
    captioned = pl.col("media").is_not_null() & pl.col("reason").is_null() & (pl.col("text").str.strip_chars() != "")
    attachments = looked_at.filter(captioned).select(
        "line",
        "ts",
        "author",
        lines=pl.lit(1, pl.UInt32),
        text=pl.lit(None, pl.String),
        reason="media",
        raw=pl.col("raw").str.split("\n").list.first(),
    )
    looked_at = looked_at.with_columns(
        line=pl.when(captioned).then(pl.col("line") + 1).otherwise("line"),
        lines=pl.when(captioned).then(pl.col("lines") - 1).otherwise("lines"),
        raw=pl.when(captioned).then(pl.col("raw").str.splitn("\n", 2).struct.field("field_1")).otherwise("raw"),
    )
    return (
        pl.concat(
            [
                system_lines.select(columns),
                plain.select(columns),
                looked_at.select(columns),
                attachments.select(columns),
            ]
        )
        .sort("line")
        .with_columns(pl.col("author").str.strip_chars().str.strip_chars_start("~").str.strip_chars())
    )
