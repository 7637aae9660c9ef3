"""Data-stage benchmarks: `clean` against whatstk 0.9.1 on the same export, `group` + `split`, and how they scale.

Every measurement runs in a fresh interpreter so that its peak resident memory is
its own; the parent keeps the median of the repeats.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.memory import peak_resident_mib

REPO = Path(__file__).resolve().parents[1]
EXPORT = Path("data/raw/whatsapp/Chat de WhatsApp con Cami.txt")


def prepare(work: Path, lines: int, per_export: int | None) -> None:
    """One export of `lines` lines, or (with `per_export`) a corpus of chats of that many lines each."""
    from benchmarks.synthetic import write_export, write_exports

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["split"]["min_test"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    shutil.copytree(REPO / "prompts", work / "prompts")  # `curate` reads its prompt set
    if per_export:
        write_exports(work / EXPORT.parent, lines, per_export)
    else:
        write_export(work / EXPORT, lines)


def load(name: str, work: Path):
    """The measured work as a callable, with its imports done (import time is not what we compare)."""
    if name == "whatstk":
        from whatstk.whatsapp.parser import df_from_whatsapp

        return lambda: df_from_whatsapp(str(work / EXPORT), auto_header=True, max_size=None)
    if name == "parse":
        from habla.params import Clean, Resources
        from habla.readers.files import read_items

        return lambda: list(read_items(work / EXPORT, EXPORT.relative_to("data/raw"), Clean(), Resources().batch_rows))
    import importlib

    return importlib.import_module(f"stages.{name}").main


def timed(tasks: list[str], work: Path) -> dict:
    """Wall time and peak memory of the tasks, and where the last gate's seconds went (`Gate.timings`)."""
    from habla.gates import Gate

    gate_timings: dict = {}
    close = Gate.close

    def close_and_keep_timings(gate):
        try:
            return close(gate)
        finally:
            gate_timings.update(gate.timings)

    Gate.close = close_and_keep_timings
    jobs = [load(name, work) for name in tasks]
    start = time.perf_counter()
    for job in jobs:
        job()
    return {"seconds": time.perf_counter() - start, "peak_mib": peak_resident_mib(), **gate_timings}


def prepare_work(spec: dict, work: Path) -> None:
    """The input, with the prerequisite stages already run on it (untimed)."""
    with contextlib.chdir(work):
        prepare(work, spec["lines"], spec.get("per_export"))
        for before in spec.get("after", []):
            load(before, work)()


TIMED = (
    "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
    "from benchmarks.data_stages import timed; print(json.dumps(timed(json.loads(sys.argv[2]), Path.cwd())))"
)


def measure(spec: dict, repeats: int) -> dict:
    """The input is prepared once (in its own interpreter); each repeat times the tasks on a fresh copy of it."""
    env = {**os.environ, "HABLA_LOG_LEVEL": "WARNING"}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        prepared.mkdir()
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.data_stages", json.dumps(spec), str(prepared)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=env,
        )
        if done.returncode:
            return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
        for index in range(repeats):
            work = shutil.copytree(prepared, Path(tmp) / f"run-{index}")
            done = subprocess.run(
                [sys.executable, "-c", TIMED, str(REPO), json.dumps(spec["tasks"])],
                cwd=work,
                capture_output=True,
                text=True,
                env=env,
            )
            if done.returncode:
                return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            shutil.rmtree(work)
    figures = [key for key in runs[0] if isinstance(runs[0][key], (int, float))]
    return {**{key: statistics.median(r[key] for r in runs) for key in figures}, "runs": len(runs)}


def gx_startup(repeats: int) -> float:
    """Seconds to import GX and make its first context, alone in a fresh interpreter (median)."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); from habla.gates import _import_gx; print(_import_gx())"
    runs = [
        float(
            subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, check=True).stdout
        )
        for _ in range(repeats)
    ]
    return statistics.median(runs)


if __name__ == "__main__":
    prepare_work(json.loads(sys.argv[1]), Path(sys.argv[2]))
