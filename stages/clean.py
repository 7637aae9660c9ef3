"""`clean` stage: raw exports under data/raw → cleaned messages and rejected lines.

Every raw line of every file ends up in `data/cleaned/messages.parquet` or in
`data/cleaned/rejected.parquet` with a reason; `metrics/clean.json` reconciles
the counts per file. Text keeps its case, emojis and punctuation: that is the
voice the model is meant to learn.
"""

from __future__ import annotations

import logging
import re
import stat
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import ftfy
import polars as pl

from stages.errors import UserError, run_stage
from stages.gates import Gate
from stages.io import ParquetParts, write_json
from stages.params import Clean, load_params
from stages import transcripts
from stages.redact import redact_frame
from stages.whatsapp import detect_format, parse_whatsapp

log = logging.getLogger("clean")

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/cleaned")
REPORT = Path("metrics/clean.json")
SOURCES = ["whatsapp", "transcript", "lyrics", "table"]
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


def decode(data: bytes) -> tuple[str, str]:
    """Bytes → text and the encoding used; mojibake repaired with ftfy when seen."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, encoding = data.decode("utf-16"), "utf-16"
    elif b"\x00" in data[:8192]:
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
        fmt, share = detect_format(lines)
        if fmt is not None and share >= MIN_WHATSAPP_SHARE:
            kept, rejected, details = parse_whatsapp(lines, settings.date_order)
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


def normalise_text(text: pl.Expr) -> pl.Expr:
    """NFC, one space between words, no trailing spaces on lines, at most one blank line."""
    return (
        text.str.normalize("NFC")
        .str.replace_all(r"[ \t]+", " ")
        .str.replace_all(r" ?\n ?", "\n")
        .str.replace_all(r"\n{3,}", "\n\n")
        .str.strip_chars()
    )


def finish(messages: pl.DataFrame, settings: Clean) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Normalise and redact text; move empty, over-long and duplicate messages to rejected.

    Duplicates are looked for within a chat, and a chat is one item, so items can be finished one at a time.
    """
    messages = redact_frame(messages.with_columns(normalise_text(pl.col("text"))), settings.redact)
    minute = pl.col("ts").dt.truncate("1m")
    duplicate = (pl.col("source") == "whatsapp") & ~pl.struct("chat", "author", "text", minute).is_first_distinct()
    reason = (
        pl.when(pl.col("text") == "").then(pl.lit("empty"))
        .when(pl.col("text").str.len_chars() > settings.max_chars).then(pl.lit("too_long"))
        .when(duplicate).then(pl.lit("duplicate"))
    )
    messages = messages.with_columns(reason=reason)
    rejected = messages.filter(pl.col("reason").is_not_null()).select(
        "source", "file", "line", "lines", "reason", raw=pl.col("text")
    )
    return messages.filter(pl.col("reason").is_null()).drop("reason"), rejected.cast(REJECTED_SCHEMA)


def account(entry: dict, kept: pl.DataFrame, rejected: pl.DataFrame) -> dict:
    """One piece's report entry with its counts; refuses to go on if kept and rejected do not cover its raw lines."""
    covered = int(kept["lines"].sum()) + int(rejected["lines"].sum())
    if "raw_units" in entry and covered != entry["raw_units"]:
        raise RuntimeError(f"accounting broken: {covered} of {entry['raw_units']} {entry['unit']}s covered")
    return {**entry, "kept": kept.height, "rejected": dict(rejected.group_by("reason").len().iter_rows())}


def merge_entries(old: dict | None, new: dict) -> dict:
    """The report entry of an item read in several slices: counts add up."""
    if old is None:
        return {**new, "rejected": dict(sorted(new["rejected"].items()))}
    merged = {**old, "kept": old["kept"] + new["kept"], "rejected": dict(sorted((Counter(old["rejected"]) + Counter(new["rejected"])).items()))}
    if "raw_units" in new:
        merged["raw_units"] = old.get("raw_units", 0) + new["raw_units"]
    if "error" in new:
        merged["error"] = new["error"]
    return merged


def report(entries: dict[str, dict], kept_by_source: Counter) -> dict:
    rejected_by_reason = sum((Counter(e["rejected"]) for e in entries.values()), Counter())
    return {
        "files": entries,
        "totals": {
            "files": len(entries),
            "raw_units": sum(e.get("raw_units", 0) for e in entries.values()),
            "kept": sum(e["kept"] for e in entries.values()),
            "rejected": sum(rejected_by_reason.values()),
            "rejected_by_reason": dict(sorted(rejected_by_reason.items())),
            "by_source": dict(sorted(kept_by_source.items())),
        },
    }


def expectations(max_chars: int) -> list:
    return [
        ("ExpectTableRowCountToBeBetween", {"min_value": 1, "description": "at least one message is kept"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "text", "description": "every message has text"}),
        ("ExpectColumnValueLengthsToBeBetween", {"column": "text", "min_value": 1, "max_value": max_chars, "description": "no empty or over-long message"}),
        ("ExpectColumnValuesToBeInSet", {"column": "source", "value_set": SOURCES, "description": "every source is a known one"}),
        ("ExpectCompoundColumnsToBeUnique", {"column_list": ["file", "line"], "description": "each raw line is kept at most once"}),
        ("ExpectColumnValuesToBeBetween", {"column": "year", "min_value": 2009, "max_value": 2100, "description": "chat dates are plausible (WhatsApp exists since 2009): check clean.date_order"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "chat_author", "description": "every chat message has an author"}),
    ]


def gate_frame(kept: pl.DataFrame) -> pl.DataFrame:
    """The columns the gate checks: the text contract plus derived checks (year, chat author)."""
    return kept.select(
        "source", "file", "line", "text",
        year=pl.col("ts").dt.year(),
        chat_author=pl.when(pl.col("source") == "whatsapp").then(pl.col("author")).otherwise(pl.lit("-")),
    )


def main() -> None:
    params = load_params()
    settings = params.clean
    files = sorted(discover(RAW_DIR), key=lambda path: item_order(path, RAW_DIR))
    gate = Gate("clean", expectations(settings.max_chars))
    entries: dict[str, dict] = {}
    kept_by_source: Counter = Counter()
    OUT_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT_DIR.parent, prefix=".clean-") as spill:
        parts = ParquetParts(Path(spill), params.resources.batch_rows, checks={"messages": lambda batch: gate.check(gate_frame(batch))})
        for path in files:
            for name, source, kept, rejected, entry in read_items(path, path.relative_to(RAW_DIR), settings, params.resources.batch_rows):
                kept, more_rejected = finish(kept, settings)
                kept, rejected = kept.sort("line"), pl.concat([rejected, more_rejected]).sort("line")
                entries[name] = merge_entries(entries.get(name), account(entry, kept, rejected))
                kept_by_source[source] += kept.height
                log.info("%s: %s, %d items kept, %d rejected", name, entry.get("format", entry.get("error")), kept.height, rejected.height)
                parts.add(messages=kept, rejected=rejected)
        summary = report(entries, +kept_by_source)
        if not summary["totals"]["kept"]:
            problems = "\n".join(f"  - {name}: {e.get('error') or 'nothing kept'}" for name, e in entries.items())
            raise UserError(f"no usable messages in {RAW_DIR}/:\n{problems}\nCheck the files above; supported inputs are listed in the README.")
        write_json(REPORT, summary)
        parts.flush()
        gate.close()
        parts.merge(
            {"messages": OUT_DIR / "messages.parquet", "rejected": OUT_DIR / "rejected.parquet"},
            {"messages": MESSAGES_SCHEMA, "rejected": REJECTED_SCHEMA},
        )
    totals = summary["totals"]
    log.info("kept %d messages, rejected %d (%s)", totals["kept"], totals["rejected"], totals["rejected_by_reason"])


if __name__ == "__main__":
    run_stage(main)
