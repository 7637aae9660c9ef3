"""End to end: `dvc repro` on a small sample in a fresh git repository, then caching and experiments."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, chromium, read_params, shoot, write_params

pytestmark = pytest.mark.slow

FAST_PARAMS = {
    "builtin": {"max_steps": 12, "batch_size": 4, "hidden_size": 64, "layers": 2, "heads": 2, "vocab_size": 512},
    "train": {"max_steps": 6, "eval_steps": 3, "batch_size": 4, "max_length": 128},
    "split": {"min_test": 2},
    "prefer": {"max_steps": 4, "max_pairs": 16, "batch_size": 4, "max_length": 128, "sampling": {"max_new_tokens": 8}},
    "evaluate": {"max_prompts": 3, "bootstrap": 50, "batch_size": 8, "stride": 64, "sampling": {"max_new_tokens": 6}},
}


def run(args: list[str], cwd: Path, **extra_env: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        **extra_env,
    }
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise AssertionError(
            f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout + done.stderr


def build_project(root: Path, remote: Path) -> None:
    """The demo's code and a slice of its sample data in a fresh git + DVC repository with a local remote."""
    for name in ("stages", "habla", "configs", "prompts"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    write_params(root, FAST_PARAMS)
    raw = root / "data" / "raw"
    (raw / "whatsapp").mkdir(parents=True)
    (raw / "transcripts").mkdir()
    chat = (REPO / "data/raw/whatsapp/Chat de WhatsApp con Cami.txt").read_text(encoding="utf-8").splitlines()[:900]
    (raw / "whatsapp" / "Chat de WhatsApp con Cami.txt").write_text("\n".join(chat) + "\n", encoding="utf-8")
    shutil.copy(REPO / "data/raw/transcripts/rutina-vina.txt", raw / "transcripts" / "rutina-vina.txt")
    (root / ".gitignore").write_text("/models/checkpoints/\n__pycache__/\n", encoding="utf-8")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "remote", "add", "-d", "local", str(remote)], root)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    run(["dvc", "config", "plots.html_template", "../configs/dvc_plots/offline.html"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "base"], root)


@dataclass
class Reproduced:
    root: Path
    output: str  # what the first `dvc repro` printed
    params_read: dict[str, set[str]]  # stage → the params keys its process read (HABLA_PARAMS_AUDIT)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Reproduced:
    """The project after one full `dvc repro`, committed and pushed, built once for every test here.

    Tests that change the workspace (forced reruns, experiments, new remotes) work in their own clone
    (`clone_of`), so no test depends on another having run, or on the order.
    """
    root = tmp_path_factory.mktemp("project")
    build_project(root, tmp_path_factory.mktemp("remote"))
    audit = tmp_path_factory.mktemp("audit") / "params-read.jsonl"
    output = run(["dvc", "repro"], root, HABLA_PARAMS_AUDIT=str(audit))
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "run"], root)
    run(["dvc", "push"], root)
    params_read: dict[str, set[str]] = {}
    for line in audit.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        params_read.setdefault(entry["module"].removeprefix("stages."), set()).update(entry["keys"])
    return Reproduced(root, output, params_read)


def clone_of(project: Path, where: Path) -> Path:
    """A fresh git clone of the project with its DVC outputs pulled from the project's remote."""
    clone = where / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], where)
    run(["git", "config", "user.email", "test@example.com"], clone)
    run(["git", "config", "user.name", "test"], clone)
    run(["dvc", "pull"], clone)
    return clone


def test_repro_runs_every_stage_and_writes_the_contracted_outputs(reproduced):
    project = reproduced.root
    stages = (
        "clean",
        "curate",
        "group",
        "split",
        "base",
        "train",
        "prefer",
        "perplexity",
        "generate",
        "judge",
        "reference",
    )
    for stage in stages:
        assert f"Running stage '{stage}'" in reproduced.output
    for path in (
        "data/cleaned/messages.parquet",
        "data/cleaned/rejected.parquet",
        "data/grouped/conversations.jsonl",
        "data/curated/units.jsonl",
        "data/grouped/documents.jsonl",
        "data/splits/test.jsonl",
        "models/base/model.safetensors",
        "models/adapter/adapter_model.safetensors",
        "metrics/train/metrics.json",
        "metrics/generations.jsonl",
    ):
        assert (project / path).exists(), path
    perplexity = json.loads((project / "metrics/perplexity.json").read_text())
    assert perplexity["base"]["tokens"] == perplexity["tuned"]["tokens"] > 0
    assert perplexity["tuned"]["perplexity"] > 1
    assert perplexity["preferred"]["tokens"] == perplexity["tuned"]["tokens"]
    judge = json.loads((project / "metrics/judge.json").read_text())
    assert judge["wins"] + judge["ties"] + judge["losses"] == judge["n"] > 0
    preferred = judge["preferred_vs_tuned"]
    assert (
        preferred["wins"] + preferred["ties"] + preferred["losses"] + preferred["failed"]
        == judge["n"] + judge["failed"]
    )
    assert "preferred" in json.loads((project / "metrics/reference.json").read_text())
    assert "metrics:" not in (project / "dvc.yaml").read_text().split("stages:")[0], "dvclive must not rewrite dvc.yaml"


def test_every_params_key_a_stage_reads_is_one_of_its_dvc_params(reproduced):
    """A key a stage reads but dvc.yaml does not list is a change `dvc repro` would not rerun it for
    (`perplexity` once read `evaluate.stride` undeclared). `resources` says how to run, not what to compute."""
    stages = yaml.safe_load((reproduced.root / "dvc.yaml").read_text())["stages"]
    matrix = {name for name, spec in stages.items() if "matrix" in spec}  # no instance: `personas` is empty
    assert set(reproduced.params_read) == set(stages) - {"reference"} - matrix  # reference reads no params
    for stage, keys in reproduced.params_read.items():
        listed = [e if isinstance(e, str) else next(iter(e)) for e in stages[stage].get("params", [])]
        undeclared = {
            k
            for k in keys
            if not k.startswith("resources.") and not any(k == p or k.startswith(p + ".") for p in listed)
        }
        assert not undeclared, f"{stage} reads {sorted(undeclared)} but dvc.yaml lists only {listed}"


def test_second_repro_runs_nothing(reproduced):
    output = run(["dvc", "repro"], reproduced.root)
    assert "Running stage" not in output
    assert "up to date" in run(["dvc", "status"], reproduced.root)


def digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_push_then_fresh_clone_pull_is_up_to_date(reproduced, tmp_path):
    project = reproduced.root
    clone = clone_of(project, tmp_path)
    for path in (
        "data/cleaned/messages.parquet",
        "data/splits/train.jsonl",
        "models/base/model.safetensors",
        "models/adapter/adapter_model.safetensors",
    ):
        assert digest(clone / path) == digest(project / path), path
    assert "up to date" in run(["dvc", "status"], clone)
    assert "Running stage" not in run(["dvc", "repro"], clone)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """OpenSSH's sshd on a free localhost port, with throw-away host and client keys; stopped afterwards."""
    binary = shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if Path(p).exists()), None
    )
    if not binary or not shutil.which("ssh-keygen"):
        pytest.skip(
            "OpenSSH server not installed (Debian: apt-get install openssh-server; `make test` does it as root)"
        )
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    (home / "authorized_keys").chmod(0o600)
    port = free_port()
    config = home / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {home / 'host_key'}",
                f"PidFile {home / 'sshd.pid'}",
                f"AuthorizedKeysFile {home / 'authorized_keys'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "Subsystem sftp internal-sftp",
            ]
        )
        + "\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory, absent in containers
    server = subprocess.Popen(
        [binary, "-D", "-e", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 20
    while True:
        if server.poll() is not None:
            pytest.fail(
                f"sshd is installed but did not start (a broken test setup, not a missing tool): "
                f"{server.stdout.read()[-500:]}"
            )
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline:
            server.kill()
            pytest.fail("sshd did not listen within 20 s")
        time.sleep(0.1)
    yield {"port": port, "key": home / "client_key", "user": os.environ.get("USER") or __import__("getpass").getuser()}
    server.terminate()
    server.wait(timeout=10)


def test_push_to_an_ssh_remote_then_fresh_clone_pull_is_up_to_date(reproduced, sshd, tmp_path_factory):
    project = clone_of(reproduced.root, tmp_path_factory.mktemp("with-ssh"))
    storage = tmp_path_factory.mktemp("ssh-storage")
    url = f"ssh://127.0.0.1:{sshd['port']}{storage}"
    run(["dvc", "remote", "add", "sshremote", url], project)
    run(["git", "add", ".dvc/config"], project)
    run(["git", "commit", "-qm", "ssh remote"], project)
    # Credentials go to .dvc/config.local, which git ignores: a clone never sees them.
    for key, value in (("user", sshd["user"]), ("keyfile", str(sshd["key"]))):
        run(["dvc", "remote", "modify", "--local", "sshremote", key, value], project)
    assert "keyfile" not in (project / ".dvc/config").read_text()
    run(["dvc", "push", "-r", "sshremote"], project)
    assert any(storage.rglob("*")), "nothing arrived on the SSH remote"
    clone = tmp_path_factory.mktemp("ssh-clone") / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], clone.parent)
    assert not (clone / ".dvc/config.local").exists()
    for key, value in (("user", sshd["user"]), ("keyfile", str(sshd["key"]))):
        run(["dvc", "remote", "modify", "--local", "sshremote", key, value], clone)
    run(["dvc", "pull", "-r", "sshremote"], clone)
    for path in (
        "data/cleaned/messages.parquet",
        "data/splits/train.jsonl",
        "models/base/model.safetensors",
        "models/adapter/adapter_model.safetensors",
    ):
        assert digest(clone / path) == digest(project / path), path
    assert "Running stage" not in run(["dvc", "repro"], clone)


def test_data_stages_give_byte_identical_outputs_when_rerun(reproduced, tmp_path):
    project = clone_of(reproduced.root, tmp_path)
    before = {
        p: digest(project / p)
        for p in (
            "data/cleaned/messages.parquet",
            "data/cleaned/rejected.parquet",
            "data/curated/units.jsonl",
            "data/grouped/conversations.jsonl",
            "data/grouped/keyword_tasks.jsonl",
            "data/splits/train.jsonl",
        )
    }
    run(["dvc", "repro", "--force", "--single-item", "clean"], project)
    run(["dvc", "repro", "--force", "--single-item", "curate"], project)
    run(["dvc", "repro", "--force", "--single-item", "group"], project)
    run(["dvc", "repro", "--force", "--single-item", "split"], project)
    assert {p: digest(project / p) for p in before} == before
    assert "up to date" in run(["dvc", "status"], project)


def declared_plots(project: Path) -> set[str]:
    """Every plot dvc.yaml declares: the top-level ones by title, the stage ones by file."""
    spec = yaml.safe_load((project / "dvc.yaml").read_text())
    stage_plots = {next(iter(p)) for stage in spec["stages"].values() for p in stage.get("plots", [])}
    return {next(iter(p)) for p in spec["plots"]} | stage_plots


def test_dvc_plots_show_draws_every_declared_chart_offline_from_aggregates(reproduced, tmp_path, request):
    project = reproduced.root
    shown = json.loads(run(["dvc", "plots", "show", "--json"], project))
    assert not shown.get("errors"), shown.get("errors")
    charts = shown["data"]
    assert set(charts) == declared_plots(project)
    for name, (chart,) in charts.items():
        spec = chart["content"]
        assert spec["data"]["values"], f"{name} has no data"
        assert spec["title"]["text"] and spec["encoding"]["x"].get("title"), f"{name} needs a title and axis labels"
    months = charts["Messages per month"][0]["content"]["data"]["values"]
    assert {row["field"] for row in months} == {"persona", "others"}
    clean = json.loads((project / "metrics/clean.json").read_text())["totals"]
    kept_rejected = charts["metrics/plots/clean_outcomes.json"][0]["content"]["data"]["values"]
    assert sum(row["units"] for row in kept_rejected) == clean["kept"] + clean["rejected"]
    turns = charts["metrics/plots/conversation_turns.json"][0]["content"]["data"]["values"]
    assert (
        sum(row["conversations"] for row in turns)
        == json.loads((project / "metrics/group.json").read_text())["conversations"]
    )
    for dropped in ("eval_runtime", "samples_per_second", "epoch"):
        assert not any(dropped in name for name in charts), f"{dropped} is not a chart anyone reads"
    run(["dvc", "plots", "show", "-o", str(tmp_path / "page")], project)
    html = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in html and "vegaEmbed" in html and "Chat messages per month" in html
    if chromium():  # drawn by a real browser with no network: every chart renders, Vega reports no error
        browser = request.getfixturevalue("browser")
        browser.set_window_size(1400, 3000)
        browser.get((tmp_path / "page" / "index.html").as_uri())
        drawn = "return document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks').length"
        wait_for = time.monotonic() + 60
        while browser.execute_script(drawn) < len(charts) and time.monotonic() < wait_for:
            time.sleep(0.5)
        assert browser.execute_script(drawn) == len(charts)
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        shoot(browser, "plots.png")


def test_experiments_rerun_training_and_after_only_and_compare(reproduced, tmp_path):
    project = clone_of(reproduced.root, tmp_path)
    output = run(["dvc", "exp", "run", "-n", "rank4", "-S", "train.lora.r=4"], project)
    assert "Running stage 'train'" in output and "Running stage 'perplexity'" in output
    for stage in ("clean", "curate", "group", "split", "base"):
        assert f"Running stage '{stage}'" not in output
    run(["dvc", "exp", "run", "-n", "slow-lr", "-S", "train.learning_rate=0.0005"], project)
    output = run(["dvc", "exp", "run", "-n", "beta02", "-S", "prefer.beta=0.2"], project)
    for stage in ("prefer", "perplexity", "generate", "judge"):
        assert f"Running stage '{stage}'" in output
    for stage in ("clean", "curate", "group", "split", "base", "train"):
        assert f"Running stage '{stage}'" not in output
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    experiments = {exp["name"]: exp for row in shown for exp in row.get("experiments") or [] for exp in exp["revs"]}
    assert {"rank4", "slow-lr"} <= set(experiments)
    for name, (key, value) in {"rank4": ("r", 4), "slow-lr": ("learning_rate", 0.0005)}.items():
        data = experiments[name]["data"]
        params = data["params"]["params.yaml"]["data"]["train"]
        assert params[key] == value if key != "r" else params["lora"]["r"] == value
        perplexity = data["metrics"]["metrics/perplexity.json"]["data"]
        assert perplexity["tuned"]["perplexity"] > 1
    diff = json.loads(run(["dvc", "plots", "diff", "rank4", "slow-lr", "--json"], project))
    (loss,) = diff["data"]["Training and validation loss"]
    assert set(loss["revisions"]) == {"rank4", "slow-lr"}
    assert {row["rev"] for row in loss["content"]["data"]["values"]} == {"rank4", "slow-lr"}


PERSONA_STAGES = (
    "train_persona",
    "perplexity_persona",
    "generate_persona",
    "voice_persona",
    "judge_persona",
    "reference_persona",
)


def test_each_persona_trains_as_a_matrix_instance_and_an_edit_reruns_only_its_own(reproduced, tmp_path):
    """`group.speakers: conditioned` with two personas: one conditioned adapter and one adapter per persona
    (`train_persona@<id>`), scored on the same held-out replies and compared with the conditioned one on the same
    prompts (generate, voice, judge); editing one persona retrains its own adapter only."""
    project = clone_of(reproduced.root, tmp_path)
    personas = {"nico": ["Nico"], "cami": ["Cami"]}
    write_params(project, {"group": {"speakers": "conditioned"}, "personas": personas}, read_params(project))
    output = run(["dvc", "repro"], project)
    conditioned = json.loads((project / "metrics/perplexity.json").read_text())["by_persona"]
    assert set(conditioned) == set(personas)
    for ident in personas:
        for stage in PERSONA_STAGES:
            assert f"Running stage '{stage}@{ident}'" in output
        assert (project / f"models/personas/{ident}/adapter/adapter_model.safetensors").exists()
        own = json.loads((project / f"metrics/personas/{ident}/perplexity.json").read_text())
        assert own["base"]["perplexity"] == pytest.approx(conditioned[ident]["base"]), "the same held-out replies"
        assert own["conditioned"]["perplexity"] == pytest.approx(conditioned[ident]["tuned"]), "beside its own"
        assert own["tuned"]["perplexity"] > 1
        generations = [json.loads(line) for line in (project / f"metrics/personas/{ident}/generations.jsonl").open()]
        assert generations and all(g["persona"] == ident and g["conditioned"] and g["tuned"] for g in generations)
        voice = json.loads((project / f"metrics/personas/{ident}/voice.json").read_text())
        assert {"base", "conditioned", "tuned"} <= set(voice["attribution"]) and "by_persona" not in voice
        assert voice["prompts"] == len(generations)
        scored = json.loads((project / f"metrics/personas/{ident}/reference.json").read_text())
        assert scored["prompts"] == len(generations) and {"base", "conditioned", "tuned", "reference"} <= set(scored)
        judged = json.loads((project / f"metrics/personas/{ident}/judge.json").read_text())
        head_to_head = judged["tuned_vs_conditioned"]
        assert head_to_head["wins"] + head_to_head["ties"] + head_to_head["losses"] + head_to_head["failed"] == len(
            generations
        )
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project))
    assert any("metrics/personas/cami/perplexity.json" in str(entry) for entry in shown.values())

    edited = read_params(project)
    edited["personas"]["cami"] = {"authors": ["Cami"], "system_prompt": "Soy la Cami, de Ñuñoa."}
    write_params(project, base=edited)
    output = run(["dvc", "repro"], project)
    for stage in (*(f"{stage}@cami" for stage in PERSONA_STAGES), "train"):
        assert f"Running stage '{stage}'" in output
    assert "Running stage 'train_persona@nico'" not in output, "nico's adapter retrained for an edit to cami"
    # nico's comparisons rerun: the conditioned adapter they hold nico's own against was retrained
    assert "Running stage 'perplexity_persona@nico'" in output


def test_training_under_dvc_exp_run_is_deterministic(reproduced, tmp_path):
    project = clone_of(reproduced.root, tmp_path)
    first = run(["dvc", "exp", "run", "-n", "seed5", "-S", "train.seed=5"], project)
    assert "Running stage 'train'" in first
    before = adapter_hash(project)
    again = run(["dvc", "exp", "run", "-n", "seed5-again", "--force", "--single-item", "train"], project)
    assert "Running stage 'train'" in again  # trained again, not restored from the run cache
    assert adapter_hash(project) == before, "the retrained adapter differs"


def adapter_hash(project: Path) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    (out,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/adapter"]
    return out["md5"]


def test_no_git_tracked_file_the_pipeline_writes_holds_chat_text_or_contact_names(reproduced):
    """What `git push` publishes after a run: metrics, plots data, dvc.lock and anything tracked outside data/raw.
    None may hold a sentence of the raw chats and transcripts, or the contact a WhatsApp export is named after."""
    import re
    import unicodedata

    project = reproduced.root
    raw = project / "data" / "raw"
    sentences: set[str] = set()
    for path in raw.rglob("*.txt"):
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            text = line.split(": ", 1)[-1] if "whatsapp" in path.parts else line
            sentences.update(s.strip() for s in re.split(r"(?<=[.!?])\s+|\n", text) if len(s.strip()) >= 25)
    contacts = {
        unicodedata.normalize("NFC", re.sub(r"^(Chat de WhatsApp con|WhatsApp Chat with|WhatsApp Chat -) ", "", p.stem))
        for p in raw.rglob("*.txt")
        if "WhatsApp" in p.stem
    }
    assert len(sentences) > 20 and contacts == {"Cami"}, "the check must have something to look for"
    tracked = run(["git", "-c", "core.quotepath=off", "ls-files"], project).splitlines()
    written = [
        name
        for name in tracked
        if name == "dvc.lock" or name.startswith(("metrics/", "models/", "data/")) and not name.startswith("data/raw/")
    ]
    assert "metrics/clean.json" in written and "dvc.lock" in written
    for name in written:
        content = unicodedata.normalize("NFC", (project / name).read_text(encoding="utf-8", errors="replace"))
        leaked = [s for s in sentences if s in content] + [c for c in contacts if c in content]
        assert not leaked, f"{name} holds {leaked[:3]}"


def test_dvc_plots_show_draws_the_training_curves_on_the_offline_page(reproduced, tmp_path):
    project = reproduced.root
    template = project / "configs" / "dvc_plots" / "offline.html"
    run(["dvc", "plots", "show", "--html-template", str(template), "-o", str(tmp_path)], project)
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<script src" not in page
    for title in (
        "Training and validation loss per optimizer step",
        "Learning rate schedule",
        "Gradient norm before clipping",
        "Perplexity per test conversation",
    ):
        assert title in page, title
    assert '"eval_steps.json"' in page and '"train_steps.json"' in page, "both losses are on the chart"
    assert "samples_per_second" not in page and "runtime.tsv" not in page, "series nobody reads are not drawn"
