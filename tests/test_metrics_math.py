import math

import numpy as np
import pytest
import torch

from stages.judge import cut_before_last_reply, verdict, win_rate
from stages.metrics_math import bootstrap_interval, masked_nll, perplexity_interval


def test_masked_nll_counts_only_marked_targets_by_hand():
    # Vocabulary of 3. Row 0 predicts token 1 from position 0 with logits [0, ln 3, 0]: p = 3/5.
    logits = torch.zeros((2, 3, 3))
    logits[0, 0] = torch.tensor([0.0, math.log(3), 0.0])
    logits[0, 1] = torch.tensor([5.0, 0.0, 0.0])  # would be a large loss for target 2, but it is masked out
    ids = torch.tensor([[0, 1, 2], [0, 2, 0]])
    mask = torch.tensor([[0, 1, 0], [0, 1, 0]])  # row 1: token 2 from uniform logits, then padding
    nll, count = masked_nll(logits, ids, mask)
    assert nll[0].item() == pytest.approx(-math.log(3 / 5))
    assert nll[1].item() == pytest.approx(math.log(3))
    assert count.tolist() == [1.0, 1.0]


def test_position_swap_turns_inconsistent_verdicts_into_ties():
    assert verdict("A", "B") == "tuned"  # tuned preferred in both positions
    assert verdict("B", "A") == "base"
    assert verdict("A", "A") == "tie"  # always the first answer: position bias
    assert verdict("C", "B") == "tie"
    assert win_rate(["tuned", "tie", "base", "tuned"]) == pytest.approx(0.625)


def test_bootstrap_interval_brackets_the_estimate_and_collapses_on_constant_data():
    values = np.array([0.0, 1.0] * 50)
    low, high = bootstrap_interval(len(values), lambda idx: float(values[idx].mean()), 500, seed=1)
    assert low < 0.5 < high and high - low < 0.3
    assert bootstrap_interval(10, lambda idx: 0.7, 50) == (0.7, 0.7)
    low, high = perplexity_interval([2.0, 4.0, 6.0], [2, 2, 2], 200)
    assert low <= math.exp(2.0) <= high


def test_prompt_is_cut_before_the_last_persona_reply():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert cut_before_last_reply(messages) == (messages[:1], "b")
    assert cut_before_last_reply(messages[:1]) is None
