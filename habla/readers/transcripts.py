"""Spoken and sung text: subtitles (WebVTT, SRT), yt-dlp json3, Whisper JSON, plain text, lyrics (.txt, .lrc).

Each reader returns one row per unit (a subtitle line, a Whisper segment, a text
line) with `line`, `lines`, `text` and a `reason` that is null for kept units,
so the caller can account for every unit. Subtitle files number their units by
cue (`line` is the cue's ordinal), since a cue is what a user can find in the file.

YouTube auto-captions repeat each line in the next cue (rolling captions) and add
~10 ms cues that only repeat text; a line equal to the previous spoken line is
rejected as `rolling_repeat`, so every spoken line appears once.
"""

from __future__ import annotations

import io
import json

import polars as pl

SOUND_CUE = r"\[(?:[Mm]úsica|[Aa]plausos|[Rr]isas|[Mm]usic|[Aa]pplause|[Ll]aughter|[Ss]ilencio|[Ii]naudible)\]"
SECTION_MARKER = r"^\s*\[[^\]]{1,40}\]\s*$"
LRC_TIMESTAMP = r"\[\d{1,3}:\d{2}(?:[.:]\d{1,3})?\]"
LRC_METADATA = r"^\s*\[(?:ar|ti|al|au|by|re|ve|length|offset|la|#):[^\]]*\]\s*$"
# Lines Whisper invents on silence or music, learned from subtitle credits in its training data.
HALLUCINATED = (
    r"(?i)(subt[ií]tulos? (?:realizados? )?(?:por|de) la comunidad de amara|amara\.org|subtitulad[oa] por|"
    r"suscr[ií]bete|gracias por ver|thanks for watching|like and subscribe)"
)
ROLLING_SHARE = 0.3
UNIT_SCHEMA = {"line": pl.UInt32, "lines": pl.UInt32, "text": pl.String, "reason": pl.String, "raw": pl.String}
TIMES = {"start_s": pl.Float64, "end_s": pl.Float64}  # where the format has them: seconds into the recording


def _units(frame: pl.DataFrame) -> pl.DataFrame:
    schema = UNIT_SCHEMA | {name: dtype for name, dtype in TIMES.items() if name in frame.columns}
    return frame.with_columns(lines=pl.lit(1, dtype=pl.UInt32)).select(list(schema)).cast(schema)


def plain_text(lines: list[str] | pl.Series, lyrics: bool = False) -> pl.DataFrame:
    """One unit per line; sound cues dropped; in lyrics, `[Coro]`-style section markers are structure, not text."""
    frame = pl.DataFrame({"raw": lines}, schema={"raw": pl.String}).with_row_index("line", offset=1)
    frame = frame.with_columns(text=pl.col("raw").str.replace_all(SOUND_CUE, "").str.strip_chars())
    reason = pl.when(pl.col("raw").str.strip_chars() == "").then(pl.lit("blank_line"))
    if lyrics:
        reason = reason.when(pl.col("raw").str.contains(SECTION_MARKER) & ~pl.col("raw").str.contains(SOUND_CUE)).then(
            pl.lit("section_marker")
        )
    reason = reason.when(pl.col("text") == "").then(pl.lit("sound_cue"))
    return _units(frame.with_columns(reason=reason))


def lrc(lines: list[str] | pl.Series) -> pl.DataFrame:
    """Timed lyrics: metadata tags rejected, timestamps removed, the words kept."""
    frame = pl.DataFrame({"raw": lines}, schema={"raw": pl.String}).with_row_index("line", offset=1)
    frame = frame.with_columns(text=pl.col("raw").str.replace_all(LRC_TIMESTAMP, "").str.strip_chars())
    reason = (
        pl.when(pl.col("raw").str.contains(LRC_METADATA))
        .then(pl.lit("lrc_metadata"))
        .when(pl.col("text") == "")
        .then(pl.lit("blank_line"))
    )
    return _units(frame.with_columns(reason=reason))


def subtitles(text: str, srt: bool) -> pl.DataFrame:
    """WebVTT or SRT via webvtt-py (it strips `<c>` tags and inline timestamps); one unit per cue line."""
    import webvtt

    captions = webvtt.WebVTT.from_buffer(io.StringIO(text), format="srt" if srt else "vtt").captions
    frame = pl.DataFrame(
        {
            "line": list(range(1, len(captions) + 1)),
            "raw": [c.text for c in captions],
            "start_s": [c.start_time.in_milliseconds() / 1000 for c in captions],
            "end_s": [c.end_time.in_milliseconds() / 1000 for c in captions],
        },
        schema={"line": pl.UInt32, "raw": pl.String, **TIMES},
    )
    return _one_item_per_cue(_spoken_lines(frame.with_columns(pl.col("raw").str.split("\n")).explode("raw")))


def _one_item_per_cue(units: pl.DataFrame) -> pl.DataFrame:
    """The kept lines of one cue are one item (a wrapped sentence stays whole); `lines` counts them."""
    kept = (
        units.filter(pl.col("reason").is_null())
        .group_by("line", maintain_order=True)
        .agg(
            lines=pl.len().cast(pl.UInt32),
            text=pl.col("text").str.join("\n"),
            reason=pl.col("reason").first(),
            raw=pl.col("raw").str.join("\n"),
            start_s=pl.col("start_s").first(),
            end_s=pl.col("end_s").first(),
        )
    )
    return pl.concat([kept.select(units.columns), units.filter(pl.col("reason").is_not_null())]).sort(
        "line", maintain_order=True
    )


def _spoken_lines(frame: pl.DataFrame) -> pl.DataFrame:
    """Cue lines → units: blank, sound cue (`[Música]`, a whole-line `[teléfono]`), or a rolling repeat.

    A line equal to the previous spoken line is a rolling repeat only in files where
    cues routinely start with the previous cue's line (YouTube's format); elsewhere
    two people saying "Buenas noches." in a row is dialogue, not an artefact.
    """
    frame = frame.with_columns(
        text=pl.col("raw").str.replace_all(SOUND_CUE, "").str.replace(r"^\s*\[[^\]]*\]\s*$", "").str.strip_chars()
    )
    spoken = pl.col("text") != ""
    frame = frame.with_columns(
        repeat=spoken & (pl.col("text") == pl.when(spoken).then(pl.col("text")).forward_fill().shift(1)),
        first_in_cue=pl.col("line") != pl.col("line").shift(1).fill_null(0),
    )
    cues = max(frame["line"].n_unique(), 1)
    rolling = (frame["repeat"] & frame["first_in_cue"]).sum() / cues > ROLLING_SHARE
    reason = (
        pl.when(pl.col("raw").str.strip_chars() == "")
        .then(pl.lit("blank_line"))
        .when(~spoken)
        .then(pl.lit("sound_cue"))
        .when(pl.col("repeat") & pl.lit(rolling))
        .then(pl.lit("rolling_repeat"))
    )
    return _units(frame.with_columns(reason=reason))


def json_transcript(text: str, max_no_speech: float, max_compression: float) -> tuple[pl.DataFrame, str]:
    """yt-dlp json3 (`events` of `segs`) or Whisper (`segments` with quality fields); the format found is returned."""
    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("events"), list):
        events = [e for e in data["events"] if e.get("segs")]
        texts = ["".join(s.get("utf8", "") for s in e["segs"]) for e in events]
        starts = [float(e.get("tStartMs", 0)) / 1000 for e in events]
        frame = pl.DataFrame(
            {
                "line": list(range(1, len(texts) + 1)),
                "raw": texts,
                "start_s": starts,
                "end_s": [start + float(e.get("dDurationMs", 0)) / 1000 for start, e in zip(starts, events)],
            },
            schema={"line": pl.UInt32, "raw": pl.String, **TIMES},
        )
        return _spoken_lines(frame), "yt-dlp json3"
    if isinstance(data, dict) and isinstance(data.get("segments"), list):
        segments = data["segments"]
        frame = pl.DataFrame(
            {
                "line": list(range(1, len(segments) + 1)),
                "raw": [str(s.get("text", "")) for s in segments],
                "no_speech": [float(s.get("no_speech_prob", 0.0)) for s in segments],
                "compression": [float(s.get("compression_ratio", 0.0)) for s in segments],
                "start_s": [float(s.get("start", 0.0)) for s in segments],
                "end_s": [float(s.get("end", 0.0)) for s in segments],
            },
            schema={
                "line": pl.UInt32,
                "raw": pl.String,
                "no_speech": pl.Float64,
                "compression": pl.Float64,
                **TIMES,
            },
        ).with_columns(text=pl.col("raw").str.replace_all(SOUND_CUE, "").str.strip_chars())
        reason = (
            pl.when(pl.col("raw").str.strip_chars() == "")
            .then(pl.lit("blank_line"))
            .when(pl.col("no_speech") > max_no_speech)
            .then(pl.lit("no_speech"))
            .when(pl.col("compression") > max_compression)
            .then(pl.lit("repetitive_segment"))
            .when(pl.col("raw").str.contains(HALLUCINATED))
            .then(pl.lit("hallucinated_credit"))
            .when(pl.col("text") == "")
            .then(pl.lit("sound_cue"))
        )
        return _units(frame.with_columns(reason=reason)), "whisper json"
    raise ValueError("JSON that is neither yt-dlp json3 (`events`) nor Whisper (`segments`)")
