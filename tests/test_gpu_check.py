"""`make gpu-check` (benchmarks/gpu.py) on CPU with tiny dimensions: every row and branch it will run on a GPU is
reached here, so a broken import or argument costs no GPU minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu
from tests.helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu_check.json"
    table = out.with_name("BENCHMARKS.md")
    table.write_text("# Benchmarks\n\nOther tables stay.\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--tiny", "--out", str(out), "--table", str(table)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8")), table.read_text(encoding="utf-8"), done.stderr


def test_the_real_model_path_runs_every_stage_with_its_time_and_speed(tiny_run):
    result, _, _ = tiny_run
    assert [row["stage"] for row in result["end_to_end"]] == list(gpu.END_TO_END_STAGES)
    assert all("error" not in row and row["seconds"] > 0 for row in result["end_to_end"])
    speeds = {row["stage"]: row["tokens_per_second"] for row in result["end_to_end"]}
    assert all(speeds[stage] and speeds[stage] > 0 for stage in ("base", "train", "perplexity", "generate"))


def test_every_training_row_runs_or_resolves_its_gpu_branch_and_says_what_it_lacks(tiny_run):
    result, _, stderr = tiny_run
    rows = {row["name"]: row for row in result["training"]}
    assert list(rows) == [row["name"] for row in gpu.ROWS]
    assert not [row for row in rows.values() if "error" in row], "a row that fails on CPU fails on the GPU too"
    ran = [row for row in rows.values() if "tokens_per_second" in row]
    assert len(ran) >= 7 and all(row["tokens_per_second"] > 0 and row["peak_memory_mib"] > 0 for row in ran)
    skipped = [row for row in rows.values() if "skipped" in row]
    assert all(row["skipped"].startswith("needs ") and row["resolved"] for row in skipped)
    if not gpu.cuda_available():
        gpu_only = {row["name"] for row in gpu.ROWS if "cuda" in row.get("requires", [])}
        assert {row["name"] for row in skipped} == gpu_only
        qlora = rows["Qwen2.5-1.5B shape: habla, QLoRA 4-bit, packing"]
        assert "padding-free False" in qlora["resolved"]  # its settings built and resolved as on a GPU
    assert "missing here:" in stderr or "every wheel" in stderr  # the one line about wheels


def test_the_step_profile_splits_the_time_by_what_it_does(tiny_run):
    result, _, _ = tiny_run
    split = result["profile"]["split"]
    parts = {group: share for group, share in split.items() if group != "fused head, whole"}
    assert sum(parts.values()) == pytest.approx(1.0, abs=0.01)
    named = {group: share for group, share in parts.items() if group != "everything else"}
    # a 64-wide model's step is mostly dispatch ("everything else", ~0.6 here); of what the profile names,
    # the matrix products must lead, as they do at every size
    assert max(named, key=named.get) == "matrix products" and named["matrix products"] > 0.1
    assert "optimizer" in parts


def test_the_table_replaces_only_its_own_block(tiny_run, tmp_path):
    _, table, _ = tiny_run
    assert table.startswith("# Benchmarks\n\nOther tables stay.\n")
    assert table.count(gpu.TABLE_START) == 1 and "| base |" in table
    again = tmp_path / "B.md"
    again.write_text(table + "\nAfter the table.\n", encoding="utf-8")
    gpu.write_table([gpu.TABLE_START, "new figures", gpu.TABLE_END], again)
    text = again.read_text(encoding="utf-8")
    assert "new figures" in text and "| base |" not in text and text.endswith("After the table.\n")


def test_the_wheels_line_names_what_a_row_needs():
    assert gpu.missing(["cuda"], cuda=False) == ["a CUDA GPU"] and gpu.missing(["cuda"], cuda=True) == []
    line = gpu.wheels_line(cuda=True)
    assert line.startswith("missing here:") or line == "every wheel the GPU rows use is installed"


def test_a_machine_without_the_stack_is_told_in_one_line_what_to_carry(monkeypatch, capsys):
    """The GPU image has torch but not TRL, polars, datasets, gguf, dvclive or SmolLM2's GGUF (docs/gpu.md)."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("trl", "polars") else real_find_spec(name, *a)
    )
    with pytest.raises(SystemExit) as stopped:
        gpu.main(["--tiny"])
    message = str(stopped.value)
    assert message.startswith("gpu-check: cannot run here, missing trl, polars") and "\n" not in message
    absent, differ = gpu.environment_problems()
    assert absent == ["trl", "polars"]
    assert all("pinned" in item or item.startswith("Python") for item in differ)
