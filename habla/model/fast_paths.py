"""What `train`'s speed settings become on this machine: each `auto` resolved once, checked, and recorded.

The choices depend on the machine (CUDA, installed kernels), not only on params, so the
resolved values go into `models/adapter/training_params.json` next to the params: a run
on a laptop and one on an H100 say which paths each took. Light on purpose (torch and
importlib; TRL only inside the function that needs it): the launcher checks the choices
before any worker starts. The two pieces that every LoRA trainer here switches on (SFT and
DPO alike) live here too: cheaper dropout masks on CPU and a loss head that scores only the
trained tokens.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import asdict, dataclass

import torch

from habla.errors import UserError
from habla.params import Train

log = logging.getLogger(__name__)

FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


@dataclass(frozen=True)
class FastPaths:
    attention: str | None  # transformers' attn_implementation (None: its default for the architecture)
    padding_free: bool  # packed batches flattened into one row with position ids (for varlen flash kernels)
    loss: str  # fused-triton | fused-torch | full-logits
    token_metrics: bool
    compile: bool

    def record(self) -> dict:
        return asdict(self)


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def resolve(settings: Train, cuda: bool | None = None) -> FastPaths:
    """Turn every `auto` into a choice for this machine; refuse a choice the machine cannot run."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    attention = settings.attention
    if attention == "auto":
        # transformers' own default otherwise: SDPA where the architecture supports it (Gemma 2 does not)
        attention = "flash_attention_2" if cuda and installed(FLASH_PACKAGES["flash_attention_2"]) else None
    if attention in FLASH_PACKAGES and not (cuda and installed(FLASH_PACKAGES[attention])):
        raise UserError(
            f"train.attention: {attention} needs a CUDA GPU and the `{FLASH_PACKAGES[attention]}` package "
            f"({'installed' if installed(FLASH_PACKAGES[attention]) else 'not installed'}, "
            f"{'a GPU is visible' if cuda else 'no GPU visible'}). Use `auto` or `sdpa`."
        )
    varlen = attention in FLASH_PACKAGES
    padding_free = varlen and settings.packing if settings.padding_free == "auto" else settings.padding_free
    if padding_free and not settings.packing:
        raise UserError(
            "train.padding_free needs train.packing: TRL cannot cut unpacked conversations to train.max_length "
            "once they are flattened. Set `train.packing: true` or `train.padding_free: auto`."
        )
    if padding_free and not varlen:
        log.warning(
            "train.padding_free is on without flash attention: one flattened row costs attention over the whole "
            "batch; `auto` flattens only with flash attention",
        )
    fused = settings.fused_loss in ("auto", True)
    if settings.token_metrics and not fused:
        raise UserError(
            "train.token_metrics needs train.fused_loss (TRL computes entropy and accuracy in its fused LM head): "
            "set one of them back to its default."
        )
    loss = ("fused-triton" if cuda and installed("triton") else "fused-torch") if fused else "full-logits"
    return FastPaths(attention, padding_free, loss, settings.token_metrics, settings.compile)


def as_loaded(fast: FastPaths, model) -> FastPaths:
    """The record with the attention the model actually loaded with (what `auto` left to transformers)."""
    return dataclasses.replace(fast, attention=model.config._attn_implementation)


def score_loss_positions_only() -> None:
    """Make TRL's fused LM head project only the positions whose label is trained, on every device.

    TRL 1.16 compacts to those positions only on Triton devices: elsewhere it scores every
    position so that compiled graphs keep one shape (Neuron). Eager CPU has no such constraint,
    and with the loss on persona replies most positions are prompt or padding. The head's math
    is unchanged: the skipped positions were multiplied by zero.
    """
    from trl.trainer import utils as trl_utils

    triton_device = trl_utils._use_triton
    if getattr(triton_device, "compacts_everywhere", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or triton_device(device)

    compact.compacts_everywhere = True
    trl_utils._use_triton = compact


class CheapDropout(torch.nn.Module):
    """Dropout whose mask comes from 16-bit slices of 64-bit random integers, on CPU.

    torch's CPU dropout draws one random float per element (`bernoulli_`), and LoRA draws a
    fresh mask for each adapted projection of every layer: about a quarter of a CPU training
    step. One 64-bit draw gives four 16-bit lanes at a fraction of the cost. The drop
    probability is rounded to a multiple of 1/65536 (0.05 becomes 0.050003) and survivors are
    scaled by its exact inverse, so the expected output is the input, as with `nn.Dropout`.
    CUDA's dropout is already fast and is used there.
    """

    LANES = 65536

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * self.LANES)
        self.scale = self.LANES / (self.LANES - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.threshold:
            return x
        if x.device.type != "cpu":
            return torch.nn.functional.dropout(x, self.p, training=True)
        count = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, (-(-count // 4),), dtype=torch.int64)
        lanes = words.view(torch.int16)[:count].view(x.shape)
        keep = (lanes >= self.threshold - self.LANES // 2).to(x.dtype).mul_(self.scale)
        return x * keep


def cheapen_lora_steps(model, compact_loss: bool = True) -> None:
    """What every LoRA trainer here switches on once it is built (SFT and DPO alike): `CheapDropout` for each LoRA
    dropout with p > 0 (TRL's `ref` adapter copy included) and, unless `compact_loss` is off, a loss head that
    scores only the trained positions."""
    if compact_loss:
        score_loss_positions_only()
    for module in model.modules():
        for name, dropout in getattr(module, "lora_dropout", {}).items():
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                module.lora_dropout[name] = CheapDropout(dropout.p)
