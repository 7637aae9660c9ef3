"""Peak resident memory of this process, as the kernel counts it for this program alone."""

from __future__ import annotations

from pathlib import Path


def peak_resident_mib() -> float:
    """VmHWM, not `ru_maxrss`: Linux carries a forked parent's peak into the child's `ru_maxrss` across exec, so a
    benchmark started from a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
