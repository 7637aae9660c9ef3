"""Which checkpoint `train` and `prefer` resume: the fingerprint of a run, a finished run, stale checkpoints (fast,
no training)."""

from __future__ import annotations

import dataclasses

import pytest

from habla import paths
from habla.io import read_json, write_json
from habla.model.checkpoints import finished, prefer_fingerprint, resumable_in, train_fingerprint
from habla.params import load_params


@pytest.fixture
def run_inputs(in_tmp):
    for name in ("train", "val"):
        paths.split_file(name).parent.mkdir(parents=True, exist_ok=True)
        paths.split_file(name).write_text(f'{{"id": "{name}"}}\n', encoding="utf-8")
    write_json(paths.SOURCE_FILE, {"kind": "builtin-tiny", "location": "models/base"})
    return load_params()


def resumable_checkpoint(params) -> str | None:
    """What `train` resumes from, as the stage asks for it."""
    return resumable_in(paths.CHECKPOINTS, train_fingerprint(params), params.train.resume)


def checkpoint(step: int, max_steps: int) -> str:
    folder = paths.CHECKPOINTS / f"checkpoint-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "trainer_state.json", {"global_step": step, "max_steps": max_steps})
    return str(folder)


def with_train(params, **changes):
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **changes))


def with_prefer(params, **changes):
    return dataclasses.replace(params, prefer=dataclasses.replace(params.prefer, **changes))


def test_a_checkpoint_is_finished_only_at_its_last_step(in_tmp):
    assert finished(checkpoint(6, 6)) and finished(checkpoint(7, 6))
    assert not finished(checkpoint(4, 6))
    assert not finished(checkpoint(3, 0))  # max_steps unknown: never taken for finished
    assert not finished(None) and not finished(str(paths.CHECKPOINTS / "missing"))
    for partial in ({}, {"max_steps": 1}, {"global_step": 5}):  # a state file cut short is not a finished run
        write_json(paths.CHECKPOINTS / "checkpoint-9" / "trainer_state.json", partial)
        assert not finished(str(paths.CHECKPOINTS / "checkpoint-9")), partial


def test_the_fingerprint_follows_training_params_data_and_base_but_not_resume(run_inputs):
    params = run_inputs
    first = train_fingerprint(params)
    assert train_fingerprint(params) == first
    assert train_fingerprint(with_train(params, resume="never")) == first
    assert train_fingerprint(with_train(params, learning_rate=1e-4)) != first
    changed_lora = dataclasses.replace(params.train.lora, r=4)
    assert train_fingerprint(with_train(params, lora=changed_lora)) != first
    assert train_fingerprint(dataclasses.replace(params, builtin=dataclasses.replace(params.builtin, seed=8))) != first
    assert (
        train_fingerprint(dataclasses.replace(params, group=dataclasses.replace(params.group, separator="<|s|>")))
        != first
    )
    for changed in (paths.split_file("train"), paths.split_file("val"), paths.SOURCE_FILE):
        original = changed.read_bytes()
        changed.write_bytes(original + b" ")
        assert train_fingerprint(params) != first, changed
        changed.write_bytes(original)
    assert train_fingerprint(params) == first


def test_the_preference_fingerprint_follows_its_params_the_sft_adapter_and_data_but_not_resume(run_inputs):
    params = run_inputs
    adapter = paths.ADAPTER / "adapter_model.safetensors"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(b"weights")
    first = prefer_fingerprint(params)
    assert first != train_fingerprint(params)
    assert prefer_fingerprint(with_prefer(params, resume="never")) == first
    assert prefer_fingerprint(with_prefer(params, beta=0.5)) != first
    assert prefer_fingerprint(with_train(params, learning_rate=1e-4)) == first, "SFT params count through the adapter"
    for changed in (paths.split_file("train"), adapter, paths.SOURCE_FILE):
        original = changed.read_bytes()
        changed.write_bytes(original + b" ")
        assert prefer_fingerprint(params) != first, changed
        changed.write_bytes(original)
    paths.split_file("val").write_text("{}\n", encoding="utf-8")
    assert prefer_fingerprint(params) == first, "prefer trains on the train split only"


def test_an_interrupted_run_with_the_same_fingerprint_is_resumed(run_inputs):
    params = run_inputs
    assert resumable_checkpoint(params) is None  # nothing yet: a fresh run, and its fingerprint is recorded
    assert read_json(paths.CHECKPOINTS / "run.json") == {"fingerprint": train_fingerprint(params)}
    last = checkpoint(4, 6)
    checkpoint(2, 6)
    assert resumable_checkpoint(params) == last


@pytest.mark.parametrize("why", ["other params", "resume never", "finished", "no marker"])
def test_stale_or_finished_checkpoints_are_removed_not_resumed(run_inputs, why):
    params = run_inputs
    resumable_checkpoint(params)
    checkpoint(6 if why == "finished" else 4, 6)
    if why == "other params":
        params = with_train(params, learning_rate=1e-4)
    elif why == "resume never":
        params = with_train(params, resume="never")
    elif why == "no marker":
        (paths.CHECKPOINTS / "run.json").unlink()
    assert resumable_checkpoint(params) is None
    assert not list(paths.CHECKPOINTS.glob("checkpoint-*"))
    assert read_json(paths.CHECKPOINTS / "run.json") == {"fingerprint": train_fingerprint(params)}
