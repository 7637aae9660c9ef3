"""Raw files → kept items and rejected units, for every format `clean` reads.

An item is a file, a member of a .zip, or a slice of a table. Problems become a rejected row with a
reason and an `error` in the report, never an exception, so every raw line is accounted for.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from habla.errors import UserError
from habla.params import Clean
from habla.readers import transcripts
from habla.readers.archives import zip_members
from habla.readers.decoding import UnreadableFile, decode, split_lines
from habla.readers.tables import table_slices
from habla.readers.units import MESSAGES_SCHEMA, REJECTED_SCHEMA, split_units, with_message_columns
from habla.readers.whatsapp import chat_like_share, detect_format, header_shapes, parse_whatsapp

IGNORED_NAMES = {".gitkeep", "README.md", ".DS_Store"}
TEXT_SUFFIXES = (".txt", ".vtt", ".srt", ".json", ".lrc")
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")
SUPPORTED = (*TEXT_SUFFIXES, *TABLE_SUFFIXES, ".zip")
MIN_WHATSAPP_SHARE = 0.3
UNKNOWN_FORMAT = "unknown_whatsapp_format"


def discover(raw_dir: Path) -> list[Path]:
    if not raw_dir.is_dir():
        raise UserError(f"{raw_dir}/ does not exist. Put your exports there (e.g. {raw_dir}/whatsapp/chat.txt).")
    files = sorted(
        p
        for p in raw_dir.rglob("*")
        if p.is_file()
        and p.name not in IGNORED_NAMES
        and not any(part.startswith(".") for part in p.relative_to(raw_dir).parts)
    )
    if not files:
        raise UserError(f"{raw_dir}/ is empty. Put WhatsApp exports (.txt) or transcripts there and run again.")
    return files


def is_lyrics(relative: Path) -> bool:
    return relative.parts[0].lower() in ("lyrics", "letras") or relative.suffix.lower() == ".lrc"


def read_text_file(data: bytes, relative: Path, settings: Clean) -> tuple[str, pl.DataFrame, pl.DataFrame, dict]:
    """One text export (any supported format) → (source, kept, rejected, report entry)."""
    text, encoding = decode(data)
    del data
    info: dict = {"encoding": encoding}
    suffix = relative.suffix.lower()
    lines = split_lines(text)
    if not (lines.str.strip_chars() != "").any():
        raise UnreadableFile("empty file")
    if suffix in (".txt", ".lrc"):
        del text
    if suffix == ".txt":
        fmt, share = detected = detect_format(lines, header_format=settings.header_format)
        in_chat_folder = relative.parts[0].lower() == "whatsapp"
        if fmt is not None and (share >= MIN_WHATSAPP_SHARE or in_chat_folder):
            kept, rejected, details = parse_whatsapp(lines, settings.date_order, detected, settings.header_format)
            return "whatsapp", kept, rejected, {**info, **details, "unit": "line", "raw_units": len(lines)}
        if in_chat_folder or chat_like_share(lines) >= MIN_WHATSAPP_SHARE:
            return "whatsapp", *unknown_chat_format(lines, info)
        units = transcripts.plain_text(lines, lyrics=is_lyrics(relative))
        source, info["format"] = ("lyrics", "lyrics text") if is_lyrics(relative) else ("transcript", "plain text")
    elif suffix == ".lrc":
        units, source, info["format"] = transcripts.lrc(lines), "lyrics", "lrc"
    elif suffix in (".vtt", ".srt"):
        try:
            units = transcripts.subtitles(text, srt=suffix == ".srt")
        except Exception as err:  # noqa: BLE001 - webvtt-py raises several types for one meaning
            raise UnreadableFile(f"not a valid {suffix[1:].upper()} file ({type(err).__name__})") from None
        source, info["format"] = "transcript", suffix[1:]
    elif suffix == ".json":
        try:
            units, info["format"] = transcripts.json_transcript(
                text, settings.whisper_max_no_speech, settings.whisper_max_compression
            )
        except (ValueError, TypeError, AttributeError) as err:
            raise UnreadableFile(f"unrecognised JSON: {str(err).splitlines()[0][:120]}") from None
        source = "transcript"
    else:
        raise UnreadableFile(f"unsupported file type {suffix or '(none)'}; supported: {', '.join(SUPPORTED)}")
    kept, rejected = split_units(units)
    info.update(
        unit="line" if suffix in (".txt", ".lrc", ".vtt", ".srt") else "segment", raw_units=int(units["lines"].sum())
    )
    return source, kept, rejected, info


def unknown_chat_format(lines: pl.Series, info: dict) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """A chat export whose header format nobody taught us: every line rejected, never read as transcript text
    (that would put dates, names and system lines into the training corpus)."""
    units = pl.DataFrame({"raw": lines}).with_row_index("line", offset=1)
    units = units.select("line", lines=pl.lit(1, pl.UInt32), text="raw", reason=pl.lit(UNKNOWN_FORMAT), raw="raw")
    kept, rejected = split_units(units)
    error = (
        "the WhatsApp header format is not recognised, so none of its lines were used. "
        "Please report it with the `sample_headers` shapes in metrics/clean.json, or set `clean.header_format` "
        "(see docs/inputs.md) to read it now"
    )
    details = {"format": "unknown", "sample_headers": header_shapes(lines), "error": error}
    return kept, rejected, {**info, **details, "unit": "line", "raw_units": len(lines)}


def read_items(
    path: Path, relative: Path, settings: Clean, batch_rows: int
) -> Iterator[tuple[str, str, pl.DataFrame, pl.DataFrame, dict]]:
    """One raw file → (item name, source, kept, rejected, report entry) per readable piece, in name order.

    An item is the file, or a member of a .zip; a table comes in slices of
    `batch_rows` rows (same name, consecutive lines). Problems become a
    rejected row and an `error` in the report, never an exception.
    """
    name = relative.as_posix()
    if relative.suffix.lower() == ".zip":
        found = False
        try:
            for member, why, data in zip_members(path, settings, TEXT_SUFFIXES):
                found = True
                if why is not None:
                    yield _refused_member(f"{name}/{member}", why)
                else:
                    yield _read_one(f"{name}/{member}", lambda data=data: data, relative / member, settings)
        except (zipfile.BadZipFile, OSError) as err:
            yield _unreadable(name, path, err)
            return
        if not found:
            yield _unreadable(name, path, UnreadableFile("zip with no text export inside"))
        return
    if relative.suffix.lower() in TABLE_SUFFIXES:
        try:
            for kept, rejected, info in table_slices(path, settings, batch_rows):
                yield _finish_item(name, "table", kept, rejected, info)
        except (OSError, UnreadableFile) as err:
            yield _unreadable(name, path, err)
        return
    yield _read_one(name, path.read_bytes, relative, settings)


def item_order(path: Path, raw_dir: Path) -> str:
    """Items come out sorted by name (a zip's members are named `x.zip/member`), so outputs need no global sort."""
    relative = path.relative_to(raw_dir).as_posix()
    return f"{relative}/" if path.suffix.lower() == ".zip" else relative


def _read_one(name: str, read, relative: Path, settings: Clean):
    try:
        source, kept, rejected, info = read_text_file(read(), relative, settings)
    except (OSError, UnreadableFile, UnicodeDecodeError) as err:
        return _unreadable_bytes(name, read, err)
    return _finish_item(name, source, kept, rejected, info)


def _finish_item(name: str, source: str, kept: pl.DataFrame, rejected: pl.DataFrame, info: dict):
    info["source"] = source
    columns = {"source": pl.lit(source), "file": pl.lit(name)}
    if "chat" not in kept.columns:
        columns["chat"] = pl.lit(name)
    kept = with_message_columns(kept.with_columns(**columns).with_columns(pl.col("chat").fill_null(name)))
    return name, source, kept, _tag(rejected, source, name), info


def _unreadable(name: str, path: Path, err: Exception):
    def head() -> bytes:
        with path.open("rb") as handle:
            return handle.read(200)

    return _unreadable_bytes(name, head if path.exists() else (lambda: b""), err)


def _unreadable_bytes(name: str, read, err: Exception):
    try:
        preview = read()[:200].decode("utf-8", errors="replace")
    except OSError:
        preview = ""
    return _file_problem(name, "unreadable_file", f"{err}: {preview}", str(err))


def _refused_member(name: str, why: str):
    return _file_problem(name, "zip_member_refused", f"{name}: {why}", f"refused: {why}")


def _file_problem(name: str, reason: str, raw: str, error: str):
    """A whole file (or zip member) that yields nothing: one rejected row for no lines, and a report line."""
    rejected = pl.DataFrame(
        {"line": [1], "lines": [0], "reason": [reason], "raw": [raw]},
        schema={"line": pl.UInt32, "lines": pl.UInt32, "reason": pl.String, "raw": pl.String},
    )
    return name, "unknown", _empty_messages(), _tag(rejected, "unknown", name), {"error": error}


def _tag(rejected: pl.DataFrame, source: str, name: str) -> pl.DataFrame:
    tagged = rejected.with_columns(source=pl.lit(source), file=pl.lit(name))
    return tagged.select(list(REJECTED_SCHEMA)).cast(REJECTED_SCHEMA)


def _empty_messages() -> pl.DataFrame:
    return pl.DataFrame(schema=MESSAGES_SCHEMA)
