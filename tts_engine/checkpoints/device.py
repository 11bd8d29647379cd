"""Which device `--device auto` means, and a loud warning when an NVIDIA GPU is there but torch cannot use it.

The usual cause is a driver older than the CUDA the torch wheel was built for (PyPI's torch 2.13.0 is a
CUDA 13.0 build: it needs an R580 driver or newer), or a CPU-only torch. Falling back to the CPU silently
turns a real-time server into one ~50x slower than real time, so the fallback says why, with both versions.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

NVIDIA_PROC = Path("/proc/driver/nvidia/version")


def nvidia_driver() -> tuple[str, str | None] | None:
    """(driver version, highest CUDA version it supports or None) when an NVIDIA kernel driver is loaded."""
    try:
        text = NVIDIA_PROC.read_text()
    except OSError:
        return None
    words = text.split("Kernel Module", 1)[-1].split()
    version = next((w for w in words if w[:1].isdigit()), "unknown")
    cuda = None
    try:  # the driver API's own answer: 13000 means CUDA 13.0
        value = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(value)) == 0:
            cuda = f"{value.value // 1000}.{value.value % 1000 // 10}"
    except (OSError, AttributeError):
        pass
    return version, cuda


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """`auto`: CUDA when torch can use it, else the CPU (with a warning when an NVIDIA GPU is present)."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    driver = nvidia_driver()
    if driver is not None:
        version, cuda = driver
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU-only build)"
        log.warning("an NVIDIA GPU is present (driver %s, supports CUDA %s) but torch %s, built for %s, cannot "
                    "use it: running on the CPU, far slower than real time. Install an NVIDIA driver for the "
                    "CUDA torch was built for, or a torch build for your driver's CUDA; pass --device cpu to "
                    "silence this, --device cuda to fail instead.", version, cuda or "unknown",
                    torch.__version__, built)
    return torch.device("cpu")
