"""`make mutate`: mutation testing of the modules that hold habla's guarantees, with a score per module.

Runs mutmut (configured under `[tool.mutmut]` in pyproject.toml) over the modules named there, or
over the mutant-name globs given on the command line (e.g. `'habla.cleaning*'`), then prints a
table per module and the names of the survivors (`--report` prints the table of the results so far). `mutmut show NAME`
shows a survivor's diff; a survivor that matters is a test to write.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

# What `make mutate` runs by default: the modules holding the guarantees, with the guards before a run and what
# decides which checkpoint is resumed (training.py itself retrains tiny models for every mutant: run it by name when
# it changes, e.g. `python scripts/mutate.py 'habla.model.training.x_build_trainer*'`).
DEFAULT = [
    "habla.model.judging*",
    "habla.text.redact*",
    "habla.splitting*",
    "habla.cleaning*",
    "habla.model.scoring*",
    "habla.model.perplexity*",
    "habla.model.guards*",
    *(f"habla.model.checkpoints.x_{name}*" for name in ("fingerprint", "finished", "resumable_in", "step_rows")),
    "habla.model.training.x_sft_config*",
]
DETECTED = {"killed", "timeout", "segfault"}  # as mutmut counts them (the score below leaves timeouts out)


def main(argv: list[str]) -> int:
    if "--report" in argv:  # the table of the results so far, without running anything
        return report()
    children = str(max(1, (os.cpu_count() or 2)))
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", children, *(argv or DEFAULT)])
    if run.returncode not in (0, 1):
        return run.returncode
    return report()


def report() -> int:
    listing = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True
    )
    by_module: dict[str, Counter] = defaultdict(Counter)
    survivors: list[str] = []
    for line in listing.stdout.splitlines():
        match = re.match(r"\s*([\w.]+)__mutmut_\d+: (.+)$", line)
        if not match:
            continue
        name, status = match.group(1), match.group(2).strip()
        module = re.split(r"\.x[_ǁ]", name)[0]  # mutmut names functions `x_name`, methods `xǁClassǁname`
        by_module[module][status] += 1
        if status == "survived":
            survivors.append(line.split(":")[0].strip())
    if not any(counts[status] for counts in by_module.values() for status in (*DETECTED, "survived")):
        print("mutmut tested no mutant (see its output above: the tests must pass unmutated first)", file=sys.stderr)
        return 1
    print("\n| module | mutants | killed | timeout | survived | no tests | not checked | score |")
    print("|---|---|---|---|---|---|---|---|")
    for module, counts in sorted(by_module.items()):
        # Timeouts are left out of the score: a worker's first import of torch or transformers can outlast
        # the limit, so a timeout is not proof that the tests noticed the mutant.
        killed = counts["killed"] + counts["segfault"]
        score = killed / max(killed + counts["survived"] + counts["no tests"], 1)
        print(
            f"| `{module}` | {sum(counts.values())} | {counts['killed']} | {counts['timeout']} | {counts['survived']} "
            f"| {counts['no tests']} | {counts['not checked']} | {score:.0%} |"
        )
    if survivors:
        print(f"\n{len(survivors)} surviving mutants (`mutmut show <name>`):")
        print("\n".join(f"  {name}" for name in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
