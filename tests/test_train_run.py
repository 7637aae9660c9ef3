"""The train stage run for real on CPU: reproducible adapters, resumable runs, and an export that matches."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from habla import paths
from habla.apps import export
from habla.errors import UserError
from habla.io import read_json, write_jsonl
from habla.model import checkpoints, llamacpp
from habla.model.fast_paths import resolve
from habla.params import load_params
from stages import perplexity, train
from tests.helpers import REPO, conversations, make_tiny_project, read_params, set_param, write_params

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tiny_project(tmp_path)
    return tmp_path


def adapter_weights() -> dict[str, torch.Tensor]:
    return load_file(paths.ADAPTER / "adapter_model.safetensors")


def test_two_runs_with_the_same_params_give_identical_adapters(tiny_project):
    set_param("train.resume", "never")
    train.main()
    first = adapter_weights()
    train.main()
    second = adapter_weights()
    assert first.keys() == second.keys() and len(first) > 0
    assert all(torch.equal(first[name], second[name]) for name in first)
    report = read_json(train.REPORT)
    assert report["steps"] == 6 and report["adapted_modules"] == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert (paths.ADAPTER / "chat_template.jinja").exists()
    recorded = read_json(paths.ADAPTER / "training_params.json")
    assert recorded["params"]["train"]["padding_free"] == "auto"  # what params said, and what it became here
    here = {**resolve(load_params().train).record(), "attention": "sdpa"}  # auto left attention to transformers
    assert recorded["fast_paths"] == report["fast_paths"] == here
    set_param("train.seed", 43)
    train.main()
    assert any(not torch.equal(first[name], tensor) for name, tensor in adapter_weights().items())


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_project, monkeypatch, caplog):
    from transformers import Trainer

    train.main()
    uninterrupted = adapter_weights()
    set_param("train.resume", "never")
    calls = {"n": 0}
    original_step = Trainer.training_step

    def interrupt_at_fourth_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", interrupt_at_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        train.main()
    assert sorted(p.name for p in paths.CHECKPOINTS.glob("checkpoint-*")) == ["checkpoint-2"]
    monkeypatch.setattr(Trainer, "training_step", original_step)
    set_param("train.resume", "auto")
    with caplog.at_level(logging.INFO, logger=checkpoints.log.name):
        train.main()
    assert "resuming the interrupted run from models/checkpoints/checkpoint-2" in caplog.text
    assert read_json(train.REPORT)["steps"] == 6
    resumed = adapter_weights()
    assert all(torch.allclose(uninterrupted[name], resumed[name], atol=1e-5) for name in uninterrupted)


def test_changed_params_never_resume_a_stale_checkpoint(tiny_project, caplog):
    train.main()
    set_param("train.learning_rate", 0.001)
    with caplog.at_level(logging.INFO, logger=checkpoints.log.name):
        train.main()
    assert "resuming" not in caplog.text


def test_a_finished_run_is_retrained_not_resumed_at_its_last_step(tiny_project, caplog):
    train.main()
    first = read_json(train.REPORT)
    with caplog.at_level(logging.INFO, logger=checkpoints.log.name):
        train.main()  # what DVC does when only the stage's code changed
    assert "resuming" not in caplog.text
    again = read_json(train.REPORT)
    assert again["steps"] == first["steps"] == 6 and again["train_loss"] == pytest.approx(first["train_loss"])


def test_export_merges_into_a_full_precision_base_with_the_same_outputs(tiny_project):
    from transformers import AutoModelForCausalLM

    from habla.model.loading import load_tuned

    train.main()
    record = export.export(Path("models/merged"))
    assert record["dtype"] == "float32" and record["trained_with"]["train"]["max_steps"] == 6
    tuned, tokenizer = load_tuned()
    merged = AutoModelForCausalLM.from_pretrained("models/merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    ids = tokenizer.apply_chat_template(conversations(1, 9)[0]["messages"], return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    with torch.inference_mode():
        with tuned.disable_adapter():
            base_logits = tuned(input_ids=ids).logits
        assert torch.allclose(tuned(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)
        assert not torch.allclose(base_logits, merged(input_ids=ids).logits, atol=1e-4)


def test_special_separator_is_trained_as_one_token_and_saved_with_the_adapter(tiny_project):
    from habla.model.loading import load_tuned

    rows = conversations(48, 1)
    for row in rows:
        for message in row["messages"]:
            if message["role"] == "assistant":
                message["content"] = message["content"].replace(", ", "<|msg_sep|>", 1)
    write_jsonl(Path("data/splits/train.jsonl"), rows)
    set_param("group.separator", "<|msg_sep|>")
    train.main()
    assert read_json(train.REPORT)["tokenizer"]["separator_token"] == "<|msg_sep|>"
    tuned, tokenizer = load_tuned()
    separator_id = tokenizer.convert_tokens_to_ids("<|msg_sep|>")
    assert tokenizer("ya<|msg_sep|>po", add_special_tokens=False)["input_ids"].count(separator_id) == 1
    assert tuned.get_input_embeddings().weight.shape[0] == len(tokenizer) > separator_id
    assert any("trainable_tokens" in name for name in adapter_weights())
    try:
        llamacpp.converter_dir()
    except UserError:
        return  # the GGUF half needs `make export-tools` (test_export.py says so when it skips)
    export.main(["--format", "gguf", "--out", "gguf"])
    checks = read_json("gguf/export.json")["checks"]
    assert checks["separator"] == {"token": "<|msg_sep|>", "id": separator_id}, "one token, the id it was trained as"
    assert checks["greedy_transformers"]["identical"] == checks["greedy_transformers"]["prompts"]
    with pytest.raises(UserError, match=r"trains rows for tokens the base vocabulary lacks \(.*<\|msg_sep\|>"):
        export.main(["--format", "gguf-adapter", "--out", "lora"])


def test_perplexity_scores_long_conversations_and_documents_whole_with_sliding_windows(tiny_project):
    from habla.model.loading import encode_chat, load_tuned

    train.main()
    long_reply = " ".join(f"ya po, la {i} vez que te digo que no voy" for i in range(20))
    test_rows = conversations(4, 3) + [
        {
            "id": "long",
            "source": "whatsapp",
            "messages": [{"role": "user", "content": "¿vienes?"}, {"role": "assistant", "content": long_reply}],
        }
    ]
    write_jsonl(perplexity.TEST, test_rows)
    documents = [{"id": "d1", "source": "transcript", "text": "Buenas noches Viña. " * 40}]
    write_jsonl(perplexity.TEST_DOCUMENTS, documents)

    perplexity.main()

    report = read_json(perplexity.REPORT)
    _, tokenizer = load_tuned()
    encoded = [encode_chat(tokenizer, row["messages"]) for row in test_rows]
    assert len(encoded[-1]["input_ids"]) > 96  # longer than train.max_length: windowed, not cut
    assert report["windowed_conversations"] == sum(len(e["input_ids"]) > 96 for e in encoded) >= 1
    assert report["tuned"]["tokens"] == report["base"]["tokens"] == sum(sum(e["assistant_masks"][1:]) for e in encoded)
    doc_ids = tokenizer(documents[0]["text"])["input_ids"]
    assert report["documents"]["count"] == 1 and report["documents"]["windowed"] == 1
    assert report["documents"]["base"]["tokens"] == len(doc_ids) - 1
    assert report["tuned"]["perplexity"] > 1 and report["documents"]["tuned"]["perplexity"] > 1
    (one,) = read_json(perplexity.PERSONA_PLOT)
    assert one == {"persona": "persona", **{m: pytest.approx(report[m]["perplexity"]) for m in ("base", "tuned")}}

    asked = [{"role": "user", "content": "Escribe sobre el estadio"}, {"role": "assistant", "content": "lleno"}]
    task = {"id": "k", "source": "keywords", "messages": asked}
    voices = [{**row, "persona": ("nico", "cami")[i % 2]} for i, row in enumerate(test_rows)]
    write_jsonl(perplexity.TEST, [*voices, task])
    perplexity.main()
    report = read_json(perplexity.REPORT)
    assert sorted(report["by_persona"]) == ["cami", "nico"], "the writing task is nobody's chat"
    plot = read_json(perplexity.PERSONA_PLOT)
    assert [row["persona"] for row in plot] == ["cami", "nico"]
    assert plot[1]["tuned"] == pytest.approx(report["by_persona"]["nico"]["tuned"])


def test_rslora_and_dora_options_reach_the_saved_adapter(tiny_project):
    import json

    write_params(
        Path("."),
        {"train": {"max_steps": 2, "resume": "never", "lora": {"use_rslora": True, "use_dora": True}}},
        read_params(),
    )
    train.main()
    config = json.loads((paths.ADAPTER / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["use_rslora"] is True and config["use_dora"] is True
    magnitudes = [name for name in adapter_weights() if "lora_magnitude_vector" in name]
    assert magnitudes, "DoRA adds a magnitude vector per adapted layer"


def test_the_stage_trains_data_parallel_in_two_processes_and_only_rank_zero_writes(tiny_project):
    """DDP over gloo on the CPU (torchrun): the multi-GPU profile's code path, minus the GPUs."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "stages.train"],
        cwd=tiny_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = read_json(train.REPORT)
    live = read_json(train.LIVE_DIR / "metrics.json")
    params = read_params()["train"]
    # each optimizer step consumed one batch per process: twice the single-process epoch progress
    assert report["steps"] == params["max_steps"]
    assert live["epoch"] == pytest.approx(2 * params["max_steps"] * params["batch_size"] / 48)
    assert (paths.ADAPTER / "adapter_model.safetensors").exists()
    assert done.stderr.count("LoRA on") == 2  # both ranks built the model; one wrote the results
