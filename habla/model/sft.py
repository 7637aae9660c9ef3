"""TRL's SFTTrainer with the fast paths `habla.model.fast_paths` chose: no per-step vocabulary metrics unless
asked, and packed rows that SDPA handles without attending across the whole batch (the loss head that scores
only trained tokens and the cheap dropout masks are switched on by `build_trainer`).

Where the time went on CPU before these (builtin model, `python -m benchmarks.train_throughput`): LoRA dropout's
random masks ~22% of a step, TRL's fused LM head ~14% (it scored every position, prompt and padding included,
then again in backward), entropy and accuracy a few percent more, and with packing, attention over a
2,048-token flattened row instead of eight 256-token rows. See BENCHMARKS.md for the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Trainer
from trl import SFTTrainer
from trl.trainer import utils as trl_utils
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from habla.model.fast_paths import FastPaths


@dataclass
class PackedRows:
    """Collate packed bins as rows, with position ids restarting at each conversation and no attention mask.

    transformers then builds a block-diagonal causal mask per row, so no conversation sees
    another. TRL's padding-free collator instead flattens the batch into one row, which flash
    attention's varlen kernel handles cheaply but SDPA pays for as attention over the whole batch
    (eight 256-token bins cost as much attention as one 2,048-token text).
    """

    pad_token_id: int

    def __post_init__(self):
        self.collate = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id, return_position_ids=True)

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collate(examples)
        del batch["attention_mask"]  # with a mask, transformers would ignore the restarts in position_ids
        return batch


class PersonaSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss step computes what `fast` asks for and nothing more."""

    def __init__(self, *args, fast: FastPaths, **kwargs):
        self.fast = fast
        super().__init__(*args, **kwargs)
        if self.args.packing and not fast.padding_free:
            self.data_collator = PackedRows(self.processing_class.pad_token_id)
        if not fast.token_metrics:
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            del base.forward  # TRL's head, which also computes entropy and top-1 hits for its metrics
            trl_utils.add_fused_lm_head(base, outputs=("log_probs",))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss when token metrics are asked for; otherwise the model's own loss (from the fused head or
        the full logits), with transformers' handling of gradient accumulation and multi-process token counts."""
        if self.fast.token_metrics:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = {**inputs, "use_cache": False}
        if self.fast.loss != "full-logits":
            inputs["fused_lm_head"] = True
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
