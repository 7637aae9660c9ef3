"""The one model loader, and the chat format every stage shares.

`train`, `perplexity`, `judge` and `chat` must see conversations rendered the same
way and mask the same tokens, or the metrics measure something other than what
was trained. So the template, the device choice and the loading of base model
plus adapter live here and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

import torch

from habla import paths
from habla.errors import UserError
from habla.model.templates import IM_END, IM_START

log = logging.getLogger(__name__)

BUILTIN = "builtin-tiny"
GGUF = "gguf"  # a local .gguf file, dequantized by `base` into models/base (habla/model/gguf.py)

PAD, DOC_END = "<|pad|>", "<|endoftext|>"
SPECIAL_TOKENS = [DOC_END, PAD, IM_START, IM_END]


def special_separator(separator: str) -> str | None:
    """A separator like `<|msg_sep|>` must be one token, or the model learns to spell it out."""
    return separator if re.fullmatch(r"<[^<>\s]+>", separator) else None


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype() -> torch.dtype:
    """bf16 where the GPU supports it, fp32 otherwise (fp16 LoRA training is fragile; CPU bf16 is slow)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def base_reference() -> tuple[str, str | None]:
    """Where to load the base model from (path or hub id) and at which revision, as the `base` stage recorded it."""
    if not paths.SOURCE_FILE.exists():
        raise UserError(f"{paths.SOURCE_FILE} is missing: run the `base` stage first (`dvc repro base`).")
    source = json.loads(paths.SOURCE_FILE.read_text(encoding="utf-8"))
    if source["kind"] in (BUILTIN, GGUF):
        return str(paths.BASE_MODEL), None
    return source["location"], source.get("commit")


def load_tokenizer(path: str | Path, revision: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), revision=revision)
    # transformers records how the tokenizer was loaded (`local_files_only` follows HF_HUB_OFFLINE) and writes it
    # back on save: the adapter's bytes would then depend on the shell it was trained from.
    tokenizer.init_kwargs.pop("local_files_only", None)
    return tokenizer


def require_cuda_for(quantization: str) -> None:
    if quantization == "4bit" and not torch.cuda.is_available():
        raise UserError(
            "train.quantization: 4bit (QLoRA) needs a CUDA GPU, and none is visible. "
            "Use `-S train.quantization=none` on this machine, or run on a GPU machine."
        )


def qlora_config():
    """QLoRA's base quantization: nf4 with double quantization, bf16 compute (Dettmers et al. 2023)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_base(quantization: str = "none", dtype: torch.dtype | str | None = None, attention: str | None = None):
    """The base model and its tokenizer, ready for inference or LoRA (compute dtype unless `dtype` says otherwise;
    transformers' default attention unless `attention` names one)."""
    from transformers import AutoModelForCausalLM

    location, revision = base_reference()
    kwargs: dict = {"dtype": dtype or compute_dtype(), "revision": revision}
    if attention:
        kwargs["attn_implementation"] = attention
    require_cuda_for(quantization)
    if quantization == "4bit":
        kwargs["quantization_config"] = qlora_config()
    try:
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as err:
        raise UserError(offline_hint(location, err)) from None
    return model, load_tokenizer(location, revision)


def has_preferred() -> bool:
    """Whether `prefer` left an adapter (it leaves only a note when `prefer.enabled` is false)."""
    return (paths.PREFERRED / "adapter_config.json").exists()


# What habla makes, in the order reports list them. In a per-persona instance `tuned` is the persona's own adapter
# and `conditioned` the speaker-conditioned one beside it (`load_evaluated`). stages/reference.py names them again
# (it imports no torch, and habla/model/__init__.py is plumbing no stage depends on).
MODELS = ("base", "conditioned", "tuned", "preferred")
ADAPTER_NAMES = {"tuned": "default", "preferred": "preferred", "conditioned": "conditioned"}  # PEFT's name for each


def models_in(model) -> list[str]:
    """The models a loaded model can run as (see `as_model`): the base always, `tuned` and `preferred` where their
    adapters are loaded. The one answer to "which models exist" for every stage and app that runs them."""
    adapters = getattr(model, "peft_config", {})
    return [name for name in MODELS if name == "base" or ADAPTER_NAMES[name] in adapters]


def load_tuned(
    dtype: torch.dtype | str | None = None,
    preferred: bool = False,
    trainable: bool = False,
    quantization: str = "none",
    conditioned: bool = False,
):
    """Base model with the SFT adapter (PEFT's `default`), with `preferred` also the preference-tuned adapter
    (`preferred`, when `prefer` made one), with `conditioned` the speaker-conditioned adapter (a per-persona
    instance compares its own with it), and the tokenizer saved with the adapter. Switch with `as_model`.

    `trainable` (the `prefer` stage) keeps the SFT adapter's weights trainable and leaves placement to the trainer.
    """
    from peft import PeftModel

    if not (paths.ADAPTER / "adapter_config.json").exists():
        raise UserError(f"{paths.ADAPTER} has no adapter: run the `train` stage first (`dvc repro train`).")
    base, _ = load_base(quantization, dtype=dtype)
    tokenizer = load_tokenizer(paths.ADAPTER)
    if base.get_input_embeddings().num_embeddings < len(tokenizer):  # rows `train` added (their values are saved)
        base.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(base, str(paths.ADAPTER), is_trainable=trainable)
    if preferred and has_preferred():
        model.load_adapter(str(paths.PREFERRED), adapter_name="preferred")
    if conditioned:
        if not (paths.CONDITIONED_ADAPTER / "adapter_config.json").exists():
            raise UserError(f"{paths.CONDITIONED_ADAPTER} has no adapter: run the `train` stage first.")
        model.load_adapter(str(paths.CONDITIONED_ADAPTER), adapter_name=ADAPTER_NAMES["conditioned"])
    if not trainable:
        model.to(device()).eval()
    return model, tokenizer


def load_evaluated():
    """What an evaluation stage compares, on one base: the SFT and the preference-tuned adapter; in a per-persona
    instance the persona's own (`tuned`) and the speaker-conditioned one (`conditioned`)."""
    return load_tuned(preferred=not paths.PERSONA, conditioned=bool(paths.PERSONA))


def own_adapter(persona: str) -> str:
    """PEFT's name for a persona's own adapter loaded beside the others (`load_persona_adapters`)."""
    return f"persona-{persona}"


def load_persona_adapters(model, personas) -> dict[str, str]:
    """Every persona's own adapter (`train_persona@<id>`) onto the loaded base, once: id → the name `as_model`
    runs it under. A persona without one (its instance never ran) is left out; its requests go to the
    speaker-conditioned adapter."""
    loaded = {}
    for persona in personas:
        location = paths.persona_adapter(persona)
        if (location / "adapter_config.json").exists():
            model.load_adapter(str(location), adapter_name=own_adapter(persona))
            loaded[persona] = own_adapter(persona)
    if loaded:
        model.to(device()).eval()
    return loaded


@contextlib.contextmanager
def as_model(model, name: str):
    """Run as `base` (adapters off; a model loaded without adapters is the base already), `tuned` (SFT),
    `preferred` (preference-tuned), `conditioned`, or a persona's own adapter by its PEFT name within the block."""
    if name == "base":
        with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
            yield
        return
    previous = model.active_adapter
    model.set_adapter(ADAPTER_NAMES.get(name, name))
    try:
        yield
    finally:
        model.set_adapter(previous)


def offline_hint(location: str, err: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    hint = (
        "HF_HUB_OFFLINE is set, so only the local cache is searched. Download it once where there is network "
        f"(`hf download {location}`), copy the cache, or point `model.base` at a local folder."
        if offline
        else "Check the hub id or the path in `model.base` (and your network or HF token for gated models)."
    )
    return f"cannot load model `{location}`: {str(err).splitlines()[0]}\n{hint}"


def encode_chat(tokenizer, messages: list[dict], max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids and the assistant mask (1 on reply tokens and their end token) of one conversation."""
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(encoded["input_ids"]), list(encoded["assistant_masks"])
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": ids, "assistant_masks": mask}


def end_ids(model, tokenizer) -> list[int]:
    """Token ids that end a reply: the model's own end tokens plus the tokenizer's EOS (which `train` may have set).

    Chat models often end a turn with a token that is not the tokenizer's EOS
    (Gemma's `<end_of_turn>`, Llama 3's `<|eot_id|>`); their generation config lists it.
    """
    value = model.generation_config.eos_token_id
    ids = set(value) if isinstance(value, (list, tuple)) else ({value} if value is not None else set())
    return sorted(ids | {tokenizer.eos_token_id})
