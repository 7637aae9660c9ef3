"""The `train` stage run on tiny models of real families, each with its family's real chat template.

Hub tokenizers are out of reach offline, so each family's tokenizer is the
project's BPE with the family's special tokens, BOS/EOS and the exact chat
template the family ships (TRL keeps verbatim copies; it recognises them by
content to swap in a training variant). The model is the family's architecture
at tiny dimensions, with the family's end-of-turn ids in its generation config.
This proves target modules, template and mask handling per family, which the
builtin Llama alone cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from habla import paths
from habla.errors import UserError
from habla.io import read_json, write_json
from habla.model import guards, training
from habla.model.loading import end_ids, load_tuned
from stages import train
from tests.helpers import OPENERS, SMOLLM2_TEMPLATE, make_tiny_project

pytestmark = pytest.mark.slow

HABLA_TEMPLATE = "the model's own turn format with generation markers (habla)"
LLAMA_LIKE = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
FAMILIES = {
    "llama3": {
        "config": "LlamaConfig",
        "model": "LlamaForCausalLM",
        "template": "llama3.jinja",
        "tokens": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "extra_tokens": ["<|start_header_id|>", "<|end_header_id|>"],
        "stops": ["<|eot_id|>"],
        "reply_end": "<|eot_id|>",
        "targets": LLAMA_LIKE,
    },
    "phi3": {
        "config": "Phi3Config",
        "model": "Phi3ForCausalLM",
        "template": "phi3.jinja",
        "tokens": {"eos_token": "<|endoftext|>"},
        "extra_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "stops": ["<|endoftext|>", "<|end|>"],
        "reply_end": "<|end|>\n",
        "targets": ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"],
    },
    "gemma2": {
        "config": "Gemma2Config",
        "model": "Gemma2ForCausalLM",
        "template": "gemma.jinja",
        "config_extra": {"head_dim": 16},
        "tokens": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
        "extra_tokens": ["<start_of_turn>", "<end_of_turn>"],
        "stops": ["<eos>", "<end_of_turn>"],
        "reply_end": "<end_of_turn>\n",
        "targets": LLAMA_LIKE,
    },
    "qwen2.5": {
        "config": "Qwen2Config",
        "model": "Qwen2ForCausalLM",
        "template": "qwen2_5.jinja",
        "tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "extra_tokens": [],
        "stops": ["<|im_end|>", "<|endoftext|>"],
        "reply_end": "<|im_end|>",
        "targets": LLAMA_LIKE,
        # Qwen's template writes "You are Qwen, created by Alibaba Cloud" into every conversation without a system
        # turn: the persona must not learn under that identity, so habla's marked copy of the format is used.
        "template_source": HABLA_TEMPLATE,
        "dropped": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    },
    "llama3-base": {  # a base model: no chat template, but its family's turn tokens in the vocabulary
        "config": "LlamaConfig",
        "model": "LlamaForCausalLM",
        "template": None,
        "tokens": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
        "extra_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>"],
        "stops": ["<|end_of_text|>"],
        "reply_end": "<|eot_id|>",
        "targets": LLAMA_LIKE,
        "template_source": "no template: the family's turn tokens ['<|start_header_id|>', '<|end_header_id|>', "
        "'<|eot_id|>'] (llama3_training)",
        "trained_rows": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    },
    "smollm2": {  # a template TRL does not know (TRL 1.16 raises for it), with a default identity too
        "config": "LlamaConfig",
        "model": "LlamaForCausalLM",
        "template": SMOLLM2_TEMPLATE,
        "tokens": {"eos_token": "<|im_end|>"},
        "extra_tokens": [],
        "stops": ["<|im_end|>"],
        "reply_end": "<|im_end|>",
        "targets": LLAMA_LIKE,
        "template_source": HABLA_TEMPLATE,
        "dropped": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    },
}


def family_template(name: str) -> str:
    import trl

    if name is None or not name.endswith(".jinja"):
        return name
    return (Path(trl.__file__).parent / "chat_templates" / name).read_text(encoding="utf-8")


def save_family_base(family: dict, where: Path) -> None:
    """A tiny model of the family and a tokenizer shaped like the family's, as a local `model.base` path."""
    import transformers

    from habla.model.builtin import train_tokenizer
    from tests.helpers import REPLIES

    tokenizer = train_tokenizer(REPLIES * 20, 400)
    tokenizer.add_special_tokens({**family["tokens"], "additional_special_tokens": family["extra_tokens"]})
    tokenizer.pad_token = family["tokens"].get("pad_token")  # None where the family ships none (train adds one)
    tokenizer.chat_template = family_template(family["template"])
    config = getattr(transformers, family["config"])(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id or 0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **family.get("config_extra", {}),
    )
    model = getattr(transformers, family["model"])(config)
    stops = tokenizer.convert_tokens_to_ids(family["stops"])
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)


@pytest.fixture
def family_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tiny_project(tmp_path, {"train": {"max_steps": 2, "resume": "never"}})

    def use(name: str) -> dict:
        family = FAMILIES[name]
        save_family_base(family, tmp_path / name)
        write_json(paths.SOURCE_FILE, {"kind": "local", "location": str(tmp_path / name)})
        return family

    return use


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_trains_on_its_own_projections_with_its_training_template(family_project, name):
    family = family_project(name)

    train.main()

    report = read_json(train.REPORT)
    assert report["adapted_modules"] == family["targets"]
    assert report["tokenizer"]["template"] == family.get(
        "template_source", "TRL training template for this model family"
    )
    assert family.get("dropped", "<none>") in report["tokenizer"].get("dropped_default_system_turn", "<none>")
    assert report["tokenizer"]["trained_rows"] == family.get("trained_rows", [])
    assert report["adapter_bytes"] <= 2 * report["trainable_bytes"]  # new or untrained rows saved, not matrices
    assert report["steps"] == 2
    model, tokenizer = load_tuned()
    conversation = [
        {"role": "user", "content": "¿vamos?"},
        {"role": "assistant", "content": "ya po, de una"},
        {"role": "user", "content": "¿a qué hora?"},
        {"role": "assistant", "content": "a las ocho"},
    ]
    encoded = tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    trained = tokenizer.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])
    assert trained.strip().startswith("ya po, de una" + family["reply_end"].strip())
    assert "a las ocho" + family["reply_end"].strip() in trained
    assert "¿vamos?" not in trained and "assistant" not in trained and "model\n" not in trained  # headers stay out
    if "dropped" in family:  # served as trained: no identity the persona never had
        prompt = tokenizer.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
        assert family["dropped"] not in prompt and prompt.startswith(family["tokens"].get("bos_token", ""))
    assert tokenizer.pad_token_id != tokenizer.eos_token_id  # else the collator masks EOS out of the labels
    assert set(tokenizer.convert_tokens_to_ids(family["stops"])) <= set(end_ids(model, tokenizer))


def test_a_system_prompt_on_gemma_is_a_clear_error_not_a_template_traceback(family_project):
    family_project("gemma2")
    rows = [json.loads(line) for line in Path("data/splits/train.jsonl").read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["messages"].insert(0, {"role": "system", "content": "Eres Nico."})
    Path("data/splits/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(UserError, match="System role not supported.*persona.system_prompt: ''"):
        train.main()


@pytest.mark.parametrize("name", ["builtin", *sorted(FAMILIES)])
def test_the_trainer_itself_computes_loss_only_on_assistant_replies(family_project, name):
    """What the trainer trains on, read from its own dataloader: the labels are -100 everywhere but the
    persona's replies and their end tokens, exactly the template's assistant mask (the seeds trained on
    every token, system prompt included)."""
    from habla.model.loading import encode_chat
    from habla.params import load_params

    family = family_project(name) if name != "builtin" else {}
    params = load_params()
    model, tokenizer, notes, fast = training.prepare_model(params)
    rows = [json.loads(line) for line in Path("data/splits/train.jsonl").read_text(encoding="utf-8").splitlines()]
    lost = guards.check_masks(tokenizer, rows, params.train.max_length, end_ids(model, tokenizer))[
        "dropped_no_reply_in_window"
    ]
    trainer, _ = training.build_trainer(params, model, tokenizer, fast, rows, None, trained_rows=notes["trained_rows"])
    assert len(trainer.train_dataset) == len(rows) - lost  # the guard counts what TRL silently drops
    if "dropped" in family:  # the default identity prompt is in no training example
        assert not any(family["dropped"] in tokenizer.decode(row["input_ids"]) for row in trainer.train_dataset)
    expected = {}
    for row in rows:
        encoded = encode_chat(tokenizer, row["messages"], params.train.max_length)
        expected[tuple(encoded["input_ids"])] = encoded["assistant_masks"]
    checked = 0
    for batch in trainer.get_train_dataloader():
        for ids, labels, attention in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            keep = attention.bool()
            ids, labels = ids[keep].tolist(), labels[keep].tolist()
            trained = [label != -100 for label in labels]
            assert trained == [bool(m) for m in expected[tuple(ids)]]
            assert all(label == token for label, token in zip(labels, ids) if label != -100)
            text = tokenizer.decode([t for t, on in zip(ids, trained) if on])
            assert not any(opener in text for opener in OPENERS)  # no user turn is trained on
            checked += 1
    assert checked == len(rows) - lost
