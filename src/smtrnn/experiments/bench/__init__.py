"""Performance benchmarks: SMT's time-parallel training step against BPTT, side by side at equal
memory size and batch, and the RNN's O(1)-per-token inference against its Transformer teacher with
and without a key-value cache; plus the machine's matmul peak, so each step's achieved FLOP/s can be
read against the limit.

    result = run_bench(quick_config())   # rows for docs/benchmarks.json; bench_report renders them

Modules: ``config`` (BenchConfig, the quick preset), ``measure`` (timers, peak memory, FLOPs, the
machine; how each number is taken), ``training`` (the training-step rows), ``inference`` (per-token
latency rows; the token streams themselves are generation, in smtrnn.sampling), ``optimisations``
(before/after rows); this module runs them in order and checks the targets.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import datetime, timezone

import torch

from smtrnn.experiments.bench.config import BenchConfig, quick_config, sampled_positions
from smtrnn.experiments.bench.inference import inference_rows
from smtrnn.experiments.bench.measure import count_flops, matmul_peak, peak_memory_mb, time_round_robin
from smtrnn.experiments.bench.optimisations import derived_rows, optimisation_rows
from smtrnn.experiments.bench.training import (
    FUSED,
    TrainingStep,
    dense_batch,
    loop_bptt_loss,
    sequential_depth,
    training_methods,
    training_rows,
    windowed,
)
from smtrnn.experiments.pages import machine_details
from smtrnn.models import ModelConfig
from smtrnn.sampling import CachedTeacherStream, RNNStream, uncached_teacher_logits

__all__ = [
    "FUSED",
    "BenchConfig",
    "CachedTeacherStream",
    "RNNStream",
    "TrainingStep",
    "count_flops",
    "dense_batch",
    "derived_rows",
    "inference_rows",
    "loop_bptt_loss",
    "matmul_peak",
    "optimisation_rows",
    "peak_memory_mb",
    "quick_config",
    "run_bench",
    "sampled_positions",
    "sequential_depth",
    "targets",
    "time_round_robin",
    "training_methods",
    "training_rows",
    "uncached_teacher_logits",
    "windowed",
]


def targets(result: dict) -> list[dict]:
    """The speed and memory targets, each with the measured value and whether it is met."""
    training, inference = result["training"], result["inference"]
    seconds = {(r["method"], r["cell"], r["length"]): r["seconds_per_step"] for r in training}
    lengths = sorted({r["length"] for r in training})
    first, last = lengths[0], lengths[-1]
    rows = []
    for cell in dict.fromkeys(r["cell"] for r in training):
        bptt = seconds["bptt", cell, last] / seconds["bptt", cell, first]
        for method in ("smt", "smt-sampled", "smt-windowed"):
            growth = seconds[method, cell, last] / seconds[method, cell, first]
            rows.append(
                {
                    "target": f"{method} step grows less than bptt's from T={first} to T={last}",
                    "cell": cell,
                    "measured": f"{method} x{growth:.1f}, bptt x{bptt:.1f}",
                    "met": growth < bptt,
                }
            )
        for method in ("smt", "smt-sampled", "smt-windowed"):
            ratio = seconds[method, cell, last] / seconds["bptt", cell, last]
            rows.append(
                {
                    "target": f"{method} step no slower than the bptt loop at T={last}",
                    "cell": cell,
                    "measured": f"{ratio:.2f}x the bptt loop's time",
                    "met": ratio <= 1,
                }
            )
        for method in ("smt", "smt-sampled"):
            smt = next(r for r in training if (r["method"], r["cell"], r["length"]) == (method, cell, last))
            if "peak_fraction" in smt:
                rows.append(
                    {
                        "target": f"{method} step at >= 30% of the matmul peak",
                        "cell": cell,
                        "measured": f"{100 * smt['peak_fraction']:.1f}% at T={last}",
                        "met": smt["peak_fraction"] >= 0.3,
                    }
                )
    latency = {(r["model"], r["context"]): r["seconds_per_token"] for r in inference}
    contexts = sorted({r["context"] for r in inference})
    rnn, cell = [latency["rnn", c] for c in contexts], result["model_defaults"]["cell"]
    rows.append(
        {
            "target": "rnn per-token latency flat in context (max/min <= 1.5)",
            "cell": cell,
            "measured": f"max/min {max(rnn) / min(rnn):.2f} over {contexts[0]}..{contexts[-1]}",
            "met": max(rnn) / min(rnn) <= 1.5,
        }
    )
    at = 8192 if 8192 in contexts else contexts[-1]
    ratio = latency["teacher-no-cache", at] / latency["rnn", at]
    rows.append(
        {
            "target": f"rnn >= 10x cheaper per token than the teacher without cache at {at}",
            "cell": cell,
            "measured": f"{ratio:.0f}x",
            "met": ratio >= 10,
        }
    )
    return rows


def run_bench(config: BenchConfig, log=print) -> dict:
    """Every section, timings first and memory last; the result that docs/benchmarks.json holds."""
    if config.threads:
        torch.set_num_threads(config.threads)
    started, load_before = datetime.now(timezone.utc), os.getloadavg()
    later: list = []
    peak = matmul_peak(config.matmul_size, 5, config.device)
    log(f"matmul peak {peak['gflops']:.1f} GFLOP/s")
    training = training_rows(config, peak["gflops"], log, later)
    inference = inference_rows(config, log, later)
    optimisations = optimisation_rows(config, log, later)
    log(f"memory pass ({len(later)} measurements)")
    for measure in later:
        measure()
    result = {
        "date": started.isoformat(timespec="seconds"),
        "seconds": (datetime.now(timezone.utc) - started).total_seconds(),
        "machine": {**machine_details(), "load_before": load_before, "load_after": os.getloadavg()},
        "config": {**asdict(config), "decoder_positions": sampled_positions(config)},
        "model_defaults": asdict(ModelConfig()),
        "matmul": peak,
        "training": training,
        "inference": inference,
        "optimisations": optimisations + derived_rows(training, config),
    }
    result["targets"] = targets(result)
    return result
