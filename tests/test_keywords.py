import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from habla.grouping import unit_tasks
from habla.io import read_jsonl, write_jsonl
from habla.params import Persona
from habla.text.keywords import keyphrases, looks_verbal
from stages import split

SONG = "La micro va llena, la micro no para. La micro me deja en la esquina de siempre."
ROUTINE = "El completo con palta es sagrado. El completo italiano, el completo con mayo: el completo es Chile, weón."
STORY = "Mi mamá me manda audios. Audios de siete minutos, y la cazuela se enfría esperando."


def test_keyphrases_prefer_noun_phrases_and_multi_word_terms_over_verbs():
    # From a Somos NLP keynote passage: TF-IDF used to give "ponerlo, hora, correglos"
    text = (
        "A mí lo que estamos viendo es que hay otras tendencias como a la creación de modelos más pequeños más "
        "especializados en determinados ámbitos o en resolver determinadas tareas, porque ponerlo en producción "
        "cuesta mucho. Los modelos pequeños especializados son más baratos de poner en inferencia."
    )
    phrases = keyphrases(text, 3)
    assert len(phrases) == 3 and all(p == p.lower() and p in text.lower() for p in phrases)
    assert not any(looks_verbal(p) for p in phrases), phrases
    assert any(" " in p for p in phrases), "multi-word terms are kept whole"


@pytest.mark.parametrize(
    "phrase, verbal",
    [
        ("resolver determinadas tareas", True),
        ("ponerlo en producción", True),
        ("palabra afectaría completamente", True),
        ("jacatón es crear", True),
        ("estilo Cephir", False),
        ("el lugar de siempre", False),
        ("final de secuencia", False),
        ("la micro", False),
        ("el completo italiano", False),
    ],
)
def test_what_looks_verbal(phrase, verbal):
    assert looks_verbal(phrase) is verbal


def test_fillers_listed_by_the_user_never_become_keyphrases():
    assert any("weón" in p for p in keyphrases(ROUTINE, 10))
    assert not any("weón" in p for p in keyphrases(ROUTINE, 10, ["Weón"]))
    assert keyphrases("", 3) == [] and keyphrases("   ", 3) == []


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="abcdeñáé ,.!¿?xyzNOP", max_size=120), st.integers(1, 4))
def test_keyphrases_come_from_their_text_without_repeats_and_deterministically(text, count):
    phrases = keyphrases(text, count)
    assert len(phrases) <= count and len(set(phrases)) == len(phrases)
    assert all(p in " ".join(text.lower().split()) for p in phrases)
    assert keyphrases(text, count) == phrases


def unit(ident: str, source: str, text: str, task: str | None) -> dict:
    keywords = ["micro"] if task else []
    return {"id": ident, "source": source, "file": "a.txt", "text": text, "keywords": keywords, "task": task}


def test_one_task_per_unit_with_a_request_and_the_system_prompt_first():
    units = [
        unit("u1", "lyrics", SONG, "Escribe una canción sobre: micro."),
        unit("u2", "transcript", ROUTINE, "Escribe un chiste en español chileno sobre: el completo."),
        unit("u3", "transcript", "y la de él", None),
    ]
    tasks, without = unit_tasks(units, Persona(authors=["Nico"], system_prompt="Eres Nico."))
    assert without == 1 and [t["document"] for t in tasks] == ["u1", "u2"]
    song = tasks[0]
    assert song["messages"] == [
        {"role": "system", "content": "Eres Nico."},
        {"role": "user", "content": "Escribe una canción sobre: micro."},
        {"role": "assistant", "content": SONG},
    ]
    assert unit_tasks(units, Persona())[0][1]["messages"][0]["role"] == "user"


def test_keyword_tasks_go_to_the_split_of_their_document(in_tmp):
    grouped = in_tmp / "data" / "grouped"
    chats = [
        {
            "id": f"c{i}",
            "source": "whatsapp",
            "chat": "x",
            "start": f"2023-01-01T00:{i % 60:02d}:00",
            "messages": [
                {"role": "user", "content": "hola"},
                {"role": "assistant", "content": f"respuesta número {i}"},
            ],
        }
        for i in range(200)
    ]
    docs = [
        {
            "id": f"d{i}",
            "source": "transcript",
            "file": "show.txt",
            "text": f"Pasaje {i}: el completo número {i} con palta y tomate en la playa.",
        }
        for i in range(40)
    ]
    tasks, _ = unit_tasks([{**d, "keywords": ["palta"], "task": "Escribe sobre: palta."} for d in docs], Persona())
    write_jsonl(grouped / "conversations.jsonl", chats)
    write_jsonl(grouped / "documents.jsonl", docs)
    write_jsonl(grouped / "keyword_tasks.jsonl", tasks)

    split.main()

    doc_split = {
        d["id"]: name for name in ("train", "val", "test") for d in read_jsonl(f"data/splits/documents/{name}.jsonl")
    }
    task_split = {
        t["document"]: name
        for name in ("train", "val", "test")
        for t in read_jsonl(f"data/splits/{name}.jsonl")
        if t["source"] == "keywords"
    }
    assert len(task_split) == 40 and task_split == doc_split
    assert set(doc_split.values()) == {"train", "val", "test"}
    report = json.loads((in_tmp / "metrics/split.json").read_text())
    assert report["keyword_tasks"] == report["documents"]


def test_split_without_documents_or_tasks_writes_conversations_only(in_tmp):
    grouped = in_tmp / "data" / "grouped"
    chats = [
        {
            "id": f"c{i}",
            "source": "whatsapp",
            "chat": "x",
            "start": "2023-01-01T00:00:00",
            "messages": [
                {"role": "user", "content": "hola"},
                {"role": "assistant", "content": f"respuesta número {i}"},
            ],
        }
        for i in range(120)
    ]
    write_jsonl(grouped / "conversations.jsonl", chats)
    write_jsonl(grouped / "documents.jsonl", [])
    write_jsonl(grouped / "keyword_tasks.jsonl", [])

    split.main()

    rows = [r for name in ("train", "val", "test") for r in read_jsonl(f"data/splits/{name}.jsonl")]
    assert sorted(r["id"] for r in rows) == sorted(c["id"] for c in chats)
    assert all(set(r) == {"id", "source", "chat", "start", "messages"} for r in rows)
