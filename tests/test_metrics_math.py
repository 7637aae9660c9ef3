import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from habla.model.generation import cut_before_reply
from habla.model.judging import verdict, win_rate
from habla.model.scoring import perplexity_interval, sliding_windows, target_nll
from habla.stats import bootstrap_interval


def masked_nll(logits, input_ids, loss_mask):
    """NLL of whole sequences where `loss_mask[i, t]` marks token t as a target (predicted from position t-1)."""
    return target_nll(logits[:, :-1], input_ids[:, 1:], loss_mask[:, 1:])


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
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert cut_before_reply({"id": "x", "messages": messages}) == (messages[:1], "b")
    assert cut_before_reply({"id": "x", "messages": messages[:1]}) is None


def test_random_cut_is_seeded_per_conversation_and_reaches_every_reply():
    messages = []
    for i in range(6):
        messages += [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"r{i}"}]
    conversations = [{"id": f"c{i}", "messages": messages} for i in range(60)]
    references = [cut_before_reply(c, "random", seed=3)[1] for c in conversations]
    assert references == [cut_before_reply(c, "random", seed=3)[1] for c in reversed(conversations)][::-1]
    assert set(references) == {f"r{i}" for i in range(6)}
    assert references != [cut_before_reply(c, "random", seed=4)[1] for c in conversations]
    prompt, reference = cut_before_reply(conversations[0], "random", seed=3)
    assert messages[len(prompt)]["content"] == reference and prompt[-1]["role"] == "user"


@given(st.integers(1, 300), st.integers(2, 64), st.data())
def test_sliding_windows_score_every_target_once_with_enough_context(length, window, data):
    stride = data.draw(st.integers(1, window - 1))
    mask = data.draw(st.lists(st.integers(0, 1), min_size=length, max_size=length))
    ids = list(range(length))
    windows = sliding_windows(ids, mask, window, stride)
    scored = []
    for piece_ids, piece_mask in windows:
        assert len(piece_ids) <= window and len(piece_ids) == len(piece_mask)
        for offset, (token, flag) in enumerate(zip(piece_ids, piece_mask)):
            if flag and offset > 0:  # position 0 of a window is never a target (nothing before it)
                scored.append(token)
                assert offset >= min(token, window - stride)  # context: all before it, or at least window − stride
    assert sorted(scored) == [i for i in range(1, length) if mask[i]]
    if length <= window:
        assert windows == [(ids, mask)]


def test_sliding_window_nll_matches_a_full_pass_when_the_window_holds_everything():
    torch.manual_seed(0)
    embed = torch.nn.Embedding(11, 11)

    def model_logits(ids):  # a "model" that depends only on the previous token: context length does not matter
        return embed(ids)

    ids = torch.randint(0, 11, (1, 40))
    mask = torch.ones_like(ids)
    full, _ = masked_nll(model_logits(ids), ids, mask)
    total = 0.0
    for piece_ids, piece_mask in sliding_windows(ids[0].tolist(), mask[0].tolist(), 16, 8):
        piece = torch.tensor([piece_ids])
        nll, _ = masked_nll(model_logits(piece), piece, torch.tensor([piece_mask]))
        total += nll.item()
    assert total == pytest.approx(full.item(), rel=1e-5)


def test_bits_per_byte_and_perplexity_by_hand():
    from habla.model.perplexity import summarise

    # Two replies, 10 and 6 UTF-8 bytes, 4 and 2 target tokens, NLL 8 ln 2 and 4 ln 2 nats in all.
    rows = [{"bytes": 10}, {"bytes": 6}]
    scores = [(8 * math.log(2), 4), (4 * math.log(2), 2)]
    report = summarise(rows, scores, 200)
    assert report["bits_per_byte"] == pytest.approx(12 / 16)  # 12 bits over 16 bytes
    assert report["nll_per_token"] == pytest.approx(12 * math.log(2) / 6)
    assert report["perplexity"] == pytest.approx(2.0 ** (12 / 6))
    assert report["tokens"] == 6 and report["bytes"] == 16
    low, high = report["perplexity_ci95"]
    assert low <= report["perplexity"] <= high


def test_reply_bytes_count_the_persona_s_words_in_utf8_only():
    from habla.model.builtin import train_tokenizer
    from habla.model.guards import prepare_tokenizer
    from habla.model.perplexity import encode_conversations

    tokenizer, _ = prepare_tokenizer(train_tokenizer(["ñaña po, ¿cómo estai?"] * 30, 300), "\n")
    conversation = {
        "id": "c",
        "messages": [{"role": "user", "content": "¿cómo estai?"}, {"role": "assistant", "content": "ñaña po"}],
    }
    row = encode_conversations(tokenizer, [conversation])[0]
    assert row["bytes"] == len("ñaña po".encode()) == 9  # the end token and the user turn are not bytes of the reply


def test_perplexity_by_source_is_token_weighted_within_each_source():
    from habla.model.perplexity import by_field

    rows = [{"source": "whatsapp"}, {"source": "whatsapp"}, {"source": "transcript"}, {"source": "lyrics"}]
    scores = {"base": [(2.0, 1), (4.0, 3), (3.0, 3), (0.5, 1)], "tuned": [(1.0, 1), (1.0, 3), (0.0, 3), (0.25, 1)]}
    assert by_field(rows, scores, "source") == {
        "lyrics": {"base": pytest.approx(math.exp(0.5)), "tuned": pytest.approx(math.exp(0.25))},  # one token
        "transcript": {"base": pytest.approx(math.e), "tuned": pytest.approx(1.0)},
        "whatsapp": {"base": pytest.approx(math.exp(6 / 4)), "tuned": pytest.approx(math.exp(2 / 4))},
    }


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_items():
    rng = np.random.default_rng(5)
    widths = []
    for n in (20, 200, 2000):
        values = rng.binomial(1, 0.6, n).astype(float)
        low, high = bootstrap_interval(n, lambda idx, v=values: float(v[idx].mean()), 400)
        assert low <= values.mean() <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.06  # ±1.96·sqrt(0.24/2000) ≈ ±0.021
    nll, tokens = rng.gamma(2.0, 1.0, 300), rng.integers(1, 20, 300)
    low, high = perplexity_interval(nll, tokens, 400)
    assert low < math.exp(nll.sum() / tokens.sum()) < high


@pytest.fixture(scope="module")
def tiny_lm():
    from habla.model.builtin import build_model, train_tokenizer
    from habla.params import Builtin

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["ya po, de una, nos vemos mañana en la esquina de siempre"] * 30, 300)
    return build_model(tokenizer, Builtin(hidden_size=32, layers=1, heads=2, context=256)).eval(), tokenizer


def test_documents_score_every_token_but_the_first_and_count_their_bytes(tiny_lm):
    from habla.model.perplexity import encode_documents

    _, tokenizer = tiny_lm
    (row,) = encode_documents(tokenizer, [{"id": "d", "source": "transcript", "text": "nos vemos mañana"}])
    assert row["mask"] == [0] + [1] * (len(row["input_ids"]) - 1)
    assert row["bytes"] == len(tokenizer.decode(row["input_ids"][1:]).encode("utf-8")) > 0
    assert (row["id"], row["source"]) == ("d", "transcript")


def test_windowed_scoring_counts_every_target_once_and_keeps_row_order(tiny_lm):
    from habla.model.perplexity import score_windowed
    from habla.model.scoring import score

    model, tokenizer = tiny_lm
    lengths = [50, 7, 23, 3]
    rows = [{"input_ids": [(i * 7 + n) % 250 + 4 for i in range(n)], "mask": [0] + [1] * (n - 1)} for n in lengths]
    whole = score_windowed(model, rows, tokenizer.pad_token_id, 2, window=64, stride=32)
    direct = score(model, rows, tokenizer.pad_token_id, 2)
    assert [c for _, c in whole] == [c for _, c in direct] == [n - 1 for n in lengths]
    assert [n for n, _ in whole] == pytest.approx([n for n, _ in direct], rel=1e-4)  # everything fits: one pass each
    windowed = score_windowed(model, rows, tokenizer.pad_token_id, 3, window=16, stride=8)
    assert [count for _, count in windowed] == [n - 1 for n in lengths]
    assert [n for n, _ in windowed[1:]] == pytest.approx([n for n, _ in whole[1:]], rel=1e-4)  # fit one window
    assert windowed[0][0] != pytest.approx(whole[0][0])  # the long row saw less context per target


def test_scoring_with_only_the_scored_positions_logits_equals_the_full_pass(tiny_lm):
    """`score` asks the model for the logits of the positions that predict a scored token only; the sums must be
    what the whole vocabulary-by-position pass gives, for sparse masks (a reply in a long prompt) in a batch."""
    from habla.model.scoring import score

    model, tokenizer = tiny_lm
    rows = []
    for n, reply in ((40, range(30, 36)), (12, range(9, 12)), (25, [])):
        ids = [(i * 11 + n) % 250 + 4 for i in range(n)]
        rows.append({"input_ids": ids, "mask": [int(i in reply) for i in range(n)]})
    kept = score(model, rows, tokenizer.pad_token_id, 3)
    with torch.inference_mode():
        for row, (nll, count) in zip(rows, kept):
            ids = torch.tensor([row["input_ids"]])
            full, tokens = masked_nll(model(input_ids=ids).logits, ids, torch.tensor([row["mask"]]))
            assert count == int(tokens) == sum(row["mask"][1:])
            assert nll == pytest.approx(float(full), rel=1e-5, abs=1e-6)


def test_a_reply_stops_at_its_first_end_token_and_a_reply_without_one_was_cut():
    from habla.model.generation import Reply, ending, ending_stats

    stops = {2, 7}
    assert ending([5, 6, 2, 0, 0], stops) == (3, True)  # padded after it stopped
    assert ending([5, 7], stops) == (2, True)
    assert ending([5, 6, 9, 9], stops) == (4, False)  # ran to the cap
    stats = ending_stats([Reply("a", 3, True), Reply("b", 40, False), None, Reply("c", 5, True)])
    assert stats == {"replies": 3, "stopped": 2, "cut": 1, "stopped_share": 0.6667, "mean_new_tokens": 16.0}
    assert ending_stats([None])["stopped_share"] is None


def test_held_out_prompts_left_out_are_counted_by_reason():
    from habla.model.generation import held_out_cases
    from habla.params import Evaluate

    test = [
        {"id": "a", "messages": [{"role": "user", "content": "hola"}, {"role": "assistant", "content": "wena"}]},
        {"id": "b", "messages": [{"role": "user", "content": "hola"}]},
        {"id": "c", "messages": [{"role": "user", "content": "¿y?"}, {"role": "assistant", "content": "ya"}]},
    ]
    cases, left_out = held_out_cases(test, Evaluate(max_prompts=2))
    assert [c["id"] for c in cases] == ["a"] and cases[0]["reference"] == "wena"
    assert left_out == {"no_persona_reply": 1, "over_max_prompts": 1}
