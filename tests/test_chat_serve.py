"""`habla chat` and `habla serve` on a small trained persona: one-shot, interactive, and the OpenAI API."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from habla.apps.chat import Session, bubbles, interactive
from habla.apps.serve import Engine, make_server
from habla.params import load_params
from stages import train
from tests.conftest import make_tiny_project

pytestmark = pytest.mark.slow

GREEDY = ["--temperature", "0", "--max-new-tokens", "8"]
# Enough training that base and fine-tuned replies differ and say something.
TRAINED = {
    "builtin": {"max_steps": 60, "hidden_size": 64, "layers": 2, "learning_rate": 0.01},
    "train": {"max_steps": 30, "eval_steps": 30, "learning_rate": 0.01},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("persona")
    previous = Path.cwd()
    os.chdir(root)
    try:
        make_tiny_project(root, TRAINED)
        train.main()
        yield root
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def loaded(project):
    from habla.model.loading import load_tuned

    os.chdir(project)
    return load_tuned()


def greedy_params(**serve):
    params = load_params()
    sampling = dataclasses.replace(params.evaluate.sampling, temperature=0.0, max_new_tokens=8)
    return dataclasses.replace(
        params,
        evaluate=dataclasses.replace(params.evaluate, sampling=sampling),
        serve=dataclasses.replace(params.serve, port=0, **serve),
    )


def habla(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HABLA_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "habla.apps.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def in_process_reply(loaded, text: str, tuned: bool = True) -> str:
    model, tokenizer = loaded
    params = greedy_params()
    session = Session(model, tokenizer, params, params.evaluate.sampling, tuned=tuned)
    return "".join(session.reply(text))


def test_one_shot_prints_the_same_reply_as_the_model_gives_in_process(project, loaded):
    done = habla(["chat", "--prompt", "¿Cómo estai?", *GREEDY], project)
    assert done.returncode == 0, done.stderr
    assert done.stdout == in_process_reply(loaded, "¿Cómo estai?") + "\n"
    base = habla(["chat", "--prompt", "¿Cómo estai?", "--base-only", *GREEDY], project)
    assert base.stdout == in_process_reply(loaded, "¿Cómo estai?", tuned=False) + "\n"
    assert base.stdout != done.stdout


def test_interactive_process_switches_models_resets_and_exits(project):
    done = habla(["chat", *GREEDY], project, stdin="hola\n/base\n¿Vamos?\n/reset\n/nada\n/exit\nno llega\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("Chat con Nico (tuned).")
    assert out.count("Nico> ") == 2 and "(modelo: base)" in out and "(conversación nueva)" in out
    assert "/reset empieza de nuevo" in out.split("(conversación nueva)")[1]


def test_session_keeps_history_with_system_prompt_and_reset_clears_it(loaded):
    model, tokenizer = loaded
    params = greedy_params()
    params = dataclasses.replace(params, persona=dataclasses.replace(params.persona, system_prompt="Eres Nico."))
    session = Session(model, tokenizer, params, params.evaluate.sampling)
    first = "".join(session.reply("hola"))
    assert session.history == [{"role": "user", "content": "hola"}, {"role": "assistant", "content": first.strip()}]
    assert session.messages("¿y?")[0] == {"role": "system", "content": "Eres Nico."}
    assert len(session.messages("¿y?")) == 4
    session.reset()
    assert session.history == []


def test_a_learned_separator_token_becomes_a_new_bubble():
    pieces = ["ya po", "<|msg_sep|>", "nos vemos"]
    assert "".join(bubbles(iter(pieces), "<|msg_sep|>", "    ")) == "ya po\n    nos vemos"
    assert "".join(bubbles(iter(pieces), "\n", "    ")) == "ya po<|msg_sep|>nos vemos"


def test_interactive_loop_handles_end_of_input(loaded):
    import io

    model, tokenizer = loaded
    params = greedy_params()
    lines = iter(["hola"])

    def read(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    interactive(Session(model, tokenizer, params, params.evaluate.sampling), "Nico", out=out, read=read)
    assert out.getvalue().count("Nico> ") == 1


@pytest.fixture
def server(loaded):
    servers = []

    def start(**serve):
        model, tokenizer = loaded
        params = greedy_params(**serve)
        engine = Engine(model, tokenizer, params)
        instance = make_server(engine, params.serve)
        threading.Thread(target=instance.serve_forever, daemon=True).start()
        servers.append(instance)
        return engine, f"http://127.0.0.1:{instance.server_address[1]}"

    yield start
    for instance in servers:
        instance.shutdown()
        instance.server_close()


def client(url: str, key: str = "none"):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_openai_client_lists_models_and_gets_the_models_reply(server, loaded):
    _, url = server()
    api = client(url)
    assert sorted(m.id for m in api.models.list().data) == ["base", "tuned"]
    messages = [{"role": "user", "content": "¿Cómo estai?"}]
    reply = api.chat.completions.create(model="tuned", messages=messages, temperature=0, max_tokens=8)
    assert reply.choices[0].message.content == in_process_reply(loaded, "¿Cómo estai?")
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0
    base = api.chat.completions.create(model="base", messages=messages, temperature=0, max_tokens=8)
    assert base.choices[0].message.content == in_process_reply(loaded, "¿Cómo estai?", tuned=False)


def test_streaming_gives_the_same_text_and_stop_strings_cut_it(server):
    _, url = server()
    api = client(url)
    messages = [{"role": "user", "content": "¿Vamos al estadio?"}]
    whole = (
        api.chat.completions.create(model="tuned", messages=messages, temperature=0, max_tokens=16)
        .choices[0]
        .message.content
    )
    chunks = list(
        api.chat.completions.create(model="tuned", messages=messages, temperature=0, max_tokens=16, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert len(whole) >= 3, "the tiny model must say something for the stop test to mean anything"
    stop = whole[2:4]
    cut = api.chat.completions.create(model="tuned", messages=messages, temperature=0, max_tokens=16, stop=[stop])
    assert cut.choices[0].message.content == whole[: whole.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = api.chat.completions.create(
        model="tuned", messages=messages, temperature=0, max_tokens=16, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == whole[: whole.find(stop)]


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request(
        "POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_malformed_oversized_and_invalid_requests_get_openai_errors(server):
    import openai

    _, url = server(max_body_bytes=2000)
    status, body = post(url, b"{not json")
    assert (
        status == 400
        and body["error"]["type"] == "invalid_request_error"
        and "not valid JSON" in body["error"]["message"]
    )
    status, body = post(
        url, json.dumps({"model": "tuned", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    )
    assert status == 413 and "limit is 2000" in body["error"]["message"]
    status, body = post(
        url, json.dumps({"model": "tuned", "messages": [{"role": "robot", "content": "hola"}]}).encode()
    )
    assert status == 400 and body["error"]["param"] == "messages.[0]"
    api = client(url)
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model="tuned", messages=[{"role": "user", "content": "hola"}], temperature=5)
    assert "temperature" in str(err.value)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        api.chat.completions.create(model="tuned", messages=[{"role": "user", "content": "hola"}], max_tokens=100000)
    with pytest.raises(openai.NotFoundError, match="Available: tuned, base"):
        api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hola"}])
    assert api.chat.completions.create(
        model="tuned", messages=[{"role": "user", "content": "hola"}], max_tokens=2
    ).choices


def test_api_key_is_required_when_configured(server, monkeypatch):
    import openai

    monkeypatch.setenv("HABLA_TEST_KEY", "s3cret")
    _, url = server(api_key_env="HABLA_TEST_KEY")
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").models.list()
    assert len(client(url, "s3cret").models.list().data) == 2


def test_concurrent_requests_queue_on_one_model_and_overflow_gets_503(server):
    import openai

    engine, url = server(queue_limit=3)
    messages = [{"role": "user", "content": "¿Qué hiciste ayer?"}]
    results: list = []

    def ask():
        results.append(
            client(url).chat.completions.create(model="tuned", messages=messages, temperature=0, max_tokens=8)
        )

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len({r.choices[0].message.content for r in results}) == 1

    with engine.lock:
        waiting = [threading.Thread(target=ask) for _ in range(4)]
        for thread in waiting:
            thread.start()
        deadline = time.time() + 30
        while engine.waiting._value > 0 and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(openai.InternalServerError, match="busy"):
            client(url).chat.completions.create(model="tuned", messages=messages, max_tokens=2)
    for thread in waiting:
        thread.join()
    assert len(results) == 8


def test_judge_openai_backend_talks_to_habla_serve(server, tmp_path):
    from habla.model.judge_backends import OpenAIJudge
    from habla.params import Judge

    engine, url = server()
    settings = Judge(backend="openai", model="base", base_url=f"{url}/v1", max_retries=0, timeout_s=60)
    judge = OpenAIJudge(settings, tmp_path / "cache.jsonl")
    answers = judge.choose(["¿Cuál suena más a Nico? [[A]] o [[B]]", "Responde A, B o C"])
    assert judge.calls == 2 and all(a in ("A", "B", "C", None) for a in answers)
    assert judge.failures["no_answer"] == 0  # both calls got a chat completion back (a tiny model's may be nonsense)
    assert len((tmp_path / "cache.jsonl").read_text(encoding="utf-8").splitlines()) == 2
