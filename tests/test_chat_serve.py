"""`habla chat` and `habla serve` on a small trained persona: one-shot, interactive, and the OpenAI API."""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from habla.apps.chat import Session, bubbles, interactive
from tests.helpers import client, greedy_params

pytestmark = pytest.mark.slow

GREEDY = ["--temperature", "0", "--max-new-tokens", "8"]


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


def test_one_shot_prints_the_same_reply_as_the_model_gives_in_process(trained_project, loaded):
    done = habla(["chat", "--prompt", "¿Cómo estai?", *GREEDY], trained_project)
    assert done.returncode == 0, done.stderr
    assert done.stdout == in_process_reply(loaded, "¿Cómo estai?") + "\n"
    base = habla(["chat", "--prompt", "¿Cómo estai?", "--base-only", *GREEDY], trained_project)
    assert base.stdout == in_process_reply(loaded, "¿Cómo estai?", tuned=False) + "\n"
    assert base.stdout != done.stdout


def test_interactive_process_switches_models_resets_and_exits(trained_project):
    done = habla(["chat", *GREEDY], trained_project, stdin="hola\n/base\n¿Vamos?\n/reset\n/nada\n/exit\nno llega\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("Chat con Nico (tuned).")
    assert out.count("Nico> ") == 1 and "(modelo: base)" in out and "(conversación nueva)" in out
    assert out.split("(modelo: base)")[1].count("base> ") == 1, "the base model's reply is labelled as the base's"
    assert "/reset empieza de nuevo" in out.split("(conversación nueva)")[1]


def test_session_keeps_history_with_system_prompt_and_reset_clears_it(loaded):
    model, tokenizer = loaded
    params = greedy_params()
    params = dataclasses.replace(params, persona=dataclasses.replace(params.persona, system_prompt="Eres Nico."))
    session = Session(model, tokenizer, params, params.evaluate.sampling)
    first = "".join(session.reply("hola"))
    assert session.history == [("", "hola"), ("persona", first.strip())]
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


def test_ctrl_c_stops_a_reply_and_at_the_prompt_ends_the_chat(loaded):
    import io

    model, tokenizer = loaded
    params = greedy_params()
    session = Session(model, tokenizer, params, params.evaluate.sampling)
    lines = iter(["hola", "¿y?"])

    def read(prompt):
        for line in lines:
            return line
        raise KeyboardInterrupt

    class Terminal(io.StringIO):
        """Ctrl-C arrives while the first reply is being written."""

        pieces = 0

        def write(self, text):
            if self.getvalue().count("Nico> ") == 1 and text != "Nico> " and "(interrumpido)" not in self.getvalue():
                self.pieces += 1
                if self.pieces == 1:
                    raise KeyboardInterrupt
            return super().write(text)

    threads_before = threading.active_count()
    out = Terminal()
    interactive(session, "Nico", out=out, read=read)
    assert "Nico>  (interrumpido)\n" in out.getvalue()
    assert [text for _, text in session.history][0] == "¿y?", "an interrupted exchange is not kept"
    assert threading.active_count() == threads_before, "the interrupted generation must have stopped"


def test_ctrl_c_at_the_prompt_of_the_real_command_exits_cleanly(trained_project):
    import signal

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HABLA_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "habla.apps.cli", "chat", *GREEDY],
        cwd=trained_project,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    seen = b""
    while b"t\xc3\xba> " not in seen:
        byte = process.stdout.read(1)
        assert byte, process.stderr.read().decode()
        seen += byte
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 0 and b"Traceback" not in errors, errors.decode()


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


def test_a_network_address_without_a_key_is_refused_unless_the_user_means_it(monkeypatch):
    from habla.apps.serve import api_key_for, loopback_only
    from habla.errors import UserError
    from habla.params import Serve

    assert all(loopback_only(host) for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(loopback_only(host) for host in ("0.0.0.0", "::", "192.168.1.20", "no-such-host.invalid"))
    with pytest.raises(UserError, match="--network-without-key"):
        api_key_for(Serve(host="0.0.0.0"))
    assert api_key_for(Serve(host="0.0.0.0"), network_without_key=True) is None
    monkeypatch.setenv("HABLA_TEST_KEY", "s3cret")
    assert api_key_for(Serve(host="0.0.0.0", api_key_env="HABLA_TEST_KEY")) == "s3cret"
    assert api_key_for(Serve(host="127.0.0.1")) is None


def test_habla_serve_on_every_address_without_a_key_stops_before_loading_the_model(in_tmp):
    """As a new user would try it: one sentence and exit status 2, in seconds (no model exists in this folder)."""
    result = subprocess.run(
        [sys.executable, "-m", "habla.apps.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 2
    assert "0.0.0.0 reaches beyond this machine and no API key is set" in result.stderr
    assert "Traceback" not in result.stderr


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


def raw_exchange(url: str, data: bytes, wait: float = 30.0) -> bytes:
    """Send raw bytes on one connection and read until the server closes it (or `wait` passes)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=wait) as connection:
        try:
            connection.sendall(data)
        except ConnectionError:  # refused before the whole body was sent: the answer may still be there
            pass
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionError):
            pass
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_lying_missing_and_oversized_lengths_are_refused_before_reading(server):
    _, url = server(max_body_bytes=2000, read_timeout_s=2)
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    huge = b"x" * 3_000_000
    assert status_of(raw_exchange(url, f"{head}\r\n".encode())) == 411
    assert status_of(raw_exchange(url, f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())) == 411
    for length in ("-1", "abc", "1e3", "²"):
        response = raw_exchange(url, f"{head}Content-Length: {length}\r\n\r\n".encode() + huge[:5000])
        assert status_of(response) == 400, length  # h11 refuses a malformed length before the application runs
    started = time.monotonic()
    response = raw_exchange(url, f"{head}Content-Length: {len(huge)}\r\n\r\n".encode() + huge[:1000])
    assert status_of(response) == 413 and time.monotonic() - started < 2, "answered without reading the body"


def test_half_sent_heads_and_stalled_bodies_are_let_go_after_the_read_timeout(server):
    _, url = server(read_timeout_s=1)
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    started = time.monotonic()
    assert raw_exchange(url, head.encode(), wait=20) == b"", "a head that never ends: hung up, nothing to answer"
    assert time.monotonic() - started < 10, "the server must hang up on a silent client"
    started = time.monotonic()
    stalled = raw_exchange(url, f'{head}Content-Length: 500\r\n\r\n{{"model":'.encode(), wait=20)
    assert status_of(stalled) == 408 and b"did not arrive in time" in stalled
    assert time.monotonic() - started < 10, "a body that stops coming: 408, and the connection closed"


def test_a_prompt_over_the_context_is_a_400_or_loses_its_oldest_turns(server, loaded):
    _, url = server(max_body_bytes=2_000_000)
    window = loaded[0].config.max_position_embeddings
    long = [{"role": "user", "content": "wena po cabros " * 4000}]
    status, body = post(url, json.dumps({"model": "tuned", "messages": long}).encode())
    assert status == 400 and f"context is {window} tokens" in body["error"]["message"]
    assert "serve.truncate: oldest" in body["error"]["message"]

    _, url = server(max_body_bytes=2_000_000, truncate="oldest")
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"mensaje {i} de harta conversa"} for i in range(81)
    ]
    status, body = post(url, json.dumps({"model": "tuned", "messages": turns, "max_tokens": 4}).encode())
    assert status == 200 and body["usage"]["truncated_messages"] > 0
    assert body["usage"]["prompt_tokens"] < window
    status, body = post(url, json.dumps({"model": "tuned", "messages": long}).encode())
    assert status == 400, "a last message longer than the context cannot be saved by dropping older turns"


def test_a_client_leaving_mid_stream_stops_the_generation_quietly(server, caplog):
    engine, url = server(max_tokens_limit=512)
    body = json.dumps(
        {
            "model": "tuned",
            "messages": [{"role": "user", "content": "¿Vamos?"}],
            "stream": True,
            "max_tokens": 400,
            "temperature": 1.0,
        }
    ).encode()
    request = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    import socket

    host, port = url.removeprefix("http://").split(":")
    with caplog.at_level("INFO", logger="serve"):
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(request)
            received = b""
            while b"data: " not in received:
                received += connection.recv(4096)
        deadline = time.monotonic() + 30
        while engine.lock.locked() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not engine.lock.locked(), "the model must be free again"
        time.sleep(0.5)
    serve_records = [r for r in caplog.records if r.name == "serve"]
    assert not [r for r in serve_records if r.levelno >= logging.WARNING], [r.getMessage() for r in serve_records]
    assert any("went away" in r.getMessage() for r in serve_records)


def test_after_an_abuse_round_the_server_answers_as_before_with_its_memory_back(server):
    """Slow senders, lying lengths, oversized bodies, disconnects and more clients than the queue: bounded in count
    and time, localhost only. Then a normal request is answered as fast as before and memory is near its start."""
    engine, url = server(max_body_bytes=100_000, read_timeout_s=1, queue_limit=2)
    ask = {"model": "tuned", "messages": [{"role": "user", "content": "¿Qué hiciste ayer?"}], "max_tokens": 8}
    started = time.monotonic()
    assert post(url, json.dumps(ask).encode())[0] == 200
    usual = time.monotonic() - started
    memory_before = resident_mib()
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    attacks = [
        head.encode(),
        f"{head}Content-Length: -1\r\n\r\n".encode() + b"x" * 2_000_000,
        f"{head}Content-Length: 99999999\r\n\r\n".encode() + b"x" * 200_000,
        f"{head}Content-Length: 5000\r\n\r\n".encode() + b"{" * 100,
        f"{head}Content-Length: abc\r\n\r\n".encode(),
    ] * 4
    statuses: list[int] = []

    def attack(data: bytes) -> None:
        statuses.append(status_of(raw_exchange(url, data, wait=20)))

    def client_request() -> None:
        statuses.append(post(url, json.dumps({**ask, "max_tokens": 32}).encode())[0])

    threads = [threading.Thread(target=attack, args=(data,)) for data in attacks]
    threads += [threading.Thread(target=client_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert 503 in statuses and 200 in statuses and {400, 413} <= set(statuses)
    assert 500 not in statuses
    started = time.monotonic()
    assert post(url, json.dumps(ask).encode())[0] == 200
    assert time.monotonic() - started < max(5 * usual, 2.0)
    assert resident_mib() - memory_before < 100


def test_a_conversation_longer_than_the_context_loses_its_oldest_turns_only(loaded):
    from habla.model.generation import fit_to_context, prompt_length

    _, tokenizer = loaded
    window = 150
    system = [{"role": "system", "content": "Eres Nico."}]
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"mensaje {i} de una conversa larga"}
        for i in range(21)
    ]
    messages, length, dropped = fit_to_context(tokenizer, system + turns, window)
    assert messages == system + turns[dropped:] and length == prompt_length(tokenizer, messages) < window
    assert prompt_length(tokenizer, system + turns[dropped - 1 :]) >= window, "not one turn more than needed"
    short = system + turns[-3:]
    assert fit_to_context(tokenizer, short, window) == (short, prompt_length(tokenizer, short), 0)
    alone = [{"role": "user", "content": "palabra " * 200}]
    assert fit_to_context(tokenizer, alone, window)[1] >= window, "a last message too long alone stays too long"


def test_the_latency_benchmark_measures_concurrent_streams_against_the_real_server(server):
    from benchmarks.serve_latency import measure, table

    _, url = server()
    row = measure(url, clients=3, requests=2, max_tokens=4)
    assert row["requests"] == 6 and row["errors"] == 0
    assert 0 < row["first_token_p50_s"] <= row["first_token_p95_s"] and row["total_p50_s"] <= row["total_p95_s"]
    assert row["first_token_p50_s"] <= row["total_p50_s"] and row["requests_per_second"] > 0
    assert table([row])[2].startswith("| 3 | 6 |")
