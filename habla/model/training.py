"""LoRA / QLoRA supervised fine-tuning: the guards that catch silent mistakes, and the one trainer construction.

Shared by the `train` stage and the training benchmark. The guards check the mistakes that silently ruin
persona fine-tunes: LoRA targets that match nothing (or only part of a fused layer), a chat template with
no assistant mask, pad = EOS, an end-of-turn token outside the loss, a separator that is not a token, and
conversations whose first reply lies beyond `train.max_length` (TRL drops those without a word).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from habla import paths
from habla.errors import UserError
from habla.io import read_json, write_json
from habla.model.fast_paths import FastPaths, as_loaded, cheapen_lora_steps, resolve
from habla.model.loading import (
    PAD,
    compute_dtype,
    encode_chat,
    end_ids,
    load_base,
    special_separator,
)
from habla.model.templates import own_template, template_for_untemplated, training_template
from habla.params import Params, Prefer, Train, as_dict
from habla.plots import bin_width, histogram

log = logging.getLogger(__name__)

MASK_SAMPLE = 64
TRUNCATION_WARNING = 0.05
QUANTIZED_LINEAR = ("Linear4bit", "Linear8bitLt")


def prepare_tokenizer(tokenizer, separator: str, stop_ids: list[int] | None = None) -> tuple[object, dict]:
    """Give the tokenizer a training template with generation markers, a pad token and the separator.

    The notes say where the template came from and list `trained_rows`: tokens whose embedding rows the adapter
    trains and saves (a new separator, turn tokens a base model never learned, a pad that had to be added). Every
    other row stays the base model's, so the adapter holds no copy of the embedding matrix.
    """
    rows: list[str] = []
    if own_template(tokenizer):
        template, notes = training_template(tokenizer)
    else:
        template, end, turn_tokens, notes = template_for_untemplated(tokenizer)
        add_special(tokenizer, turn_tokens)
        tokenizer.eos_token = end
        rows += turn_tokens
    tokenizer.chat_template = template
    pad, pad_note = choose_pad(tokenizer, set(stop_ids or []) | {tokenizer.eos_token_id})
    if pad not in tokenizer.get_vocab():
        add_special(tokenizer, [pad])
        rows.append(pad)
    tokenizer.pad_token = pad
    notes["pad_token"] = pad_note
    token = special_separator(separator)
    if token and token not in tokenizer.get_vocab():
        add_special(tokenizer, [token])
        notes["separator_token"] = token
        rows.append(token)
    notes["trained_rows"] = rows
    return tokenizer, notes


def add_special(tokenizer, tokens: list[str]) -> None:
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)


PAD_NAMES = ("pad", "endoftext", "unk", "reserved")  # in order of preference, matched inside special tokens' names


def choose_pad(tokenizer, stop_ids: set[int]) -> tuple[str, str]:
    """A pad token the vocabulary already has and that is neither a stop token nor part of the chat format.

    Padding with EOS masks the stop token out of the loss (the model never learns to stop); adding a new pad
    resizes the vocabulary, and the adapter then carries the whole embedding matrix (236 MB for SmolLM2-135M).
    ChatML models have `<|endoftext|>`, Llama 3 has reserved tokens, Qwen `<|fim_pad|>`: one of those is used,
    and `<|pad|>` is added only where none exists.
    """
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], tokenize=False
    )
    specials = list(dict.fromkeys([*tokenizer.all_special_tokens, *tokenizer.added_tokens_encoder]))
    in_format = {t for t in specials if t in rendered} | {tokenizer.bos_token}
    usable = [t for t in specials if tokenizer.convert_tokens_to_ids(t) not in stop_ids and t not in in_format]
    current = tokenizer.pad_token
    if current is not None and current in usable:
        return current, f"the tokenizer's own {current}"
    for name in PAD_NAMES:
        for token in usable:
            if name in token.lower():
                return token, f"{token}, already in the vocabulary (the tokenizer's pad was {current})"
    return PAD, f"added {PAD}: the vocabulary has no spare special token (its row is saved with the adapter)"


def linear_module_names(model) -> set[str]:
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in QUANTIZED_LINEAR:
            names.add(name.rsplit(".", 1)[-1])
    return names - {"lm_head"}


def check_targets(model, target_modules: str | list[str]) -> list[str]:
    """Every named target must exist: Phi-3's fused `qkv_proj` silently ignores `q_proj/k_proj/v_proj`."""
    available = linear_module_names(model)
    if target_modules == "all-linear":
        return sorted(available)
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    missing = [t for t in targets if t not in available]
    if missing:
        raise UserError(
            f"train.lora.target_modules {missing} match no layer of this model. Its linear layers are: "
            f"{', '.join(sorted(available))}. Use `all-linear` or names from that list (fused models such as "
            "Phi-3 have `qkv_proj` and `gate_up_proj` instead of q/k/v and gate/up)."
        )
    return targets


def encode_or_explain(tokenizer, messages: list[dict]) -> dict[str, list[int]]:
    """encode_chat, with a template's own refusal (Gemma rejects system turns) turned into advice."""
    from jinja2 import TemplateError

    try:
        return encode_chat(tokenizer, messages)
    except TemplateError as err:
        raise UserError(
            f"the model's chat template refuses a training conversation: {err}. Gemma-style templates accept no "
            "system turn and need strict user/assistant alternation starting with the user: set "
            "`persona.system_prompt: ''` and `group.persona_opens: trim` (or `opener`)."
        ) from None


def check_masks(tokenizer, conversations: list[dict], max_length: int, stop_ids: list[int] | None = None) -> dict:
    """The assistant mask must be non-empty and contain a token that ends a reply; report truncation.

    `stop_ids` are the ids generation stops at (see `end_ids`): the model must be
    trained to produce one of them, whether it is the tokenizer's EOS or a
    family's end-of-turn token such as Gemma's `<end_of_turn>`.
    """
    stops = set(stop_ids or [tokenizer.eos_token_id])
    empty, no_eos, unlearnable, lengths = 0, 0, 0, []
    for index, conversation in enumerate(conversations):
        encoded = encode_or_explain(tokenizer, conversation["messages"])
        lengths.append(len(encoded["input_ids"]))
        unlearnable += not any(encoded["assistant_masks"][:max_length])
        if index < MASK_SAMPLE:
            masked = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
            empty += not masked
            no_eos += not stops & set(masked)
    truncated = sum(length > max_length for length in lengths)
    if empty:
        raise UserError(
            f"{empty} of {min(len(conversations), MASK_SAMPLE)} sampled conversations have no assistant tokens in "
            "the loss mask: the chat template does not mark assistant turns. Report the model name; "
            "meanwhile set a template with {% generation %} markers."
        )
    if no_eos:
        raise UserError(
            f"in {no_eos} sampled conversations no end-of-reply token "
            f"({tokenizer.convert_ids_to_tokens(sorted(stops))}) is inside the loss mask, "
            "so the model would never learn to stop. Use a template whose generation block includes the end token."
        )
    if unlearnable == len(conversations):
        raise UserError(
            f"no training conversation has a persona reply within its first train.max_length={max_length} tokens "
            "(a long system prompt, or the family's default one, fills the window): raise train.max_length."
        )
    if unlearnable:
        # TRL drops these silently ("Dropping fully masked examples"): say how many the run loses.
        log.warning(
            "%d of %d training conversations have no persona reply within train.max_length=%d tokens and "
            "will not be trained on",
            unlearnable,
            len(conversations),
            max_length,
        )
    share = truncated / max(len(lengths), 1)
    if share > TRUNCATION_WARNING:
        log.warning(
            "%.1f%% of training conversations are longer than train.max_length=%d and will be truncated",
            100 * share,
            max_length,
        )
    return {
        "histogram": histogram(lengths, bin_width(max(lengths)), "tokens", "conversations"),
        "truncated_share": share,
        "dropped_no_reply_in_window": unlearnable,
        "max_tokens": max(lengths),
        "mean_tokens": sum(lengths) / max(len(lengths), 1),
    }


def runtime_args() -> dict:
    """What both trainers (SFT and DPO) take from the machine rather than from params: bf16 where the GPU has it,
    the CPU where there is no GPU, no third-party reporting (dvclive is added by the stages), no progress bars."""
    return {
        "bf16": compute_dtype() == torch.bfloat16,
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",
        "disable_tqdm": True,
    }


def schedule_args(settings: Train | Prefer) -> dict:
    """The optimisation schedule both trainers take from their params section (`train` or `prefer`)."""
    return {
        "seed": settings.seed,
        "max_steps": settings.max_steps,
        "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.grad_accum,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler,
        # transformers 5 dropped `warmup_ratio`; a `warmup_steps` below 1 is read as that share of the total steps.
        "warmup_steps": settings.warmup_ratio,
    }


def sft_config(params: Params, fast: FastPaths, output_dir: Path = paths.CHECKPOINTS, evaluate: bool = True):
    """TRL settings from params and the resolved fast paths; `evaluate=False` (benchmarks) trains without
    evaluation or checkpoints."""
    from trl import SFTConfig

    settings = params.train
    every = "steps" if evaluate else "no"
    return SFTConfig(
        output_dir=str(output_dir),
        **schedule_args(settings),
        per_device_eval_batch_size=settings.batch_size,
        max_length=settings.max_length,
        packing=settings.packing,
        padding_free=fast.padding_free,
        torch_compile=fast.compile,
        assistant_only_loss=True,
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing else None,
        eval_strategy=every,
        eval_steps=settings.eval_steps,
        save_strategy=every,
        save_steps=settings.eval_steps,
        save_total_limit=2,
        logging_steps=min(10, settings.eval_steps),  # a short run still gets a training curve
        include_num_input_tokens_seen="non_padding",
        **runtime_args(),
    )


def token_rows(model, tokenizer, tokens: list[str]) -> list[int] | dict[str, list[int]] | None:
    """PEFT's `trainable_token_indices` for `tokens`: their rows alone are trained and saved with the adapter.

    A list covers the input embedding (and a head tied to it); an untied head gets the same rows named
    explicitly, or the new tokens' output rows would stay at their random start and never be saved.
    """
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if not ids:
        return None
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is embedding.weight:
        return ids
    names = {module: name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    return {names[embedding]: ids, names[head]: ids}


def lora_config(params: Params, token_ids: list[int] | dict[str, list[int]] | None):
    from peft import LoraConfig

    lora = params.train.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        task_type="CAUSAL_LM",
        trainable_token_indices=token_ids or None,
    )


def run_fingerprint(params: Params) -> str:
    """What a checkpoint must match to be resumed: training params, base model and training data."""
    settings = {k: v for k, v in as_dict(params.train).items() if k != "resume"}
    digest = hashlib.blake2b(digest_size=16)
    digest.update(
        json.dumps(
            [settings, as_dict(params.model), as_dict(params.builtin), params.group.separator], sort_keys=True
        ).encode()
    )
    for path in (paths.split_file("train"), paths.split_file("val"), paths.SOURCE_FILE):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def finished(checkpoint: str | None) -> bool:
    """Whether a checkpoint is the last step of its run (its trainer state says so)."""
    if not checkpoint or not (state := Path(checkpoint) / "trainer_state.json").exists():
        return False
    recorded = read_json(state)
    return recorded.get("max_steps", 0) > 0 and recorded.get("global_step", 0) >= recorded["max_steps"]


def resumable_checkpoint(params: Params) -> str | None:
    """`train`'s checkpoint to resume, if any (see `resumable_in`)."""
    return resumable_in(paths.CHECKPOINTS, run_fingerprint(params), params.train.resume)


def resumable_in(folder: Path, fingerprint: str, resume: str) -> str | None:
    """The last checkpoint in `folder` of an interrupted run with the same fingerprint; stale checkpoints are removed.

    Without the fingerprint, `-S train.lora.r=4` would try to resume a rank-8 checkpoint.
    A finished run is not resumed either: DVC reruns a stage with unchanged params
    only when its code changed, and "resuming" at the last step would train nothing
    and report a meaningless loss.
    """
    from transformers.trainer_utils import get_last_checkpoint

    marker = folder / "run.json"
    stale = resume != "auto" or not marker.exists() or read_json(marker).get("fingerprint") != fingerprint
    if folder.is_dir() and (stale or finished(get_last_checkpoint(str(folder)))):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"fingerprint": fingerprint})
    checkpoint = get_last_checkpoint(str(folder))
    if checkpoint:
        log.info("resuming the interrupted run from %s", checkpoint)
    return checkpoint


def resume_and_log(trainer, folder: Path, fingerprint: str, resume: str, live_dir: Path) -> str | None:
    """The checkpoint every process resumes from, and dvclive logging on the main process.

    Call it once the trainer exists: its accelerator starts the process group (on CPU an earlier PartialState() would
    see one process). The main process decides (`resumable_in` removes stale checkpoints); the others wait for it
    and read what it left, so every rank resumes from the same step.
    """
    from accelerate import PartialState
    from transformers.trainer_utils import get_last_checkpoint

    state = PartialState()
    checkpoint = resumable_in(folder, fingerprint, resume) if state.is_main_process else None
    state.wait_for_everyone()
    if not state.is_main_process:
        return get_last_checkpoint(str(folder))
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    # dvcyaml=None: by default dvclive rewrites our dvc.yaml.
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=checkpoint is not None)
    trainer.add_callback(DVCLiveCallback(live=live, log_model=None))
    return checkpoint


def prepare_model(params: Params):
    """Base model and tokenizer with every guard passed, ready for the adapter, and the fast paths it loaded with."""
    settings = params.train
    fast = resolve(settings)
    model, tokenizer = load_base(settings.quantization, attention=fast.attention)
    fast = as_loaded(fast, model)
    tokenizer, notes = prepare_tokenizer(tokenizer, params.group.separator, end_ids(model, tokenizer))
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    notes["targets"] = check_targets(model, settings.lora.target_modules)
    if settings.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    return model, tokenizer, notes, fast


def expose_head_bias(model) -> None:
    """TRL's fused loss reads `lm_head.bias`; PEFT's trainable-token wrapper (put on a tied head when a new
    separator token is trained) forwards only `.weight`, so training crashed. Give the wrapper the wrapped
    layer's bias (TRL 1.16, PEFT 0.21)."""
    head = model.get_output_embeddings()
    if head is not None and not hasattr(head, "bias") and hasattr(head, "original_module"):
        head.bias = getattr(head.original_module, "bias", None)


def messages_dataset(rows: list[dict]):
    """The split's conversations as TRL's conversational dataset (only `messages`: ids and sources stay out)."""
    from datasets import Dataset

    return Dataset.from_list([{"messages": r["messages"]} for r in rows])


def build_trainer(
    params: Params,
    model,
    tokenizer,
    fast: FastPaths,
    train_rows: list[dict],
    val_rows: list[dict] | None,
    callbacks: list | None = None,
    output_dir: Path = paths.CHECKPOINTS,
    trained_rows: list[str] = (),
):
    """The one SFTTrainer construction, shared by the stage and the training benchmark; `trained_rows` are the
    tokens `prepare_tokenizer` listed for training."""
    from habla.model.sft import PersonaSFTTrainer

    trainer = PersonaSFTTrainer(
        model=model,
        fast=fast,
        args=sft_config(params, fast, output_dir, evaluate=val_rows is not None),
        train_dataset=messages_dataset(train_rows),
        eval_dataset=messages_dataset(val_rows) if val_rows is not None else None,
        processing_class=tokenizer,
        peft_config=lora_config(params, token_rows(model, tokenizer, list(trained_rows))),
        callbacks=callbacks or [],
    )
    expose_head_bias(trainer.model)
    # compiled graphs want one shape per batch size, so compile keeps TRL's every-position head
    cheapen_lora_steps(trainer.model, compact_loss=fast.loss != "full-logits" and not fast.compile)
    adapted = sorted(
        {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in trainer.model.named_parameters() if "lora_A" in n}
    )
    trainable, total = trainer.model.get_nb_trainable_parameters()
    log.info("LoRA on %s: %d trainable of %d parameters (%.2f%%)", adapted, trainable, total, 100 * trainable / total)
    return trainer, {"adapted_modules": adapted, "trainable_parameters": trainable, "total_parameters": total}


def save_adapter(trainer, folder: Path, tokenizer, adapter: str = "default") -> dict:
    """Save one adapter with its tokenizer, reproducibly and without copies of base weights; call on every rank.

    `save_embedding_layers=False`: rows `train` added are saved through PEFT's trainable tokens, so the adapter
    never needs PEFT's "the vocabulary was resized, save both whole matrices" default. The state dict is
    gathered on every rank (FSDP shards it) and written by the main process. Returns sizes for the report.
    """
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if not trainer.accelerator.is_main_process:
        return {}
    shutil.rmtree(folder, ignore_errors=True)
    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(
        str(folder), state_dict=state_dict, selected_adapters=[adapter], save_embedding_layers=False
    )
    sort_target_modules(folder / "adapter_config.json")
    tokenizer.save_pretrained(str(folder))
    trainable = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
    size = sum(f.stat().st_size for f in folder.glob("adapter_model*"))
    return {"adapter_bytes": size, "trainable_bytes": trainable, "adapter_to_trainable": round(size / trainable, 3)}


def sort_target_modules(config_path: Path) -> None:
    """PEFT saves `target_modules` from a set, in hash order, so the same run wrote a different file (and a new
    DVC hash for the adapter, rerunning every stage after it) in each process. Sorted, the file is reproducible."""
    config = read_json(config_path)
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def final_eval_loss(trainer) -> float:
    """The validation loss at the last step: read from the log when the schedule evaluated there (it does when
    `eval_steps` divides the steps), computed once otherwise. Evaluating twice cost 100+ s on a real model."""
    logged = [e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == trainer.state.global_step]
    return float(logged[-1]["eval_loss"]) if logged else float(trainer.evaluate()["eval_loss"])


def step_history(log_history: list[dict]) -> tuple[list[dict], list[dict]]:
    """The trainer's log as two plot tables keyed by optimizer step: (training rows, validation rows).

    dvclive's own series count logging calls, not optimizer steps, and split train and validation loss into
    separate charts; these tables put both losses on one axis that means something.
    """
    train, validation = [], {}
    for entry in log_history:
        if "loss" in entry:
            row = {"step": entry["step"], "loss": round(float(entry["loss"]), 6)}
            row.update({k: round(float(entry[k]), 8) for k in ("learning_rate", "grad_norm") if k in entry})
            train.append(row)
        if "eval_loss" in entry:  # the evaluation after training repeats the last step's: one point per step
            validation[entry["step"]] = {"step": entry["step"], "loss": round(float(entry["eval_loss"]), 6)}
    return train, list(validation.values())
