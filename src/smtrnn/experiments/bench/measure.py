"""Measuring: wall time of calls taking turns, peak memory, FLOPs, the machine's matmul peak and a
description of the machine.

How each number is taken (honest first, cheap second):
- time: wall seconds of a whole training step (loss, backward, gradient clipping, AdamW step), median
  of ``repeats`` after ``warmup``. The methods of one (cell, length) are timed in turn, round-robin,
  so a machine that gets busier slows them alike: read ratios, not absolute numbers.
- memory: on CUDA, torch.cuda.max_memory_allocated during the call minus what was allocated before.
  On CPU, the peak resident set (VmHWM in /proc/self/status, reset through /proc/self/clear_refs)
  minus the resident set before the call, with glibc told to give every allocation over 64 KiB its
  own mapping (mallopt M_MMAP_THRESHOLD) so a freed tensor leaves the resident set at once. That
  setting changes speed, so memory is measured in a pass of its own after every timing.
- FLOPs: torch.utils.flop_counter over one step (matmuls and attention, what "model FLOPs" means);
  it does not know PyTorch's CPU flash-attention kernels, so we count them with its own SDPA
  formulas, halved when causal (the kernel skips the masked half).
- sequential depth: cell applications in series in one step's gradient path: SMT its horizon K, BPTT T.
"""

from __future__ import annotations

import ctypes
import re
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_round_robin(calls: dict, warmup: int, repeats: int, device: str = "cpu") -> dict:
    """Median wall seconds of each call, the calls taking turns (see the module docstring)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as handle:
        found = re.search(key + r":\s+(\d+) kB", handle.read())
    if found is None:
        raise OSError(f"/proc/self/status has no {key}")
    return int(found.group(1)) / 1024


_LIBC = None


def _exact_resident_memory():
    """glibc: every allocation over 64 KiB gets its own mapping, returned to the system on free."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD; a fixed value also stops glibc raising it
    return _LIBC


def peak_memory_mb(call, device: str = "cpu") -> float | None:
    """Peak memory in use during ``call()`` above what was in use before it, in MiB (None: the
    platform cannot say: no /proc or no glibc)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - allocated) / 2**20
    try:
        libc = _exact_resident_memory()
        libc.malloc_trim(0)
        before = _proc_status_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current resident size
    except (OSError, AttributeError):
        return None
    call()
    return max(0.0, _proc_status_mb("VmHWM") - before)


def _flash_cpu_forward(query, key, value, dropout_p=0.0, is_causal=False, *_, out_shape=None, **__):
    flops = sdpa_flop_count(query, key, value)
    return flops // 2 if is_causal else flops


def _flash_cpu_backward(
    grad_out, query, key, value, out, logsumexp, dropout_p=0.0, is_causal=False, *_, out_shape=None, **__
):
    flops = sdpa_backward_flop_count(grad_out, query, key, value)
    return flops // 2 if is_causal else flops


_CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flash_cpu_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _flash_cpu_backward,
}


def count_flops(call) -> int:
    """FLOPs of matmuls and attention in ``call()`` (forward and backward)."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS) as counter:
        call()
    return counter.get_total_flops()


def matmul_peak(size: int, repeats: int = 5, device: str = "cpu") -> dict:
    """The machine's float32 matmul rate: the best of ``repeats`` [size x size] @ [size x size]."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return {"size": size, "seconds": best, "gflops": 2 * size**3 / best / 1e9}


def measure_later(tasks: list, later: list | None) -> None:
    """Memory is measured after every timing (see the module docstring): by whoever holds ``later``,
    or here and now when there is none."""
    if later is None:
        for task in tasks:
            task()
    else:
        later.extend(tasks)


def set_peak(row: dict, call, device: str, base_mb: float = 0.0):
    def measure():
        step_mb = peak_memory_mb(call, device)
        row["peak_mb"] = None if step_mb is None else base_mb + step_mb

    return measure
