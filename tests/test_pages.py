"""The chat page, the generations page and the blind test of `habla serve`, in a real browser (the `browser` fixture).

Screenshots of each page go to `build/screenshots/` (or `$HABLA_SCREENSHOTS`); the README's come from there.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request

import pytest

import habla.apps.serve
from habla.apps.web import generation_cases, is_local, page
from tests.helpers import client, shoot

pytestmark = pytest.mark.slow

WAIT = 90


def wait(driver, condition, timeout: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def texts(driver, selector: str) -> list[str]:
    return [e.text for e in driver.find_elements("css selector", selector)]


def send(driver, text: str) -> None:
    """Type a message and press Enter, then wait until the reply has finished (the send button is back)."""
    from selenium.webdriver.common.keys import Keys

    before = len(driver.find_elements("css selector", ".bubble"))
    box = driver.find_element("id", "text")
    box.send_keys(text, Keys.ENTER)
    wait(driver, lambda d: len(d.find_elements("css selector", ".bubble")) > before)
    wait(driver, lambda d: d.find_element("id", "send").is_enabled() and d.execute_script("return controller === null"))


def set_field(driver, element_id: str, value: str) -> None:
    field = driver.find_element("id", element_id)
    field.clear()
    field.send_keys(value)


def bubbles_of(reply: str, separator: str = "\n") -> list[str]:
    return [part.strip() for part in reply.split(separator) if part.strip()]


def test_the_chat_page_streams_replies_in_bubbles_switches_model_and_shows_api_errors(server, browser):
    _, url = server()
    api = client(url)
    browser.get(url + "/")
    wait(browser, lambda d: texts(d, "#model option") == ["tuned", "base"])
    assert browser.switch_to.active_element.get_attribute("id") == "text", "the message box has the focus"
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", "16")
    browser.execute_script(
        "window.pieces = 0; new MutationObserver((changes) => { window.pieces += changes.filter((c) =>"
        " c.target.closest && c.target.closest('.assistant') || c.target.parentElement &&"
        " c.target.parentElement.closest('.assistant')).length; })"
        ".observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});"
    )
    send(browser, "¿Cómo estai?")
    question = [{"role": "user", "content": "¿Cómo estai?"}]
    expected = api.chat.completions.create(model="tuned", messages=question, temperature=0, max_tokens=16)
    reply = expected.choices[0].message.content
    assert texts(browser, ".user") == ["¿Cómo estai?"]
    assert texts(browser, ".assistant") == bubbles_of(reply)
    streamed = api.chat.completions.create(model="tuned", messages=question, temperature=0, max_tokens=16, stream=True)
    pieces = sum(bool(c.choices and c.choices[0].delta.content) for c in streamed)
    assert pieces >= 2, "the reply must come in several pieces for this test to show streaming"
    assert browser.execute_script("return window.pieces") >= pieces, "the bubbles grew piece by piece"

    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "model")).select_by_value("base")
    assert texts(browser, ".meta")[-1] == "Modelo: base"
    send(browser, "¿Y mañana?")
    history = browser.execute_script("return history")
    assert [m["who"] for m in history] == ["", "tuned", "", "base"]
    said = [{"role": "assistant" if m["who"] else "user", "content": m["content"]} for m in history[:3]]
    base = api.chat.completions.create(model="base", messages=said, temperature=0, max_tokens=16)
    assert history[3]["content"] == base.choices[0].message.content.strip()
    assert texts(browser, ".assistant")[-len(bubbles_of(history[3]["content"])) :] == bubbles_of(history[3]["content"])

    set_field(browser, "max-tokens", "100000")
    send(browser, "esto falla")
    (error,) = browser.find_elements("css selector", ".error")
    assert error.get_attribute("role") == "alert" and "max_tokens" in error.text and "512" in error.text
    assert len(browser.execute_script("return history")) == 4, "a refused message does not enter the history"
    shoot(browser, "chat.png")

    browser.find_element("id", "new").click()
    assert texts(browser, ".bubble") == ["Conversación nueva"] and browser.execute_script("return history") == []


def test_a_learned_separator_token_splits_a_streamed_reply_into_bubbles_even_across_pieces(server, browser):
    _, url = server()
    browser.get(url + "/")
    bubbles = browser.execute_script(
        "log.replaceChildren(); const write = bubbleWriter('<|msg_sep|>');"
        "for (const piece of ['hola', ' po<|ms', 'g_sep|>', 'chao<', '|msg_sep|><|msg_sep|>', 'ya <b>']) write(piece);"
        "write('', true); return [...document.querySelectorAll('.assistant')].map((b) => b.textContent);"
    )
    assert bubbles == ["hola po", "chao", "ya <b>"], "text stays text, never markup"


def test_the_chat_page_asks_for_the_api_key_once_and_sends_it(server, browser, monkeypatch):
    monkeypatch.setenv("HABLA_PAGE_KEY", "s3cret")
    _, url = server(api_key_env="HABLA_PAGE_KEY")
    browser.get(url + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(url + "/")
    key = browser.find_element("id", "api-key")
    wait(browser, lambda d: texts(d, ".error") == ["Invalid API key."])
    assert key.is_displayed()
    key.send_keys("s3cret")
    browser.find_element("id", "temperature").click()  # leaving the field commits it
    wait(browser, lambda d: texts(d, "#model option") == ["tuned", "base"])
    set_field(browser, "max-tokens", "4")
    send(browser, "hola")
    assert browser.execute_script("return history.length") == 2
    browser.get(url + "/")  # entered once: a reload keeps it for the tab
    wait(browser, lambda d: texts(d, "#model option") == ["tuned", "base"])
    assert not texts(browser, ".error")


def test_the_chat_page_picks_a_persona_or_the_whole_group_and_each_answers_in_turn(server, browser):
    from selenium.webdriver.support.ui import Select

    from habla.grouping import answer_order

    personas = {"nico": ["Nico"], "cami": ["Cami"], "fena": ["Feña"]}
    engine, url = server(personas=personas)
    habits = {"others": {"cami": 9, "nico": 4}, "cami": {"fena": 5, "others": 2}, "fena": {"nico": 3}}
    engine.group = answer_order(habits, list(personas))  # as `group_order` reads it from metrics/group.json
    assert engine.group == ["cami", "fena", "nico"]
    api = client(url)
    browser.get(url + "/")
    options = ["nico", "cami", "fena", "tuned", "base", "grupo: cami, fena, nico"]
    wait(browser, lambda d: texts(d, "#model option") == options)
    assert Select(browser.find_element("id", "model")).first_selected_option.text == "nico"
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", "3")  # the tiny model's context is 64 tokens: the last one hears two replies
    Select(browser.find_element("id", "model")).select_by_value("__group__")
    assert texts(browser, ".meta")[-1] == "Grupo: responden cami, fena, nico"
    send(browser, "¿Vamos?")

    heard = "¿Vamos?"
    expected = []
    for ident in engine.group:
        reply = api.chat.completions.create(
            model=ident, messages=[{"role": "user", "content": heard}], temperature=0, max_tokens=3
        )
        text = reply.choices[0].message.content.strip()
        expected += [(ident, bubble) for bubble in bubbles_of(text)]
        heard += f"\n[{ident}]: {text}"
    shown = browser.execute_script(
        "return [...document.querySelectorAll('.assistant')].map((b) => [b.dataset.who, b.textContent]);"
    )
    assert [tuple(pair) for pair in shown] == expected, "each persona answers in turn, hearing the ones before it"
    assert [m["who"] for m in browser.execute_script("return history")] == ["", "cami", "fena", "nico"]
    assert len({who for who, _ in expected}) >= 2, "the tiny model must say something for this to show turns"
    shoot(browser, "group.png")


def test_the_chat_page_talks_to_a_persona_as_the_conditioned_adapter_speaks_it(server, browser):
    """`nico:conditioned` sends nico's view of the conversation and keeps the reply as nico's."""
    from selenium.webdriver.support.ui import Select

    engine, url = server(personas={"nico": ["Nico"], "cami": ["Cami"]})
    engine.voices["nico:conditioned"] = engine.voices["nico"]  # as when nico has an adapter of his own
    engine.models = ("nico:conditioned", *engine.models)
    browser.get(url + "/")
    wait(browser, lambda d: "nico:conditioned" in texts(d, "#model option"))
    set_field(browser, "max-tokens", "4")
    Select(browser.find_element("id", "model")).select_by_value("nico:conditioned")
    send(browser, "¿Vamos?")
    assert [m["who"] for m in browser.execute_script("return history")] == ["", "nico"]
    assert not texts(browser, ".error")


@pytest.fixture(scope="module")
def evaluated(trained_project):
    """The persona's generations and the judge's verdicts on them, as `dvc repro` would leave them (outputs only:
    the shared project's model and data stay as they were)."""
    from stages import generate, judge

    with contextlib.chdir(trained_project):
        generate.main()
        judge.main()
    return trained_project


def test_the_generations_page_lists_every_prompt_side_by_side_and_filters(evaluated, server, browser):
    from selenium.webdriver.support.ui import Select

    _, url = server()
    cases = [json.loads(line) for line in (evaluated / "metrics/generations.jsonl").read_text().splitlines()]
    verdicts = [json.loads(line) for line in (evaluated / "metrics/judgments.jsonl").read_text().splitlines()]
    browser.set_window_size(1280, 1000)
    browser.get(url + "/generations")
    wait(browser, lambda d: d.find_elements("css selector", "article"))
    articles = browser.find_elements("css selector", "article")
    assert [a.get_attribute("id") for a in articles] == [f"case-{c['id']}" for c in cases]
    first = articles[0]
    assert [h.text for h in first.find_elements("css selector", ".reply h3")] == ["respuesta real", "base", "tuned"]
    assert first.find_element("css selector", ".reply.real p").text == cases[0]["reference"].strip()
    assert "tuned primero" in first.find_element("css selector", ".verdicts").text
    shoot(browser, "generations.png")
    outcome = {"tuned": "win", "base": "loss"}
    for value in {outcome.get(v["outcome"], v["outcome"]) for v in verdicts}:
        Select(browser.find_element("id", "outcome")).select_by_value(value)
        wanted = sum(outcome.get(v["outcome"], v["outcome"]) == value for v in verdicts)
        assert len(browser.find_elements("css selector", "article")) == wanted
        assert browser.find_element("id", "status").text.startswith(f"{wanted} de {len(cases)}")
    browser.set_window_size(430, 900)


def test_generation_cases_join_replies_verdicts_and_ratings(tmp_path):
    generations, judgments = tmp_path / "generations.jsonl", tmp_path / "judgments.jsonl"
    assert generation_cases(generations, judgments)["hint"].endswith("run `dvc repro generate judge`.")
    case = {"id": "c1", "source": "whatsapp", "prompt": [{"role": "user", "content": "hola"}], "reference": "wena"}
    generations.write_text(json.dumps({**case, "base": "hola", "tuned": "wena po"}) + "\n")
    (only,) = generation_cases(generations, judgments)["cases"]
    assert only["replies"] == {"base": "hola", "tuned": "wena po"} and only["judgments"] == []
    verdict = {"id": "c1", "pair": "tuned vs base", "first_as_a": "A", "first_as_b": "C", "outcome": "tie"}
    judgments.write_text(json.dumps({**verdict, "rating": {"base": 3.0, "tuned": None}}) + "\n")
    (judged,) = generation_cases(generations, judgments)["cases"][0]["judgments"]
    assert judged["orders"] == [{"shown_first": "tuned", "picked": "tuned"}, {"shown_first": "base", "picked": "tie"}]
    assert judged["outcome"] == "tie" and judged["rating"] == {"base": 3.0, "tuned": None}
    judgments.write_text(json.dumps({**verdict, "first_as_a": None, "first_as_b": "A", "outcome": "base"}) + "\n")
    (judged,) = generation_cases(generations, judgments)["cases"][0]["judgments"]
    assert judged["orders"][0]["picked"] is None and judged["orders"][1]["picked"] == "base"
    assert judged["outcome"] == "loss"


def test_the_blind_page_asks_which_reply_is_real_one_click_at_a_time_and_keeps_no_text(
    evaluated, server, browser, tmp_path, monkeypatch
):
    from habla.apps import blind

    answers = tmp_path / "answers.jsonl"
    monkeypatch.setattr(habla.paths, "BLIND_ANSWERS", answers)
    _, url = server()
    cases = [json.loads(line) for line in (evaluated / "metrics/generations.jsonl").read_text().splitlines()]
    references = {case["reference"].strip() for case in cases}
    browser.get(url + "/blind")
    clicked, known = [], []
    for answered in range(1, 7):
        wait(browser, lambda d: d.find_elements("css selector", "#choice-A:enabled"))
        shown = [browser.find_element("css selector", f"#choice-{side} p").text for side in "AB"]
        real = "A" if shown[0] in references else "B"
        # a tiny model's reply can equal a held-out one: then only the server knows which side is real
        known.append(real if (shown[0] in references) != (shown[1] in references) else None)
        side = real if answered % 3 else "AB"[real == "A"]  # right twice, then wrong once
        clicked.append(side)
        if answered == 6:
            browser.find_element("tag name", "body").send_keys(side.lower())  # the keyboard works too
        else:
            browser.find_element("id", f"choice-{side}").click()
        wait(browser, lambda d, n=answered: d.find_element("id", "answered").get_attribute("textContent") == str(n))
    stored = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [row["choice"] for row in stored] == clicked, "each click stored as given, in order"
    assert [row["real"] for row, real in zip(stored, known) if real] == [real for real in known if real]
    assert sum(real is not None for real in known) >= 4, "most pairs must be told apart by text for this to mean much"
    assert not any(len(text) > 3 and text in answers.read_text() for text in references)
    browser.find_element("css selector", "details summary").click()
    rows = [row.text for row in browser.find_elements("css selector", "#summary tr")]
    assert len(rows) == len({row["model"] for row in stored})
    assert all(row.split()[0] in ("base", "tuned") for row in rows)
    shoot(browser, "blind.png")
    report = blind.blind_report(stored)
    assert sum(model["answers"] for model in report["models"].values()) == 6


def test_pages_load_nothing_from_elsewhere_and_config_cannot_break_out_of_its_script():
    for name in ("chat.html", "generations.html", "blind.html"):
        html = page(name, {"separator": "</script><script>alert(1)</script>"}).decode()
        assert "</script><script>alert(1)" not in html
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), f"{name} loads something remote"
        assert "@import" not in html and "url(" not in html


def test_held_out_conversations_are_given_only_to_clients_on_this_machine(server, monkeypatch):
    assert is_local("127.0.0.1") and is_local("::1") and is_local("::ffff:127.0.0.1")
    assert not any(is_local(a) for a in ("192.168.1.20", "10.0.0.1", "::ffff:8.8.8.8", "localhost.evil", ""))
    _, url = server()
    with urllib.request.urlopen(url + "/") as response:
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    with urllib.request.urlopen(url + "/v1/habla/generations") as response:
        assert response.status == 200
    with urllib.request.urlopen(url + "/v1/habla/blind") as response:
        assert response.status == 200
    monkeypatch.setattr(habla.apps.serve, "is_local", lambda host: False)
    for request in (
        url + "/v1/habla/generations",
        url + "/v1/habla/blind",
        urllib.request.Request(url + "/v1/habla/blind", data=b'{"token": "x", "choice": "A"}', method="POST"),
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 403


def test_the_blind_api_refuses_a_stale_token_a_wrong_letter_and_a_large_body(server, tmp_path, monkeypatch):
    monkeypatch.setattr(habla.paths, "BLIND_ANSWERS", tmp_path / "answers.jsonl")
    _, url = server()

    def post(data: bytes) -> int:
        request = urllib.request.Request(url + "/v1/habla/blind", data=data, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        return refused.value.code

    assert post(b'{"token": "never-shown", "choice": "A"}') == 409
    assert post(b'{"token": "never-shown", "choice": "C"}') == 400
    assert post(b"[1, 2]") == 400 and post(b"not json") == 400
    assert post(b'{"token": "' + b"x" * 2000 + b'", "choice": "A"}') == 413
    assert not (tmp_path / "answers.jsonl").exists()
