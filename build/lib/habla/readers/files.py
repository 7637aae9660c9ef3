"""Raw files → kept items and rejected units, for every format `clean` reads.

An item is a file, a member of a .zip, or a slice of a table. Problems become a rejected row with a
reason and an `error` in the report, never an exception, so every raw line is accounted for.
"""

from __future__ import annotations

import re
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import ftfy
import polars as pl

from habla.errors import UserError
from habla.params import Clean
from habla.readers import transcripts
from habla.readers.whatsapp import detect_format, parse_whatsapp

MESSAGES_SCHEMA = {
    "source": pl.String, "file": pl.String, "line": pl.UInt32, "lines": pl.UInt32, "chat": pl.String,
    "ts": pl.Datetime("us"), "author": pl.String, "text": pl.String,
}
REJECTED_SCHEMA = {"source": pl.String, "file": pl.String, "line": pl.UInt32, "lines": pl.UInt32, "reason": pl.String, "raw": pl.String}
IGNORED_NAMES = {".gitkeep", "README.md", ".DS_Store"}
TEXT_SUFFIXES = (".txt", ".vtt", ".srt", ".json", ".lrc")
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")
SUPPORTED = (*TEXT_SUFFIXES, *TABLE_SUFFIXES, ".zip")
MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf]")
MIN_WHATSAPP_SHARE = 0.3


class UnreadableFile(Exception):
    pass


def bomless_utf16(head: bytes) -> str | None:
    """`utf-16-le`/`utf-16-be` when every other byte is NUL (Latin text saved as UTF-16 with no BOM), else None."""
    even, odd = head[0::2], head[1::2]
    if len(head) >= 4 and odd.count(0) >= 0.9 * len(odd) and even.count(0) == 0:
        return "utf-16-le"
    if len(head) >= 4 and even.count(0) >= 0.9 * len(even) and odd.count(0) == 0:
        return "utf-16-be"
    return None


def decode(data: bytes) -> tuple[str, str]:
    """Bytes → text and the encoding used; mojibake repaired with ftfy when seen.

    Windows tools save "Unicode" text as UTF-16 (with a BOM, or none); polars and most readers
    would see NUL bytes and give up, so both byte orders are decoded here.
    """
    head = data[:8192]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, encoding = data.decode("utf-16"), "utf-16"
    elif b"\x00" in head and (order := bomless_utf16(head[: len(head) // 2 * 2])):
        text, encoding = data.decode(order, errors="replace"), order
    elif b"\x00" in head:
        raise UnreadableFile("binary file (NUL bytes)")
    else:
        try:
            text, encoding = data.decode("utf-8-sig"), "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"
        except UnicodeDecodeError:
            text, encoding = data.decode("cp1252", errors="replace"), "cp1252 (fallback)"
    if MOJIBAKE.search(text):
        text, encoding = ftfy.fix_text(text, normalization="NFC"), f"{encoding} + ftfy"
    return text, encoding


def split_lines(text: str) -> pl.Series:
    """Lines as a polars Series: a million Python strings would cost more memory than the parse itself."""
    lines = pl.Series("raw", [text], dtype=pl.String).str.replace_all("\r\n?", "\n").str.split("\n").explode()
    return lines.head(-1) if text.endswith(("\n", "\r")) else lines


def discover(raw_dir: Path) -> list[Path]:
    if not raw_dir.is_dir():
        raise UserError(f"{raw_dir}/ does not exist. Put your exports there (e.g. {raw_dir}/whatsapp/chat.txt).")
    files = sorted(
        p for p in raw_dir.rglob("*")
        if p.is_file() and p.name not in IGNORED_NAMES and not any(part.startswith(".") for part in p.relative_to(raw_dir).parts)
    )
    if not files:
        raise UserError(f"{raw_dir}/ is empty. Put WhatsApp exports (.txt) or transcripts there and run again.")
    return files


def split_units(units: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Reader units (line, lines, text, reason, raw, optional author/chat/ts) → kept items and rejected units."""
    kept = units.filter(pl.col("reason").is_null()).drop("reason", "raw")
    absent = {"ts": pl.lit(None, dtype=pl.Datetime("us")), "author": pl.lit(None, dtype=pl.String)}
    kept = kept.with_columns(**{name: value for name, value in absent.items() if name not in kept.columns})
    return kept, units.filter(pl.col("reason").is_not_null()).select("line", "lines", "reason", "raw")


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
        fmt, share = detected = detect_format(lines)
        if fmt is not None and share >= MIN_WHATSAPP_SHARE:
            kept, rejected, details = parse_whatsapp(lines, settings.date_order, detected)
            return "whatsapp", kept, rejected, {**info, **details, "unit": "line", "raw_units": len(lines)}
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
            units, info["format"] = transcripts.json_transcript(text, settings.whisper_max_no_speech, settings.whisper_max_compression)
        except (ValueError, TypeError, AttributeError) as err:
            raise UnreadableFile(f"unrecognised JSON: {str(err).splitlines()[0][:120]}") from None
        source = "transcript"
    else:
        raise UnreadableFile(f"unsupported file type {suffix or '(none)'}; supported: {', '.join(SUPPORTED)}")
    kept, rejected = split_units(units)
    info.update(unit="line" if suffix in (".txt", ".lrc", ".vtt", ".srt") else "segment", raw_units=int(units["lines"].sum()))
    return source, kept, rejected, info


def table_slices(path: Path, settings: Clean, batch_rows: int) -> Iterator[tuple[pl.DataFrame, pl.DataFrame, dict]]:
    """A .csv/.parquet/.jsonl table, one item per row (columns named in `clean.table_columns`), streamed
    `batch_rows` rows at a time so that a table larger than memory can be cleaned."""
    suffix = path.suffix.lower()
    scan = {".csv": pl.scan_csv, ".parquet": pl.scan_parquet, ".jsonl": pl.scan_ndjson}[suffix]
    try:
        table = scan(path)
        present = table.collect_schema().names()
    except Exception as err:  # noqa: BLE001 - polars raises compute/IO errors of several types
        raise UnreadableFile(f"cannot read table: {str(err).splitlines()[0][:160]}") from None
    columns = settings.table_columns
    wanted = {"text": columns.text, "author": columns.author, "title": columns.title, "ts": columns.ts}
    missing = [f"{k}={v}" for k, v in wanted.items() if v and v not in present]
    if missing:
        raise UnreadableFile(f"columns {missing} not in the table (it has {present}); set clean.table_columns")
    units = table.with_row_index("line", offset=2 if suffix == ".csv" else 1).select(
        pl.col("line").cast(pl.UInt32), lines=pl.lit(1, dtype=pl.UInt32),
        text=pl.col(columns.text).cast(pl.String).fill_null(""),
        author=pl.col(columns.author).cast(pl.String) if columns.author else pl.lit(None, dtype=pl.String),
        chat=pl.col(columns.title).cast(pl.String) if columns.title else pl.lit(None, dtype=pl.String),
        ts=pl.col(columns.ts).cast(pl.String).str.to_datetime(strict=False) if columns.ts else pl.lit(None, dtype=pl.Datetime("us")),
    ).with_columns(
        reason=pl.when(pl.col("text").str.strip_chars() == "").then(pl.lit("empty")), raw=pl.col("text")
    )
    try:
        for batch in units.collect_batches(chunk_size=batch_rows):
            kept, rejected = split_units(batch)
            yield kept, rejected, {"format": f"table ({suffix[1:]})", "unit": "row", "raw_units": batch.height}
    except pl.exceptions.PolarsError as err:
        raise UnreadableFile(f"cannot read table: {str(err).splitlines()[0][:160]}") from None


def zip_members(path: Path, settings: Clean) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """Text members of a WhatsApp .zip export, and refused members with why; media files are ignored.

    Nothing is extracted to disk, so a member named `../../x` cannot write outside
    the work folder; such names, symlinks and oversized members are refused.
    """
    accepted, refused = [], []
    limit = settings.max_zip_member_mb * 2**20
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            name = member.filename
            if member.is_dir() or Path(name).suffix.lower() not in TEXT_SUFFIXES:
                continue
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
                refused.append((name, "unsafe path"))
            elif stat.S_ISLNK(member.external_attr >> 16):
                refused.append((name, "symbolic link"))
            elif member.file_size > limit:
                refused.append((name, f"{member.file_size / 2**20:.0f} MB, over clean.max_zip_member_mb"))
            else:
                accepted.append((name, archive.read(member)))
    return accepted, refused


def read_items(path: Path, relative: Path, settings: Clean, batch_rows: int) -> Iterator[tuple[str, str, pl.DataFrame, pl.DataFrame, dict]]:
    """One raw file → (item name, source, kept, rejected, report entry) per readable piece, in name order.

    An item is the file, or a member of a .zip; a table comes in slices of
    `batch_rows` rows (same name, consecutive lines). Problems become a
    rejected row and an `error` in the report, never an exception.
    """
    name = relative.as_posix()
    if relative.suffix.lower() == ".zip":
        try:
            members, refused = zip_members(path, settings)
        except (zipfile.BadZipFile, OSError) as err:
            yield _unreadable(name, path, err)
            return
        inner = [(member, why, None) for member, why in refused] + [(member, None, data) for member, data in members]
        if not inner:
            yield _unreadable(name, path, UnreadableFile("zip with no text export inside"))
        for member, why, data in sorted(inner, key=lambda item: item[0]):
            if why is not None:
                yield _refused_member(f"{name}/{member}", why)
            else:
                yield _read_one(f"{name}/{member}", lambda data=data: data, relative / member, settings)
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
    kept = kept.with_columns(**columns).with_columns(pl.col("chat").fill_null(name)).select(list(MESSAGES_SCHEMA))
    return name, source, kept.cast(MESSAGES_SCHEMA), _tag(rejected, source, name), info


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
    """A whole file (or zip member) that yields nothing: one rejected row, accounting for no lines, and a report line."""
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
