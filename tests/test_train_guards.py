"""Each guard of the train stage, made to fire on a model or tokenizer that has the defect."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from habla import paths
from habla.errors import UserError
from habla.io import write_json
from habla.model.builtin import train_tokenizer
from habla.model.guards import check_masks, check_targets, prepare_tokenizer
from habla.model.loading import IM_END, PAD, encode_chat, load_base
from tests.helpers import REPO, write_params

TEXTS = ["wena po, ¿cómo estai?", "hola, todo bien", "cachai que mañana vamos al estadio", "ya po, de una"] * 20
CONVERSATION = [{"role": "user", "content": "hola"}, {"role": "assistant", "content": "wena po"}]


@pytest.fixture
def tokenizer():
    return train_tokenizer(TEXTS, 400)


def tiny(config_name: str, model_name: str, **extra):
    import transformers

    config = getattr(transformers, config_name)(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
        **extra,
    )
    return getattr(transformers, model_name)(config)


def test_fused_phi3_rejects_llama_projection_names():
    model = tiny("Phi3Config", "Phi3ForCausalLM")
    with pytest.raises(UserError) as err:
        check_targets(model, ["q_proj", "k_proj", "v_proj", "o_proj"])
    message = str(err.value)
    assert "['q_proj', 'k_proj', 'v_proj']" in message and "qkv_proj" in message and "gate_up_proj" in message
    assert check_targets(model, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]) == [
        "qkv_proj",
        "o_proj",
        "gate_up_proj",
        "down_proj",
    ]


@pytest.mark.parametrize(
    ("config", "model", "expected"),
    [
        (
            "LlamaConfig",
            "LlamaForCausalLM",
            {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        ),
        ("Phi3Config", "Phi3ForCausalLM", {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
        (
            "Gemma2Config",
            "Gemma2ForCausalLM",
            {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        ),
    ],
)
def test_all_linear_covers_every_projection_of_each_family(config, model, expected):
    extra = {"head_dim": 16} if config == "Gemma2Config" else {}
    assert set(check_targets(tiny(config, model, **extra), "all-linear")) == expected


def test_template_without_markers_gets_chatml_with_generation_and_a_real_pad(tokenizer):
    tokenizer.chat_template = None
    tokenizer.pad_token = tokenizer.eos_token
    prepared, notes = prepare_tokenizer(tokenizer, "\n")
    assert "generation" in prepared.chat_template and "fallback" in notes["template"]
    assert prepared.pad_token == PAD and prepared.pad_token_id != prepared.eos_token_id
    assert notes["trained_rows"] == ["<|im_start|>", IM_END]  # a base model never learned its turn tokens
    encoded = encode_chat(prepared, CONVERSATION)
    trained = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert prepared.decode(trained) == "wena po" + IM_END
    assert check_masks(prepared, [{"messages": CONVERSATION}], 64)["truncated_share"] == 0


def test_empty_assistant_mask_stops_training(tokenizer):
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(UserError, match="no assistant tokens"):
        check_masks(tokenizer, [{"messages": CONVERSATION}], 64)


def test_end_token_outside_the_mask_stops_training(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
        "<|im_end|>{% else %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
    )
    with pytest.raises(UserError, match="no end-of-reply token .* is inside the loss mask"):
        check_masks(tokenizer, [{"messages": CONVERSATION}], 64)


def test_special_separator_becomes_one_token(tokenizer):
    prepared, notes = prepare_tokenizer(tokenizer, "<|msg_sep|>")
    assert notes["separator_token"] == "<|msg_sep|>"
    assert len(prepared("a<|msg_sep|>b", add_special_tokens=False)["input_ids"]) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_qlora_without_cuda_is_a_clear_error(in_tmp):
    write_json(paths.SOURCE_FILE, {"kind": "builtin-tiny", "location": "models/base"})
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        load_base("4bit")


def test_adapter_config_target_modules_are_written_in_a_stable_order(tmp_path):
    import json

    from habla.model.checkpoints import sort_target_modules

    path = tmp_path / "adapter_config.json"
    path.write_text(
        json.dumps({"target_modules": ["v_proj", "k_proj", "down_proj", "q_proj"], "r": 8, "lora_alpha": 16}),
        encoding="utf-8",
    )
    sort_target_modules(path)
    first = path.read_bytes()
    # keys sorted too: PEFT's key order is an implementation detail, and any byte changes the adapter's DVC hash
    canonical = {"lora_alpha": 16, "r": 8, "target_modules": ["down_proj", "k_proj", "q_proj", "v_proj"]}
    assert first == (json.dumps(canonical, indent=2) + "\n").encode()
    sort_target_modules(path)
    assert path.read_bytes() == first


def test_conversations_whose_first_reply_lies_past_max_length_are_counted_and_all_of_them_is_an_error(tokenizer):
    prepared, _ = prepare_tokenizer(tokenizer, "\n")
    long_opening = [{"role": "user", "content": "cachai que mañana vamos al estadio " * 8}, CONVERSATION[1]]
    rows = [{"messages": CONVERSATION}, {"messages": long_opening}]
    assert check_masks(prepared, rows, 24)["dropped_no_reply_in_window"] == 1
    assert check_masks(prepared, rows, 512)["dropped_no_reply_in_window"] == 0
    with pytest.raises(UserError, match="raise train.max_length"):
        check_masks(prepared, rows[1:], 24)


def test_every_training_param_reaches_the_trainer_settings(tmp_path):
    """`sft_config` is where params become TRL settings: each one must arrive, with the loss on replies only."""
    import dataclasses

    from habla.model.fast_paths import resolve
    from habla.model.training import sft_config
    from habla.params import Lora, Params, Train

    train = Train(
        max_steps=7,
        epochs=2.0,
        batch_size=3,
        grad_accum=4,
        learning_rate=1e-4,
        lr_scheduler="linear",
        warmup_ratio=0.1,
        eval_steps=5,
        packing=True,
        gradient_checkpointing=True,
        max_length=128,
        seed=9,
        lora=Lora(),
    )
    config = sft_config(dataclasses.replace(Params(), train=train), resolve(train), tmp_path / "out")
    assert config.assistant_only_loss is True
    assert config.output_dir == str(tmp_path / "out") and config.seed == 9
    assert (config.max_steps, config.num_train_epochs, config.max_length) == (7, 2.0, 128)
    assert config.per_device_train_batch_size == config.per_device_eval_batch_size == 3
    assert config.gradient_accumulation_steps == 4 and config.learning_rate == 1e-4 and config.warmup_steps == 0.1
    assert config.lr_scheduler_type == "linear"
    assert config.packing is True and config.activation_checkpointing is True
    assert config.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert (config.eval_strategy, config.save_strategy) == ("steps", "steps")
    assert config.eval_steps == config.save_steps == 5 and config.save_total_limit == 2
    assert config.include_num_input_tokens_seen == "non_padding" and config.report_to in ("none", [], ["none"])
    if not torch.cuda.is_available():
        assert config.use_cpu is True and config.bf16 is False
    quiet_train = dataclasses.replace(train, gradient_checkpointing=False, padding_free=True, compile=True)
    quiet = sft_config(
        dataclasses.replace(Params(), train=quiet_train),
        resolve(quiet_train),
        tmp_path / "bench",
        evaluate=False,
    )
    assert (quiet.eval_strategy, quiet.save_strategy) == ("no", "no")
    assert quiet.activation_checkpointing is False and quiet.activation_checkpointing_kwargs is None
    assert config.padding_free is False and config.torch_compile is False  # auto on a machine without flash-attn
    assert quiet.padding_free is True and quiet.torch_compile is True


def test_one_conversation_without_a_reply_among_good_ones_still_stops_training(tokenizer):
    prepared, _ = prepare_tokenizer(tokenizer, "\n")
    rows = [{"messages": CONVERSATION[:1]}] + [{"messages": CONVERSATION}] * 3
    with pytest.raises(UserError, match="1 of 4 sampled conversations have no assistant tokens"):
        check_masks(prepared, rows, 512)


def test_token_statistics_and_truncated_share_of_the_training_set(tokenizer):
    prepared, _ = prepare_tokenizer(tokenizer, "\n")
    longer = [CONVERSATION[0], {"role": "assistant", "content": "cachai que mañana vamos al estadio, ya po"}]
    rows = [{"messages": CONVERSATION}, {"messages": longer}] * 2
    short, long = (len(encode_chat(prepared, r["messages"])["input_ids"]) for r in rows[:2])
    stats = check_masks(prepared, rows, short)  # a conversation exactly max_length long is not truncated
    assert stats["truncated_share"] == 0.5
    assert stats["max_tokens"] == long and stats["mean_tokens"] == (short + long) / 2
    assert check_masks(prepared, rows, long)["truncated_share"] == 0.0


def run_train_stage(root, overrides: dict) -> subprocess.CompletedProcess:
    """`python -m stages.train` as `dvc repro` runs it, in a project folder holding only params and configs."""
    write_params(root, overrides)
    shutil.copytree(REPO / "configs", root / "configs")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HABLA_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "stages.train"], cwd=root, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"train": {"max_steps": "abc"}}, "`train.max_steps` is 'abc'"),
        ({"train": {"max_stepz": 3}}, "max_stepz"),
        ({"train": {"accelerate_profile": "tpu"}}, "train.accelerate_profile"),
        pytest.param(
            {"train": {"quantization": "4bit"}},
            "needs a CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has the GPU 4-bit needs"),
        ),
    ],
)
def test_a_wrong_train_param_is_one_sentence_before_any_worker_starts(tmp_path, overrides, says):
    done = run_train_stage(tmp_path, overrides)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], done.stderr


def test_a_workers_own_error_is_not_followed_by_the_launchers_traceback(tmp_path):
    """Valid params, but nothing to train on: the worker says so, and accelerate adds no CalledProcessError."""
    done = run_train_stage(tmp_path, {})
    assert done.returncode != 0
    assert "error: " in done.stderr
    assert "Traceback" not in done.stderr and "CalledProcessError" not in done.stderr, done.stderr


def test_step_history_puts_both_losses_on_the_optimizer_step_axis():
    from habla.model.checkpoints import EVAL_LOG, SFT_LOG, step_rows

    log = [
        {"loss": 2.5, "grad_norm": 0.3, "learning_rate": 0.002, "epoch": 0.2, "step": 10},
        {"loss": 2.25, "grad_norm": 0.2, "learning_rate": 0.001, "epoch": 0.4, "step": 20},
        {"eval_loss": 2.4, "eval_runtime": 0.5, "epoch": 0.4, "step": 20},
        {"train_runtime": 9.0, "train_loss": 2.4, "epoch": 0.4, "step": 20},
        {"eval_loss": 2.4, "eval_runtime": 0.4, "epoch": 0.4, "step": 20},
    ]
    train, validation = step_rows(log, SFT_LOG), step_rows(log, EVAL_LOG)
    assert train == [
        {"step": 10, "loss": 2.5, "learning_rate": 0.002, "grad_norm": 0.3},
        {"step": 20, "loss": 2.25, "learning_rate": 0.001, "grad_norm": 0.2},
    ]
    assert validation == [{"step": 20, "loss": 2.4}]


def test_dpo_step_rows_keep_the_rewards_and_skip_entries_without_them():
    from habla.model.checkpoints import DPO_LOG, step_rows

    rewards = {"rewards/chosen": 0.1, "rewards/rejected": -0.2, "rewards/margins": 0.3, "rewards/accuracies": 0.75}
    log = [
        {"loss": 0.69314718, **rewards, "step": 1},
        {"loss": 0.5, "step": 2},  # no rewards logged: not a DPO row
        {"train_runtime": 3.0, "train_loss": 0.6, "step": 2},
    ]
    assert step_rows(log, DPO_LOG) == [
        {"step": 1, "loss": 0.693147, "rewards_chosen": 0.1, "rewards_rejected": -0.2, "margins": 0.3, "accuracy": 0.75}
    ]


def word_tokenizer(specials: list[str], eos: str, pad: str | None = None):
    """A tokenizer whose vocabulary is exactly `specials` plus a few words: which pad exists is under control."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {token: index for index, token in enumerate([*specials, "hola", "ya", "po", "[UNK]"])}
    core = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token=pad)
    tokenizer.add_special_tokens({"extra_special_tokens": specials}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHATML
    return tokenizer


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize(
    ("specials", "expected"),
    [
        (["<|im_start|>", "<|im_end|>", "<|endoftext|>"], "<|endoftext|>"),  # SmolLM2, most ChatML models
        (["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|fim_pad|>"], "<|fim_pad|>"),  # Qwen: a pad by name
        (["<|im_start|>", "<|im_end|>", "<|reserved_special_token_3|>"], "<|reserved_special_token_3|>"),  # Llama 3
    ],
)
def test_pad_is_a_spare_token_the_vocabulary_already_has(specials, expected):
    from habla.model.guards import choose_pad

    tokenizer = word_tokenizer(specials, eos="<|im_end|>", pad="<|im_end|>")  # pad = EOS, as SmolLM2 ships
    pad, note = choose_pad(tokenizer, {tokenizer.eos_token_id})
    assert pad == expected and "already in the vocabulary" in note


def test_pad_is_never_a_stop_token_or_a_turn_token_and_is_added_only_when_nothing_is_spare():
    from habla.model.guards import choose_pad

    tokenizer = word_tokenizer(["<|im_start|>", "<|im_end|>", "<|endoftext|>"], eos="<|im_end|>")
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    pad, note = choose_pad(tokenizer, {tokenizer.eos_token_id, endoftext})  # Qwen stops on <|endoftext|> too
    assert pad == PAD and note.startswith("added")
    prepared, notes = prepare_tokenizer(tokenizer, "\n", [tokenizer.eos_token_id, endoftext])
    assert prepared.pad_token == PAD and notes["trained_rows"] == [PAD]  # its row is saved with the adapter
