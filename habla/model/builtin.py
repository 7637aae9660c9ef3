"""The builtin base model: a byte-level BPE tokenizer and a small Llama trained here, offline, on CPU."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path

import torch

from habla import paths
from habla.errors import UserError
from habla.io import read_jsonl
from habla.model.loading import DOC_END, IM_END, PAD, SPECIAL_TOKENS, offline_hint
from habla.model.templates import CHATML_TRAINING_TEMPLATE
from habla.params import Builtin, Model

log = logging.getLogger(__name__)


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (any UTF-8 text, emojis included, encodes without unknowns) with the chat tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=PAD,
        extra_special_tokens={"doc_end": DOC_END},
        chat_template=CHATML_TRAINING_TEMPLATE,
        model_max_length=4096,
        padding_side="right",
    )


def corpus(tokenizer, conversations: list[dict], documents: list[dict]) -> list[str]:
    rendered = [tokenizer.apply_chat_template(c["messages"], tokenize=False) for c in conversations]
    return [text + DOC_END for text in rendered + [d["text"] for d in documents]]


def token_blocks(tokenizer, texts: list[str], context: int) -> torch.Tensor:
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    usable = (len(ids) // context) * context
    if usable == 0:
        raise UserError(f"the train split has {len(ids)} tokens, fewer than one block of base.context={context}.")
    return torch.tensor(ids[:usable]).view(-1, context)


def build_model(tokenizer, settings: Builtin):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.hidden_size * 8 // 3,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        max_position_embeddings=settings.context,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def pretrain(model, blocks: torch.Tensor, settings: Builtin) -> dict:
    """A plain causal-LM loop: a few hundred steps on CPU need no Trainer machinery, and stay deterministic."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, settings.max_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(step, settings.max_steps) / settings.max_steps))
        ),
    )
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(settings.max_steps):
        batch = blocks[torch.randint(len(blocks), (settings.batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == settings.max_steps:
            log.info("base step %d/%d loss %.3f", step + 1, settings.max_steps, sum(losses[-50:]) / len(losses[-50:]))
    seconds = time.perf_counter() - start
    return {
        "steps": settings.max_steps,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "seconds": seconds,
        "tokens_per_second": settings.max_steps * settings.batch_size * blocks.shape[1] / seconds,
    }


def build_builtin(settings: Builtin) -> dict:
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    # The chats' language without their framing: a system prompt (one persona's, repeated in every example) is not
    # data, and an edit to it must not make a new base, which would retrain every persona's adapter.
    conversations = [
        {"messages": [m for m in c["messages"] if m["role"] != "system"]} for c in read_jsonl(paths.split_file("train"))
    ]
    documents = read_jsonl(paths.document_split("train"))
    raw_texts = [m["content"] for c in conversations for m in c["messages"]] + [d["text"] for d in documents]
    tokenizer = train_tokenizer(raw_texts, settings.vocab_size)
    blocks = token_blocks(tokenizer, corpus(tokenizer, conversations, documents), settings.context)
    model = build_model(tokenizer, settings)
    log.info(
        "builtin-tiny: %.2fM parameters, %d blocks of %d tokens",
        model.num_parameters() / 1e6,
        len(blocks),
        settings.context,
    )
    stats = pretrain(model, blocks, settings)
    model.generation_config.eos_token_id = [
        tokenizer.convert_tokens_to_ids(IM_END),
        tokenizer.convert_tokens_to_ids(DOC_END),
    ]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(paths.BASE_MODEL)
    tokenizer.save_pretrained(paths.BASE_MODEL)
    return {"parameters": model.num_parameters(), "train_tokens": blocks.numel(), "vocab_size": len(tokenizer), **stats}


def resolve_external(settings: Model) -> dict:
    """Check that a hub id or local path loads (offline when HF_HUB_OFFLINE is set) and record it."""
    from transformers import AutoConfig

    location = settings.base
    if Path(location).expanduser().is_dir():
        path = Path(location).expanduser().resolve()
        config = AutoConfig.from_pretrained(path)
        return {"kind": "local", "location": str(path), "model_type": config.model_type}
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        path = snapshot_download(
            location,
            revision=settings.revision,
            local_files_only=offline,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
        config = AutoConfig.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - hub errors come in many types; all mean the same to the user
        raise UserError(offline_hint(location, err)) from None
    return {
        "kind": "hub",
        "location": location,
        "revision": settings.revision,
        "commit": Path(path).name,
        "model_type": config.model_type,
    }
