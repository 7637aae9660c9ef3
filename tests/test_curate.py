"""`curate`: chunks that never cut a short unit, proposals kept only as source text, every answer and proposal
counted, and no answer bought twice; against a fake OpenAI-compatible server that misbehaves in every way."""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from habla.curation import chunk_spans, locate, proposals
from habla.errors import UserError
from habla.io import read_json, read_jsonl
from tests.helpers import FakeChatHandler, serve_on_localhost, serving, update_params

# A stand-up routine as a transcript gives it: one caption line per line. The jokes are what a good model finds.
JOKES = [
    "Mi suegra me dijo: oye, ¿y tú por qué no te casai con alguien con plata? Y yo le dije: señora, si me casé con "
    "su hija fue justamente para no tener que ver plata nunca más.",
    "En el metro de Santiago a las ocho de la mañana no vai parado, vai archivado. Yo llegué a la pega con la "
    "cara de otro weón pegada en la espalda.",
    "Mi papá es tan tacaño que cuando se cayó el sistema en el banco, él dijo: menos mal, así no me cobran la "
    "mantención este mes.",
    "El otro día le pregunté a mi hijo qué quería ser cuando grande y me dijo: influencer. Le dije: ¿y eso qué "
    "es? Y me dijo: lo mismo que tú, papá, pero con seguidores.",
    "Fui al doctor y me dijo: usted tiene que dejar el completo. Y yo le dije: doctor, si yo dejo el completo, "
    "el completo me va a buscar.",
]
FILLER = [
    "Buenas noches, buenas noches, qué lindo el público hoy.",
    "Oigan, de verdad, gracias por venir un martes, que es el día más fome de la semana.",
    "Ya, a ver, les cuento algo que me pasó.",
    "Aplausos, aplausos, ya.",
    "No, pero en serio, escuchen esto.",
]
INVENTED = "Un chiste que el modelo se inventó sobre un gato astronauta que viajaba en micro a Valparaíso."


def routine() -> list[str]:
    lines = []
    for i, joke in enumerate(JOKES):
        lines += [FILLER[i % len(FILLER)], FILLER[(i + 2) % len(FILLER)], joke]
    # Answers that go wrong come from chunks far (more than a chunk) from any joke and from each other.
    for marker in ("MALFORMED", "WRONGSHAPE", "ERROR500"):
        lines += FILLER * 3 + [f"Y esa fue la parte {marker} de la noche."]
    return lines + FILLER * 3


FAILURES = {"ERROR500": "no_answer", "MALFORMED": "not_json", "WRONGSHAPE": "wrong_shape"}


def expected_failures(chunks: list[str]) -> dict:
    found = [next((reason for marker, reason in FAILURES.items() if marker in c), None) for c in chunks]
    return {reason: found.count(reason) for reason in sorted(set(found) - {None})}


class FakeCurator:
    """An OpenAI-compatible chat server whose answer depends on the chunk in the prompt: the jokes it holds (quoted
    loosely, as models do), an invented one, or a malformed answer, a wrong shape, an HTTP 500 or a slow reply."""

    def __init__(self, structured: bool = True, known: list[str] = JOKES):
        self.calls: list[str] = []
        self.structured_requests = 0
        outer = self

        class Handler(FakeChatHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert body["temperature"] == 0
                if "response_format" in body:
                    if not structured:
                        return self.reply(400, b'{"error": {"message": "response_format is not supported"}}')
                    outer.structured_requests += 1
                chunk = re.search(r"<<<\n(.*)\n>>>", body["messages"][0]["content"], re.S).group(1)
                outer.calls.append(chunk)
                if "ERROR500" in chunk:
                    return self.reply(500, b'{"error": {"message": "boom"}}')
                if "SLOW" in chunk:
                    time.sleep(2)
                if "MALFORMED" in chunk:
                    return self.answer('Claro, aquí van: {"units": [{"text": "Mi suegra')
                if "WRONGSHAPE" in chunk:
                    return self.answer('{"jokes": ["uno", "dos"]}')
                units = []
                for index, joke in enumerate(known):
                    if " ".join(joke.split()) in " ".join(chunk.split()):
                        text = [joke, joke.lower(), "  ".join(joke.split()), joke.replace("justamente", "justamnte")][
                            index % 4
                        ]
                        units.append(
                            {"text": text, "keywords": ["Tema " + str(index)], "score": 8, "mind_states": 3 + index % 5}
                        )
                units.append({"text": INVENTED, "keywords": ["gato"], "score": 9, "mind_states": 4})
                self.answer("```json\n" + json.dumps({"units": units}, ensure_ascii=False) + "\n```")

            def answer(self, content):
                self.complete(content, "curador", {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120})

        self.server, self.url = serve_on_localhost(Handler)


@pytest.fixture
def curator():
    yield from serving(FakeCurator())


def cleaned_routine(root, lines: list[str]) -> None:
    from stages import clean

    raw = root / "data/raw/transcripts"
    raw.mkdir(parents=True)
    (raw / "rutina-festival.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    clean.main()


def use_endpoint(root, url: str, **extra) -> None:
    settings = {
        "backend": "openai",
        "prompt_set": "jokes",
        "base_url": url,
        "model": "curador",
        "api_key_env": "CURATE_TEST_KEY",
        "timeout_s": 1,
        "max_retries": 0,
        "chunk_chars": 600,
        "overlap_chars": 250,
    }
    update_params(root, "curate", **(settings | extra))


def test_curate_keeps_source_text_only_counts_everything_and_buys_nothing_twice(in_tmp, curator, monkeypatch):
    from stages import curate

    monkeypatch.setenv("CURATE_TEST_KEY", "sk-secret-never-written")
    cleaned_routine(in_tmp, routine())
    use_endpoint(in_tmp, curator.url)
    curate.main()

    report = read_json("metrics/curate.json")
    units = read_jsonl("data/curated/units.jsonl")
    document = "\n".join(routine())
    failures = expected_failures(curator.calls)
    answered = report["chunks"] - failures["no_answer"]
    assert report["calls"] == len(curator.calls) >= 8
    assert report["calls"] + report["cache_hits"] == report["chunks"], "a chunk asked twice in one run is bought once"
    assert report["failed_by_reason"] == failures and set(failures) == {"no_answer", "not_json", "wrong_shape"}
    assert report["failed"] == sum(failures.values())
    assert report["proposed"] == report["kept"] + report["rejected"]
    good_answers = report["chunks"] - report["failed"]
    assert report["rejected_by_reason"]["not_in_source"] == good_answers  # the invented joke, in every good answer
    assert report["rejected_by_reason"]["found_twice"] >= 1, "a joke in two overlapping chunks is kept once"
    bought = report["calls"] - failures["no_answer"]
    assert report["tokens"] == {"prompt": 100 * bought, "completion": 20 * bought}
    assert curator.structured_requests == report["calls"], "structured output asked for where supported"
    kept_texts = sorted(u["text"] for u in units)
    in_bounds = [joke for i, joke in enumerate(JOKES) if 3 <= 3 + i % 5 <= 6]
    assert kept_texts == sorted(in_bounds), "each joke once, as the transcript has it (case, spacing and typos aside)"
    assert report["rejected_by_reason"].get("mind_states_out_of_bounds", 0) == len(JOKES) - len(in_bounds)
    for unit in units:
        assert document[unit["span"][0] : unit["span"][1]] == unit["text"]
        assert unit["task"].startswith("Escribe un chiste en español chileno sobre: tema ")
        assert unit["file"] == "transcripts/rutina-festival.txt" and 3 <= unit["mind_states"] <= 6
    rejected = read_jsonl("data/curated/rejected.jsonl")
    assert len(rejected) == report["rejected"] and {r["reason"] for r in rejected} >= {"not_in_source", "found_twice"}

    first_calls = len(curator.calls)
    update_params(in_tmp, "curate", min_score=9)  # a filter change: every answer received is reused
    curate.main()
    again = read_json("metrics/curate.json")
    assert len(curator.calls) - first_calls == again["calls"] == failures["no_answer"], "only the HTTP 500s again"
    assert again["cache_hits"] == answered and again["kept"] == 0
    assert again["rejected_by_reason"]["score_below_min"] == len(JOKES)
    for path in [*in_tmp.joinpath("metrics").rglob("*.json"), *in_tmp.joinpath("data").rglob("*.jsonl")]:
        assert "sk-secret-never-written" not in path.read_text(encoding="utf-8"), path


def test_a_server_without_structured_output_is_asked_again_in_plain_json(in_tmp, monkeypatch):
    from stages import curate

    fake = FakeCurator(structured=False)
    try:
        cleaned_routine(in_tmp, [FILLER[0], JOKES[2], FILLER[1]])
        use_endpoint(in_tmp, fake.url, api_key_env="")
        curate.main()
    finally:
        fake.server.shutdown()
        fake.server.server_close()
    report = read_json("metrics/curate.json")
    assert report["failed"] == 0 and report["kept"] == 1 and fake.structured_requests == 0


def test_a_slow_endpoint_is_a_counted_failure_asked_again_next_run(in_tmp, curator):
    from stages import curate

    cleaned_routine(in_tmp, [FILLER[0], JOKES[1] + " SLOW", FILLER[1]])
    use_endpoint(in_tmp, curator.url, api_key_env="")
    with pytest.raises(UserError, match=r"read nothing from any of the 1 chunks: .* gave \{'no_answer': 1\}"):
        curate.main()
    calls = len(curator.calls)
    with pytest.raises(UserError, match="no_answer"):
        curate.main()
    assert len(curator.calls) == 2 * calls, "a chunk that got no answer is asked again next run"


def test_the_offline_backend_cuts_passages_with_keyphrases_and_verbatim_spans(in_tmp):
    from stages import curate

    cleaned_routine(in_tmp, routine())
    curate.main()
    report = read_json("metrics/curate.json")
    units = read_jsonl("data/curated/units.jsonl")
    document = "\n".join(routine())
    assert report["backend"] == "passages" and report["calls"] == 0 and report["kept"] == len(units) >= 2
    assert "".join(document[u["span"][0] : u["span"][1]] for u in units) == document, "passages cover the routine"
    assert all(u["task"].startswith("Escribe un texto sobre: ") and u["keywords"] for u in units)


def test_a_wrong_prompt_set_or_a_missing_key_is_one_clear_message(in_tmp, monkeypatch):
    from habla.errors import UserError
    from stages import curate

    cleaned_routine(in_tmp, routine())
    update_params(in_tmp, "curate", prompt_set="chistes")
    with pytest.raises(UserError, match=r"prompts/sets/chistes.yaml does not exist. Available: jokes, texts"):
        curate.main()
    monkeypatch.delenv("CURATE_TEST_KEY", raising=False)
    use_endpoint(in_tmp, "http://127.0.0.1:9/v1")
    with pytest.raises(UserError, match="CURATE_TEST_KEY"):
        curate.main()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="abc de", min_size=0, max_size=60), min_size=1, max_size=40),
    st.integers(200, 900),
    st.data(),
)
def test_chunks_cover_the_text_and_any_passage_up_to_the_overlap_lies_whole_in_one(sentences, size, data):
    text = ". ".join(sentences)
    overlap = data.draw(st.integers(0, size // 2 - 1))
    spans = chunk_spans(text, size, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(b - a <= size for a, b in spans)
    assert all(a2 <= b1 for (_, b1), (a2, _) in zip(spans, spans[1:])), "no gap between chunks"
    assert all(a1 < a2 for (a1, _), (a2, _) in zip(spans, spans[1:])), "every chunk moves on"
    if overlap and len(text) > overlap:
        start = data.draw(st.integers(0, len(text) - overlap))
        assert any(a <= start and start + overlap <= b for a, b in spans)


@pytest.mark.parametrize(
    "answer, reason",
    [
        ('{"units": [{"text": "hola", "keywords": ["x"], "score": 3}]}', None),
        ('Aquí está:\n```json\n{"units": []}\n```', None),
        ("no encontré chistes", "not_json"),
        ('{"units": "ninguno"}', "wrong_shape"),
        ('{"units": [{"texto": "hola"}]}', "wrong_shape"),
        ('{"units": [{"text": "hola", "keywords": "x"}]}', "wrong_shape"),
        ('[{"text": "hola"}]', "wrong_shape"),
    ],
)
def test_an_answer_is_units_or_a_reason(answer, reason):
    assert proposals(answer)[1] == reason


def test_locate_finds_loose_quotes_and_refuses_inventions():
    chunk = "Ya, a ver.\nMi papá es tan  tacaño que no prende la luz.\nAplausos."
    for quote in ("mi papá es tan tacaño que no prende la luz.", "Mi papa es tan tacano que no prende la luz."):
        start, end = locate(quote, chunk, 90)
        assert chunk[start:end] == "Mi papá es tan  tacaño que no prende la luz."
    assert locate("Mi mamá cocina cazuela los domingos con mucho cariño.", chunk, 90) is None
    assert locate("x" * 500, chunk, 90) is None


def stamp(seconds: float) -> str:
    return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{seconds % 60:06.3f}"


def test_units_from_timed_transcripts_keep_the_time_range_of_their_lines(in_tmp, curator):
    """A WebVTT routine (one caption per line, 4 s each): a joke found by the model carries the time of its cue."""
    from stages import clean, curate

    lines = [FILLER[0], FILLER[1], JOKES[3], FILLER[2], FILLER[3]]
    cues = [f"{stamp(60 + 4 * i)} --> {stamp(63.5 + 4 * i)}\n{line}" for i, line in enumerate(lines)]
    raw = in_tmp / "data/raw/transcripts"
    raw.mkdir(parents=True)
    (raw / "rutina.es.vtt").write_text("WEBVTT\n\n" + "\n\n".join(cues) + "\n", encoding="utf-8")
    clean.main()
    use_endpoint(in_tmp, curator.url, api_key_env="", field_bounds={"mind_states": [0, 10]})
    curate.main()
    (unit,) = read_jsonl("data/curated/units.jsonl")
    assert unit["text"] == JOKES[3] and unit["time"] == [68.0, 71.5]
    update_params(in_tmp, "curate", backend="passages", passage_chars=10_000)
    curate.main()
    (whole,) = read_jsonl("data/curated/units.jsonl")
    assert whole["time"] == [60.0, 79.5] and whole["text"] == "\n".join(lines)


def test_a_joke_told_again_in_another_show_is_kept_once(in_tmp):
    """The same joke in two festival nights, and a retelling that changes its last word: one unit each."""
    from stages import clean, curate

    retold = JOKES[3].replace("seguidores.", "followers.")
    fake = FakeCurator(known=[*JOKES, retold])
    try:
        raw = in_tmp / "data/raw/transcripts"
        raw.mkdir(parents=True)
        (raw / "noche-1.txt").write_text("\n".join([FILLER[0], JOKES[1], FILLER[1], JOKES[3]]) + "\n")
        (raw / "noche-2.txt").write_text("\n".join([FILLER[2], JOKES[1], FILLER[3], retold]) + "\n")
        clean.main()
        use_endpoint(in_tmp, fake.url, api_key_env="", field_bounds={"mind_states": [0, 10]})
        curate.main()
    finally:
        fake.server.shutdown()
        fake.server.server_close()
    report = read_json("metrics/curate.json")
    units = read_jsonl("data/curated/units.jsonl")
    assert sorted(u["text"] for u in units) == sorted([JOKES[1], JOKES[3]])
    assert {u["file"] for u in units} == {"transcripts/noche-1.txt"}
    assert report["rejected_by_reason"]["duplicate"] == 1 and report["rejected_by_reason"]["near_duplicate"] == 1


@given(
    st.text(st.characters(codec="latin-1")),
    st.lists(st.sampled_from([" ", "  ", "\n", "\t", "\u00a0"]), min_size=1, max_size=4),
)
def test_exact_duplicate_keys_ignore_case_and_spacing_only(text, gaps):
    """The one key curate's exact duplicates and prefer's identical pairs share."""
    from habla.text.near_dups import exact_key

    words = text.split()
    respaced = gaps[0] + "".join(w.upper() + gaps[i % len(gaps)] for i, w in enumerate(words))
    assert exact_key(respaced) == exact_key(text) == exact_key(exact_key(text))
    assert exact_key(text + "x") != exact_key(text) or not text.strip()
