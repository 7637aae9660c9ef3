"""What a figure was measured on, and how to read peak memory and accelerator peak FLOP/s."""

from __future__ import annotations

import os
import platform

import torch

from benchmarks.memory import peak_resident_mib

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, for model FLOPs utilisation.
PEAK_BF16 = {
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
}


def describe() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def peak_memory_mib() -> float:
    """Peak GPU memory allocated where there is a GPU, else the process's peak resident memory."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_resident_mib()
