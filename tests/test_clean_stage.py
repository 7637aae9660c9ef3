import shutil

import polars as pl
import pytest

from habla.cleaning import report_name
from habla.errors import UserError
from habla.io import read_json
from stages import clean
from tests.helpers import FIXTURES, android, clean_report, update_params


def write_raw(root, name, content: bytes | str):
    path = root / "data" / "raw" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_clean_keeps_or_rejects_every_line_and_reports_per_file(in_tmp):
    chat = (
        "\n".join(
            [
                android(13, 3, 2023, "9:00", None, "Los mensajes y las llamadas están cifrados de extremo a extremo."),
                android(13, 3, 2023, "9:01", "Cami", "hola, mi correo es cami@correo.cl"),
                android(13, 3, 2023, "9:02", "Nico", "wena po\nsegunda línea"),
                android(13, 3, 2023, "9:02", "Nico", "wena po\nsegunda línea"),
                android(13, 3, 2023, "9:03", "Nico", "<Multimedia omitido>"),
            ]
        )
        + "\n"
    )
    write_raw(in_tmp, "whatsapp/chat.txt", chat.replace("\n", "\r\n").encode("utf-8-sig"))
    write_raw(in_tmp, "whatsapp/latin1.txt", android(13, 3, 2023, "9:00", "Feña", "año pequeño").encode("cp1252"))
    write_raw(in_tmp, "transcripts/show.txt", "Buenas noches Viña.\n\n[Aplausos]\nGracias [Risas] de verdad.\n")
    write_raw(in_tmp, "whatsapp/empty.txt", "")
    write_raw(in_tmp, "whatsapp/photo.jpg", b"\xff\xd8\xff\x00\x00binary")
    shutil.copy(FIXTURES / "whatsapp/chat-miner/test_mmddyyyy_12hrs.txt", in_tmp / "data/raw/whatsapp/miner.txt")

    clean.main()

    kept = pl.read_parquet("data/cleaned/messages.parquet")
    rejected = pl.read_parquet("data/cleaned/rejected.parquet")
    report = clean_report()
    assert list(kept.columns[:8]) == ["source", "file", "line", "lines", "chat", "ts", "author", "text"]
    chat_rows = kept.filter(pl.col("file") == "whatsapp/chat.txt")
    assert chat_rows["text"].to_list() == ["hola, mi correo es <EMAIL>", "wena po\nsegunda línea"]
    assert kept.filter(pl.col("file") == "whatsapp/latin1.txt")["text"].to_list() == ["año pequeño"]
    assert report["files"]["whatsapp/latin1.txt"]["encoding"] == "cp1252 (fallback)"
    assert kept.filter(pl.col("source") == "transcript")["text"].to_list() == [
        "Buenas noches Viña.",
        "Gracias de verdad.",
    ]
    assert report["files"]["whatsapp/chat.txt"]["rejected"] == {
        "duplicate": 1,
        "encryption_notice": 1,
        "media_omitted": 1,
    }
    assert report["files"]["whatsapp/empty.txt"]["error"] == "empty file"
    assert "binary" in report["files"]["whatsapp/photo.jpg"]["error"]
    for name, entry in report["files"].items():
        if "raw_units" in entry:
            lines = (
                kept.filter(pl.col("file") == name)["lines"].sum()
                + rejected.filter(pl.col("file") == name)["lines"].sum()
            )
            assert lines == entry["raw_units"], name
    assert read_json("metrics/gates/clean.json")["success"] is True


def test_empty_raw_folder_is_a_readable_error(in_tmp):
    (in_tmp / "data" / "raw").mkdir(parents=True)
    with pytest.raises(UserError, match="is empty"):
        clean.main()


def test_nothing_usable_lists_every_file(in_tmp):
    write_raw(in_tmp, "a.txt", "")
    write_raw(in_tmp, "b.pdf", b"%PDF-1.4\x00")
    with pytest.raises(UserError) as err:
        clean.main()
    assert "a.txt: empty file" in str(err.value) and "b.pdf" in str(err.value)


def test_clean_in_small_batches_writes_what_one_batch_writes(in_tmp):
    """Tables are streamed and items spilled in `resources.batch_rows` parts: the outputs must not depend on it."""
    import zipfile

    (in_tmp / "data/raw").mkdir(parents=True)
    for fixture in sorted((FIXTURES / "whatsapp/chat-miner").glob("test_*.txt")):
        shutil.copy(fixture, in_tmp / "data/raw" / fixture.name)
    chat = "\n".join(
        android(
            1 + i % 28,
            1 + i // 28 % 12,
            2022,
            f"{9 + i % 12}:{i % 60:02d}",
            "Cami" if i % 3 else "Nico",
            f"mensaje {i}",
        )
        for i in range(1500)
    )
    with zipfile.ZipFile(in_tmp / "data/raw/a.zip", "w") as archive:
        archive.writestr("z_chat.txt", chat)
        archive.writestr("b_chat.txt", android(2, 2, 2022, "10:00", "Cami", "otro chat"))
    write_raw(
        in_tmp, "a.zip.txt", android(3, 3, 2023, "11:00", "Feña", "un nombre que ordena antes que a.zip/b_chat.txt")
    )
    rows = [f"verso número {i}" if i % 7 else "" for i in range(2600)]
    pl.DataFrame({"text": rows}).write_csv(in_tmp / "data/raw/letras.csv")

    outputs = {}
    for batch_rows in (1000, 1_000_000):
        update_params(in_tmp, "resources", batch_rows=batch_rows)
        clean.main()
        outputs[batch_rows] = (
            pl.read_parquet("data/cleaned/messages.parquet"),
            pl.read_parquet("data/cleaned/rejected.parquet"),
            clean_report(),
            read_json("metrics/gates/clean.json"),
        )
    (kept, rejected, report, gate), (kept_one, rejected_one, report_one, gate_one) = outputs[1000], outputs[1_000_000]
    assert kept.equals(kept_one) and rejected.equals(rejected_one) and report == report_one
    assert kept.equals(kept.sort("file", "line")) and rejected.equals(rejected.sort("file", "line"))
    assert kept["file"].unique(maintain_order=True).to_list()[:3] == [
        "a.zip.txt",
        "a.zip/b_chat.txt",
        "a.zip/z_chat.txt",
    ]
    table = report["files"]["letras.csv"]
    assert (table["raw_units"], table["kept"], table["rejected"]) == (2600, 2600 - 372, {"empty": 372})
    assert kept.filter(pl.col("file") == "letras.csv")["line"].to_list()[:3] == [3, 4, 5]
    assert report["totals"]["kept"] == kept.height and report["totals"]["rejected"] == rejected.height
    assert gate["rows"] == gate_one["rows"] == kept.height and gate["checks"] == gate_one["checks"]


def test_a_table_that_breaks_half_way_keeps_what_was_read_and_says_why(in_tmp):
    good = "\n".join(f'{{"text": "línea {i}"}}' for i in range(2500))
    write_raw(in_tmp, "corpus.jsonl", good + '\n{"text": "sin cerrar\n')
    update_params(in_tmp, "resources", batch_rows=1000)
    clean.main()
    entry = clean_report()["files"]["corpus.jsonl"]
    assert entry["error"].startswith("cannot read table")
    rejected = pl.read_parquet("data/cleaned/rejected.parquet")
    assert rejected["reason"].to_list() == ["unreadable_file"] and rejected["raw"][0].startswith("cannot read table")
    kept = pl.read_parquet("data/cleaned/messages.parquet")
    assert kept.height == entry["kept"] == entry["raw_units"] and kept.height % 1000 == 0 and kept.height < 2500


UNKNOWN_FORMAT = "\n".join(
    f"{day:02d}/07/2017 @ 09:{minute:02d} | {author}: mensaje número {minute} de {author}"
    for day, minute, author in [(13, 1, "Ana"), (13, 2, "Nico"), (14, 3, "Ana"), (15, 4, "Nico")]
)


@pytest.mark.parametrize("where", ["whatsapp/chat.txt", "exports/chat.txt"])
def test_an_unknown_chat_format_is_rejected_line_by_line_never_read_as_transcript(in_tmp, where):
    write_raw(in_tmp, where, UNKNOWN_FORMAT)
    write_raw(in_tmp, "transcripts/show.txt", "Buenas noches Viña.\nGracias de verdad.\n")
    clean.main()
    kept = pl.read_parquet("data/cleaned/messages.parquet")
    rejected = pl.read_parquet("data/cleaned/rejected.parquet").filter(pl.col("file") == where)
    entry = clean_report()["files"][where]
    assert kept["file"].unique().to_list() == ["transcripts/show.txt"]
    assert rejected.select("line", "reason").rows() == [(n, "unknown_whatsapp_format") for n in range(1, 5)]
    assert entry["format"] == "unknown" and entry["flagged"] == {"reason": "unknown_whatsapp_format", "share": 1.0}
    assert entry["sample_headers"][0] == {"length": 49, "shape": "99/99/9999 @ 99:99 | aaa: aaaaaaa aaaaaa"}
    assert "clean.header_format" in entry["error"] and "chat.txt" not in entry["error"], "no file name in the report"


def test_nothing_but_an_unknown_chat_format_stops_the_stage_naming_the_file(in_tmp):
    write_raw(in_tmp, "whatsapp/Chat de WhatsApp con Ana.txt", UNKNOWN_FORMAT)
    with pytest.raises(UserError) as err:
        clean.main()
    message = str(err.value)
    assert "whatsapp/Chat de WhatsApp con Ana.txt" in message and "not recognised" in message
    assert "clean.header_format" in message


def test_a_header_format_of_ones_own_reads_a_format_nobody_taught_us(in_tmp):
    write_raw(in_tmp, "whatsapp/chat.txt", UNKNOWN_FORMAT + "\nsegunda línea")
    update_params(
        in_tmp,
        "clean",
        header_format=r"^(?P<day>\d{2})/(?P<month>\d{2})/(?P<year>\d{4}) @ (?P<hour>\d{2}):(?P<minute>\d{2}) \| "
        r"(?P<rest>.*)$",
    )
    clean.main()
    kept = pl.read_parquet("data/cleaned/messages.parquet")
    assert kept.select("author", "text").rows() == [
        ("Ana", "mensaje número 1 de Ana"),
        ("Nico", "mensaje número 2 de Nico"),
        ("Ana", "mensaje número 3 de Ana"),
        ("Nico", "mensaje número 4 de Nico\nsegunda línea"),
    ]
    assert kept["ts"].dt.strftime("%Y-%m-%d %H:%M").to_list()[-1] == "2017-07-15 09:04"
    assert clean_report()["files"]["whatsapp/chat.txt"]["format"] == "custom"


@pytest.mark.parametrize(
    ("header_format", "complaint"),
    [
        (r"^(?P<day>\d+)/(?P<month>\d+) (?P<rest>.*)$", "missing: year, hour, minute"),
        (r"(?P<day>\d)(?P<month>\d)(?P<year>\d)(?P<hour>\d)(?P<minute>\d)(?P<rest>[a-", "not a valid"),
    ],
)
def test_a_wrong_header_format_is_one_sentence(in_tmp, header_format, complaint):
    update_params(in_tmp, "clean", header_format=header_format)
    write_raw(in_tmp, "whatsapp/chat.txt", UNKNOWN_FORMAT)
    with pytest.raises(UserError, match=complaint):
        clean.main()


def test_long_documents_are_kept_under_their_own_bound_and_a_heavy_loss_is_flagged(in_tmp, caplog):
    """The Somos NLP keynotes are rows of 12,000–62,000 characters: documents, not chat messages."""
    update_params(
        in_tmp, "clean", table_columns={"text": "Transcripción", "author": "Autor", "title": "Nombre", "ts": ""}
    )
    keynote = "Hola a todos, hoy hablamos de modelos de lenguaje en español. " * 300
    table = pl.DataFrame(
        {"Nombre": ["Keynote 1", "Keynote 2"], "Transcripción": [keynote, keynote * 3], "Autor": ["María", "Gabriel"]}
    )
    write_raw(in_tmp, "tablas/somosnlp.csv", "")
    table.write_csv(in_tmp / "data/raw/tablas/somosnlp.csv")
    write_raw(in_tmp, "transcripts/una-linea.txt", keynote)
    chat = [android(13, 3, 2023, f"9:0{i}", "Nico", "<Multimedia omitido>") for i in range(3)]
    write_raw(in_tmp, "whatsapp/fotos.txt", "\n".join([*chat, android(13, 3, 2023, "9:05", "Cami", "x" * 4001)]))
    write_raw(in_tmp, "whatsapp/ok.txt", android(13, 3, 2023, "9:00", "Cami", "hola"))
    with caplog.at_level("WARNING", logger="clean"):
        clean.main()
    kept = pl.read_parquet("data/cleaned/messages.parquet")
    report = clean_report()
    assert kept.filter(pl.col("source") == "table")["text"].str.len_chars().to_list() == [
        len(keynote.strip()),
        len((keynote * 3).strip()),
    ]
    assert kept.filter(pl.col("file") == "transcripts/una-linea.txt").height == 1
    assert report["files"]["whatsapp/fotos.txt"]["rejected"] == {"media_omitted": 3, "too_long": 1}
    assert report["files"]["whatsapp/fotos.txt"]["flagged"] == {"reason": "media_omitted", "share": 0.75}
    assert "flagged" not in report["files"]["whatsapp/ok.txt"] and report["totals"]["flagged_files"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "whatsapp/fotos.txt: 75% of its units were rejected as media_omitted; "
        f"see {report_name('whatsapp/fotos.txt', False)} in metrics/clean.json and docs/inputs.md"
    ]


def test_the_report_names_files_by_folder_and_hash_unless_asked_for_real_names(in_tmp):
    write_raw(in_tmp, "whatsapp/Chat de WhatsApp con Cami.txt", android(13, 3, 2023, "9:00", "Cami", "hola"))
    clean.main()
    report = (in_tmp / "metrics/clean.json").read_text(encoding="utf-8")
    assert "Cami" not in report and '"whatsapp/' in report
    assert (
        report_name("whatsapp/Chat de WhatsApp con Cami.txt", False)
        == report_name("whatsapp/Chat de WhatsApp con Cami.txt", False)
        != report_name("whatsapp/Chat de WhatsApp con Feña.txt", False)
    )
    update_params(in_tmp, "clean", report_file_names=True)
    clean.main()
    assert "whatsapp/Chat de WhatsApp con Cami.txt" in read_json("metrics/clean.json")["files"]
