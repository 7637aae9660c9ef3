"""LoRA / QLoRA supervised fine-tuning: the one trainer construction, shared by the `train` stage and the
training benchmark.

The model arrives through `prepare_model`, which runs every guard (`habla/model/guards.py`) before an adapter
exists; checkpoints, resuming and saving live in `habla/model/checkpoints.py`, shared with `prefer`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from habla import paths
from habla.model.fast_paths import FastPaths, as_loaded, cheapen_lora_steps, resolve
from habla.model.guards import check_targets, prepare_tokenizer
from habla.model.loading import compute_dtype, end_ids, load_base
from habla.params import Params, Prefer, Train

log = logging.getLogger(__name__)


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


def final_eval_loss(trainer) -> float:
    """The validation loss at the last step: read from the log when the schedule evaluated there (it does when
    `eval_steps` divides the steps), computed once otherwise. Evaluating twice cost 100+ s on a real model."""
    logged = [e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == trainer.state.global_step]
    return float(logged[-1]["eval_loss"]) if logged else float(trainer.evaluate()["eval_loss"])
