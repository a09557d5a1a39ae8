"""Does sampling decoder positions hurt learning? (issue 6, item 4)

SMT with the decoder on every memory of every sequence (decoder_positions 0) against the decoder on
a few sampled memories per sequence, same task, model, steps and seeds; writes a markdown table.

    python scripts/decoder_positions.py docs/decoder_positions.md
"""
import json
import multiprocessing
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from smtrnn.horizon_study import BY_NAME
from smtrnn.run import RunConfig, run

TASKS = [("stack", 64)]
POSITIONS = [0, 16, 4]
SEEDS = [0, 1]
STEPS = 300


def train(point: tuple[str, int, int, int]) -> dict:
    task, length, positions, seed = point
    torch.set_num_threads(1)
    config = RunConfig(task=task, length=length, method="smt", seed=seed)
    config.train.steps, config.train.warmup, config.train.checkpoint_every = STEPS, 30, 10**6
    BY_NAME["paper"].change(config)  # the recipe these numbers were measured with: one-step SMT, sinusoidal teacher
    config.smt.decoder_positions, config.smt.dyn_warmup = positions, STEPS // 2
    result = run(config, f"runs/decoder_positions/{task}-T{length}-p{positions}-s{seed}", progress=False)
    row = {"task": task, "length": length, "decoder_positions": positions, "seed": seed,
           "teacher_accuracy": result["teacher_accuracy"], "accuracy": result["accuracy"],
           "one_step_accuracy": result["one_step_accuracy"], "seconds": result["seconds"]}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    started = time.time()
    points = [(task, length, positions, seed) for task, length in TASKS for positions in POSITIONS for seed in SEEDS]
    with multiprocessing.get_context("spawn").Pool(2) as pool:  # two one-thread runs at a time
        rows = pool.map(train, points, chunksize=1)

    lines = ["# Decoder positions: sampled windows against every window", "",
             f"Command: `python scripts/decoder_positions.py {' '.join(sys.argv[1:])}` (two one-thread runs at a time), "
             f"{platform.processor() or platform.machine()}, {datetime.now(timezone.utc):%Y-%m-%d}, "
             f"{time.time() - started:.0f} s in all. SMT alone ({STEPS} steps, batch 32, tanh cell, library defaults "
             "otherwise); `decoder_positions` 0 decodes every memory of every sequence. Mean over seeds "
             f"{SEEDS}; accuracy is the RNN alone (teacher-free), teacher accuracy the decoder's first prediction.", "",
             "| task | T | decoder positions | teacher accuracy | one-step accuracy | RNN-alone accuracy | s per run |",
             "|---|---|---|---|---|---|---|"]
    for task, length in TASKS:
        for positions in POSITIONS:
            group = [r for r in rows if r["task"] == task and r["decoder_positions"] == positions]
            mean = lambda key: sum(r[key] for r in group) / len(group)
            lines.append(f"| {task} | {length} | {positions or 'all'} | {mean('teacher_accuracy'):.3f} | "
                         f"{mean('one_step_accuracy'):.3f} | {mean('accuracy'):.3f} | {mean('seconds'):.0f} |")
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/decoder_positions.md")
    target.write_text("\n".join(lines) + "\n")
    Path(target.with_suffix(".json")).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":  # spawned workers import this file for train() only
    main()
