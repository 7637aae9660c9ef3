import json

from hypothesis import given, settings
from hypothesis import strategies as st

from habla.grouping import keyword_tasks
from habla.io import read_jsonl, write_jsonl
from habla.params import KeywordTasks, Persona
from habla.text.keywords import document_frequencies, merge_frequencies, spanish_stop_words, top_keywords
from stages import split

SONG = "La micro va llena, la micro no para. La micro me deja en la esquina de siempre."
ROUTINE = "El completo con palta es sagrado. El completo italiano, el completo con mayo: el completo es Chile, weón."
STORY = "Mi mamá me manda audios. Audios de siete minutos, y la cazuela se enfría esperando."


def test_tfidf_prefers_words_frequent_here_and_rare_elsewhere():
    # "micro" appears 3 times in the first text only; "completo" 4 times in the second only;
    # "la" and "el" are stop words; the filler "weón" is removed only when the user lists it.
    result = top_keywords([SONG, ROUTINE, STORY], 2)
    assert result[0][0] == "micro" and result[1][0] == "completo" and result[2][0] == "audios"
    assert not any(word in spanish_stop_words() for words in result for word in words)
    assert "weón" in top_keywords([ROUTINE], 30)[0] and "weón" not in top_keywords([ROUTINE], 30, ["Weón"])[0]


def test_idf_breaks_ties_between_equally_frequent_words():
    shared = "palta palta tomate tomate"
    result = top_keywords([shared + " cebolla", "tomate pan", "tomate queso"], 1)
    # palta and tomate occur twice in the first text, but tomate is in every text: palta wins
    assert result[0] == ["palta"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="abcdeñáé ,.!¿?xyzNOP", max_size=80), min_size=1, max_size=6), st.integers(1, 4))
def test_keywords_are_words_of_their_text_best_first_and_deterministic(texts, count):
    result = top_keywords(texts, count)
    assert len(result) == len(texts)
    for text, words in zip(texts, result):
        assert len(words) <= count
        assert all(len(w) >= 3 and w in text.lower() for w in words)
        assert len(set(words)) == len(words)
    assert top_keywords(texts, count) == result


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(alphabet="abcdeñáé ,.!¿?xyzNOP", max_size=80), min_size=2, max_size=8),
    st.integers(1, 4),
    st.data(),
)
def test_keywords_of_a_batch_scored_against_the_whole_corpus_match_the_whole_run(texts, count, data):
    cut = data.draw(st.integers(1, len(texts) - 1))
    batches = [texts[:cut], texts[cut:]]
    corpus = (merge_frequencies([document_frequencies(batch) for batch in batches]), len(texts))
    assert [w for batch in batches for w in top_keywords(batch, count, corpus=corpus)] == top_keywords(texts, count)


def test_one_task_per_document_with_the_song_prompt_for_lyrics_and_the_system_prompt_first():
    docs = [
        {"id": "d1", "source": "lyrics", "file": "a.txt", "text": SONG},
        {"id": "d2", "source": "transcript", "file": "b.txt", "text": ROUTINE},
        {"id": "d3", "source": "transcript", "file": "b.txt", "text": "y la de él"},
    ]
    tasks, without = keyword_tasks(
        docs, Persona(authors=["Nico"], system_prompt="Eres Nico."), KeywordTasks(keywords=2)
    )
    assert without == 1 and [t["document"] for t in tasks] == ["d1", "d2"]
    song = tasks[0]
    assert song["messages"][0] == {"role": "system", "content": "Eres Nico."}
    assert song["messages"][1]["content"].startswith("Escribe una canción sobre: micro, ")
    assert song["messages"][2] == {"role": "assistant", "content": SONG}
    assert tasks[1]["messages"][1]["content"].startswith("Escribe un texto sobre: completo, ")
    assert keyword_tasks(docs, Persona(), KeywordTasks(enabled=False)) == ([], 0)


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
    tasks, _ = keyword_tasks(docs, Persona(), KeywordTasks())
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
