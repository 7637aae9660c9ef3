"""Seed 1 on a real local model: `curate` and `judge` against llama.cpp's own OpenAI-compatible server
(`llama_cpp.server` from llama-cpp-python, serving SmolLM2-135M-Instruct's GGUF), as a new user would run them.

That server answers `response_format: json_schema` with a 500 and takes `json_object` with the schema, which then
holds even a 135M model to valid JSON: every answer must be accounted for, verdicts must parse in both orders,
and the cache must make a rerun free."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from habla.errors import UserError
from habla.io import read_json, read_jsonl, write_jsonl
from habla.model import gguf
from tests.helpers import update_params

pytestmark = pytest.mark.slow

ROUTINE = [
    "Buenas noches, buenas noches, qué lindo el público hoy.",
    "En el metro de Santiago a las ocho de la mañana no vai parado, vai archivado.",
    "Yo llegué a la pega con la cara de otro weón pegada en la espalda.",
    "Oigan, de verdad, gracias por venir un martes, que es el día más fome de la semana.",
    "Mi papá es tan tacaño que cuando se cayó el sistema en el banco dijo: menos mal, así no me cobran la mantención.",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    """llama.cpp's server on a free local port with SmolLM2's GGUF, stopped after the module."""
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]: run `make export-tools`")
    try:
        model = gguf.locate(gguf.SMOLLM2)
    except UserError:
        pytest.skip(f"needs {gguf.SMOLLM2_PACKAGE} (make test installs it)")
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_ctx", "2048", "--seed", "0", "--verbose", "False"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                break
        except OSError:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            time.sleep(1)
    yield url
    server.terminate()
    server.wait(timeout=30)


def test_curate_reads_verbatim_jokes_through_llama_cpp_s_server_and_a_rerun_is_free(in_tmp, llama_server):
    from stages import clean, curate

    raw = in_tmp / "data/raw/transcripts"
    raw.mkdir(parents=True)
    (raw / "rutina.txt").write_text("\n".join(ROUTINE) + "\n", encoding="utf-8")
    clean.main()
    settings = {"backend": "openai", "prompt_set": "jokes", "base_url": llama_server, "model": "smollm2"}
    update_params(in_tmp, "curate", **settings, max_tokens=256, chunk_chars=600, overlap_chars=200, timeout_s=120)
    update_params(in_tmp, "curate", min_score=0, field_bounds={"mind_states": [0, 100]})
    curate.main()
    report = read_json("metrics/curate.json")
    assert report["calls"] == report["chunks"] >= 1
    assert "no_answer" not in report["failed_by_reason"], "the server's refusal of json_schema is no failure"
    cache = read_jsonl("data/cache/curate.jsonl")
    assert any(entry["answer"] == "json_object" for entry in cache), "the form llama.cpp takes is remembered"
    assert report["proposed"] >= 1, "the constrained answers parse into proposals"
    assert report["proposed"] == report["kept"] + report["rejected"], "every proposal kept or rejected with a reason"
    document = "\n".join(ROUTINE)
    assert all(unit["text"] in document for unit in read_jsonl("data/curated/units.jsonl")), "verbatim or nothing"
    curate.main()
    assert read_json("metrics/curate.json")["calls"] == 0


def test_the_judge_gets_parseable_verdicts_in_both_orders_from_llama_cpp_s_server(in_tmp, llama_server):
    from stages import judge

    cases = [
        {
            "id": f"c{i}",
            "source": "whatsapp",
            "prompt": [{"role": "user", "content": f"¿Vamos al estadio el domingo {i}?"}],
            "reference": "ya po, de una",
            "base": "Claro, me encantaría acompañarte al estadio.",
            "tuned": "ya po, de una, nos juntamos a las ocho",
            "opponent": "Sí, vamos.",
        }
        for i in range(3)
    ]
    write_jsonl(judge.GENERATIONS, cases)
    endpoint = {"base_url": llama_server, "model": "smollm2", "timeout_s": 120, "max_retries": 0}
    update_params(in_tmp, "judge", backend="openai", **endpoint, opponent=endpoint)
    update_params(in_tmp, "evaluate", bootstrap=50)
    judge.main()
    report = read_json(judge.REPORT)
    assert report["failed_by_reason"].get("not_understood", 0) == 0, report["failed_by_reason"]
    assert report["n"] == 3 and report["opponent"]["tuned"]["n"] == 3
    assert all(r["n"] == 3 for r in report["rating"].values())
    verdicts = {(j["first_as_a"], j["first_as_b"]) for j in read_jsonl("metrics/judgments.jsonl")}
    assert all(a in "ABC" and b in "ABC" for a, b in verdicts)
    assert json.dumps(report).count("no_answer") == 0
