"""The shape of the repository: `stages/` holds the DVC stages and nothing else, each agreeing with dvc.yaml,
and the `habla` library imports only downward."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from habla.params import Params, as_dict
from tests.helpers import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
# A matrix stage (one instance per persona) runs another stage's module with HABLA_PERSONA set: stage → module.
MATRIX = {name: spec["cmd"].rsplit("-m stages.", 1)[1] for name, spec in DVC.items() if "matrix" in spec}
PERSONA_TEMPLATE = "${item.persona}"
# A module may import from lower layers, and from its own subpackage (without cycles).
LAYERS = {
    "habla.errors": 0,
    "habla.paths": 0,
    "habla.params": 1,
    "habla.io": 1,
    "habla.plots": 1,
    "habla.stats": 1,
    "habla.gates": 2,
    "habla.llm": 2,
    "habla.readers": 3,
    "habla.text": 3,
    "habla.cleaning": 4,
    "habla.curation": 4,
    "habla.grouping": 4,
    "habla.splitting": 4,
    "habla.model": 5,
    "habla.apps": 6,
}


def names(entries: list) -> set[str]:
    """dvc.yaml list entries are plain paths or one-key mappings (a path with options)."""
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


def declared(module, attribute: str) -> set[str]:
    return {str(value) for value in getattr(module, attribute, [])}


def test_stages_holds_exactly_the_dvc_stages():
    modules = {p.stem for p in (REPO / "stages").glob("*.py")} - {"__init__"}
    assert modules == set(DVC) - set(MATRIX)
    assert set(MATRIX.values()) <= modules


def declarations(stage: str) -> dict[str, set[str]]:
    """What the stage's module declares; a matrix stage's module is imported in a fresh interpreter with
    HABLA_PERSONA set to the template dvc.yaml writes (paths under `personas/${item.persona}/`)."""
    attributes = ("DEPS", "OUTS", "METRICS", "PLOTS", "PARAMS")
    if stage not in MATRIX:
        module = importlib.import_module(f"stages.{stage}")
        return {attribute: declared(module, attribute) for attribute in attributes}
    code = (
        f"import json, stages.{MATRIX[stage]} as m; "
        f"print(json.dumps({{a: sorted(map(str, getattr(m, a, []))) for a in {list(attributes)!r}}}))"
    )
    env = {**__import__("os").environ, "HABLA_PERSONA": PERSONA_TEMPLATE}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return {attribute: set(values) for attribute, values in __import__("json").loads(done.stdout).items()}


@pytest.mark.parametrize("stage", sorted(DVC))
def test_each_stage_module_declares_what_dvc_yaml_says(stage):
    spec, found = DVC[stage], declarations(stage)
    module = MATRIX.get(stage, stage)
    prefix = f"HABLA_PERSONA={PERSONA_TEMPLATE} " if stage in MATRIX else ""
    assert spec["cmd"] == f"{prefix}python -m stages.{module}"
    if stage in MATRIX:
        assert spec["matrix"] == {"persona": "${personas}"}, "one instance per id under `personas`"
    assert found["DEPS"] == names(spec.get("deps", []))
    assert found["OUTS"] == names(spec.get("outs", []))
    assert found["METRICS"] == names(spec.get("metrics", []))
    assert found["PLOTS"] == names(spec.get("plots", []))
    assert found["PARAMS"] == names(spec.get("params", []))
    for path in found["DEPS"]:
        if path.startswith(("stages/", "habla/", "configs", "prompts")):
            assert (REPO / path).exists(), f"{stage} depends on {path}, which does not exist"


def leaves(section: str) -> set[str]:
    def flatten(value, prefix):
        if isinstance(value, dict):
            return {k for key, item in value.items() for k in flatten(item, f"{prefix}.{key}")}
        return {prefix}

    return flatten(as_dict(getattr(Params(), section)), section) if "." not in section else {section}


@pytest.mark.parametrize("stage", sorted(DVC))
def test_a_whole_params_section_is_listed_only_where_every_key_is_read(stage):
    """Listing a whole section reruns the stage for any key in it, so every key must be read somewhere in the
    code the stage runs (the stage module and the habla modules it depends on). A coarse textual check: the
    runtime check is `test_pipeline.py::test_every_params_key_a_stage_reads_is_one_of_its_dvc_params`."""
    module = importlib.import_module(f"stages.{MATRIX.get(stage, stage)}")
    code_paths = [REPO / p for p in declared(module, "DEPS") if p.startswith(("stages/", "habla/"))]
    files = [f for p in code_paths for f in ([p] if p.is_file() else sorted(p.rglob("*.py")))]
    code = "\n".join(f.read_text(encoding="utf-8") for f in files)
    for section in declared(module, "PARAMS"):
        if "." in section or not dataclasses.is_dataclass(getattr(Params(), section, None)):
            continue
        for key in leaves(section):
            name = key.rsplit(".", 1)[-1]
            assert re.search(rf"\.{name}\b|[\"']{name}[\"']|as_dict\(params\.{section}\)", code), (
                f"{stage} lists params section `{section}` but its code never reads `{key}`: list the keys it reads"
            )


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def layer(module: str) -> tuple[int, str]:
    for prefix, rank in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return rank, prefix
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_the_library_imports_only_downward_and_never_a_stage():
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in (REPO / "habla").rglob("*.py")}
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    graph = {}
    for name, path in modules.items():
        targets = {m for m in imports_of(path) if m in modules and m not in (name, "habla")}
        assert not any(m == "stages" or m.startswith("stages.") for m in imports_of(path)), f"{name} imports a stage"
        if name in ("habla",):
            continue
        rank, group = layer(name)
        for target in targets:
            target_rank, target_group = layer(target)
            assert target_rank < rank or target_group == group, (
                f"{name} (layer {rank}) imports {target} (layer {target_rank})"
            )
        graph[name] = targets
    visiting, done = set(), set()

    def visit(node, trail):
        assert node not in visiting, f"import cycle: {' → '.join(trail + [node])}"
        if node in done:
            return
        visiting.add(node)
        for target in graph.get(node, ()):
            visit(target, trail + [node])
        visiting.discard(node)
        done.add(node)

    for node in graph:
        visit(node, [])


def test_the_wheel_holds_the_habla_package_only(tmp_path):
    source = tmp_path / "source"  # built from a copy: setuptools writes build/ beside the sources
    skip = shutil.ignore_patterns(
        ".venv", ".git", "data", "models", "metrics", "mutants", "__pycache__", "*.egg-info", "build"
    )
    shutil.copytree(REPO, source, ignore=skip)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("habla-*.whl")
    tops = {
        name.split("/")[0]
        for name in zipfile.ZipFile(wheel).namelist()
        if not name.split("/")[0].endswith(".dist-info")
    }
    assert tops == {"habla"}
    pages = {"habla/apps/static/chat.html", "habla/apps/static/generations.html"}
    assert pages <= set(zipfile.ZipFile(wheel).namelist()), "the pages `habla serve` shows are package data"
    entry_points = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt"))
    assert "habla = habla.apps.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_params_yaml_holds_the_library_defaults():
    """Defaults live in `habla/params.py`; the shipped params.yaml shows them all, so the two cannot drift.
    `persona.authors` has no default: it names the people in the user's own export."""
    from habla.params import load_params

    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    shipped, defaults = flat(as_dict(load_params(REPO / "params.yaml"))), flat(as_dict(Params()))
    differ = {k: (shipped[k], defaults[k]) for k in shipped if shipped[k] != defaults[k]}
    assert set(differ) == {"persona.authors"}, differ
    raw = flat(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))
    assert set(raw) - {"preset"} == set(defaults) - {"preset"}, "params.yaml must list every key"


def test_dvc_plots_page_is_the_offline_template_with_vega_inside():
    """`dvc plots show` must draw without network: the configured template inlines Vega and loads nothing."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    template = (REPO / ".dvc" / config["plots"]["html_template"]).resolve()
    page = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in page
    assert "<script src" not in page and "<link" not in page, "nothing may be fetched"
    for global_name in ("vega", "vegaLite", "vegaEmbed"):  # what each library's bundle defines
        assert f"self).{global_name}=" in page, global_name
    assert "/dvc_plots/" in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()


# Plumbing that decides no result: errors and their wording, where files live, how params are read and checked,
# reading and writing files. A change there cannot make a stage's output stale, so no stage depends on it.
PLUMBING = {
    "habla/__init__.py",
    "habla/errors.py",
    "habla/paths.py",
    "habla/params.py",
    "habla/io.py",
    "habla/model/__init__.py",
    "habla/readers/__init__.py",
    "habla/text/__init__.py",
    "habla/apps/__init__.py",
}


def habla_imports(path: Path) -> set[str]:
    """The `habla` modules a file imports, at the top or inside functions, as repository paths."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("habla"):
            candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names if alias.name.startswith("habla")]
        else:
            continue
        for name in candidates:
            for suffix in (".py", "/__init__.py"):
                file = name.replace(".", "/") + suffix
                if (REPO / file).exists():
                    found.add(file)
                    break
    return found


def transitive_imports(path: str) -> set[str]:
    seen, todo = set(), [path]
    while todo:
        for found in habla_imports(REPO / todo.pop()) - seen:
            seen.add(found)
            todo.append(found)
    return seen


@pytest.mark.parametrize("stage", sorted(DVC))
def test_each_stage_depends_on_every_habla_module_it_runs(stage):
    """Edit a module a stage imports (directly or through another) and `dvc repro` must rerun the stage: its deps
    cover every such module (a folder dep covers its files), plumbing aside."""
    deps = names(DVC[stage].get("deps", []))
    needed = transitive_imports(f"stages/{MATRIX.get(stage, stage)}.py") - PLUMBING
    missing = sorted(f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"stage {stage} runs {missing} but does not depend on them"
