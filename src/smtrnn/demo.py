"""The demo: the same non-gated tanh RNN trained with BPTT and with SMT->DMT on needle retrieval at a
length where BPTT fails, both with the same optimiser-step budget; a table of what the RNN alone
reaches, the wall time, and the sequential depth of one training step."""
from __future__ import annotations

from pathlib import Path

import torch

from smtrnn.run import RunConfig, run
from smtrnn.train import TrainConfig

TASK, LENGTH, CELL = "retrieval", 64, "tanh"
SMT_STEPS, DMT_STEPS = 1200, 300


def demo_configs(quick: bool = False) -> dict[str, RunConfig]:
    """The two runs of the demo (``quick``: a seconds-long smoke version, not the result)."""
    smt_steps, dmt_steps = (SMT_STEPS, DMT_STEPS) if not quick else (30, 10)
    length = LENGTH if not quick else 32
    smt = RunConfig(task=TASK, length=length, method="smt+dmt", seed=0)
    smt.model.cell = CELL
    smt.train = TrainConfig(steps=smt_steps, batch_size=32, lr=2e-3, warmup=100, log_every=25)
    smt.dmt_train = TrainConfig(steps=dmt_steps, batch_size=32, lr=1e-3, warmup=20, log_every=25)
    if quick:
        smt.smt.dyn_warmup = 10
    # BPTT gets the same cell, readout, data and total number of optimiser steps
    bptt = RunConfig(task=TASK, length=length, method="bptt", seed=0)
    bptt.model.cell = CELL
    bptt.train = TrainConfig(steps=smt_steps + dmt_steps, batch_size=32, lr=2e-3, warmup=100, log_every=25)
    return {"bptt": bptt, "smt+dmt": smt}


def demo(out_dir: str | Path = "runs/demo", quick: bool = False, progress: bool = True) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    configs = demo_configs(quick)
    rows = []
    for name, config in configs.items():
        result = run(config, Path(out_dir) / name.replace("+", "-"), progress=progress)
        rows.append({"method": config.method, "cell": config.model.cell, "accuracy": result["accuracy"],
                     "seconds": result["seconds"], "sequential_depth": result["sequential_depth"],
                     "forward_depth": result["forward_depth"], "steps": result["steps"],
                     "teacher_accuracy": result.get("teacher_accuracy")})
    first = next(iter(configs.values()))
    return {"task": first.task, "length": first.length, "chance": 1 / 8, "rows": rows}


def machine() -> str:
    """One line naming the processor, core count and PyTorch build of this machine."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def format_report(result: dict, command: str) -> str:
    """The demo's markdown page: the table, and how and where it was measured."""
    import datetime

    return "\n".join([
        "# Demo: BPTT against SMT->DMT, same tanh RNN", "",
        f"Command: `{command}`  ", f"Machine: {machine()}  ", f"Date: {datetime.date.today().isoformat()}", "",
        format_table(result), "",
        "Accuracy is that of the RNN alone, rolled out from its own initial memory over the whole held-out",
        "sequence (no teacher). Gradient depth: cell applications in series on the gradient path of one",
        "training step. Forward depth: cell applications in series in one step's forward pass.", ""])


def format_table(result: dict) -> str:
    lines = [f"task {result['task']}, length {result['length']}, chance accuracy {result['chance']:.3f}", "",
             "| method  | cell | RNN-alone accuracy | teacher accuracy | wall s | steps | gradient depth | forward depth |",
             "|---------|------|--------------------|------------------|--------|-------|----------------|---------------|"]
    for row in result["rows"]:
        teacher = "-" if row["teacher_accuracy"] is None else f"{row['teacher_accuracy']:.3f}"
        forward = ", ".join(f"{k} {v}" for k, v in row["forward_depth"].items())
        lines.append(f"| {row['method']:<7} | {row['cell']} | {row['accuracy']:.3f} | {teacher} | {row['seconds']:.0f} "
                     f"| {row['steps']} | {row['sequential_depth']} | {forward} |")
    return "\n".join(lines)
