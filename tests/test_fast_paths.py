"""Training's fast paths: each `auto` resolves as documented, reaches the trainer, and trains the same adapter as
the slow path it replaces (the full-logit loss, TRL's own loss step, a flattened packed batch)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import pytest
import torch

from habla import paths
from habla.errors import UserError
from habla.io import read_jsonl
from habla.model import fast_paths, training
from habla.model.fast_paths import resolve
from habla.params import Train, load_params
from tests.helpers import REPO, make_tiny_project, params_changed, write_params


def test_auto_on_a_machine_without_cuda_is_transformers_attention_padded_rows_and_the_torch_fused_head():
    fast = resolve(Train(), cuda=False)
    assert fast.record() == {
        "attention": None,
        "padding_free": False,
        "loss": "fused-torch",
        "token_metrics": False,
        "compile": False,
    }


def test_auto_with_cuda_and_flash_attention_installed_flattens_batches(monkeypatch):
    monkeypatch.setattr(fast_paths, "installed", lambda package: package in ("flash_attn", "triton"))
    fast = resolve(Train(packing=True), cuda=True)
    assert (fast.attention, fast.padding_free, fast.loss) == ("flash_attention_2", True, "fused-triton")
    assert resolve(Train(), cuda=True).padding_free is False  # unpacked rows keep their padding mask
    assert resolve(Train(packing=True, attention="sdpa"), cuda=True).padding_free is False
    with pytest.raises(UserError, match="flash_attention_3 needs a CUDA GPU and the `flash_attn_interface` package"):
        resolve(Train(attention="flash_attention_3"), cuda=True)
    assert resolve(Train(packing=True, padding_free=False), cuda=True).padding_free is False


def test_choices_the_machine_cannot_run_are_refused_in_one_sentence(monkeypatch, caplog):
    with pytest.raises(UserError, match="flash_attention_2 needs a CUDA GPU and the `flash_attn` package"):
        resolve(Train(attention="flash_attention_2"), cuda=False)
    with pytest.raises(UserError, match="token_metrics needs train.fused_loss"):
        resolve(Train(token_metrics=True, fused_loss=False), cuda=False)
    with pytest.raises(UserError, match="padding_free needs train.packing"):
        resolve(Train(padding_free=True), cuda=False)
    with caplog.at_level(logging.WARNING):
        assert resolve(Train(padding_free=True, packing=True), cuda=False).padding_free is True
    assert "attention over the whole batch" in caplog.text


def test_a_typo_in_a_fast_path_param_names_the_choices(tmp_path):
    write_params(tmp_path, {"train": {"padding_free": "yes"}})
    with pytest.raises(UserError, match=r"`train.padding_free` is 'yes', but it must be one of 'auto' or true or"):
        load_params(tmp_path / "params.yaml")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    with contextlib.chdir(root):
        make_tiny_project(root, {"train": {"grad_accum": 2, "max_steps": 3}})
        yield root


def trained(project, **settings) -> tuple[dict[str, torch.Tensor], object, object]:
    """LoRA weights after three optimizer steps of two micro-batches each, with `settings` on `train`."""
    from transformers import set_seed

    with contextlib.chdir(project):
        params = load_params()
        params = dataclasses.replace(params, train=dataclasses.replace(params.train, **settings))
        set_seed(params.train.seed)
        model, tokenizer, notes, fast = training.prepare_model(params)
        rows = read_jsonl(paths.split_file("train"))
        trainer, _ = training.build_trainer(
            params, model, tokenizer, fast, rows, None, trained_rows=notes["trained_rows"]
        )
        trainer.train()
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return weights, trainer, fast


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys() and first
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_fast_loss_step_trains_the_adapter_the_full_logit_loss_and_trls_own_step_train(project):
    """Scoring only the trained positions and skipping entropy change no gradient (grad accumulation included)."""
    fast, trainer, chosen = trained(project)
    full, _, full_choice = trained(project, fused_loss=False)
    trl_own, trl_trainer, _ = trained(project, token_metrics=True)
    assert (chosen.loss, full_choice.loss) == ("fused-torch", "full-logits")
    assert_same_weights(fast, full)
    assert_same_weights(fast, trl_own)
    assert not any("entropy" in entry for entry in trainer.state.log_history)
    assert any("entropy" in entry and "mean_token_accuracy" in entry for entry in trl_trainer.state.log_history)


def test_the_fused_head_projects_only_the_positions_in_the_loss_on_cpu(project):
    from trl.kernels import chunked_logprob

    _, trainer, _ = trained(project, max_steps=1)
    batch = next(iter(trainer.get_train_dataloader()))
    projected = []
    original = chunked_logprob.ChunkedLogProbFunction.apply

    def counting(hidden, *args):
        projected.append(hidden.shape[0])
        return original(hidden, *args)

    chunked_logprob.ChunkedLogProbFunction.apply = counting
    try:
        trainer.compute_loss(trainer.model, batch)
    finally:
        chunked_logprob.ChunkedLogProbFunction.apply = original
    trained_positions = int((batch["labels"][:, 1:] != -100).sum())
    assert projected == [trained_positions] and trained_positions < batch["labels"][:, 1:].numel() / 2


def test_packed_bins_as_rows_train_what_one_flattened_row_trains(project):
    """Rows with restarting position ids (SDPA's cheap layout) against TRL's flattened batch; no dropout, whose
    masks depend on the batch's shape."""
    from habla.model.sft import PackedRows

    lora = dataclasses.replace(load_params(project / "params.yaml").train.lora, dropout=0.0)
    rows, trainer, fast = trained(project, packing=True, lora=lora)
    flat, flat_trainer, flat_fast = trained(project, packing=True, padding_free=True, lora=lora)
    assert (fast.padding_free, flat_fast.padding_free) == (False, True)
    assert isinstance(trainer.data_collator, PackedRows) and not isinstance(flat_trainer.data_collator, PackedRows)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] > 1
    assert (batch["position_ids"] == 0).sum(dim=1).gt(1).any()  # at least one row holds several conversations
    assert next(iter(flat_trainer.get_train_dataloader()))["input_ids"].shape[0] == 1
    assert_same_weights(rows, flat)


def test_attention_and_compile_reach_the_model_and_the_trainer(project):
    from habla.model.sft import PersonaSFTTrainer

    with contextlib.chdir(project):
        params = load_params()
        params = dataclasses.replace(params, train=dataclasses.replace(params.train, attention="eager", compile=True))
        model, tokenizer, notes, fast = training.prepare_model(params)
        trainer, _ = training.build_trainer(
            params,
            model,
            tokenizer,
            fast,
            read_jsonl(paths.split_file("train")),
            None,
            trained_rows=notes["trained_rows"],
        )
    assert isinstance(trainer, PersonaSFTTrainer) and trainer.fast is fast
    assert trainer.model.get_base_model().config._attn_implementation == "eager"
    assert trainer.args.torch_compile is True and trainer.args.padding_free is False


def test_cheap_dropout_drops_at_the_rate_asked_and_keeps_the_expected_output():
    from habla.model.fast_paths import CheapDropout

    dropout = CheapDropout(0.05)
    x = torch.ones(2_000_003, requires_grad=True)  # not a multiple of the four lanes per draw
    torch.manual_seed(0)
    y = dropout(x)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - 0.05) < 4 * (0.05 * 0.95 / x.numel()) ** 0.5
    assert abs(y.double().mean().item() - 1.0) < 1e-3
    assert torch.unique(y).tolist() == [0.0, pytest.approx(dropout.scale)]
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient flows exactly through the kept elements, scaled alike
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)  # seeded like any torch dropout
    for lane in range(4):  # every 16-bit slice of a draw is as random as the others
        share = (y[lane::4] == 0).double().mean().item()
        assert abs(share - 0.05) < 4 * (0.05 * 0.95 / (x.numel() / 4)) ** 0.5
    dropout.eval()
    assert dropout(x) is x


def test_every_lora_dropout_of_the_trainer_is_the_cheap_one(project):
    from habla.model.fast_paths import CheapDropout

    _, trainer, _ = trained(project, max_steps=1)
    layers = [m for m in trainer.model.modules() if hasattr(m, "lora_dropout") and len(m.lora_dropout)]
    assert layers and all(isinstance(m.lora_dropout["default"], CheapDropout) for m in layers)
    assert {m.lora_dropout["default"].p for m in layers} == {0.05}
    lora = dataclasses.replace(load_params(project / "params.yaml").train.lora, dropout=0.0)
    _, plain, _ = trained(project, max_steps=1, lora=lora)
    assert not any(isinstance(m, CheapDropout) for m in plain.model.modules())


def test_the_train_launcher_refuses_a_fast_path_this_machine_cannot_run_before_any_worker(project, monkeypatch):
    import shutil

    from stages import train

    monkeypatch.setattr(train, "accelerate_launch", lambda *args: pytest.fail("workers were started"))
    shutil.copytree(REPO / "configs", project / "configs", dirs_exist_ok=True)
    with contextlib.chdir(project), params_changed(project, {"train": {"attention": "flash_attention_2"}}):
        with pytest.raises(UserError, match="flash_attention_2 needs a CUDA GPU"):
            train.launch()
