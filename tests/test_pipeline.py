"""End to end: `dvc repro` on a small sample in a fresh git repository, then caching and experiments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

FAST_PARAMS = {
    "base": {"max_steps": 12, "batch_size": 4, "hidden_size": 64, "layers": 2, "heads": 2, "vocab_size": 512},
    "train": {"max_steps": 6, "eval_steps": 3, "batch_size": 4, "max_length": 128},
    "split": {"min_test": 2},
    "evaluate": {"max_prompts": 3, "bootstrap": 50, "batch_size": 8, "sampling": {"max_new_tokens": 6}},
}


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name in ("stages", "configs", "prompts"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")), FAST_PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    raw = root / "data" / "raw"
    (raw / "whatsapp").mkdir(parents=True)
    (raw / "transcripts").mkdir()
    chat = (REPO / "data/raw/whatsapp/Chat de WhatsApp con Cami.txt").read_text(encoding="utf-8").splitlines()[:900]
    (raw / "whatsapp" / "Chat de WhatsApp con Cami.txt").write_text("\n".join(chat) + "\n", encoding="utf-8")
    shutil.copy(REPO / "data/raw/transcripts/rutina-vina.txt", raw / "transcripts" / "rutina-vina.txt")
    (root / ".gitignore").write_text("/models/checkpoints/\n__pycache__/\n", encoding="utf-8")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path_factory.mktemp("remote"))], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "base"], root)
    return root


def test_repro_runs_every_stage_and_writes_the_contracted_outputs(project):
    output = run(["dvc", "repro"], project)
    for stage in ("clean", "group", "split", "base", "train", "perplexity", "judge", "reference"):
        assert f"Running stage '{stage}'" in output
    for path in ("data/cleaned/messages.parquet", "data/cleaned/rejected.parquet", "data/grouped/conversations.jsonl",
                 "data/grouped/documents.jsonl", "data/splits/test.jsonl", "models/base/model.safetensors",
                 "models/adapter/adapter_model.safetensors", "metrics/train/metrics.json", "metrics/generations.jsonl"):
        assert (project / path).exists(), path
    perplexity = json.loads((project / "metrics/perplexity.json").read_text())
    assert perplexity["base"]["tokens"] == perplexity["tuned"]["tokens"] > 0
    assert perplexity["tuned"]["perplexity"] > 1
    judge = json.loads((project / "metrics/judge.json").read_text())
    assert judge["wins"] + judge["ties"] + judge["losses"] == judge["n"] > 0
    assert "metrics:" not in (project / "dvc.yaml").read_text().split("stages:")[0], "dvclive must not rewrite dvc.yaml"
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "run"], project)


def test_second_repro_runs_nothing(project):
    output = run(["dvc", "repro"], project)
    assert "Running stage" not in output
    assert "up to date" in run(["dvc", "status"], project)


def digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_push_then_fresh_clone_pull_is_up_to_date(project, tmp_path):
    run(["dvc", "push"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    for path in ("data/cleaned/messages.parquet", "data/splits/train.jsonl", "models/base/model.safetensors",
                 "models/adapter/adapter_model.safetensors"):
        assert digest(clone / path) == digest(project / path), path
    assert "up to date" in run(["dvc", "status"], clone)
    assert "Running stage" not in run(["dvc", "repro"], clone)


def test_data_stages_give_byte_identical_outputs_when_rerun(project):
    before = {p: digest(project / p) for p in ("data/cleaned/messages.parquet", "data/cleaned/rejected.parquet",
                                              "data/grouped/conversations.jsonl", "data/splits/train.jsonl")}
    run(["dvc", "repro", "--force", "--single-item", "clean"], project)
    run(["dvc", "repro", "--force", "--single-item", "group"], project)
    run(["dvc", "repro", "--force", "--single-item", "split"], project)
    assert {p: digest(project / p) for p in before} == before
    assert "up to date" in run(["dvc", "status"], project)


def test_experiments_rerun_training_and_after_only_and_compare(project):
    output = run(["dvc", "exp", "run", "-n", "rank4", "-S", "train.lora.r=4"], project)
    assert "Running stage 'train'" in output and "Running stage 'perplexity'" in output
    for stage in ("clean", "group", "split", "base"):
        assert f"Running stage '{stage}'" not in output
    run(["dvc", "exp", "run", "-n", "slow-lr", "-S", "train.learning_rate=0.0005"], project)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    experiments = {exp["name"]: exp for row in shown for exp in row.get("experiments") or [] for exp in exp["revs"]}
    assert {"rank4", "slow-lr"} <= set(experiments)
    for name, (key, value) in {"rank4": ("r", 4), "slow-lr": ("learning_rate", 0.0005)}.items():
        data = experiments[name]["data"]
        params = data["params"]["params.yaml"]["data"]["train"]
        assert params[key] == value if key != "r" else params["lora"]["r"] == value
        perplexity = data["metrics"]["metrics/perplexity.json"]["data"]
        assert perplexity["tuned"]["perplexity"] > 1
