"""Exports as phones in other languages write them: header forms, placeholders, system lines.

Each export below is written by hand from what WhatsApp writes in that language (the wordings other parsers'
test suites and issue trackers show), with the messages a person typed, the lines that are WhatsApp's own,
and the reason each of those must be rejected under.
"""

from datetime import datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from habla.readers.whatsapp import parse_whatsapp

LRM, RLM, NBSP, NNBSP = "\u200e", "\u200f", "\u00a0", "\u202f"

CASES = {
    "en-ios-marks": (
        [
            f"[3/27/22, 9:41:35{NNBSP}PM] Ann: {LRM}Messages and calls are end-to-end encrypted. No one outside of "
            "this chat, not even WhatsApp, can read or listen to them.",
            f"[3/27/22, 9:41:40{NNBSP}PM] Ann: 😂 so funny",  # a person's text never opens with a mark (iOS's own do)
            f"{LRM}[3/27/22, 9:42:00{NNBSP}PM] Bob: {LRM}image omitted",
            f"[3/27/22, 9:42:05{NNBSP}PM] Bob: report.pdf • 2 pages {LRM}document omitted",
            f"[3/28/22, 9:43:00{NNBSP}AM] Bob: notes.txt {LRM}<attached: 00000046-notes.txt>",
            f"{LRM}[3/28/22, 9:44:00{NNBSP}AM] Ann: {LRM}<attached: 00000047-PHOTO-2022-03-28-09-44-00.jpg>",
            f"[3/28/22, 9:45:00{NNBSP}AM] Bob: {LRM}This message was deleted.",
            f"[3/28/22, 9:46:00{NNBSP}AM] Ann: I left",
            f"[3/28/22, 9:47:00{NNBSP}AM] Bob: {LRM}Missed voice call",
            f"[3/28/22, 9:48:00{NNBSP}AM] Bob: {LRM}Contact card omitted",
            f"[3/28/22, 9:49:00{NNBSP}AM] Ann: Where? {LRM}<This message was edited>",
        ],
        [("Ann", "😂 so funny"), ("Ann", "I left"), ("Ann", "Where?")],
        [
            "encryption_notice",
            "media_omitted",
            "media_omitted",
            "attachment",
            "attachment",
            "deleted",
            "missed_call",
            "contact_card",
        ],
        datetime(2022, 3, 27, 21, 41, 40),
    ),
    "en-android-group": (
        [
            "12/31/21, 11:58 PM - Messages and calls are end-to-end encrypted. No one outside of this chat, not even "
            "WhatsApp, can read or listen to them. Tap to learn more.",
            '12/31/21, 11:58 PM - Ann created group "NYE"',
            "12/31/21, 11:59 PM - Ann added Bob",
            f"12/31/21, 11:59 PM - Bob: {LRM}IMG-20211231-WA0001.jpg (file attached)",
            "happy new year!",
            "1/1/22, 12:00 AM - Bob: <Media omitted>",
            "1/1/22, 12:01 AM - Ann: null",
            "1/1/22, 12:02 AM - Ann: location: https://maps.google.com/?q=40.7,-74.0",
            "1/1/22, 12:03 AM - Bob: POLL:",
            "Who's coming?",
            "OPTION: me (1 vote)",
            "1/1/22, 12:04 AM - Ann: You deleted this message",
            "1/1/22, 12:05 AM - Bob left",
            "1/1/22, 12:06 AM - Ann: Bob left",
            "1/1/22, 12:07 AM - Ann: Contacto.vcf (file attached)",
        ],
        [("Bob", "happy new year!"), ("Ann", "Bob left")],
        [
            "encryption_notice",
            "group_event",
            "group_event",
            "attachment",
            "media_omitted",
            "view_once",
            "location",
            "poll",
            "deleted",
            "group_event",
            "contact_card",
        ],
        datetime(2021, 12, 31, 23, 59),
    ),
    "pt-br-android": (
        [
            "19/09/2026 21:20 - As mensagens e as chamadas são protegidas com a criptografia de ponta a ponta e "
            "ficam somente entre você e os participantes desta conversa.",
            '19/09/2026 21:21 - Fernando criou o grupo "Churras"',
            "19/09/2026 21:21 - Fernando adicionou Ana",
            "19/09/2026 21:22 - Fernando: bora churrasco sábado?",
            "19/09/2026 21:23 - Ana: <Mídia oculta>",
            "19/09/2026 21:24 - Ana: Mensagem apagada",
            "19/09/2026 21:25 - Fernando: IMG-20260919-WA0001.jpg (arquivo anexado)",
            "20/09/2026 10:00 - Ana: localização: https://maps.google.com/?q=-23.5,-46.6",
            "20/09/2026 10:01 - Ana saiu",
            "20/09/2026 10:02 - Fernando: saiu cedo kkk",
            "20/09/2026 10:03 - Fernando: Você apagou esta mensagem",
        ],
        [("Fernando", "bora churrasco sábado?"), ("Fernando", "saiu cedo kkk")],
        [
            "encryption_notice",
            "group_event",
            "group_event",
            "media_omitted",
            "deleted",
            "attachment",
            "location",
            "group_event",
            "deleted",
        ],
        datetime(2026, 9, 19, 21, 22),
    ),
    "pt-pt-android": (
        [
            "13/07/21, 10:00 - As mensagens e as chamadas estão protegidas com encriptação ponto a ponto.",
            "13/07/21, 10:01 - Rui: Olá, tudo bem?",
            "13/07/21, 10:02 - Inês: <ficheiro não revelado>",
            "13/07/21, 10:03 - Inês: Esta mensagem foi eliminada",
            "13/07/21, 10:04 - Inês: VID-20210713-WA0003.mp4 (ficheiro anexado)",
            "vê isto",
        ],
        [("Rui", "Olá, tudo bem?"), ("Inês", "vê isto")],
        ["encryption_notice", "media_omitted", "deleted", "attachment"],
        datetime(2021, 7, 13, 10, 1),
    ),
    "fr-android-a": (
        [
            "13/07/2017 à 09:12 - Les messages et les appels sont chiffrés de bout en bout. Aucun tiers, pas même "
            "WhatsApp, ne peut les lire ou les écouter.",
            "13/07/2017 à 09:12 - Claire a créé le groupe « Vacances »",
            "13/07/2017 à 09:13 - Claire: Salut tout le monde !",
            "13/07/2017 à 09:14 - Paul: <Médias omis>",
            "13/07/2017 à 09:15 - Paul: Ce message a été supprimé",
            "13/07/2017 à 09:16 - Paul: IMG-20170713-WA0002.jpg (fichier joint)",
            "regardez ça",
            "14/07/2017 à 10:00 - Paul est parti",
            "14/07/2017 à 10:01 - Claire: Appel vocal manqué",
        ],
        [("Claire", "Salut tout le monde !"), ("Paul", "regardez ça")],
        ["encryption_notice", "group_event", "media_omitted", "deleted", "attachment", "group_event", "missed_call"],
        datetime(2017, 7, 13, 9, 13),
    ),
    "fr-ios-space-before-colon": (
        [
            f"[12/03/2024 14:23:11] Claire{NNBSP}: Coucou",
            f"[12/03/2024 14:23:13] Paul{NNBSP}: {LRM}image absente",
            f"[13/03/2024 14:23:14] Paul{NNBSP}: {LRM}<pièce jointe : 00000012-PHOTO-2024-03-12-14-23-14.jpg>",
            f"[13/03/2024 14:23:15] Paul{NNBSP}: Vous avez supprimé ce message",
        ],
        [("Claire", "Coucou")],
        ["media_omitted", "attachment", "deleted"],
        datetime(2024, 3, 12, 14, 23, 11),
    ),
    "it-android": (
        [
            "13/07/17, 10:36 - Marco ha aggiunto Giulia",
            "13/07/17, 10:37 - Marco: Ciao a tutti",
            "13/07/17, 10:38 - Giulia: <Media omessi>",
            "13/07/17, 10:39 - Giulia: Questo messaggio è stato eliminato",
            "13/07/17, 10:40 - Marco: IMG-20170713-WA0004.jpg (file allegato)",
            "13/07/17, 10:41 - Marco: posizione: https://maps.google.com/?q=45.4,9.1",
            "14/07/17, 08:00 - Giulia è uscita",
        ],
        [("Marco", "Ciao a tutti")],
        ["group_event", "media_omitted", "deleted", "attachment", "location", "group_event"],
        datetime(2017, 7, 13, 10, 37),
    ),
    "de-android-um": (
        [
            "13.06.18 um 21:25 - Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt. Niemand außerhalb dieses "
            "Chats kann sie lesen oder anhören, nicht einmal WhatsApp.",
            "13.06.18 um 21:25 - Max hat die Gruppe „Fußball“ erstellt",
            "13.06.18 um 21:26 - Max: Hallo zusammen",
            "13.06.18 um 21:27 - Eva: <Medien ausgeschlossen>",
            "13.06.18 um 21:28 - Eva: Diese Nachricht wurde gelöscht.",
            "13.06.18 um 21:29 - Max: IMG-20180613-WA0001.jpg (Datei angehängt)",
            "14.06.18 um 08:00 - Eva hat die Gruppe verlassen",
            "14.06.18 um 08:01 - Max: Standort: https://maps.google.com/?q=52.5,13.4",
            "14.06.18 um 08:02 - Max: Bis später <Diese Nachricht wurde bearbeitet.>",
        ],
        [("Max", "Hallo zusammen"), ("Max", "Bis später")],
        ["encryption_notice", "group_event", "media_omitted", "deleted", "attachment", "group_event", "location"],
        datetime(2018, 6, 13, 21, 26),
    ),
    "de-ios-group-name": (
        [
            f"[13.06.18, 21:25:15] Fußballgruppe: {LRM}Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt.",
            f"[13.06.18, 21:25:15] Fußballgruppe: {LRM}Max hat die Gruppe „Fußballgruppe“ erstellt",
            f"[13.06.18, 21:25:16] Fußballgruppe: {LRM}Max hat Eva hinzugefügt",
            "[13.06.18, 21:26:00] Max: Hallo",
            f"[13.06.18, 21:26:10] Eva: {LRM}Bild weggelassen",
            f"[13.06.18, 21:26:20] Eva: {LRM}<Anhang: 00000012-PHOTO-2018-06-13-21-26-20.jpg>",
            f"[14.06.18, 08:00:00] Eva: {LRM}Verpasster Sprachanruf",
            "[14.06.18, 08:00:05] Eva: Max hat Eva hinzugefügt",
        ],
        [("Max", "Hallo"), ("Eva", "Max hat Eva hinzugefügt")],
        ["encryption_notice", "group_event", "group_event", "media_omitted", "attachment", "missed_call"],
        datetime(2018, 6, 13, 21, 26),
    ),
    "nl-android-dashes": (
        [
            "02-05-2022 16:17 - Berichten en gesprekken worden end-to-end versleuteld.",
            "02-05-2022 16:17 - Jan: IMG-20220502-WA0001.jpg (bestand bijgevoegd)",
            "Dit is een foto",
            "02-05-2022 16:18 - Jan: <Media weggelaten>",
            "13-05-2022 16:19 - Sanne: Dit bericht is verwijderd",
            "13-05-2022 16:20 - Sanne: Hoi!",
            "13-05-2022 16:21 - Jan heeft Piet toegevoegd",
        ],
        [("Jan", "Dit is een foto"), ("Sanne", "Hoi!")],
        ["encryption_notice", "attachment", "media_omitted", "deleted", "group_event"],
        datetime(2022, 5, 2, 16, 17),
    ),
    "ca-android": (
        [
            "13/7/17 10:36 - Jordi: Bon dia!",
            "13/7/17 10:37 - Marta: <Multimèdia omès>",
            "13/7/17 10:38 - Marta: S'ha suprimit aquest missatge",
            "13/7/17 10:39 - Jordi ha afegit Pau",
            "13/7/17 10:40 - Jordi: DOC-20170713-WA0001.pdf (fitxer adjunt)",
        ],
        [("Jordi", "Bon dia!")],
        ["media_omitted", "deleted", "group_event", "attachment"],
        datetime(2017, 7, 13, 10, 36),
    ),
    "cs-android": (
        [
            "13.07.17 10:36 - Petr: Ahoj",
            "13.07.17 10:37 - Jana: <Média vynechána>",
            "13.07.17 10:38 - Jana: Tato zpráva byla smazána",
        ],
        [("Petr", "Ahoj")],
        ["media_omitted", "deleted"],
        datetime(2017, 7, 13, 10, 36),
    ),
    "ru-android": (
        [
            "13.07.2017, 10:36 - Сообщения и звонки защищены сквозным шифрованием.",
            "13.07.2017, 10:37 - Иван: Привет",
            "13.07.2017, 10:38 - Ольга: <Без медиафайлов>",
            "13.07.2017, 10:39 - Ольга: Данное сообщение удалено",
            "13.07.2017, 10:40 - Иван добавил(а) Сергея",
            "13.07.2017, 10:41 - Иван: IMG-20170713-WA0001.jpg (файл добавлен)",
        ],
        [("Иван", "Привет")],
        ["encryption_notice", "media_omitted", "deleted", "group_event", "attachment"],
        datetime(2017, 7, 13, 10, 37),
    ),
    "ar-android-arabic-digits": (
        [
            f"{RLM}١٢{RLM}/٣{RLM}/٢٠٢٣، ١٠:٣٠ م - الرسائل والمكالمات مشفرة تمامًا بين الطرفين.",
            f"{RLM}١٢{RLM}/٣{RLM}/٢٠٢٣، ١٠:٣١ م - أحمد: مرحبا",
            f"{RLM}١٢{RLM}/٣{RLM}/٢٠٢٣، ١٠:٣٢ م - سارة: <تم استبعاد الوسائط>",
            f"{RLM}١٣{RLM}/٣{RLM}/٢٠٢٣، ٩:٠٥ ص - سارة: تم حذف هذه الرسالة",
            f"{RLM}١٣{RLM}/٣{RLM}/٢٠٢٣، ٩:٠٦ ص - أحمد: عندي ٣ أسئلة",
        ],
        [("أحمد", "مرحبا"), ("أحمد", "عندي ٣ أسئلة")],
        ["encryption_notice", "media_omitted", "deleted"],
        datetime(2023, 3, 12, 22, 31),
    ),
    "fi-klo": (
        ["13.6.2018 klo 21.25 - Matti: Moi", "13.6.2018 klo 21.26 - Liisa: Hei"],
        [("Matti", "Moi"), ("Liisa", "Hei")],
        [],
        datetime(2018, 6, 13, 21, 25),
    ),
    "vi-ios-time-first": (
        ["[21:41:35, 3/27/22] Lan: chào", "[21:42:00, 3/27/22] Minh: chào bạn"],
        [("Lan", "chào"), ("Minh", "chào bạn")],
        [],
        datetime(2022, 3, 27, 21, 41, 35),
    ),
    "hr-dotted-with-spaces": (
        ["13. 6. 2018. 21:25:15 - Ivan: bok", "13. 6. 2018. 21:26:15 - Ana: bok, kako si?"],
        [("Ivan", "bok"), ("Ana", "bok, kako si?")],
        [],
        datetime(2018, 6, 13, 21, 25, 15),
    ),
    "es-two-spaces-before-dash": (
        ["13.07.17, 10:36 p.m.  - R: hola", "14.07.17, 10:37 a.m.  - S: chao"],
        [("R", "hola"), ("S", "chao")],
        [],
        datetime(2017, 7, 13, 22, 36),
    ),
    "ja-ampm-before-time": (
        ["2023/03/12 午後10:30 - 太郎: こんにちは", "2023/03/13 午前9:05 - 花子: おはよう"],
        [("太郎", "こんにちは"), ("花子", "おはよう")],
        [],
        datetime(2023, 3, 12, 22, 30),
    ),
    "ko-dotted-ampm-before-time": (
        ["2023. 3. 12. 오후 10:30 - 민수: 안녕", "2023. 3. 13. 오전 9:05 - 지영: 안녕하세요"],
        [("민수", "안녕"), ("지영", "안녕하세요")],
        [],
        datetime(2023, 3, 12, 22, 30),
    ),
    "th-buddhist-era": (
        ["12/3/2566 22:30 - สมชาย: สวัสดี", "13/3/2566 09:05 - สมหญิง: สวัสดีค่ะ"],
        [("สมชาย", "สวัสดี"), ("สมหญิง", "สวัสดีค่ะ")],
        [],
        datetime(2023, 3, 12, 22, 30),
    ),
    "el-greek-ampm": (
        ["13/6/18, 9:25 μ.μ. - Νίκος: γεια", "14/6/18, 9:26 π.μ. - Μαρία: γεια σου"],
        [("Νίκος", "γεια"), ("Μαρία", "γεια σου")],
        [],
        datetime(2018, 6, 13, 21, 25),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_exports_in_many_languages_and_header_forms(name):
    lines, messages, reasons, first_ts = CASES[name]
    kept, rejected, _ = parse_whatsapp(lines)
    assert kept.select("author", "text").rows() == messages
    assert rejected.sort("line")["reason"].to_list() == reasons
    assert kept["ts"][0] == first_ts
    assert int(kept["lines"].sum()) + int(rejected["lines"].sum()) == len(lines)


def test_old_ios_attachment_form_and_a_caption_under_a_marked_attachment_line():
    kept, rejected, _ = parse_whatsapp(
        [
            "[04/08/2015, 10:00:00] Bob: 2015-08-04-PHOTO-00004762.jpg <\u200eattached>",
            f"[04/08/2015, 10:00:05] Bob: {LRM}IMG-20150804-WA0001.jpg (file attached)",
            "this is the caption",
            "[14/08/2015, 10:00:06] Ann: nice",
        ]
    )
    assert kept.select("author", "text").rows() == [("Bob", "this is the caption"), ("Ann", "nice")]
    assert rejected.select("line", "reason").rows() == [(1, "attachment"), (2, "attachment")]
    assert kept["line"].to_list() == [3, 4], "the caption is kept from its own line"


HEADER_FORMS = {
    "android": lambda day, minute: [f"{day}/3/23,", " ", f"9:{minute:02d}", " ", "-", " "],
    "ios": lambda day, minute: ["[", f"{day}/3/23,", " ", f"9:{minute:02d}:00", " ", "p. m.", "]", " "],
    "time_first": lambda day, minute: ["[", f"9:{minute:02d}:00,", " ", f"{day}/3/23", "]", " "],
}
MARKS = st.sampled_from([LRM, RLM, "\u061c", "\u202a", "\u202c", "\u2066", "\u2069"])


def _line(pieces: list[str], author: str, text: str) -> str:
    return "".join(pieces) + f"{author}: {text}"


@settings(max_examples=120, deadline=None)
@given(
    form=st.sampled_from(sorted(HEADER_FORMS)),
    rows=st.lists(
        st.tuples(
            st.integers(13, 28),
            st.integers(0, 59),
            st.sampled_from(["Ana", "Nico Pérez", "+56 9 8765 4321"]),
            st.text(
                st.characters(categories=["L", "N", "P", "Zs", "So"], exclude_characters="\u00a0\u202f"),
                min_size=1,
                max_size=30,
            )
            .map(str.strip)
            .filter(bool),
        ),
        min_size=1,
        max_size=12,
    ),
    data=st.data(),
)
def test_marks_and_odd_spaces_in_the_header_never_change_the_parse(form, rows, data):
    plain, marked = [], []
    for day, minute, author, text in rows:
        pieces = HEADER_FORMS[form](day, minute)
        plain.append(_line(pieces, author, text))
        noisy = [
            (NBSP if data.draw(st.booleans()) else NNBSP) if piece == " " and data.draw(st.booleans()) else piece
            for piece in pieces
        ]
        noisy = [data.draw(MARKS) + piece if data.draw(st.booleans()) else piece for piece in noisy]
        noisy_author = data.draw(MARKS) + author + data.draw(MARKS) if data.draw(st.booleans()) else author
        marked.append(
            _line(noisy, noisy_author, text)
        )  # a mark opening the text is iOS's own: tests/test_whatsapp_tail.py
    expected_kept, expected_rejected, _ = parse_whatsapp(plain)
    kept, rejected, _ = parse_whatsapp(marked)
    columns = ["line", "lines", "ts", "author", "text"]
    assert kept.select(columns).rows() == expected_kept.select(columns).rows()
    assert rejected.select("line", "reason").rows() == expected_rejected.select("line", "reason").rows()
    assert expected_kept.height + expected_rejected.height == len(rows)


def test_a_contact_who_signs_the_encryption_notice_keeps_messages_that_read_like_group_events():
    """In a one-to-one iOS chat the contact signs the notice; their `me salió caro` is still theirs."""
    kept, rejected, _ = parse_whatsapp(
        [
            f"[2/5/23, 18:30:05] Cami: {LRM}Los mensajes y las llamadas están cifrados de extremo a extremo.",
            "[2/5/23, 18:31:00] Cami: me salió",
            "[13/5/23, 18:31:10] Cami: caro el completo",
        ]
    )
    assert kept["text"].to_list() == ["me salió", "caro el completo"]
    assert rejected["reason"].to_list() == ["encryption_notice"]


def test_arabic_indic_digits_become_timestamps_but_stay_in_the_text():
    kept, _, _ = parse_whatsapp(CASES["ar-android-arabic-digits"][0])
    assert kept.filter(pl.col("text").str.contains("٣"))["ts"].item() == datetime(2023, 3, 13, 9, 6)
