"""Describe NVIDIA GPUs and the driver through NVML (nvidia-ml-py), when present."""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass, field
from functools import lru_cache

CHECKPOINT_MIN_DRIVER = 570  # first driver branch with cuCheckpointProcess* in libcuda


@dataclass(frozen=True)
class GpuInventory:
    """The GPUs and driver of this machine; `absent_reason` says why none was found."""

    driver_version: str = ""
    cuda_driver_version: str = ""
    gpus: list[dict[str, object]] = field(default_factory=list)
    absent_reason: str = ""

    def to_fingerprint(self) -> dict[str, object]:
        """Return the parts that decide whether GPU state may be restored here."""
        data = asdict(self)
        data.pop("absent_reason")
        return data

    @property
    def driver_branch(self) -> int:
        """The driver's major version (0 when no driver is present)."""
        try:
            return int(self.driver_version.split(".")[0])
        except ValueError:
            return 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@lru_cache(maxsize=1)
def inventory() -> GpuInventory:
    """Return this machine's NVIDIA GPUs, or an empty inventory saying why there are none."""
    try:
        import pynvml
    except ImportError:
        return GpuInventory(absent_reason="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return GpuInventory(absent_reason=f"no NVIDIA driver: {error}")
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                {
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    "compute_capability": f"{major}.{minor}",
                }
            )
        return GpuInventory(
            driver_version=_text(pynvml.nvmlSystemGetDriverVersion()),
            cuda_driver_version=f"{cuda // 1000}.{cuda % 1000 // 10}",
            gpus=gpus,
        )
    finally:
        pynvml.nvmlShutdown()


def driver_has_checkpoint_api() -> bool:
    """Tell whether libcuda exports the process checkpoint entry points."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return hasattr(libcuda, "cuCheckpointProcessCheckpoint")
