"""`make mutate`: mutation testing of the modules that hold habla's guarantees, with a score per module.

Runs mutmut (configured under `[tool.mutmut]` in pyproject.toml) over the modules named there, or
over the mutant-name globs given on the command line (e.g. `'habla.cleaning*'`), then prints a
table of killed / survived / other per module and the names of the survivors. `mutmut show NAME`
shows a survivor's diff; a survivor that matters is a test to write.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout", "segfault"}


def main(argv: list[str]) -> int:
    children = str(max(1, (os.cpu_count() or 2)))
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", children, *argv])
    if run.returncode not in (0, 1):
        return run.returncode
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
        module = name.split(".x_")[0].rsplit(".", 1)[0] if ".x_" not in name else name.split(".x_")[0]
        kind = "killed" if status in KILLED else status
        by_module[module][kind] += 1
        if status == "survived":
            survivors.append(line.split(":")[0].strip())
    if not any(counts["killed"] + counts["survived"] for counts in by_module.values()):
        print("mutmut tested no mutant (see its output above: the tests must pass unmutated first)", file=sys.stderr)
        return 1
    print("\n| module | mutants | killed | survived | other | score |\n|---|---|---|---|---|---|")
    for module, counts in sorted(by_module.items()):
        total = sum(counts.values())
        other = total - counts["killed"] - counts["survived"]
        score = counts["killed"] / max(counts["killed"] + counts["survived"], 1)
        print(f"| `{module}` | {total} | {counts['killed']} | {counts['survived']} | {other} | {score:.0%} |")
    if survivors:
        print(f"\n{len(survivors)} surviving mutants (`mutmut show <name>`):")
        print("\n".join(f"  {name}" for name in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
