"""What tests share besides fixtures: realistic inputs, params edits as `dvc exp run -S` makes them, the tiny
trained project's settings, fake endpoints and the browser. Fixtures live in `conftest.py`."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # copies of ../shared/fixtures, with their licences


def merged(base: dict, override: dict) -> dict:
    """`base` with `override` merged in, nested sections key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def read_params(root: Path = Path(".")) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))


def write_params(root: Path, overrides: dict | None = None, base: dict | None = None) -> None:
    """`root/params.yaml`: the repository's (or `base`), with `overrides` merged in."""
    params = merged(base if base is not None else read_params(REPO), overrides or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def update_params(root: Path, section: str, **values) -> None:
    """Change some keys of one section of `root/params.yaml`, as `dvc exp run -S section.key=value` would."""
    write_params(root, {section: values}, read_params(root))


def set_param(dotted: str, value, root: Path = Path(".")) -> None:
    """One key of `root/params.yaml` (`train.lora.r`), as `dvc exp run -S train.lora.r=4` sets it."""
    *sections, key = dotted.split(".")
    override: dict = {key: value}
    for section in reversed(sections):
        override = {section: override}
    write_params(root, override, read_params(root))


@contextlib.contextmanager
def params_changed(root: Path, overrides: dict):
    """`root/params.yaml` with `overrides` within the block, as it was after (for a project shared by a module)."""
    original = (root / "params.yaml").read_text(encoding="utf-8")
    write_params(root, overrides, read_params(root))
    try:
        yield
    finally:
        (root / "params.yaml").write_text(original, encoding="utf-8")


def clean_report() -> dict:
    """metrics/clean.json with its files under their real names again (the report names them by folder and hash,
    see `report_name`), found from the `file` column of the stage's outputs."""
    import polars as pl

    from habla import paths
    from habla.cleaning import report_name
    from habla.io import read_json

    report = read_json(paths.report("clean"))
    files = pl.concat([pl.read_parquet(p, columns=["file"]) for p in (paths.MESSAGES, paths.REJECTED)])["file"]
    real = {report_name(name, False): name for name in files.unique()}
    report["files"] = {real.get(key, key): entry for key, entry in report["files"].items()}
    return report


def android(day: int, month: int, year: int, clock: str, author: str | None, text: str) -> str:
    """A Spanish Android export line, e.g. `3/3/23, 8:04 p. m. - Cami: hola`."""
    head = f"{day}/{month}/{year % 100:02d}, {clock} - "
    return head + (f"{author}: {text}" if author else text)


OPENERS = ["¿Cómo estai?", "¿Vamos al estadio?", "¿Qué hiciste ayer?", "¿Te tinca un completo?", "¿Viste el partido?"]
REPLIES = [
    "wena po, todo bacán, ¿y vo?",
    "ya po, de una, nos juntamos a las ocho",
    "nada po, puro carretear con los cabros",
    "obvio, con harta palta y mayo",
    "sí po, el Colo jugó como las weas",
    "filo, mañana vemos",
    "cachai que estoy pato",
]
SMALL = {
    "builtin": {
        "max_steps": 4,
        "batch_size": 4,
        "hidden_size": 32,
        "layers": 1,
        "heads": 2,
        "vocab_size": 300,
        "context": 64,
    },
    "train": {"max_steps": 6, "eval_steps": 2, "batch_size": 4, "max_length": 96},
    "evaluate": {"stride": 48, "bootstrap": 50},
}


# SmolLM2-135M-Instruct's own template, as its tokenizer_config.json ships it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Enough training that base and fine-tuned replies differ and say something (the shared trained project).
TRAINED = {
    "builtin": {"max_steps": 60, "hidden_size": 64, "layers": 2, "learning_rate": 0.01},
    "train": {"max_steps": 30, "eval_steps": 30, "learning_rate": 0.01},
}
PREFER = {"max_steps": 6, "batch_size": 4, "save_steps": 3, "max_pairs": 32, "max_length": 96, "learning_rate": 0.005}


def greedy_params(**serve):
    """The working folder's params with greedy, 8-token replies and `serve` settings changed (port 0: any free)."""
    import dataclasses

    from habla.params import load_params

    params = load_params()
    sampling = dataclasses.replace(params.evaluate.sampling, temperature=0.0, max_new_tokens=8)
    return dataclasses.replace(
        params,
        evaluate=dataclasses.replace(params.evaluate, sampling=sampling),
        serve=dataclasses.replace(params.serve, port=0, **serve),
    )


def client(url: str, key: str = "none"):
    """The official `openai` client on a local `habla serve`."""
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def conversations(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        messages = []
        for _ in range(rng.randint(1, 3)):
            messages += [
                {"role": "user", "content": rng.choice(OPENERS)},
                {"role": "assistant", "content": rng.choice(REPLIES)},
            ]
        rows.append(
            {
                "id": f"c{seed}-{index}",
                "source": "whatsapp",
                "chat": "Chat de WhatsApp con Cami.txt",
                "messages": messages,
            }
        )
    return rows


def make_tiny_project(root: Path, overrides: dict | None = None) -> None:
    """Small splits and a builtin base already built, in `root` (the current folder)."""
    from habla.io import write_jsonl
    from stages import base

    write_params(root, merged(SMALL, overrides or {}))
    for name, count, seed in (("train", 48, 1), ("val", 8, 2), ("test", 8, 3)):
        write_jsonl(Path("data/splits") / f"{name}.jsonl", conversations(count, seed))
    write_jsonl(Path("data/splits/documents/train.jsonl"), [{"id": "d0", "text": " ".join(REPLIES * 3)}])
    base.main()


SCREENSHOTS = Path(os.environ.get("HABLA_SCREENSHOTS", REPO / "build" / "screenshots"))


def chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver", path=f"{os.environ.get('PATH', '')}:/usr/bin:/usr/lib/chromium")
    return (browser, driver) if browser and driver else None


def shoot(driver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / name))


class FakeChatHandler(BaseHTTPRequestHandler):
    """Base of the tests' fake OpenAI-compatible endpoints: quiet, answering raw bytes or a chat completion."""

    def log_message(self, *args):
        pass

    def reply(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def complete(self, content: str, model: str = "fake", usage: dict | None = None) -> None:
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        body = {"id": "x", "object": "chat.completion", "created": 0, "model": model, "choices": [choice]}
        self.reply(200, json.dumps({**body, **({"usage": usage} if usage else {})}, ensure_ascii=False).encode())


def serving(fake):
    """Yield a fake endpoint (anything with a `.server`), then shut its server down: the body of its fixture."""
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def serve_on_localhost(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """A threaded server on a free local port, and its OpenAI-style base URL (`…/v1`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


class FakeEndpoint:
    """An OpenAI-compatible server on localhost whose behaviour is chosen per prompt by a marker word."""

    def __init__(self):
        self.calls = 0
        self.script = None  # prompt → answer, replacing the marker words
        outer = self

        class Handler(FakeChatHandler):
            def do_POST(self):  # noqa: N802
                outer.calls += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                assert body["temperature"] == 0
                if "ERROR" in prompt:
                    return self.reply(500, b'{"error": {"message": "boom"}}')
                if "GARBAGE" in prompt:
                    return self.reply(200, b"<html>not json</html>")
                if "SLOW" in prompt:
                    time.sleep(1.5)
                content = {"JSON": '{"veredicto": "B"}', "BRACKETS": "Prefiero la primera. [[A]]", "VAGUE": "depende"}
                answer = (
                    outer.script(prompt)
                    if outer.script
                    else next((v for k, v in content.items() if k in prompt), "[[C]]")
                )
                self.complete(answer, body["model"])

        self.server, self.url = serve_on_localhost(Handler)


def chat_messages(rows, chat: str = "whatsapp/chat.txt", start=None):
    """A chat as `clean` writes it, from rows of (minutes after `start`, author, text)."""
    import datetime

    import polars as pl

    start = start or datetime.datetime(2023, 3, 1, 10, 0)
    return pl.DataFrame(
        {
            "source": "whatsapp",
            "file": chat,
            "line": list(range(1, len(rows) + 1)),
            "chat": chat,
            "ts": [start + datetime.timedelta(minutes=m) for m, _, _ in rows],
            "author": [a for _, a, _ in rows],
            "text": [t for _, _, t in rows],
        }
    )


def silent_adapter(source: Path, destination: Path) -> None:
    """A copy of the LoRA adapter at `source` with its B matrices zeroed: loaded beside the others it speaks
    exactly as the base does, so a test can tell which adapter answered."""
    from safetensors.torch import load_file, save_file

    destination.mkdir(parents=True)
    weights = load_file(source / "adapter_model.safetensors")
    silenced = {name: t.zero_() if "lora_B" in name else t for name, t in weights.items()}
    save_file(silenced, destination / "adapter_model.safetensors")
    shutil.copy(source / "adapter_config.json", destination)
