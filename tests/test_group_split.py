import polars as pl
import pytest

from habla.curation import passage_spans
from habla.errors import UserError
from habla.grouping import check_persona, conversations, flatten, turns
from habla.params import Group, Persona, Ratios, Split
from habla.readers.units import with_message_columns
from habla.splitting import assign, leaking_ids, move_overlaps, split_conversations
from tests.helpers import chat_messages, update_params

PERSONA = Persona(authors=["Nico"])


def examples(frame, persona=PERSONA, **group):
    settings = Group(**group)
    return conversations(turns(frame, persona, settings), persona, settings)


def test_session_gap_boundary_and_same_role_merging():
    frame = chat_messages(
        [
            (0, "Cami", "hola"),
            (1, "Nico", "wena"),
            (2, "Nico", "¿qué onda?"),
            (2 + 180, "Cami", "sigo aquí"),
            (2 + 181, "Nico", "justo en el límite"),
            (2 + 181 + 181, "Cami", "otra sesión"),
            (2 + 181 + 182, "Nico", "sí po"),
        ]
    )
    result, _ = examples(frame, session_gap_minutes=180, separator="\n")
    sessions = [[(m["role"], m["content"]) for m in row] for row in result["messages"].to_list()]
    assert sessions == [
        [
            ("user", "hola"),
            ("assistant", "wena\n¿qué onda?"),
            ("user", "sigo aquí"),
            ("assistant", "justo en el límite"),
        ],
        [("user", "otra sesión"), ("assistant", "sí po")],
    ]


def test_group_chat_uses_stable_pseudonyms_not_names():
    frame = chat_messages(
        [
            (0, "Cami", "hola"),
            (1, "Pancho", "buenas"),
            (2, "Nico", "wena cabros"),
            (3, "Cami", "¿vamos?"),
            (4, "Nico", "de una"),
        ]
    )
    result, _ = examples(frame)
    (conversation,) = result["messages"].to_list()
    assert conversation[0] == {"role": "user", "content": "[Persona 2]: hola\n[Persona 3]: buenas"}
    assert conversation[2] == {"role": "user", "content": "[Persona 2]: ¿vamos?"}
    assert "Cami" not in str(conversation) and "Pancho" not in str(conversation)


def test_filters_and_persona_openings_are_counted():
    frame = chat_messages(
        [(0, "Nico", "wena"), (1, "Cami", "hola"), (2, "Nico", "¿cómo estai?"), (500, "Cami", "¿nadie?")]
    )
    result, dropped = examples(frame)
    assert result["messages"].to_list() == [
        [{"role": "user", "content": "hola"}, {"role": "assistant", "content": "¿cómo estai?"}]
    ]
    assert dropped == {
        "opening_persona_turns_trimmed": 1,
        "no_persona_turn": 1,
        "too_few_turns": 0,
        "turn_too_short": 0,
        "turn_too_long": 0,
    }


def test_a_conversation_opened_by_the_persona_can_be_kept_or_given_a_synthetic_opener():
    frame = chat_messages([(0, "Nico", "wena"), (1, "Cami", "hola"), (2, "Nico", "¿cómo estai?")])
    kept, counts = examples(frame, persona_opens="keep")
    assert [m["role"] for m in kept["messages"].to_list()[0]] == ["assistant", "user", "assistant"]
    assert "opening_persona_turns_trimmed" not in counts
    opened, counts = examples(frame, persona_opens="opener", opener="…")
    assert opened["messages"].to_list()[0] == [
        {"role": "user", "content": "…"},
        {"role": "assistant", "content": "wena"},
        {"role": "user", "content": "hola"},
        {"role": "assistant", "content": "¿cómo estai?"},
    ]
    assert counts["opening_persona_turns_given_opener"] == 1
    assert not flatten(opened)["role_repeats"].any()


def test_windows_with_a_turn_outside_the_character_limits_are_left_out_and_counted():
    frame = chat_messages(
        [
            (0, "Cami", "hola"),
            (1, "Nico", "k"),
            (300, "Cami", "¿y?"),
            (301, "Nico", "bla " * 30),
            (600, "Cami", "¿vamos?"),
            (601, "Nico", "de una po"),
        ]
    )
    result, dropped = examples(frame, min_turn_chars=2, max_turn_chars=100)
    assert [m["content"] for m in result["messages"].to_list()[0]] == ["¿vamos?", "de una po"]
    assert dropped["turn_too_short"] == 1 and dropped["turn_too_long"] == 1


def test_system_prompt_goes_first_and_windows_start_with_user():
    rows = [(i, "Cami" if i % 2 == 0 else "Nico", f"m{i}") for i in range(10)]
    result, _ = examples(
        chat_messages(rows), persona=Persona(authors=["Nico"], system_prompt="Eres Nico."), max_turns=4
    )
    assert result.height == 3
    for conversation in result["messages"].to_list():
        assert conversation[0] == {"role": "system", "content": "Eres Nico."}
        assert conversation[1]["role"] == "user"
    flat = flatten(result)
    assert not flat["role_repeats"].any() and not flat["system_not_first"].any()


def test_unknown_persona_lists_the_authors_found():
    frame = chat_messages([(0, "Cami", "hola"), (1, "Nico", "wena"), (2, "Nico", "po")])
    with pytest.raises(UserError) as err:
        check_persona(frame.group_by("author").len(), Persona(authors=["nico"]))
    assert "Nico (2)" in str(err.value) and "Cami (1)" in str(err.value)


def test_passages_cut_at_sentence_ends_and_cover_the_text():
    text = "Uno dos tres. Cuatro cinco seis.\nSiete ocho nueve. Diez."
    spans = passage_spans(text, 14)
    assert [text[a:b] for a, b in spans] == ["Uno dos tres. ", "Cuatro cinco seis.\n", "Siete ocho nueve. ", "Diez."]
    assert [text[a:b] for a, b in passage_spans(text, 30)] == [
        "Uno dos tres. Cuatro cinco seis.\n",
        "Siete ocho nueve. Diez.",
    ]


def conversation(i, reply):
    return {
        "id": f"c{i}",
        "source": "whatsapp",
        "chat": "x",
        "start": "",
        "messages": [{"role": "user", "content": "hola"}, {"role": "assistant", "content": reply}],
    }


def test_time_strategy_puts_the_latest_conversations_in_test():
    rows = [
        {**conversation(i, f"respuesta {i}"), "start": f"2023-01-{1 + i // 24:02d}T{i % 24:02d}:00:00"}
        for i in range(100)
    ]
    frame, _ = split_conversations(pl.DataFrame(rows), Split(strategy="time", ratios=Ratios(0.7, 0.1, 0.2)))
    by_split = {
        name: sorted(int(i[1:]) for i in frame.filter(pl.col("split") == name)["id"])
        for name in ("train", "val", "test")
    }
    assert by_split == {"train": list(range(70)), "val": list(range(70, 80)), "test": list(range(80, 100))}


def test_time_cut_points_are_whole_rows_and_equal_start_times_are_ordered_by_id():
    rows = [{**conversation(i, f"respuesta {i}"), "start": f"2023-01-01T{min(i, 6):02d}:00:00"} for i in range(10)]
    frame, _ = split_conversations(pl.DataFrame(rows[::-1]), Split(strategy="time", ratios=Ratios(0.7, 0.1, 0.2)))
    split_of = dict(zip(frame["id"], frame["split"]))
    # c6 … c9 start together: the id decides, so c6 is the seventh and last train conversation
    assert [split_of[f"c{i}"] for i in range(10)] == ["train"] * 7 + ["val"] + ["test"] * 2


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
    frame, leakage = split_conversations(pl.DataFrame(rows), Split(overlap_min_chars=30))
    assert leakage["exact_overlap_moved"] > 0 and leakage["near_duplicates"] == 0
    assert leaking_ids(frame, 30).len() == 0
    test_ids = set(frame.filter(pl.col("split") == "test")["id"])
    assert test_ids and all(int(i[1:]) >= 100 for i in test_ids)


def test_a_test_conversation_that_leaks_only_through_another_moved_one_moves_too():
    shared_with_train, shared_in_test = (
        "una respuesta larga que también está en train",
        "otra respuesta larga que solo comparten a y b",
    )
    rows = [
        {**conversation(1, shared_with_train), "split": "train"},
        {**conversation(2, shared_with_train), "split": "test"},
        {**conversation(3, shared_in_test), "split": "test"},
        {**conversation(4, "una respuesta larga que nadie más escribió"), "split": "test"},
    ]
    rows[1]["messages"] += [{"role": "user", "content": "¿y?"}, {"role": "assistant", "content": shared_in_test}]
    frame, moved = move_overlaps(pl.DataFrame(rows), 30)
    assert moved == 2 and frame.filter(pl.col("split") == "test")["id"].to_list() == ["c4"]
    assert leaking_ids(frame, 30).len() == 0


def test_merge_window_makes_bursts_joined_by_the_separator_and_later_bursts_by_a_newline():
    frame = chat_messages(
        [
            (0, "Cami", "hola"),
            (1, "Nico", "wena"),
            (2, "Nico", "¿qué onda?"),
            (40, "Nico", "oye, ¿sigues ahí?"),
            (41, "Cami", "sí"),
        ]
    )
    result, _ = examples(frame, merge_window_minutes=10, separator="<|msg_sep|>")
    (conversation,) = result["messages"].to_list()
    assert [(m["role"], m["content"]) for m in conversation] == [
        ("user", "hola"),
        ("assistant", "wena<|msg_sep|>¿qué onda?\noye, ¿sigues ahí?"),
        ("user", "sí"),
    ]


def test_group_chat_users_merge_into_one_labelled_turn():
    frame = chat_messages(
        [(0, "Cami", "hola"), (1, "Feña", "holi"), (2, "Nico", "wena cabros"), (3, "Pancho", "llegué")]
    )
    result, _ = examples(frame)
    (conversation,) = result["messages"].to_list()
    assert [(m["role"], m["content"]) for m in conversation] == [
        ("user", "[Persona 2]: hola\n[Persona 3]: holi"),
        ("assistant", "wena cabros"),
        ("user", "[Persona 4]: llegué"),
    ]


def test_reply_mode_gives_one_example_per_persona_reply_with_context_starting_with_a_user_turn():
    frame = chat_messages(
        [
            (0, "Cami", "a"),
            (1, "Nico", "b"),
            (2, "Cami", "c"),
            (3, "Nico", "d"),
            (4, "Cami", "e"),
            (5, "Nico", "f"),
        ]
    )
    result, _ = examples(frame, mode="reply", context_turns=2)
    windows = [[m["content"] for m in row] for row in result["messages"].to_list()]
    assert windows == [["a", "b"], ["c", "d"], ["e", "f"]]
    wider, _ = examples(frame, mode="reply", context_turns=3)
    assert [[m["content"] for m in row] for row in wider["messages"].to_list()] == [
        ["a", "b"],
        ["a", "b", "c", "d"],
        ["c", "d", "e", "f"],
    ]
    assert wider["id"].n_unique() == 3


def test_placeholder_only_and_overlong_messages_are_filtered_with_counts():
    from habla.grouping import filter_messages

    frame = chat_messages(
        [
            (0, "Cami", "mira"),
            (1, "Nico", "<URL>"),
            (2, "Nico", " <TELEFONO> <EMAIL>"),
            (3, "Nico", "ya po <URL>"),
            (4, "Cami", "x" * 2000),
        ]
    )
    kept, counts = filter_messages(frame, PERSONA.authors, Group(max_message_chars=1500))
    assert kept["text"].to_list() == ["mira", "ya po <URL>"]
    assert counts == {"persona_placeholder_only": 2, "message_too_long": 1}


def test_near_duplicate_persona_text_leaves_test_or_is_only_reported():
    base = "el árbitro era más malo que el pan con palta sin sal, hay que apechugar no más"
    rows = [
        conversation(i, f"{base} po {i}" if i < 40 else f"respuesta {i} sobre otro tema distinto al fútbol")
        for i in range(120)
    ]
    frame, leakage = split_conversations(pl.DataFrame(rows), Split(overlap_min_chars=30))
    assert leakage["near_duplicates"] > 0 and leakage["near_duplicates_moved"] == leakage["near_duplicates"]
    test_ids = set(frame.filter(pl.col("split") == "test")["id"])
    assert test_ids and all(int(i[1:]) >= 40 for i in test_ids)
    reported, counts = split_conversations(pl.DataFrame(rows), Split(overlap_min_chars=30, near_dups="report"))
    assert counts["near_duplicates"] == leakage["near_duplicates"] and counts["near_duplicates_moved"] == 0
    moved = set(reported.filter(pl.col("split") == "test")["id"]) - test_ids
    assert len(moved) == leakage["near_duplicates"]  # "report" leaves in test exactly what "move" took out …
    assert set(frame.filter(pl.col("id").is_in(list(moved)))["split"]) == {"train"}  # … and "move" put it in train
    assert frame.height == reported.height == len(rows)


def test_sizes_need_every_split_and_enough_test_conversations():
    from habla.errors import UserError
    from habla.splitting import check_sizes

    def frame(train, val, test):
        return pl.DataFrame({"split": ["train"] * train + ["val"] * val + ["test"] * test})

    assert check_sizes(frame(8, 1, 5), Split(min_test=5)) == {"train": 8, "val": 1, "test": 5}
    for sizes in ((8, 0, 5), (0, 1, 5), (8, 1, 4)):
        with pytest.raises(UserError, match="too little data to split"):
            check_sizes(frame(*sizes), Split(min_test=5))


def test_split_stats_count_conversations_and_characters_per_split():
    from habla.splitting import stats

    rows = [
        {**conversation(i, "ya po" if i < 2 else "dale"), "split": s}
        for i, s in enumerate(["train", "train", "val", "test"])
    ]
    # each conversation is "hola" (4 characters) and its reply
    assert stats(pl.DataFrame(rows)) == {
        "train": {"conversations": 2, "chars": 2 * (4 + 5)},
        "val": {"conversations": 1, "chars": 4 + 4},
        "test": {"conversations": 1, "chars": 4 + 4},
    }


def test_minhash_estimates_jaccard_of_word_shingles():
    from habla.text.near_dups import near_duplicate_pairs

    left = pl.Series(["uno dos tres cuatro cinco seis siete ocho nueve diez", "nada que ver con lo otro de verdad"])
    right = pl.Series(["uno dos tres cuatro cinco seis siete ocho nueve diez once", "hola"])
    pairs = near_duplicate_pairs(left, right, 0.5)
    assert [(i, j) for i, j, _ in pairs] == [(0, 0)]
    assert pairs[0][2] == pytest.approx(8 / 9, abs=0.15)


def test_near_duplicates_with_many_repeated_texts_match_a_brute_force_search():
    import random

    import numpy as np

    from habla.text.near_dups import near_duplicate_pairs, signatures

    rng = random.Random(5)
    words = "ya po wena cabros vamos al estadio mañana con harta palta".split()
    pool = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(40)]
    left = pl.Series([rng.choice(pool) for _ in range(300)])  # heavy repetition, as in real chats
    right = pl.Series([rng.choice(pool) for _ in range(500)] + ["algo completamente distinto de todo lo demás"])
    found = near_duplicate_pairs(left, right, 0.6)
    sl, sr = signatures(left), signatures(right)
    exact = (sl[:, None, :] == sr[None, :, :]).mean(axis=2)
    expected = {i for i in range(len(left)) if exact[i].max() >= 0.6}
    assert {i for i, _, _ in found} == expected and len(expected) > 250
    for i, j, similarity in found:
        assert similarity == pytest.approx(exact[i].max()) and exact[i, j] == pytest.approx(similarity)
        assert j == int(np.flatnonzero(exact[i] == exact[i].max())[0])  # the closest, lowest index on ties


def test_group_in_small_batches_writes_what_one_batch_writes(in_tmp):
    """`group` works a few chats at a time (`resources.batch_rows`) and gives what it gives in one batch."""
    import random

    from habla.io import read_json
    from stages import curate, group

    rng = random.Random(7)
    words = "completo palta micro estadio carrete playa cerro feria once sopaipilla terremoto cueca".split()
    chats = [
        chat_messages(
            [
                (i * rng.choice([1, 5, 200]), rng.choice(["Nico", "Cami", "Feña"]), " ".join(rng.sample(words, 3)))
                for i in range(600)
            ],
            chat,
        )
        for chat in ("whatsapp/c.txt", "whatsapp/a.txt", "whatsapp/b.txt")
    ]
    texts = [
        chat_messages(
            [(i, None, f"Frase {i} sobre {rng.choice(words)} y {rng.choice(words)}.") for i in range(800)], name
        ).with_columns(source=pl.lit(source))
        for name, source in (("shows/uno.txt", "transcript"), ("letras/dos.txt", "lyrics"))
    ]
    path = in_tmp / "data/cleaned/messages.parquet"
    path.parent.mkdir(parents=True)
    with_message_columns(pl.concat([*chats, *texts]).with_columns(lines=pl.lit(1))).write_parquet(path)
    curate.main()

    produced = {}
    for batch_rows in (1000, 1_000_000):
        update_params(in_tmp, "resources", batch_rows=batch_rows)
        group.main()
        produced[batch_rows] = {
            name: (in_tmp / "data/grouped" / name).read_bytes()
            for name in ("conversations.jsonl", "documents.jsonl", "keyword_tasks.jsonl")
        }
        produced[batch_rows]["report"] = read_json("metrics/group.json")
        produced[batch_rows]["gate"] = read_json("metrics/gates/group.json")
    assert produced[1000] == produced[1_000_000]
    report = produced[1000]["report"]
    assert report["conversations"] > 30 and report["documents"] > 10 and report["keyword_tasks"] == report["documents"]
    assert sorted(
        {row["chat"] for row in map(__import__("json").loads, produced[1000]["conversations.jsonl"].splitlines())}
    ) == ["whatsapp/a.txt", "whatsapp/b.txt", "whatsapp/c.txt"]
    assert not list((in_tmp / "data").glob(".group-*"))
