"""`habla export`: the merged folder, GGUF files and GGUF adapters keep the persona's template, stop and separator,
answer as base + adapter did, and a model that would lose one of them is refused with one sentence."""

from __future__ import annotations

import contextlib
import re

import pytest

from habla.errors import UserError
from habla.io import read_json
from habla.model import exporting, llamacpp
from habla.model.builtin import train_tokenizer
from habla.model.guards import prepare_tokenizer
from habla.params import Sampling
from tests.helpers import REPLIES, SMOLLM2_TEMPLATE

CONVERSATION = [
    {"role": "system", "content": "Eres Nico."},
    {"role": "user", "content": "¿Vamos al estadio?"},
    {"role": "assistant", "content": "ya po, de una"},
    {"role": "user", "content": "¿a qué hora?"},
]


@pytest.fixture(scope="module")
def chatml_tokenizer():
    tokenizer, _ = prepare_tokenizer(train_tokenizer(REPLIES * 20, 300), "<|msg_sep|>")
    return tokenizer


def test_the_serving_template_is_the_training_template_without_generation_markers(chatml_tokenizer):
    template = chatml_tokenizer.chat_template
    assert "{% generation %}" in template
    served = exporting.serving_template(template)
    assert "{% generation %}" not in served and "{% endgeneration %}" not in served
    assert exporting.check_template(chatml_tokenizer, served, [CONVERSATION]) == {
        "same_as_adapter": True,
        "conversations": 1,
    }
    for prompt in (False, True):
        assert chatml_tokenizer.apply_chat_template(
            CONVERSATION, chat_template=served, tokenize=False, add_generation_prompt=prompt
        ) == chatml_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=prompt)


def test_a_template_that_would_serve_another_format_or_identity_is_refused(chatml_tokenizer):
    with pytest.raises(UserError, match="renders a held-out conversation differently"):
        exporting.check_template(chatml_tokenizer, SMOLLM2_TEMPLATE, [CONVERSATION[1:]])
    with pytest.raises(UserError, match="has no chat template"):
        exporting.check_template(chatml_tokenizer, None, [CONVERSATION])


def test_a_lost_stop_or_a_split_separator_is_refused_in_one_sentence(chatml_tokenizer):
    end = chatml_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert exporting.check_stops(chatml_tokenizer, [end], {end})["trained"] == ["<|im_end|>"]
    with pytest.raises(UserError, match=r"does not stop on \['<\|im_end\|>'\].*never stop"):
        exporting.check_stops(chatml_tokenizer, [end], {end + 1})
    separator = chatml_tokenizer.convert_tokens_to_ids("<|msg_sep|>")
    assert exporting.check_separator(chatml_tokenizer, "<|msg_sep|>", [separator])["id"] == separator
    with pytest.raises(UserError, match="write it out piece by piece"):
        exporting.check_separator(chatml_tokenizer, "<|msg_sep|>", [5, 6, 7])


def test_agreement_counts_identical_replies_common_prefixes_and_stops():
    result = exporting.agreement([[5, 6, 2], [5, 6, 7]], [[5, 6, 2], [5, 9, 7]], stops=[2])
    assert result == {"prompts": 2, "identical": 1, "mean_common_prefix": 2.0, "stopped": 1, "stopped_in_habla": 1}
    with pytest.raises(UserError, match="answers 1 of 2 held-out prompts differently"):
        exporting.require_identical(result, "persona.f16.gguf")


def render_ollama(template: str, messages: list[dict]) -> str:
    """Ollama's Go template language, as far as the exported template uses it: a range over the messages and one
    `if eq .Role` branch per role (an independent reading, to hold the exporter to the chat template)."""
    head, body, tail = re.fullmatch(r"(.*?)\{\{ range \.Messages \}\}(.*)\{\{ end \}\}(.*)", template, re.S).groups()
    branches = dict(re.findall(r'\{\{ (?:else )?if eq \.Role "(\w+)" \}\}(.*?)(?=\{\{ else|\{\{ end \}\})', body, re.S))
    return head + "".join(branches[m["role"]].replace("{{ .Content }}", m["content"]) for m in messages) + tail


@pytest.mark.parametrize("family", ["chatml", "smollm2"])
def test_the_ollama_template_renders_as_the_chat_template_with_the_generation_prompt(chatml_tokenizer, family):
    tokenizer = chatml_tokenizer
    template = exporting.serving_template(tokenizer.chat_template) if family == "chatml" else SMOLLM2_TEMPLATE
    ours = exporting.ollama_template(tokenizer, template)
    for messages in (CONVERSATION, CONVERSATION[1:]):
        expected = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        if family == "smollm2" and messages[0]["role"] != "system":  # no default identity in the export
            expected = expected.replace(
                "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
                "",
            )
        assert render_ollama(ours, messages) == expected


def test_the_modelfile_names_the_files_each_stop_and_the_sampling_defaults():
    text = exporting.modelfile("base.f16.gguf", "{{ .Content }}", ["<|im_end|>"], Sampling(), "persona-lora.f16.gguf")
    assert text.splitlines()[:2] == ["FROM ./base.f16.gguf", "ADAPTER ./persona-lora.f16.gguf"]
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0.7" in text
    assert "PARAMETER num_predict 40" in text and 'TEMPLATE """{{ .Content }}"""' in text


def converter_or_skip():
    try:
        llamacpp.converter_dir()
    except UserError:
        pytest.skip(f"needs llama.cpp's converter from llama-cpp-python {llamacpp.VERSION}: run `make export-tools`")


@pytest.fixture
def in_trained(trained_project):
    with contextlib.chdir(trained_project):
        yield trained_project


def export(tmp_path, *args) -> dict:
    from habla.apps import export as command

    out = tmp_path / "out"
    command.main(["--out", str(out), *args])
    return read_json(out / "export.json") | {"out": out}


@pytest.mark.slow
def test_the_merged_folder_answers_as_base_and_adapter_did(in_trained, tmp_path):
    record = export(tmp_path, "--format", "hf")
    greedy = record["checks"]["greedy_transformers"]
    assert greedy["identical"] == greedy["prompts"] == 4
    assert (record["out"] / "model.safetensors").exists()


@pytest.mark.slow
def test_a_merged_gguf_keeps_the_template_and_stop_and_answers_identically_at_f16(in_trained, tmp_path):
    converter_or_skip()
    record = export(tmp_path, "--format", "gguf", "--ollama")
    checks = record["checks"]
    assert checks["template"]["same_as_adapter"] and checks["stops"]["trained"] == ["<|im_end|>"]
    assert checks["greedy_transformers"]["identical"] == 4
    (file,) = record["files"]
    assert (record["out"] / file["file"]).stat().st_size == file["bytes"] > 0
    metadata = llamacpp.metadata(record["out"] / file["file"])
    assert "{% generation %}" not in metadata["chat_template"] and metadata["architecture"] == "llama"
    modelfile = (record["out"] / "Modelfile").read_text(encoding="utf-8")
    assert modelfile.startswith(f"FROM ./{file['file']}\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    if llamacpp.runtime() is not None:
        assert checks["greedy_llama_cpp"]["identical"] == 4


@pytest.mark.slow
def test_q8_0_reports_its_agreement_and_a_gguf_adapter_needs_llama_cpp_to_be_checked(in_trained, tmp_path):
    converter_or_skip()
    record = export(tmp_path, "--format", "gguf", "--quant", "q8_0")
    assert record["files"][0]["file"] == "persona.q8_0.gguf"
    assert 0 <= record["checks"]["greedy_transformers"]["identical"] <= 4
    if llamacpp.runtime() is None:
        with pytest.raises(UserError, match="checked in llama.cpp only"):
            export(tmp_path, "--format", "gguf-adapter")
        return
    record = export(tmp_path, "--format", "gguf-adapter", "--ollama")
    assert [f["file"] for f in record["files"]] == ["base.f16.gguf", "persona-lora.f16.gguf"]
    assert record["checks"]["greedy_llama_cpp"]["identical"] == 4
    assert "ADAPTER ./persona-lora.f16.gguf" in (record["out"] / "Modelfile").read_text(encoding="utf-8")
