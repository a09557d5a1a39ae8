"""Where an SMT step's time goes as T grows (docs/benchmarks.md, "SMT step breakdown"): each term of the
loss timed on its own, forward and backward, in the order the loss computes them, with the library's
default model on needle retrieval; and one DMT step beside it. The terms share inputs the way the loss
does (the teacher's memories), so their sum is close to a whole step, which is timed too."""

from __future__ import annotations

import datetime
import time

import torch

from smtrnn.config import RunConfig
from smtrnn.experiments.pages import fmt, machine, machine_details, table
from smtrnn.methods import dmt_loss, smt_loss
from smtrnn.methods.common import masked_cross_entropy, memory_spread, relative_memory_error, uniformity
from smtrnn.methods.smt import horizon_starts, predictive_loss, rollout_error
from smtrnn.run import build
from smtrnn.tasks.base import IGNORE


def _timed(call, repeats: int) -> float:
    """Median CPU seconds of this process for ``call()`` (forward and backward) over ``repeats`` calls after
    one warm-up: unlike wall time, what other processes on a busy machine take is not counted."""
    call()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        call()
        times.append(time.process_time() - start)
    return sorted(times)[len(times) // 2]


def breakdown_rows(lengths=(256, 512, 1024), repeats: int = 5, seed: int = 0, log=print) -> list[dict]:
    """Per length: seconds of each SMT term (forward + backward) and of whole SMT and DMT steps."""
    rows = []
    for length in lengths:
        config = RunConfig(task="retrieval", length=length)
        config.smt.horizon_grow = config.smt.teacher_delay = 0  # the step once K has grown to its full length
        task, models = build(config)
        generator = torch.Generator().manual_seed(seed)
        batch = task.sample(config.train.batch_size, length, generator)
        dmt_batch = task.sample(config.dmt_train.batch_size, length, generator)
        x, y = batch["x"], batch["y"]
        teacher, cell, smt = models.teacher, models.rnn.cell, config.smt

        def backward(loss):
            models.zero_grad(set_to_none=True)
            loss.backward()

        with torch.no_grad():
            fixed = teacher.encode(x)
        spread = memory_spread(fixed[:, 1:])
        memories = lambda: fixed.clone().requires_grad_()
        starts = horizon_starts(x.shape[0], length, smt.horizon, smt.horizon_starts, x.device)
        labelled = (y != IGNORE).reshape(-1)
        terms = {
            "encoder": lambda: backward(teacher.encode(x).sum()),
            "decoder": lambda: backward(predictive_loss(teacher, memories(), x, y, smt)[0]),
            "one-step dynamics": lambda: backward(
                relative_memory_error(cell.step(memories()[:, :-1], x), fixed[:, 1:], spread)
            ),
            "horizon": lambda: backward(rollout_error(cell, memories(), x, starts, smt.horizon, spread)),
            "uniformity": lambda: backward(uniformity(memories()[:, 1:], cell.memory_tokens)),
            "readout": lambda: backward(
                masked_cross_entropy(
                    models.rnn.logits(memories()[:, 1:].reshape(-1, fixed.shape[-1])[labelled]), y.reshape(-1)[labelled]
                )[0]
            ),
        }
        row = {"length": length, "batch": x.shape[0], **{name: _timed(call, repeats) for name, call in terms.items()}}
        row["smt step"] = _timed(lambda: backward(smt_loss(models, batch, smt, step=10**6)[0]), repeats)
        models.teacher.requires_grad_(False)
        row["dmt step"] = _timed(lambda: backward(dmt_loss(models, dmt_batch, config.dmt)[0]), repeats)
        models.teacher.requires_grad_(True)
        rows.append(row)
        log(
            "breakdown T={length}: ".format(**row)
            + ", ".join(f"{k} {v:.3f}s" for k, v in row.items() if k not in ("length", "batch"))
        )
    return rows


TERMS = ("encoder", "decoder", "one-step dynamics", "horizon", "uniformity", "readout")


def run_breakdown(lengths=(256, 512, 1024), repeats: int = 5, threads: int = 0, log=print) -> dict:
    """The rows and what they were measured on, for the page (``threads`` 0: PyTorch's choice)."""
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    rows = breakdown_rows(lengths, repeats, log=log)
    return {"rows": rows, "repeats": repeats, "machine": machine_details(), "seconds": time.perf_counter() - start}


def blocks(result: dict, command: str, link: str | None) -> list[tuple[str, list[str]]]:
    """docs/step-breakdown.md: one row per length, each term's seconds and its share of the terms' sum."""
    lines = []
    for row in result["rows"]:
        total = sum(row[name] for name in TERMS)
        cells = [f"{fmt(row[name], 3)} ({100 * row[name] / total:.0f}%)" for name in TERMS]
        lines.append([str(row["length"]), str(row["batch"]), *cells, fmt(row["smt step"], 3), fmt(row["dmt step"], 3)])
    header = [
        "# Where an SMT step's time goes",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}, {result['machine']['torch_threads']} thread(s)  ",
        f"Date: {datetime.date.today().isoformat()}; {result['seconds']:.0f} s in all, median of "
        f"{result['repeats']} timings per cell after one warm-up",
        "",
        "CPU seconds (of this process, so a busy machine's other work is not counted) of each term of the SMT loss, forward and backward, with the library's default model on needle "
        "retrieval once K has grown to 16 (batch 32, share of the six terms' sum in brackets); a whole SMT step "
        "and a whole DMT step (batch 128, a rollout over all T) beside them. Terms and steps are timed in one "
        "process, one thread.",
        "",
    ]
    titles = ["T", "batch", *TERMS, "SMT step", "DMT step"]
    return [("breakdown", header + table(titles, lines))]
