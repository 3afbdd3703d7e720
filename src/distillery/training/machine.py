"""The machine a result came from: the report prints it next to the numbers."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | None = None) -> dict[str, object]:
    info: dict[str, object] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                               "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                               "os": platform.platform(terse=True),
                               # the kernels PyTorch picked (AVX512, AVX2, DEFAULT): another one is another rounding
                               # path, which retrains every model differently (docs/reproducibility.md)
                               "cpu_isa": torch.backends.cpu.get_cpu_capability()}
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["gpu"] = None
    return info
