"""Shared test setup: offline, quiet, and helpers that build realistic inputs."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # copies of ../shared/fixtures, with their licences


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run a stage in an empty working folder with the repository's params.yaml and prompts."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    monkeypatch.chdir(tmp_path)
    return tmp_path


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


def update_params(root: Path, section: str, **values) -> None:
    """Change some keys of one section of `root/params.yaml`, as `dvc exp run -S section.key=value` would."""
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


def make_tiny_project(root: Path, overrides: dict | None = None) -> None:
    """Small splits and a builtin base already built, in `root` (the current folder)."""
    from habla.io import write_jsonl
    from stages import base

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for section in {**SMALL, **(overrides or {})}:
        params[section].update({**SMALL.get(section, {}), **(overrides or {}).get(section, {})})
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    for name, count, seed in (("train", 48, 1), ("val", 8, 2), ("test", 8, 3)):
        write_jsonl(Path("data/splits") / f"{name}.jsonl", conversations(count, seed))
    write_jsonl(Path("data/splits/documents/train.jsonl"), [{"id": "d0", "text": " ".join(REPLIES * 3)}])
    base.main()


SCREENSHOTS = Path(os.environ.get("HABLA_SCREENSHOTS", REPO / "build" / "screenshots"))


def chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver", path=f"{os.environ.get('PATH', '')}:/usr/bin:/usr/lib/chromium")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    """Headless chromium driven by Selenium: pages are tested as a user's browser runs them, JS and all."""
    found = chromium()
    if not found:
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/install_test_tools.sh installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=430,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    yield driver
    driver.quit()


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


def serve_on_localhost(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """A threaded server on a free local port, and its OpenAI-style base URL (`…/v1`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
