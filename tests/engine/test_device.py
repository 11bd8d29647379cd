"""`--device auto`: CUDA when torch can use it; a loud warning (both versions) when an NVIDIA GPU is present
but torch cannot use it. The GPU and its driver are the boundary mocked here (none on this machine)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tts_engine.checkpoints import device as device_module
from tts_engine.checkpoints.device import nvidia_driver, pick_device


def test_auto_without_any_gpu_is_the_cpu_quietly(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "nvidia_driver", lambda: None)
    with caplog.at_level(logging.WARNING):
        assert pick_device("auto") == torch.device("cpu")
    assert not caplog.records


def test_auto_with_an_unusable_nvidia_gpu_warns_with_both_versions(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "nvidia_driver", lambda: ("535.104.05", "12.2"))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with caplog.at_level(logging.WARNING):
        assert pick_device("auto") == torch.device("cpu")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "535.104.05" in record.message and "CUDA 12.2" in record.message and "CUDA 13.0" in record.message


def test_explicit_devices_are_taken_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module, "nvidia_driver", lambda: pytest.fail("no probe for an explicit device"))
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)


def test_driver_probe_reads_the_kernel_module_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 07:09:29 UTC 2025\n"
                    "GCC version:  gcc version 12.2.0\n")
    monkeypatch.setattr(device_module, "NVIDIA_PROC", proc)
    found = nvidia_driver()
    assert found is not None and found[0] == "580.65.06"  # (no libcuda here: its CUDA version is unknown)
    monkeypatch.setattr(device_module, "NVIDIA_PROC", tmp_path / "absent")
    assert nvidia_driver() is None
