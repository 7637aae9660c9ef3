from datetime import datetime, timedelta

import polars as pl
import pytest

from stages.errors import UserError
from stages.group import check_persona, conversations, flatten, passages, turns
from stages.params import Group, Persona, Ratios, Split
from stages.split import assign, leaking_ids, split_conversations

T0 = datetime(2023, 3, 1, 10, 0)


def messages(rows, chat="whatsapp/chat.txt"):
    """rows: (minutes after T0, author, text)."""
    return pl.DataFrame(
        {
            "source": "whatsapp", "file": chat, "line": list(range(1, len(rows) + 1)), "chat": chat,
            "ts": [T0 + timedelta(minutes=m) for m, _, _ in rows], "author": [a for _, a, _ in rows], "text": [t for _, _, t in rows],
        }
    )


PERSONA = Persona(authors=["Nico"])


def examples(frame, persona=PERSONA, **group):
    settings = Group(**group)
    return conversations(turns(frame, persona, settings), persona, settings)


def test_session_gap_boundary_and_same_role_merging():
    frame = messages([
        (0, "Cami", "hola"), (1, "Nico", "wena"), (2, "Nico", "¿qué onda?"),
        (2 + 180, "Cami", "sigo aquí"), (2 + 181, "Nico", "justo en el límite"),
        (2 + 181 + 181, "Cami", "otra sesión"), (2 + 181 + 182, "Nico", "sí po"),
    ])
    result, _ = examples(frame, session_gap_minutes=180, separator="\n")
    sessions = [[(m["role"], m["content"]) for m in row] for row in result["messages"].to_list()]
    assert sessions == [
        [("user", "hola"), ("assistant", "wena\n¿qué onda?"), ("user", "sigo aquí"), ("assistant", "justo en el límite")],
        [("user", "otra sesión"), ("assistant", "sí po")],
    ]


def test_group_chat_uses_stable_pseudonyms_not_names():
    frame = messages([(0, "Cami", "hola"), (1, "Pancho", "buenas"), (2, "Nico", "wena cabros"), (3, "Cami", "¿vamos?"), (4, "Nico", "de una")])
    result, _ = examples(frame)
    (conversation,) = result["messages"].to_list()
    assert conversation[0] == {"role": "user", "content": "[Persona 2]: hola\n[Persona 3]: buenas"}
    assert conversation[2] == {"role": "user", "content": "[Persona 2]: ¿vamos?"}
    assert "Cami" not in str(conversation) and "Pancho" not in str(conversation)


def test_filters_and_persona_openings_are_counted():
    frame = messages([(0, "Nico", "wena"), (1, "Cami", "hola"), (2, "Nico", "¿cómo estai?"), (500, "Cami", "¿nadie?")])
    result, dropped = examples(frame)
    assert result["messages"].to_list() == [[{"role": "user", "content": "hola"}, {"role": "assistant", "content": "¿cómo estai?"}]]
    assert dropped == {"opening_persona_turns_trimmed": 1, "no_persona_turn": 1, "too_few_turns": 0}


def test_system_prompt_goes_first_and_windows_start_with_user():
    rows = [(i, "Cami" if i % 2 == 0 else "Nico", f"m{i}") for i in range(10)]
    result, _ = examples(messages(rows), persona=Persona(authors=["Nico"], system_prompt="Eres Nico."), max_turns=4)
    assert result.height == 3
    for conversation in result["messages"].to_list():
        assert conversation[0] == {"role": "system", "content": "Eres Nico."}
        assert conversation[1]["role"] == "user"
    flat = flatten(result)
    assert not flat["role_repeats"].any() and not flat["system_not_first"].any()


def test_unknown_persona_lists_the_authors_found():
    frame = messages([(0, "Cami", "hola"), (1, "Nico", "wena"), (2, "Nico", "po")])
    with pytest.raises(UserError) as err:
        check_persona(frame, Persona(authors=["nico"]))
    assert "Nico (2)" in str(err.value) and "Cami (1)" in str(err.value)


def test_passages_cut_at_sentence_boundaries():
    text = "Uno dos tres. Cuatro cinco seis. Siete ocho nueve. Diez."
    assert passages(text, 30) == ["Uno dos tres.", "Cuatro cinco seis.", "Siete ocho nueve. Diez."]


def conversation(i, reply):
    return {"id": f"c{i}", "source": "whatsapp", "chat": "x", "start": "", "messages": [
        {"role": "user", "content": "hola"}, {"role": "assistant", "content": reply}]}


def test_split_is_a_function_of_the_id_so_new_data_moves_nothing():
    settings = Split(ratios=Ratios(0.6, 0.2, 0.2))
    ids = [f"conv-{i}" for i in range(300)]
    first = dict(zip(ids, assign(ids, settings)))
    more = ids + [f"new-{i}" for i in range(200)]
    second = dict(zip(more, assign(more, settings)))
    assert all(second[i] == first[i] for i in ids)
    shares = pl.Series(list(first.values())).value_counts(normalize=True)
    assert dict(shares.iter_rows())["train"] == pytest.approx(0.6, abs=0.08)
    assert assign(ids, Split(seed=99)) != assign(ids, Split(seed=13))


def test_long_assistant_turns_shared_with_train_leave_test():
    rows = [conversation(i, "la misma respuesta larga que se repite siempre igual") for i in range(60)]
    rows += [conversation(100 + i, f"respuesta única número {i} que no se repite nunca") for i in range(60)]
    frame, moved = split_conversations(rows, Split(overlap_min_chars=30))
    assert moved > 0
    assert leaking_ids(frame, 30).len() == 0
    test_ids = set(frame.filter(pl.col("split") == "test")["id"])
    assert test_ids and all(int(i[1:]) >= 100 for i in test_ids)
