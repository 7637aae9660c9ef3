"""Every voice of a group chat in one adapter (`group.speakers: conditioned`): params, grouping, split, the stages
end to end on a hand-written group chat, and `habla chat` / `habla serve` switching between the personas."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
from datetime import datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from habla.apps.chat import Session, interactive, speaker_view
from habla.errors import UserError
from habla.grouping import answer_order, chosen_personas, speaker_conversations, turn_taking
from habla.params import Group, Persona, Split, load_params
from habla.splitting import split_conversations
from tests.helpers import chat_messages, client, greedy_params, silent_adapter, update_params, write_params

T0 = datetime(2024, 5, 3, 19, 0)
GROUP_CHAT = "whatsapp/Chat de WhatsApp con Los del Liceo.txt"
PERSONAS = {"nico": Persona(["Nico", "Nicolás"], "Eres nico."), "cami": Persona(["Cami"], "Eres cami.")}


def chat(rows) -> pl.DataFrame:
    """The group chat as `clean` writes it: rows of (minutes after T0, author, text)."""
    return chat_messages(rows, GROUP_CHAT, T0)


EVENING = [
    (0, "Feña", "¿quién va al asado el sábado?"),
    (1, "Nico", "yo po, llevo el carbón"),
    (2, "Cami", "yo también, ¿a qué hora?"),
    (3, "Feña", "tipo 2"),
    (4, "Nicolás", "ya, nos vemos allá"),
    (5, "Cami", "dale, llevo ensalada"),
]


def test_params_name_each_persona_by_id_in_every_form_and_name_the_speaker_by_default(tmp_path):
    write_params(
        tmp_path,
        {
            "group": {"speakers": "conditioned"},
            "personas": {
                "nico": ["Nico", "Nicolás"],
                "cami": "Cami",
                "fena": {"authors": ["Feña"], "system_prompt": "Eres la Feña, de Valparaíso."},
            },
        },
    )
    personas = chosen_personas(load_params(tmp_path / "params.yaml"))
    assert list(personas) == ["nico", "cami", "fena"]
    assert personas["nico"] == Persona(["Nico", "Nicolás"], "Eres nico.")
    assert personas["cami"] == Persona(["Cami"], "Eres cami.")
    assert personas["fena"].system_prompt == "Eres la Feña, de Valparaíso."
    write_params(tmp_path, {"persona": {"authors": ["Nico"], "system_prompt": ""}})
    assert chosen_personas(load_params(tmp_path / "params.yaml")) == {"persona": Persona(["Nico"], "")}


@pytest.mark.parametrize(
    ("personas", "speaker_prompt", "message"),
    [
        ({}, "Eres {persona}.", "`personas`, which is empty"),
        ({"Nico Pérez": ["Nico"]}, "Eres {persona}.", "short plain id"),
        ({"nico": []}, "Eres {persona}.", "names no author"),
        ({"nico": ["Nico"], "nicolas": ["Nico"]}, "Eres {persona}.", "under both `personas.nico` and `nicolas`"),
        ({"nico": ["Nico"]}, "Eres el amigo.", "must contain `{persona}`"),
        ({"nico": {"autores": ["Nico"]}}, "Eres {persona}.", "unknown key(s) `personas.nico.autores`"),
    ],
)
def test_a_wrong_personas_setting_stops_with_one_sentence(tmp_path, personas, speaker_prompt, message):
    write_params(
        tmp_path, {"group": {"speakers": "conditioned", "speaker_prompt": speaker_prompt}, "personas": personas}
    )
    with pytest.raises(UserError) as error:
        load_params(tmp_path / "params.yaml")
    assert message in str(error.value)


def test_each_persona_speaks_under_its_system_turn_and_hears_the_others_by_id():
    examples, dropped = speaker_conversations(chat(EVENING), PERSONAS, Group())
    views = {row["persona"]: row for row in examples.iter_rows(named=True)}
    assert set(views) == {"nico", "cami"}
    assert [(m["role"], m["content"]) for m in views["nico"]["messages"]] == [
        ("system", "Eres nico."),
        ("user", "[Persona 2]: ¿quién va al asado el sábado?"),
        ("assistant", "yo po, llevo el carbón"),
        ("user", "[cami]: yo también, ¿a qué hora?\n[Persona 2]: tipo 2"),
        ("assistant", "ya, nos vemos allá"),
        ("user", "[cami]: dale, llevo ensalada"),
    ]
    assert [(m["role"], m["content"]) for m in views["cami"]["messages"]] == [
        ("system", "Eres cami."),
        ("user", "[Persona 2]: ¿quién va al asado el sábado?\n[nico]: yo po, llevo el carbón"),
        ("assistant", "yo también, ¿a qué hora?"),
        ("user", "[Persona 2]: tipo 2\n[nico]: ya, nos vemos allá"),
        ("assistant", "dale, llevo ensalada"),
    ]
    assert views["nico"]["conversation"] == views["cami"]["conversation"], "one session, one key"
    assert views["nico"]["id"] != views["cami"]["id"]
    assert "Feña" not in json.dumps(examples.to_dicts(), ensure_ascii=False), "who was not chosen stays a pseudonym"
    assert dropped["no_persona_turn"] == 0


def test_turn_taking_counts_who_speaks_after_whom_within_a_session_a_burst_once():
    later = [(600 + m, author, text) for m, author, text in [(0, "Cami", "¿y mañana?"), (1, "Cami", "¿alguien?")]]
    counts = turn_taking(chat([*EVENING, *later]), PERSONAS, Group(session_gap_minutes=180))
    found = {(row["after"], row["speaker"]): row["len"] for row in counts.iter_rows(named=True)}
    assert found == {("others", "nico"): 2, ("nico", "cami"): 2, ("cami", "others"): 1}, (
        "Nico and Nicolás are one persona; cami's two messages ten hours later start a session of their own"
    )


def test_group_mode_answers_in_the_groups_own_order_and_hands_back_when_the_group_would():
    assert answer_order({}, ["nico", "cami", "fena"]) == ["nico", "cami", "fena"], "no counts: the order of personas"
    habits = {"others": {"cami": 9, "nico": 4}, "cami": {"fena": 5, "others": 2}, "fena": {"nico": 3, "others": 1}}
    assert answer_order(habits, ["nico", "cami", "fena"]) == ["cami", "fena", "nico"]
    quiet = {"others": {"cami": 9}, "cami": {"others": 6, "nico": 1}}
    assert answer_order(quiet, ["nico", "cami"]) == ["cami"], "after cami the group usually hands back to you"


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["others", "a", "b", "c"]),
        st.dictionaries(st.sampled_from(["others", "a", "b", "c"]), st.integers(0, 20)),
    )
)
def test_group_mode_always_has_someone_answer_and_nobody_twice(habits):
    order = answer_order(habits, ["a", "b", "c"])
    assert order and len(set(order)) == len(order) and set(order) <= {"a", "b", "c"}
    first = habits.get("others", {})
    assert first.get(order[0], 0) == max(first.get(ident, 0) for ident in "abc"), "who usually answers you, first"


def test_chat_and_serve_take_the_group_order_from_the_turn_taking_group_reported(in_tmp):
    from habla.apps.chat import group_order

    assert group_order(["nico", "cami"]) == ["nico", "cami"], "before `group` has run: the order of personas"
    (in_tmp / "metrics").mkdir(exist_ok=True)
    (in_tmp / "metrics/group.json").write_text(json.dumps({"turn_taking": {"others": {"cami": 3, "nico": 1}}}))
    assert group_order(["nico", "cami"]) == ["cami", "nico"]


def test_a_persona_silent_in_a_session_has_no_view_of_it_and_the_drop_is_counted():
    quiet = chat([(0, "Feña", "¿alguien vio el partido?"), (1, "Nico", "sí, qué golazo")])
    examples, dropped = speaker_conversations(quiet, PERSONAS, Group())
    assert examples["persona"].to_list() == ["nico"] and dropped["no_persona_turn"] == 1


WORDS = (
    "asado carbón playa cerro feria micro estadio carrete completo palta sopaipilla terremoto cueca once pega "
    "plata lluvia frío calor pichanga tocata previa mechón liceo profe prueba vacaciones viaje sur norte desierto"
).split()


def sessions(count: int, seed: int = 5) -> pl.DataFrame:
    """`count` evenings of the group, each in its own random words (nothing leaks by overlap or near-duplicate)."""
    rng = random.Random(seed)
    rows = []
    for evening in range(count):
        start = evening * 24 * 60
        for minute, author in enumerate(["Feña", "Nico", "Cami", "Nico", "Cami"]):
            rows.append((start + minute, author, " ".join(rng.sample(WORDS, 6))))
    return chat(rows)


def test_every_view_of_a_conversation_lands_in_one_split_even_when_a_view_leaks():
    examples, _ = speaker_conversations(sessions(120), PERSONAS, Group())
    split, _ = split_conversations(examples, Split(seed=3))
    per_conversation = split.group_by("conversation").agg(pl.col("split").n_unique().alias("splits"))
    assert per_conversation["splits"].max() == 1
    assert set(split["split"]) == {"train", "val", "test"}
    train_reply = split.filter((pl.col("split") == "train") & (pl.col("persona") == "nico"))["messages"][0]
    test_nico = split.filter((pl.col("split") == "test") & (pl.col("persona") == "nico")).head(1)
    leaking_text = train_reply.to_list()[2]["content"]
    copied = test_nico.with_columns(
        messages=pl.col("messages").list.eval(
            pl.when(pl.element().struct.field("role") == "assistant")
            .then(pl.struct(role=pl.lit("assistant"), content=pl.lit(leaking_text)))
            .otherwise(pl.element())
        )
    )
    moved_conversation = copied["conversation"][0]
    leaky = pl.concat([split.filter(pl.col("id") != copied["id"][0]), copied]).drop("split")
    result, leakage = split_conversations(leaky, Split(seed=3))
    views = result.filter(pl.col("conversation") == moved_conversation)
    assert views.height == 2 and set(views["split"]) == {"train"}, "the leaking view took its other view along"
    assert leakage["exact_overlap_moved"] == 2


def test_group_and_split_stages_write_each_persona_and_report_per_persona(in_tmp):
    from habla.io import read_json, read_jsonl
    from habla.model.generation import held_out_cases
    from habla.params import Evaluate
    from habla.readers.units import with_message_columns
    from stages import curate, group, split

    path = in_tmp / "data/cleaned/messages.parquet"
    path.parent.mkdir(parents=True)
    with_message_columns(sessions(150).with_columns(lines=pl.lit(1))).write_parquet(path)
    update_params(in_tmp, "group", speakers="conditioned")
    update_params(in_tmp, "personas", nico=["Nico"], cami={"authors": ["Cami"], "system_prompt": "Soy la Cami."})
    curate.main()
    group.main()
    report = read_json("metrics/group.json")
    assert report["conversations_by_persona"] == {"cami": 150, "nico": 150}
    assert report["turn_taking"] == {"cami": {"nico": 150}, "nico": {"cami": 300}, "others": {"nico": 150}}, (
        "each evening: Feña → Nico → Cami → Nico → Cami, and no turn taken across the night"
    )
    split.main()
    test = read_jsonl("data/splits/test.jsonl")
    assert {row["persona"] for row in test} == {"nico", "cami"}
    assert {row["messages"][0]["content"] for row in test} == {"Eres nico.", "Soy la Cami."}
    train_sessions = {row["conversation"] for row in read_jsonl("data/splits/train.jsonl")}
    assert not train_sessions & {row["conversation"] for row in test}
    cases, _ = held_out_cases(test, Evaluate())
    assert [case["persona"] for case in cases] == [row["persona"] for row in test][: len(cases)]
    assert all(case["prompt"][0]["role"] == "system" for case in cases), "each prompt is generated as its persona"

    update_params(in_tmp, "personas", nico=["Nicolas"])
    with pytest.raises(UserError, match=r"(?s)\['Nicolas'\] not found.*Nico \(300\).*Set `personas.nico`"):
        group.main()


def test_speaker_view_gives_each_persona_the_turns_it_learned_from():
    history = [("", "¿quién va?"), ("nico", "yo po"), ("cami", "yo igual"), ("", "¿y la Feña?")]
    assert speaker_view(history, "cami", "Eres cami.") == [
        {"role": "system", "content": "Eres cami."},
        {"role": "user", "content": "¿quién va?\n[nico]: yo po"},
        {"role": "assistant", "content": "yo igual"},
        {"role": "user", "content": "¿y la Feña?"},
    ]
    assert speaker_view([("", "hola"), ("persona", "wena")], "persona", "") == [
        {"role": "user", "content": "hola"},
        {"role": "assistant", "content": "wena"},
    ], "one persona: the conversation as before"


def conditioned(params):
    return dataclasses.replace(
        params,
        group=dataclasses.replace(params.group, speakers="conditioned"),
        personas={"nico": ["Nico"], "cami": ["Cami"]},
    )


@pytest.mark.slow
def test_chat_switches_persona_with_as_and_every_persona_answers_in_group_mode(loaded):
    model, tokenizer = loaded
    params = conditioned(greedy_params())
    session = Session(model, tokenizer, params, params.evaluate.sampling)
    lines = iter(["/as cami", "hola", "/as pancho", "/group", "¿vamos?", "/exit"])
    out = io.StringIO()
    interactive(session, session.speaker, out=out, read=lambda _: next(lines))
    text = out.getvalue()
    assert "(hablas con cami)" in text and "(no hay persona `pancho`; hay nico, cami)" in text
    assert "(grupo: responden nico, cami, en ese orden)" in text
    after_group = text.split("en ese orden)")[1]
    assert after_group.index("nico> ") < after_group.index("cami> ")
    speakers = [who for who, _ in session.history]
    assert speakers == ["", "cami", "", "nico", "cami"]
    prompt = session.messages("¿y?")
    assert prompt[0] == {"role": "system", "content": "Eres cami."}
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert prompt[3]["content"].startswith("¿vamos?\n[nico]: "), "cami hears what nico said in the group"
    assert prompt[-1]["content"] == "¿y?"


@pytest.mark.slow
def test_serve_lists_each_persona_as_a_model_that_speaks_under_its_system_turn(server, loaded):
    from habla.model.generation import prompt_length

    _, url = server(personas={"nico": ["Nico"], "cami": ["Cami"]})
    api = client(url)
    assert [m.id for m in api.models.list().data] == ["nico", "cami", "tuned", "base"]
    messages = [{"role": "user", "content": "¿Vamos al asado?"}]
    usage = {
        name: api.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=4).usage
        for name in ("nico", "cami", "tuned")
    }
    tokenizer = loaded[1]
    system = prompt_length(tokenizer, [{"role": "system", "content": "Eres nico."}, *messages])
    assert usage["nico"].prompt_tokens == system > usage["tuned"].prompt_tokens
    own = [{"role": "system", "content": "Eres otra persona, muy distinta."}, *messages]
    mine = api.chat.completions.create(model="nico", messages=own, temperature=0, max_tokens=4).usage
    assert mine.prompt_tokens == prompt_length(tokenizer, own), "a request's own system turn wins"


@pytest.fixture
def nico_own(loaded):
    """nico's own adapter beside the conditioned one: the trained adapter with its LoRA B zeroed, so it speaks as
    the base does; loaded on the shared model (id → PEFT name), removed after the test."""
    import shutil

    from habla import paths
    from habla.model.loading import load_persona_adapters

    model, _ = loaded
    try:
        silent_adapter(paths.ADAPTER, paths.persona_adapter("nico"))
        yield load_persona_adapters(model, ["nico", "cami"])
    finally:
        shutil.rmtree(paths.MODELS / paths.PERSONAS)
        if "persona-nico" in model.peft_config:
            model.delete_adapter("persona-nico")


@pytest.mark.slow
def test_serve_loads_each_personas_own_adapter_on_the_one_base_and_switches_per_request(server, loaded, nico_own):
    """nico's own adapter answers `nico`; the speaker-conditioned adapter answers `nico:conditioned`; cami, who has
    none, is answered by the conditioned one."""
    model, _ = loaded
    assert nico_own == {"nico": "persona-nico"}, "a persona without an adapter on disk is left out"
    _, url = server(personas={"nico": ["Nico"], "cami": ["Cami"]}, own=nico_own)
    api = client(url)
    assert [m.id for m in api.models.list().data] == ["nico", "nico:conditioned", "cami", "tuned", "base"]
    asked = [{"role": "user", "content": "¿Vamos al asado el sábado?"}]
    with_system = [{"role": "system", "content": "Eres nico."}, *asked]

    def reply(name, messages):
        answer = api.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=8)
        return answer.choices[0].message.content

    base, tuned = reply("base", with_system), reply("tuned", with_system)
    assert base != tuned, "the prompt must tell the base from the fine-tuned model"
    assert reply("nico", asked) == base, "nico's own adapter answers `nico`"
    assert reply("nico:conditioned", asked) == tuned
    assert reply("cami", with_system) == tuned
    assert model.active_adapter == "default", "each request's adapter is switched back"


@pytest.mark.slow
def test_chat_speaks_with_each_personas_own_adapter_under_own_and_the_conditioned_one_under_tuned(loaded, nico_own):
    model, tokenizer = loaded
    params = conditioned(greedy_params())
    session = Session(model, tokenizer, params, params.evaluate.sampling, own=nico_own)
    assert session.name == "own" and session.available == ["base", "tuned", "own"]

    def said(name: str, speaker: str) -> str:
        session.reset()
        session.name, session.speaker = name, speaker
        return "".join(session.reply("¿Vamos al asado el sábado?"))

    base, tuned = said("base", "nico"), said("tuned", "nico")
    assert base != tuned, "the prompt must tell the base from the fine-tuned model"
    assert said("own", "nico") == base, "nico's own adapter"
    assert said("own", "cami") == said("tuned", "cami"), "cami has no adapter of her own: the conditioned one"
    lines = iter(["/own", "/exit"])
    out = io.StringIO()
    interactive(Session(model, tokenizer, params, params.evaluate.sampling), "nico", out, lambda _: next(lines))
    assert "(no hay adaptador own: corre `dvc repro train_persona`)" in out.getvalue()


def test_perplexity_is_reported_per_persona_token_weighted_and_rows_without_one_are_left_out():
    from habla.model.perplexity import by_field

    rows = [{"persona": "nico"}, {"persona": "cami"}, {"persona": "nico"}, {"persona": None}]
    scores = {"base": [(4.0, 2), (3.0, 1), (2.0, 2), (9.0, 1)], "tuned": [(2.0, 2), (1.0, 1), (2.0, 2), (9.0, 1)]}
    result = by_field(rows, scores, "persona")
    assert set(result) == {"cami", "nico"}
    assert result["nico"]["base"] == pytest.approx(math.exp(6.0 / 4))
    assert result["nico"]["tuned"] == pytest.approx(math.exp(4.0 / 4))
    assert result["cami"] == {"base": pytest.approx(math.exp(3.0)), "tuned": pytest.approx(math.exp(1.0))}


def test_voice_attributes_each_personas_replies_with_its_own_classifier_so_a_swapped_voice_scores_low():
    from habla.params import Voice
    from stages.voice import by_persona

    rng = random.Random(11)
    styles = {
        "nico": "po cachai weón al tiro harto bacán la raja fome".split(),
        "cami": "amiga jajaja demasiado lindo obvio sii te amo porfa".split(),
    }
    others = "ok gracias mañana hablamos vale nos vemos tranqui".split()

    def line(words):
        return " ".join(rng.choices(words, k=6))

    train = []
    for index in range(120):
        ident = ("nico", "cami")[index % 2]
        other = "cami" if ident == "nico" else "nico"
        messages = [
            {"role": "system", "content": f"Eres {ident}."},
            {"role": "user", "content": f"[Persona 2]: {line(others)}\n[{other}]: {line(styles[other])}"},
            {"role": "assistant", "content": line(styles[ident])},
        ]
        train.append({"id": str(index), "chat": "whatsapp/grupo.txt", "persona": ident, "messages": messages})
    cases = []
    for index in range(40):
        ident = ("nico", "cami")[index % 2]
        other = "cami" if ident == "nico" else "nico"
        prompt = [{"role": "user", "content": line(others)}]
        cases.append(
            {
                "id": f"t{index}",
                "persona": ident,
                "prompt": prompt,
                "reference": line(styles[ident]),
                "tuned": line(styles[ident]),
                "base": line(styles[other]),
            }
        )
    report = by_persona(train, cases, ["base", "tuned"], Voice(), 200)
    assert set(report) == {"nico", "cami"} and report["nico"]["prompts"] == 20
    for ident in ("nico", "cami"):
        found = report[ident]["attribution"]
        assert found["ceiling"]["attributed"] > 0.9 and found["floor"]["attributed"] < 0.1
        assert found["tuned"]["attributed"] > 0.9, "its own voice is attributed to it"
        assert found["base"]["attributed"] < 0.1, "the other persona's voice counts against it"


def test_reference_scores_each_persona_against_its_own_replies_and_train_turns(in_tmp):
    from habla import paths
    from habla.io import read_json, write_jsonl
    from stages import reference

    rng = random.Random(2)
    train = [
        {
            "id": f"{ident}{index}",
            "chat": "whatsapp/grupo.txt",
            "persona": ident,
            "messages": [
                {"role": "user", "content": " ".join(rng.sample(WORDS, 5))},
                {"role": "assistant", "content": f"{word} {word} po" if ident == "nico" else f"{word} amiga"},
            ],
        }
        for index, (ident, word) in enumerate((i, w) for i in ("nico", "cami") for w in WORDS)
    ]
    cases = []
    for index in range(10):
        ident = ("nico", "cami")[index % 2]
        real = f"{WORDS[index]} {WORDS[index]} po" if ident == "nico" else f"{WORDS[index]} amiga"
        cases.append({"id": f"t{index}", "persona": ident, "prompt": [], "reference": real, "tuned": real,
                      "base": "no sé qué decirte la verdad"})  # fmt: skip
    write_jsonl(paths.split_file("train"), train)
    write_jsonl(paths.GENERATIONS, cases)
    reference.main()
    report = read_json(paths.report("reference"))
    assert set(report["by_persona"]) == {"nico", "cami"}
    for ident in ("nico", "cami"):
        mine = report["by_persona"][ident]
        assert mine["prompts"] == 5 and mine["tuned"]["chrf"] == pytest.approx(100.0)
        assert mine["base"]["chrf"] < 30 and mine["tuned"]["voice_fidelity"] > mine["base"]["voice_fidelity"]
    assert report["by_persona"]["nico"]["characteristic_ngrams"] > 0, "nico's `po` is his, against his own chats"
