"""The gates between stages stop broken data with a message that says what is wrong."""

import polars as pl
import pytest

from habla.errors import UserError
from habla.gates import GateError, run_gate
from habla.grouping import flatten
from habla.params import Split
from habla.splitting import check_sizes
from stages import group, split


def example(id_, *turns):
    return {"id": id_, "messages": [{"role": r, "content": c} for r, c in turns]}


def group_gate_frame(rows):
    return group.gate_frame(flatten(pl.DataFrame(rows)))


def test_group_gate_passes_valid_examples_and_names_each_broken_rule(tmp_path):
    good = [example("a", ("system", "Eres Nico."), ("user", "hola"), ("assistant", "wena"))]
    assert run_gate("group", group_gate_frame(good), group.GATE, tmp_path)["success"]
    broken = [
        example("b", ("user", "hola"), ("user", "¿hay alguien?")),
        example("c", ("user", "hola"), ("assistant", "")),
        example("d", ("user", "hola"), ("system", "tarde"), ("assistant", "ya")),
        example("e", ("user", "hola"), ("bot", "soy un bot")),
    ]
    with pytest.raises(GateError) as err:
        run_gate("group", group_gate_frame(good + broken), group.GATE, tmp_path)
    message = str(err.value)
    assert message.startswith("data gate after `group` failed (5 of 7 checks)")
    for rule in (
        "every example has a persona turn (expect_column_values_to_be_between on assistant_turns): 4",
        "no empty turn (expect_column_values_to_be_between on content_chars): 1 e.g. ['0']",
        "roles alternate (no two turns in a row with one role) (expect_column_values_to_be_in_set on role_repeats): 1",
        "a system turn only comes first (expect_column_values_to_be_in_set on system_not_first): 1",
        "roles are system, user or assistant (expect_column_values_to_be_in_set on role): 1",
    ):
        assert rule in message
    assert "'bot'" in message and str(tmp_path / "group.json") in message


def test_split_gate_catches_an_id_in_two_splits_and_a_leaking_reply(tmp_path):
    reply = "una respuesta bastante larga que no debería repetirse"
    rows = [
        {
            "id": "x",
            "split": "train",
            "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": reply}],
        },
        {
            "id": "x",
            "split": "val",
            "messages": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "otra"}],
        },
        {
            "id": "y",
            "split": "test",
            "messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": reply}],
        },
    ]
    with pytest.raises(GateError) as err:
        run_gate("split", split.gate_frame(pl.DataFrame(rows), Split()), split.GATE, tmp_path)
    assert "no conversation in two splits (expect_column_values_to_be_unique on id): 2" in str(err.value)
    assert "no test persona turn also occurs in train (expect_column_values_to_be_in_set on leaks_into_test): 1" in str(
        err.value
    )


def test_too_little_data_to_split_says_what_to_do():
    frame = pl.DataFrame({"id": ["a", "b", "c"], "split": ["train", "val", "test"]})
    with pytest.raises(UserError, match="too little data to split: train 1, val 1, test 1 .*lower `split.min_test`"):
        check_sizes(frame, Split(min_test=5))


def test_gate_frames_carry_lengths_never_words_or_names(tmp_path):
    """The gate report is committed to git: whatever a failing check shows must not be anyone's words or name."""
    import json

    from habla.params import Clean
    from stages import clean, curate

    secret = "mi clave del banco es 1234 y vivo en Providencia " * 3
    frames = {
        "group": group_gate_frame([example("a", ("user", "hola"), ("assistant", secret))]),
        "clean": clean.gate_frame(
            pl.DataFrame(
                {
                    "source": ["whatsapp"],
                    "file": ["whatsapp/Chat de WhatsApp con Cami.txt"],
                    "line": [3],
                    "ts": [None],
                    "author": ["Camila Providencia"],
                    "text": [secret],
                },
                schema_overrides={"ts": pl.Datetime, "line": pl.UInt32},
            ),
            Clean(max_chars=20),
        ),
        "curate": curate.gate_frame(
            [{"id": "u1", "document": "d", "span": [0, len(secret)], "text": secret}], {"d": secret}
        ),
    }
    for frame in frames.values():
        assert pl.String not in frame.dtypes
        assert not any("Providencia" in str(value) for row in frame.iter_rows() for value in row)
    with pytest.raises(GateError) as err:
        run_gate("clean", frames["clean"], clean.GATE, tmp_path)
    report = (tmp_path / "clean.json").read_text(encoding="utf-8")
    assert "Providencia" not in str(err.value) and "Providencia" not in report
    assert f"e.g. ['{len(secret) - 20}']" in str(err.value)  # the length over the bound, not the message
    assert json.loads(report)["rows"] == 1


def test_a_gate_refuses_a_frame_with_text_in_it(tmp_path):
    from habla.gates import Gate

    with pytest.raises(TypeError, match="string columns"):
        Gate("group", group.GATE, tmp_path).check(pl.DataFrame({"content": ["hola"]}))


def test_a_gate_fed_in_batches_adds_up_failures_and_judges_row_count_on_the_total(tmp_path):
    from habla.gates import Gate

    good = group_gate_frame([example("a", ("user", "hola"), ("assistant", "wena"))])
    bad = group_gate_frame(
        [example("b", ("user", "hola"), ("user", "¿hay alguien?")), example("c", ("user", "x"), ("bot", "y"))]
    )
    expectations = [
        *group.GATE[:1],
        ("ExpectTableRowCountToBeBetween", {"max_value": 6, "description": "at most six turns"}),
        *group.GATE[1:],
    ]
    gate = Gate("group", expectations, tmp_path)
    for frame in (bad, good, bad):
        gate.check(frame)
    with pytest.raises(GateError) as err:
        gate.close()
    message = str(err.value)
    assert "at most six turns (expect_table_row_count_to_be_between on table): 10" in message
    assert "every example has a persona turn (expect_column_values_to_be_between on assistant_turns): 8" in message
    assert (
        "roles are system, user or assistant (expect_column_values_to_be_in_set on role): 2 e.g. ['bot', 'bot']"
        in message
    )
    report = (tmp_path / "group.json").read_text(encoding="utf-8")
    import json

    checks = json.loads(report)["checks"]
    assert json.loads(report)["rows"] == 10 and len(checks) == len(expectations)
    assert [c["success"] for c in checks if c["expectation"] == "expect_table_row_count_to_be_between"] == [True, False]


def test_uniqueness_is_judged_across_batches(tmp_path):
    """Batches used to be validated one at a time, so a raw line kept in two batches passed."""
    from habla.gates import Gate
    from habla.params import Clean
    from stages import clean

    def batch(line):
        rows = {"source": ["transcript"], "file": ["t/a.srt"], "line": [line], "ts": [None], "author": [None]}
        return clean.gate_frame(
            pl.DataFrame(
                {**rows, "text": ["hola"]},
                schema_overrides={"ts": pl.Datetime, "line": pl.UInt32, "author": pl.String},
            ),
            Clean(),
        )

    gate = Gate("clean", clean.GATE, tmp_path)
    for line in (1, 2, 1):
        gate.check(batch(line))
    with pytest.raises(GateError, match=r"each raw line is kept at most once .*: 2"):
        gate.close()
