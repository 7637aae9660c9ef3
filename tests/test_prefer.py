"""`prefer`: pairs from the train split only, the SFT model as the reference (proved at step 0), completion-only
masks ending in the stop token, identical adapters from identical params, and a judge-filtered run."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from habla import paths
from habla.io import read_json, read_jsonl
from habla.model.preference import pair_up, preference_prompts
from tests.helpers import PREFER, update_params

pytestmark = pytest.mark.slow


@pytest.fixture
def project(trained_project, tmp_path, monkeypatch):
    """Each test's own copy of the session's trained persona: `prefer` writes into it."""
    copy = tmp_path / "project"
    shutil.copytree(trained_project, copy)
    monkeypatch.chdir(copy)
    return copy


def adapter_bytes() -> bytes:
    return (paths.PREFERRED / "adapter_model.safetensors").read_bytes()


def test_pairs_come_from_the_train_split_only_and_training_starts_from_the_sft_model(project):
    from stages import prefer

    prefer.main()
    pairs = read_jsonl(paths.PREFERENCE_PAIRS)
    train_ids = {row["id"] for row in read_jsonl(paths.split_file("train"))}
    held_out = {row["id"] for name in ("val", "test") for row in read_jsonl(paths.split_file(name))}
    assert pairs and {p["conversation"] for p in pairs} <= train_ids
    assert not {p["conversation"] for p in pairs} & held_out
    report = read_json("metrics/prefer.json")
    assert report["pairs"] == len(pairs) and report["pairs_built"] == report["pairs"] + sum(
        report["pairs_dropped"].values()
    )
    steps = read_json(paths.PREFER_STEPS)
    assert len(steps) == PREFER["max_steps"] and report["steps"] == PREFER["max_steps"]
    first = steps[0]
    assert first["margins"] == 0.0 and first["rewards_chosen"] == 0.0 and first["rewards_rejected"] == 0.0
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5), "policy = reference at step 0: loss ln 2"
    assert report["reference_check"]["max_logit_difference"] == 0.0
    assert any(row["margins"] != 0.0 for row in steps[1:]), "training moved the policy away from the reference"
    config = read_json(paths.PREFERRED / "adapter_config.json")
    assert config["target_modules"] == read_json(paths.ADAPTER / "adapter_config.json")["target_modules"]
    assert adapter_bytes() != (paths.ADAPTER / "adapter_model.safetensors").read_bytes()


def test_same_params_give_the_same_pairs_and_adapter_bytes(project):
    from stages import prefer

    update_params(project, "prefer", resume="never")
    prefer.main()
    first, first_pairs = adapter_bytes(), paths.PREFERENCE_PAIRS.read_bytes()
    shutil.rmtree(paths.PREFERRED)
    prefer.main()
    assert adapter_bytes() == first and paths.PREFERENCE_PAIRS.read_bytes() == first_pairs


def test_the_loss_covers_the_reply_tokens_ending_in_the_stop_token_and_a_wrong_reference_is_refused(project):
    from habla.model.loading import end_ids, load_tuned
    from habla.model.preference import build_dpo_trainer, check_reference
    from habla.params import load_params

    update_params(project, "prefer", max_length=1024)  # nothing truncated: row i of the dataset is pair i
    params = load_params()
    model, tokenizer = load_tuned(trainable=True)
    prompts = preference_prompts(read_jsonl(paths.split_file("train")), 1, 8, 0)
    pairs, _ = pair_up(prompts, ["respuesta inventada número " + str(i) for i in range(len(prompts))], 90)
    trainer = build_dpo_trainer(params, model, tokenizer, pairs, project / "scratch")
    assert len(trainer.train_dataset) == len(pairs)
    stops = set(end_ids(model, tokenizer))
    for pair, row in zip(pairs, trainer.train_dataset):
        for side in ("chosen_ids", "rejected_ids"):  # the reply ends in the end-of-turn token (a newline may follow)
            last_stop = max(i for i, token in enumerate(row[side]) if token in stops)
            assert tokenizer.decode(row[side][last_stop + 1 :]).strip() == ""
        prompt = tokenizer.apply_chat_template(
            pair["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        assert row["prompt_ids"] == list(prompt), "the prompt is the context as the model sees it at inference"
        assert tokenizer.decode(row["chosen_ids"], skip_special_tokens=True).strip() == pair["chosen"]
        assert tokenizer.decode(row["rejected_ids"], skip_special_tokens=True).strip() == pair["rejected"]
    first = trainer.train_dataset[0]
    completion = trainer.data_collator([first])["completion_mask"][0]  # row 0: prompt + chosen, then padding
    prompt_length, chosen_length = len(first["prompt_ids"]), len(first["chosen_ids"])
    assert not completion[:prompt_length].any(), "no loss on the prompt"
    assert completion[prompt_length : prompt_length + chosen_length].all(), "loss on every reply token"
    assert not completion[prompt_length + chosen_length :].any(), "no loss on padding"
    assert check_reference(trainer)["max_logit_difference"] == 0.0
    with torch.no_grad():
        next(p for n, p in trainer.model.named_parameters() if ".ref." in n and "lora_B" in n).add_(0.5)
    with pytest.raises(RuntimeError, match="the reference is not the SFT model"):
        check_reference(trainer)


def test_near_identical_samples_are_dropped_and_counted():
    prompts = [
        {"id": str(i), "conversation": "c", "source": "whatsapp", "prompt": [], "chosen": chosen}
        for i, chosen in enumerate(["ya po, de una", "filo, mañana vemos", "obvio, con harta palta", "sí po"])
    ]
    samples = ["Ya po,  de una", "filo, mañana vemo", "", "no sé, puede ser"]
    pairs, dropped = pair_up(prompts, samples, 90)
    assert [p["rejected"] for p in pairs] == ["no sé, puede ser"]
    assert dropped == {"identical": 1, "near_identical": 1, "empty_sample": 1}


def test_prompts_are_cut_before_persona_replies_seeded_and_capped():
    rows = [
        {
            "id": f"c{i}",
            "messages": [
                {"role": "system", "content": "Eres Nico."},
                {"role": "user", "content": "hola"},
                {"role": "assistant", "content": f"wena {i}"},
                {"role": "user", "content": "¿vamos?"},
                {"role": "assistant", "content": f"de una {i}"},
            ],
        }
        for i in range(10)
    ]
    prompts = preference_prompts(rows, 2, 100, 0)
    assert len(prompts) == 20
    for prompt in prompts:
        assert prompt["prompt"][-1]["role"] == "user" and prompt["prompt"][0]["role"] == "system"
    assert preference_prompts(rows, 2, 100, 0) == prompts
    capped = preference_prompts(rows, 2, 7, 0)
    assert len(capped) == 7 and all(p in prompts for p in capped)
    assert preference_prompts(rows, 1, 100, 1) != preference_prompts(rows, 1, 100, 2)


def test_a_judge_filtered_run_keeps_only_pairs_where_the_judge_prefers_the_real_reply(project, endpoint):
    from stages import prefer

    real = {m["content"] for row in read_jsonl(paths.split_file("train")) for m in row["messages"]}

    def prefers_the_real_reply_when_it_mentions_po(prompt: str) -> str:
        answers = prompt.split("Respuesta A:")[-1].split("Respuesta B:")
        a_is_real = any(r in answers[0] for r in real if " po" in r)
        return json.dumps({"veredicto": "A" if a_is_real else "B"})

    endpoint.script = prefers_the_real_reply_when_it_mentions_po
    update_params(project, "prefer", filter="judge")
    update_params(project, "judge", backend="openai", model="juez", base_url=endpoint.url, max_retries=0)
    prefer.main()
    report = read_json("metrics/prefer.json")
    pairs = read_jsonl(paths.PREFERENCE_PAIRS)
    built = report["pairs_built"] - sum(report["pairs_dropped"].values())
    assert report["judge_filtered_out"] > 0 and report["pairs"] == len(pairs) == built - report["judge_filtered_out"]
    assert all(" po" in pair["chosen"] for pair in pairs)


def test_switched_off_the_stage_leaves_a_note_and_no_adapter(project):
    from habla.model.loading import has_preferred
    from stages import prefer

    update_params(project, "prefer", enabled=False)
    prefer.main()
    assert not has_preferred() and read_json(paths.PREFERRED / "DISABLED.json")
    assert read_json("metrics/prefer.json") == {"enabled": False}


def test_chat_serve_and_export_offer_the_preferred_model(project):
    import dataclasses
    import threading

    from openai import OpenAI
    from transformers import AutoModelForCausalLM

    from habla.apps import export
    from habla.apps.chat import Session, interactive
    from habla.apps.serve import Engine, make_server
    from habla.model.generation import generate_replies
    from habla.model.loading import as_model, load_tuned
    from habla.params import load_params
    from stages import prefer

    prefer.main()
    model, tokenizer = load_tuned(preferred=True)
    params = load_params()
    sampling = dataclasses.replace(params.evaluate.sampling, temperature=0.0, max_new_tokens=8)
    question = [{"role": "user", "content": "¿Vamos al estadio?"}]
    expected = {}
    for name in ("tuned", "preferred"):
        with as_model(model, name):
            expected[name] = generate_replies(model, tokenizer, [question], sampling, 1)[0].text
    assert expected["preferred"], "a reply to compare with"
    ids = tokenizer.apply_chat_template(question, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode(), as_model(model, "preferred"):
        preferred_logits = model(input_ids=ids).logits
    with torch.inference_mode(), as_model(model, "tuned"):
        assert not torch.allclose(model(input_ids=ids).logits, preferred_logits, atol=1e-4), "DPO changed the model"

    params = dataclasses.replace(
        params,
        evaluate=dataclasses.replace(params.evaluate, sampling=sampling),
        serve=dataclasses.replace(params.serve, port=0),
    )
    engine = Engine(model, tokenizer, params)
    server = make_server(engine, params.serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="none", max_retries=0)
        assert sorted(m.id for m in api.models.list().data) == ["base", "preferred", "tuned"]
        reply = api.chat.completions.create(model="preferred", messages=question, temperature=0, max_tokens=8)
        assert reply.choices[0].message.content.strip() == expected["preferred"]
    finally:
        server.shutdown()
        server.server_close()

    lines = iter(["/preferred", "¿Vamos al estadio?", "/exit"])
    out = __import__("io").StringIO()
    interactive(Session(model, tokenizer, params, sampling), "Nico", out=out, read=lambda _: next(lines))
    assert "(modelo: preferred)" in out.getvalue() and f"preferred> {expected['preferred']}" in out.getvalue()

    export.export(project / "merged", "preferred")
    merged = AutoModelForCausalLM.from_pretrained(project / "merged")
    with torch.inference_mode():
        assert torch.allclose(preferred_logits, merged(input_ids=ids).logits, atol=1e-4)
