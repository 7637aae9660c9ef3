import pytest

from habla.errors import UserError
from habla.params import load_params
from tests.helpers import REPO


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_repository_params_load_with_their_documented_defaults():
    params = load_params(REPO / "params.yaml")
    assert params.persona.authors == ["Nico"]
    assert params.train.lora.target_modules == "all-linear"
    assert params.model.base == "builtin-tiny"


def test_unknown_key_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(UserError) as err:
        load_params(write(tmp_path, "train:\n  lora:\n    rank: 4\n"))
    assert "`train.lora.rank`" in str(err.value)
    assert "r, target_modules" in str(err.value) or "r," in str(err.value)


def test_wrong_type_and_bad_choice_are_explained(tmp_path):
    with pytest.raises(UserError, match=r"`train.packing` is 'yes', but it must be true or false"):
        load_params(write(tmp_path, "train:\n  packing: 'yes'\n"))
    with pytest.raises(UserError, match=r"one of 'auto', 'dmy', 'mdy', 'ymd'"):
        load_params(write(tmp_path, "clean:\n  date_order: european\n"))


def test_ratios_must_add_up_and_max_turns_must_be_even(tmp_path):
    with pytest.raises(UserError, match="add up to 1"):
        load_params(write(tmp_path, "split:\n  ratios: {train: 0.8, val: 0.3, test: 0.1}\n"))
    with pytest.raises(UserError, match="even number"):
        load_params(write(tmp_path, "group:\n  max_turns: 5\n"))
    with pytest.raises(UserError, match=r"`train.lora.dropout` is 1.0: it must be in \[0, 1\)"):
        load_params(write(tmp_path, "train:\n  lora:\n    dropout: 1.0\n"))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(write(tmp_path, "train: [unclosed\n"))


def test_preset_overlays_model_settings_and_warns_about_overridden_edits(tmp_path, caplog):
    presets = tmp_path / "configs" / "presets"
    presets.mkdir(parents=True)
    (presets / "big.yaml").write_text(
        "model:\n  base: org/big\ntrain:\n  quantization: 4bit\n  learning_rate: 0.0001\n", encoding="utf-8"
    )
    params = load_params(write(tmp_path, "preset: big\ntrain:\n  learning_rate: 0.01\n  max_steps: 7\n"))
    assert params.model.base == "org/big" and params.train.quantization == "4bit"
    assert params.train.learning_rate == 0.0001 and params.train.max_steps == 7
    assert "overrides train.learning_rate" in caplog.text


def test_unknown_preset_and_preset_outside_model_sections_are_refused(tmp_path):
    presets = tmp_path / "configs" / "presets"
    presets.mkdir(parents=True)
    (presets / "greedy.yaml").write_text("clean:\n  max_chars: 10\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"preset `nope` not found .* Available: greedy"):
        load_params(write(tmp_path, "preset: nope\n"))
    with pytest.raises(UserError, match="may only set model, train, prefer, evaluate, judge"):
        load_params(write(tmp_path, "preset: greedy\n"))


def test_every_shipped_preset_is_valid(tmp_path):
    import shutil

    shutil.copytree(REPO / "configs" / "presets", tmp_path / "configs" / "presets")
    presets = sorted(p.stem for p in (tmp_path / "configs" / "presets").glob("*.yaml"))
    assert {"smollm2-135m", "smollm2-135m-cpu", "qwen2.5-7b-qlora-24gb", "qwen2.5-1.5b-ddp", "qwen2.5-7b-fsdp"} <= set(
        presets
    )
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    for name in presets:
        params = load_params(write(tmp_path, text.replace('preset: ""', f"preset: {name}")))
        assert params.model.base != "builtin-tiny"
        # a preset for a GPU says how to launch there; the CPU one runs where the default does
        assert (params.train.accelerate_profile == "cpu") == name.endswith("-cpu")


def test_cross_field_mistakes_say_what_to_change(tmp_path):
    with pytest.raises(
        UserError, match=r"`evaluate.stride` \(256\) must be positive and below `train.max_length` \(256\)"
    ):
        load_params(write(tmp_path, "evaluate:\n  stride: 256\ntrain:\n  max_length: 256\n"))
    with pytest.raises(UserError, match=r"`curate.overlap_chars` must be at least 0 and under half"):
        load_params(write(tmp_path, "curate:\n  chunk_chars: 600\n  overlap_chars: 400\n"))
    with pytest.raises(UserError, match=r"`curate.field_bounds.mind_states` must be \[low, high\]"):
        load_params(write(tmp_path, "curate:\n  field_bounds: {mind_states: 3}\n"))
    with pytest.raises(UserError, match=r"low must not exceed high"):
        load_params(write(tmp_path, "curate:\n  field_bounds: {mind_states: [6, 3]}\n"))
    with pytest.raises(UserError, match=r"`judge.model` must be `base` with the local backend"):
        load_params(write(tmp_path, "judge:\n  model: juez\n"))
    with pytest.raises(UserError, match="min_turn_chars"):
        load_params(write(tmp_path, "group:\n  min_turn_chars: 50\n  max_turn_chars: 10\n"))
    with pytest.raises(UserError, match=r"one of 'hash', 'time'"):
        load_params(write(tmp_path, "split:\n  strategy: random\n"))


def test_select_keeps_exactly_the_named_sections_and_keys():
    from habla.params import select

    params = load_params(REPO / "params.yaml")
    chosen = select(params, ["preset", "train", "group.separator", "evaluate.sampling"])
    assert set(chosen) == {"preset", "train", "group", "evaluate"}
    assert chosen["group"] == {"separator": params.group.separator}
    assert chosen["train"]["lora"]["r"] == params.train.lora.r
    assert chosen["evaluate"] == {"sampling": {"max_new_tokens": 40, "temperature": 0.7, "top_p": 0.9, "seed": 0}}
