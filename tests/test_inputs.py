"""Every input format `clean` reads, on fixtures from webvtt-py and files written like real exports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from habla.params import load_params
from habla.readers import decoding, files, transcripts
from habla.readers.archives import zip_members
from stages import clean
from tests.helpers import FIXTURES, clean_report, update_params

SUBTITLES = FIXTURES / "subtitles" / "webvtt-py"
IOS_CHAT = (
    "\r\n".join(
        [
            "\ufeff[3/03/23, 20:04:11] Cami: ‎Los mensajes y las llamadas están cifrados de extremo a extremo.",
            "[3/03/23, 20:04:11] Cami: hola Nico, ¿vamos al estadio?",
            "[3/03/23, 20:05:02] Nico: obvio po",
            "al tiro",
            "[3/03/23, 20:05:40] Nico: ‎imagen omitida",
            "[14/03/23, 9:15:00] Cami: ¿y? ¿cómo les fue?",
        ]
    )
    + "\r\n"
)
WHISPER = {
    "text": "...",
    "segments": [
        {"id": 0, "text": " Hola a todos, bienvenidos.", "no_speech_prob": 0.01, "compression_ratio": 1.2},
        {"id": 1, "text": " Gracias.", "no_speech_prob": 0.93, "compression_ratio": 0.9},
        {"id": 2, "text": " la la la la la la la la la la", "no_speech_prob": 0.1, "compression_ratio": 3.1},
        {
            "id": 3,
            "text": " Subtítulos realizados por la comunidad de Amara.org",
            "no_speech_prob": 0.2,
            "compression_ratio": 1.1,
        },
        {"id": 4, "text": " [Música]", "no_speech_prob": 0.3, "compression_ratio": 1.0},
        {"id": 5, "text": " Y ahora el humor chileno, po.", "no_speech_prob": 0.02, "compression_ratio": 1.3},
    ],
}
JSON3 = {
    "events": [
        {"tStartMs": 0, "dDurationMs": 1000},
        {"tStartMs": 0, "segs": [{"utf8": "wena"}, {"utf8": " cabros"}]},
        {"tStartMs": 900, "segs": [{"utf8": "\n"}]},
        {"tStartMs": 1000, "segs": [{"utf8": "¿cómo"}, {"utf8": " están?"}]},
    ]
}
LYRICS = "[Intro]\nAy, ay, ay\n\n[Coro]\nCanta y no llores\nporque cantando se alegran\n[Música]\n"
LRC = (
    "[ar:Violeta Parra]\n[ti:Gracias a la vida]\n[00:12.00]Gracias a la vida\n[00:17.50]que me ha dado tanto\n"
    "[00:22.10]\n"
)
TABLE = (
    "Nombre,Transcripción,Autor\nKeynote 1,Hola a todos. Soy María.,María\nKeynote 1,,María\n"
    "Taller,Vamos con Argilla.,Gabriel\n"
)


@pytest.fixture
def raw(in_tmp):
    columns = {"text": "Transcripción", "author": "Autor", "title": "Nombre", "ts": ""}
    update_params(in_tmp, "clean", table_columns=columns, max_zip_member_mb=1)
    root = in_tmp / "data" / "raw"
    for folder in ("whatsapp", "transcripts", "letras", "tablas", "otros"):
        (root / folder).mkdir(parents=True)
    with zipfile.ZipFile(root / "whatsapp" / "WhatsApp Chat - Cami.zip", "w") as archive:
        archive.writestr("_chat.txt", IOS_CHAT.encode("utf-8"))
        archive.writestr("00000012-PHOTO-2023-03-03-20-05-40.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
        archive.writestr("../../escape.txt", "3/3/23, 20:04 - Nico: fuera\n")
        archive.writestr("big.txt", "x" * (2 * 2**20))
        link = zipfile.ZipInfo("link.txt")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    shutil.copy(SUBTITLES / "youtube_dl.vtt", root / "transcripts" / "youtube_dl.vtt")
    shutil.copy(SUBTITLES / "netflix_chicas_del_cable.vtt", root / "transcripts" / "chicas_del_cable.vtt")
    shutil.copy(SUBTITLES / "sample.srt", root / "transcripts" / "sample.srt")
    (root / "transcripts" / "rutina.whisper.json").write_text(json.dumps(WHISPER, ensure_ascii=False), encoding="utf-8")
    (root / "transcripts" / "video.es.json").write_text(json.dumps(JSON3, ensure_ascii=False), encoding="utf-8")
    (root / "letras" / "volver a los 17.txt").write_text(LYRICS, encoding="utf-8")
    (root / "letras" / "gracias a la vida.lrc").write_text(LRC, encoding="utf-8")
    (root / "tablas" / "somosnlp.csv").write_text(TABLE, encoding="utf-8")
    (root / "otros" / "foto.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "otros" / "informe.pdf").write_bytes(b"%PDF-1.4")
    (root / "transcripts" / "roto.vtt").write_text("esto no es un WEBVTT\n", encoding="utf-8")
    return in_tmp


def test_clean_reads_every_format_and_accounts_for_every_unit(raw):
    clean.main()
    files = clean_report()["files"]
    messages = pl.read_parquet("data/cleaned/messages.parquet")
    rejected = pl.read_parquet("data/cleaned/rejected.parquet")

    chat = files["whatsapp/WhatsApp Chat - Cami.zip/_chat.txt"]
    assert (
        chat["format"] == "ios"
        and chat["kept"] == 3
        and chat["rejected"] == {"encryption_notice": 1, "media_omitted": 1}
    )
    nico = messages.filter(pl.col("author") == "Nico")["text"].to_list()
    assert nico == ["obvio po\nal tiro"]
    refused = rejected.filter(pl.col("reason") == "zip_member_refused")["raw"].to_list()
    assert any("escape.txt: unsafe path" in r for r in refused) and any("big.txt" in r for r in refused)
    assert any("link.txt: symbolic link" in r for r in refused)
    assert not (raw.parent / "escape.txt").exists() and not (raw / "escape.txt").exists()
    assert not any("PHOTO" in name for name in files)

    youtube = files["transcripts/youtube_dl.vtt"]
    assert youtube["format"] == "vtt" and youtube["kept"] == 3 and youtube["rejected"]["rolling_repeat"] == 2
    assert messages.filter(pl.col("file") == "transcripts/youtube_dl.vtt")["text"].to_list() == [
        "yeah",
        "what",
        "this will happen is I'm telling",
    ]
    assert "rolling_repeat" not in files["transcripts/chicas_del_cable.vtt"]["rejected"]
    assert files["transcripts/sample.srt"]["format"] == "srt" and files["transcripts/sample.srt"]["kept"] == 5

    whisper = files["transcripts/rutina.whisper.json"]
    assert whisper["format"] == "whisper json" and whisper["kept"] == 2
    assert whisper["rejected"] == {"hallucinated_credit": 1, "no_speech": 1, "repetitive_segment": 1, "sound_cue": 1}
    assert files["transcripts/video.es.json"]["format"] == "yt-dlp json3"
    assert messages.filter(pl.col("file") == "transcripts/video.es.json")["text"].to_list() == [
        "wena cabros",
        "¿cómo están?",
    ]

    song = messages.filter(pl.col("file") == "letras/volver a los 17.txt")
    assert song["source"].unique().to_list() == ["lyrics"]
    assert song["text"].to_list() == ["Ay, ay, ay", "Canta y no llores", "porque cantando se alegran"]
    assert files["letras/volver a los 17.txt"]["rejected"] == {"blank_line": 1, "section_marker": 2, "sound_cue": 1}
    assert messages.filter(pl.col("file") == "letras/gracias a la vida.lrc")["text"].to_list() == [
        "Gracias a la vida",
        "que me ha dado tanto",
    ]
    assert files["letras/gracias a la vida.lrc"]["rejected"] == {"blank_line": 1, "lrc_metadata": 2}

    table = messages.filter(pl.col("source") == "table")
    assert table.select("line", "chat", "author").rows() == [(2, "Keynote 1", "María"), (4, "Taller", "Gabriel")]
    assert files["tablas/somosnlp.csv"]["rejected"] == {"empty": 1}

    assert "binary" in files["otros/foto.txt"]["error"]
    assert "unsupported file type .pdf" in files["otros/informe.pdf"]["error"]
    assert "not a valid VTT" in files["transcripts/roto.vtt"]["error"]
    for name, entry in files.items():
        if "raw_units" in entry:
            covered = int(messages.filter(pl.col("file") == name)["lines"].sum()) + int(
                rejected.filter(pl.col("file") == name)["lines"].sum()
            )
            assert covered == entry["raw_units"], name


def test_table_with_unknown_columns_is_reported_with_the_columns_it_has(in_tmp):
    (in_tmp / "data" / "raw").mkdir(parents=True)
    (in_tmp / "data" / "raw" / "t.csv").write_text(TABLE, encoding="utf-8")
    (in_tmp / "data" / "raw" / "chat.txt").write_text("3/3/23, 20:04 - Nico: hola po\n", encoding="utf-8")
    clean.main()
    error = clean_report()["files"]["t.csv"]["error"]
    assert "text=text" in error and "Transcripción" in error and "clean.table_columns" in error


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30),
        max_size=40,
    )
)
def test_plain_text_and_lyrics_readers_account_for_every_line(lines):
    for lyrics in (False, True):
        units = transcripts.plain_text(lines, lyrics=lyrics)
        assert units.height == len(lines) and units["line"].to_list() == list(range(1, len(lines) + 1))
        kept = units.filter(pl.col("reason").is_null())
        assert (kept["text"].str.strip_chars() != "").all()


def test_rolling_repeats_only_in_rolling_files():
    rolling = pl.DataFrame(
        {"line": [1, 2, 2, 3, 3], "raw": ["hola", "hola", "qué tal", "qué tal", "bien"]},
        schema={"line": pl.UInt32, "raw": pl.String},
    )
    assert transcripts._spoken_lines(rolling)["reason"].to_list() == [
        None,
        "rolling_repeat",
        None,
        "rolling_repeat",
        None,
    ]
    dialogue = pl.DataFrame(
        {"line": [1, 2, 3, 4, 5], "raw": ["Buenas noches.", "Buenas noches.", "¿Vamos?", "Sí.", "Ya."]},
        schema={"line": pl.UInt32, "raw": pl.String},
    )
    assert transcripts._spoken_lines(dialogue)["reason"].to_list() == [None] * 5


ANDROID_CHAT = (
    "\n".join(
        [
            "3/3/23, 20:04 - Cami: ¿Mañana vamos al estadio? Está difícil la cosa",
            "3/3/23, 20:05 - Nico: obvio po, ¿a qué hora nos juntamos?",
            "3/3/23, 20:06 - Cami: a las ocho, en la esquina de Ñuñoa",
        ]
    )
    + "\n"
)
EXPECTED_TEXTS = [
    "¿Mañana vamos al estadio? Está difícil la cosa",
    "obvio po, ¿a qué hora nos juntamos?",
    "a las ocho, en la esquina de Ñuñoa",
]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-16-le-bom", "utf-16-be-bom"])
def test_utf16_exports_in_both_byte_orders_parse_like_utf8(encoding, in_tmp):
    boms = {"utf-16-le-bom": ("utf-16-le", b"\xff\xfe"), "utf-16-be-bom": ("utf-16-be", b"\xfe\xff")}
    codec, bom = boms.get(encoding, (encoding, b""))
    data = bom + ANDROID_CHAT.encode(codec)
    source, kept, rejected, info = files.read_text_file(data, Path("whatsapp/chat.txt"), load_params().clean)
    assert source == "whatsapp" and rejected.is_empty()
    assert kept["text"].to_list() == EXPECTED_TEXTS
    assert kept["author"].to_list() == ["Cami", "Nico", "Cami"]
    assert info["encoding"].startswith("utf-16")


def test_binary_files_are_still_refused_not_read_as_utf16():
    with pytest.raises(decoding.UnreadableFile, match="binary"):
        decoding.decode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00")


@pytest.mark.parametrize("wrong", ["cp1252", "latin-1"])
def test_mojibake_exports_are_repaired(wrong, in_tmp):
    """An export decoded once with the wrong codec and saved as UTF-8 again ("MaÃ±ana") reads as written."""
    data = ANDROID_CHAT.encode("utf-8").decode(wrong, errors="ignore").encode("utf-8")
    assert "Ã±" in data.decode("utf-8")
    source, kept, rejected, info = files.read_text_file(data, Path("whatsapp/chat.txt"), load_params().clean)
    assert kept["text"].to_list() == EXPECTED_TEXTS and rejected.is_empty()
    assert info["encoding"] == "utf-8 + ftfy"


def forge_declared_size(archive: Path, member: str, declared: int) -> None:
    """Rewrite a member's uncompressed size in its local and central headers, as a zip bomb does."""
    data = bytearray(archive.read_bytes())
    name = member.encode()
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            if data[start + name_offset : start + name_offset + len(name)] == name:
                data[start + size_offset : start + size_offset + 4] = declared.to_bytes(4, "little")
            start += 4
    archive.write_bytes(bytes(data))


def test_zip_members_inflate_capped_one_at_a_time_and_a_bad_one_spares_the_others(in_tmp):
    update_params(in_tmp, "clean", max_zip_member_mb=1)
    archive = in_tmp / "data" / "raw" / "whatsapp" / "WhatsApp Chat - Cami.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("_chat.txt", "3/3/23, 20:04 - Nico: hola po\n14/3/23, 20:05 - Cami: wena\n")
        out.writestr("bomb.txt", b"\x00" * (20 * 2**20))
        out.writestr("big.txt", b"3/3/23, 20:04 - Nico: " + b"a" * (3 * 2**20))
    forge_declared_size(archive, "bomb.txt", 1000)
    assert zipfile.ZipFile(archive).getinfo("bomb.txt").file_size == 1000

    members = {name: why for name, why, _ in zip_members(archive, load_params().clean, (".txt",))}
    assert members == {
        "_chat.txt": None,
        "big.txt": "3 MB, over clean.max_zip_member_mb",
        "bomb.txt": "corrupt member: Bad CRC-32 for file 'bomb.txt'",
    }
    clean.main()
    kept = pl.read_parquet("data/cleaned/messages.parquet")
    assert kept.select("author", "text").rows() == [("Nico", "hola po"), ("Cami", "wena")]
    report = clean_report()["files"]
    assert report["whatsapp/WhatsApp Chat - Cami.zip/bomb.txt"]["rejected"] == {"zip_member_refused": 1}


def test_a_forged_one_gib_member_is_refused_in_bounded_memory(tmp_path):
    """1 GiB of zeros under a header that declares 1,000 bytes: refused, and the reading process stays small."""
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out, out.open("bomb.txt", "w") as member:
        for _ in range(1024):
            member.write(bytes(2**20))
    forge_declared_size(archive, "bomb.txt", 1000)
    # VmHWM, not ru_maxrss: Linux carries a forked parent's peak over into the child's ru_maxrss across exec.
    script = (
        "import json, sys; from pathlib import Path; from habla.params import Clean; "
        "from habla.readers.archives import zip_members; "
        "found = [why for _, why, _ in zip_members(Path(sys.argv[1]), Clean(), ('.txt',))]; "
        "peak = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0] / 1024; "
        "print(json.dumps({'why': found, 'peak_mib': peak}))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(archive)], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert result["why"] == ["corrupt member: Bad CRC-32 for file 'bomb.txt'"]
    assert result["peak_mib"] < 100, result
