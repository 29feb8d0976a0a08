"""Where a model's weights go: one device, split over several, or not on this worker at all.

A pure decision from the model's parameter count (known from discovery) and the free memory of
a worker's devices: a model that fits on one device goes on the first that holds it; one that
fits only on several is split across them by transformers' `device_map="auto"` with a
`max_memory` budget per device (whole decoder layers per device, pipeline style); one that fits
nowhere is left for a worker that can hold it (`can_hold`), not failed with out-of-memory.

Size classes route queued models to workers: a model's class is the first step of a fixed
ladder of parameter counts (1/16 octave apart, about 4.4%) at or above its own count, and a
worker takes the classes whose step is at most its `capacity`, so it never claims a model it
cannot hold.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from atlas.errors import UsageError

GIB = 1 << 30
# Kept free on each device for activations, the output head's chunks and the CUDA context.
RESERVE_FRACTION = 0.15
RESERVE_MIN = 2 * GIB
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Layers are placed whole: a split needs about one layer's worth (~1/32) of slack.
SPLIT_SLACK = 1.04
# The size-class ladder: 2**(k/16) parameters, from 65,536 to 2**44 (17.6 trillion).
STEPS_PER_OCTAVE = 16
LADDER = tuple(int(2 ** (k / STEPS_PER_OCTAVE)) for k in range(16 * 16, 44 * 16 + 1))
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}  # fmt: skip


@dataclass(frozen=True)
class Placement:
    """Devices a model is loaded on; `max_memory` (per device, bytes) when it is split."""

    devices: tuple[str, ...]
    max_memory: dict[str, int] = field(default_factory=dict)
    weight_bytes: int = 0
    offload_folder: str | None = None  # for a "disk" device (CPU tests of the split path)

    @property
    def split(self) -> bool:
        return len(self.devices) > 1

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """`device_map` (and `max_memory`) for `from_pretrained`."""
        if not self.split:
            return {"device_map": self.devices[0]}
        budget: dict[int | str, int] = {}
        for dev, size in self.max_memory.items():
            budget[int(dev.split(":")[1]) if dev.startswith("cuda:") else dev] = size
        out: dict[str, Any] = {"device_map": "auto", "max_memory": budget}
        if self.offload_folder:
            out["offload_folder"] = self.offload_folder
        return out


def parse_devices(spec: str) -> tuple[str, ...]:
    """`cuda:0,cuda:1` -> ("cuda:0", "cuda:1"); a single name stays one device."""
    names = tuple(d.strip() for d in spec.split(",") if d.strip())
    if not names:
        raise UsageError("no device given")
    for name in names:
        if name != "cpu" and not (
            name.startswith("cuda:") and name[5:].isdigit()
        ) and not (len(names) == 1 and name in ("auto", "cuda")):
            raise UsageError(
                f"unknown device {name!r}: use auto, cpu, cuda, or a list like cuda:0,cuda:1"
            )
    if len(set(names)) != len(names):
        raise UsageError(f"a device is listed twice in {spec!r}")
    return names


def weight_bytes(num_parameters: int, dtype: str = "bfloat16") -> int:
    """Bytes of the weights in a dtype."""
    return int(num_parameters) * DTYPE_BYTES.get(dtype, 2)


def usable(free: int) -> int:
    """Bytes of a device's free memory that weights may take."""
    return max(0, int(free - max(RESERVE_MIN, RESERVE_FRACTION * free)))


def plan(
    num_parameters: int | None, free: Mapping[str, int], dtype: str = "bfloat16"
) -> Placement | None:
    """One device when the weights fit on one, several when only together, else None."""
    if not free:
        raise UsageError("no devices to place a model on")
    devices = tuple(free)
    if not num_parameters:
        return Placement(devices[:1])  # size unknown: try the first device
    need = weight_bytes(num_parameters, dtype)
    for dev in devices:
        if usable(free[dev]) >= need:
            return Placement((dev,), weight_bytes=need)
    budget = {dev: usable(free[dev]) for dev in devices if usable(free[dev]) > 0}
    if sum(budget.values()) >= need * SPLIT_SLACK:
        return Placement(tuple(budget), max_memory=budget, weight_bytes=need)
    return None


def can_hold(num_parameters: int | None, free: Mapping[str, int], dtype: str = "bfloat16") -> bool:
    """Whether a worker with these devices can load the model (a queue leaves it otherwise)."""
    return plan(num_parameters, free, dtype) is not None


def capacity(
    free: Mapping[str, int], dtype: str = "bfloat16", cap: int | None = None
) -> int:
    """The most parameters a worker with these devices can hold (`can_hold` agrees).

    `cap` limits the weights each device may take (`atlas worker --max-memory`).
    """
    room = [usable(f) if cap is None else min(usable(f), cap) for f in free.values()]
    if not room:
        return 0
    best = max(room)
    if len(room) > 1:
        best = max(best, int(sum(room) / SPLIT_SLACK))
    return best // DTYPE_BYTES.get(dtype, 2)


def size_class(num_parameters: int) -> int:
    """The ladder step a model of this size is queued under (the smallest step >= it)."""
    at = bisect.bisect_left(LADDER, int(num_parameters))
    return LADDER[min(at, len(LADDER) - 1)]


def classes_up_to(max_parameters: int) -> tuple[int, ...]:
    """Every ladder step a worker holding `max_parameters` can take."""
    return LADDER[: bisect.bisect_right(LADDER, int(max_parameters))]


def human_count(n: float) -> str:
    """3 significant digits with K/M/B/T: 8589934592 -> 8.59B (distinct for ladder steps)."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            value = n / div
            digits = max(0, 2 - math.floor(math.log10(value)))
            return f"{value:.{digits}f}{unit}"
    return str(int(n))


def parse_memory(text: str) -> int:
    """`40GiB`, `80GB`, `512MiB` or bytes -> bytes."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text or "")
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in _UNITS:
        raise UsageError(f"cannot read memory size {text!r}: use e.g. 40GiB, 80GB or 512MiB")
    value = int(float(found.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(f"memory size {text!r} must be positive")
    return value


def free_memory(devices: Sequence[str]) -> dict[str, int]:
    """Free bytes per device: CUDA from the driver, cpu from the available RAM."""
    import torch

    out: dict[str, int] = {}
    for dev in devices:
        if dev.startswith("cuda"):
            if not torch.cuda.is_available():
                raise UsageError(f"--device {dev} was asked for, but torch sees no CUDA device")
            index = int(dev.split(":")[1]) if ":" in dev else 0
            if index >= torch.cuda.device_count():
                raise UsageError(f"no device {dev}: torch sees {torch.cuda.device_count()} GPUs")
            out[dev] = int(torch.cuda.mem_get_info(index)[0])
        else:
            import os

            out[dev] = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return out


def count_parameters(files: Sequence[Any]) -> int:
    """Parameters in safetensors files, from their headers (no weights read)."""
    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
                numel = 1
                for dim in fh.get_slice(key).get_shape():
                    numel *= int(dim)
                total += numel
    return total
