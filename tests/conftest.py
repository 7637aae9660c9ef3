"""Fixtures shared by the suite: offline and quiet, an empty working folder, the tiny persona trained once per
session with its model loaded and served, and the browser. Helpers that are not fixtures are in `helpers.py`."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading

import pytest

from tests.helpers import PREFER, REPO, TRAINED, FakeEndpoint, chromium, greedy_params, make_tiny_project, serving

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run a stage in an empty working folder with the repository's params.yaml and prompts."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """The tiny persona with its SFT adapter, trained once per session (prompts and `prefer` settings included).
    Tests read it as it is; a test that changes it works on its own copy (see `test_prefer.py`)."""
    from stages import train

    root = tmp_path_factory.mktemp("persona")
    with contextlib.chdir(root):
        make_tiny_project(root, {**TRAINED, "prefer": PREFER})
        shutil.copytree(REPO / "prompts", root / "prompts")
        train.main()
    return root


@pytest.fixture(scope="module")
def loaded(trained_project):
    """The trained persona loaded (base + adapter), with the module's tests working in its project."""
    from habla.model.loading import load_tuned

    previous = os.getcwd()
    os.chdir(trained_project)
    yield load_tuned()
    os.chdir(previous)


@pytest.fixture
def server(loaded):
    """`server(personas=None, **serve_settings)` starts `habla serve` on the loaded persona on a free local port:
    (engine, url)."""
    from habla.apps.serve import Engine, make_server

    servers = []

    def start(personas: dict | None = None, own: dict | None = None, **serve):
        """`personas` (id → names): serve them as a speaker-conditioned model (`group.speakers: conditioned`);
        `own`: the personas' own adapters loaded on the model (id → name, `load_persona_adapters`)."""
        model, tokenizer = loaded
        params = greedy_params(**serve)
        if personas:
            group = dataclasses.replace(params.group, speakers="conditioned")
            params = dataclasses.replace(params, group=group, personas=personas)
        engine = Engine(model, tokenizer, params, own)
        instance = make_server(engine, params.serve)
        threading.Thread(target=instance.serve_forever, daemon=True).start()
        servers.append(instance)
        return engine, f"http://127.0.0.1:{instance.server_address[1]}"

    yield start
    for instance in servers:
        instance.shutdown()
        instance.server_close()


@pytest.fixture
def endpoint():
    """A fake OpenAI-compatible judge on localhost (`helpers.FakeEndpoint`), shut down after the test."""
    yield from serving(FakeEndpoint())


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
