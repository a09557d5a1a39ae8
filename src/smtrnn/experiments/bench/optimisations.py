"""The optimisations, each timed before and after in the same run: the SMT step's label cut, the
teacher's fused inference path, and the options compared inside the training matrix."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from functools import partial

import torch

from smtrnn import teacher as teacher_module
from smtrnn.experiments.bench.config import BenchConfig, sampled_positions
from smtrnn.experiments.bench.measure import measure_later, peak_memory_mb, time_round_robin
from smtrnn.experiments.bench.training import TrainingStep
from smtrnn.methods import smt as smt_module
from smtrnn.models import ModelConfig, Models
from smtrnn.sampling import uncached_teacher_logits
from smtrnn.tasks import make_task


@contextmanager
def _swapped(module, name: str, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def _before_after(name, cell, length, before, after, config, repeats, exact, note, later) -> dict:
    seconds = time_round_robin({"before": before, "after": after}, config.warmup, repeats, config.device)
    row = {
        "optimisation": name,
        "cell": cell,
        "length": length,
        "before_seconds": seconds["before"],
        "after_seconds": seconds["after"],
        "speedup": seconds["before"] / seconds["after"],
        "before_peak_mb": None,
        "after_peak_mb": None,
        "exact": exact,
        "note": note,
    }

    def measure():
        row["before_peak_mb"] = peak_memory_mb(before, config.device)
        row["after_peak_mb"] = peak_memory_mb(after, config.device)

    measure_later([measure], later)
    return row


def optimisation_rows(config: BenchConfig, log=print, later: list | None = None) -> list[dict]:
    """Each optimisation against the code without it, interleaved in one process."""
    rows = []
    # 1. SMT step: decode and read out only the windows that carry a label (retrieval: one per sequence)
    task, length = make_task("retrieval"), config.optimisation_length
    batch = task.sample(config.batch, length, torch.Generator().manual_seed(config.seed))
    batch = {key: value.to(config.device) for key, value in batch.items()}
    before_step, after_step = (TrainingStep("smt", "tanh", config, task.vocab_size, task.num_classes) for _ in range(2))

    def before(step=before_step):
        with _swapped(smt_module, "labelled_rows", lambda labelled, *tensors: tensors):
            step(batch)

    rows.append(
        _before_after(
            "smt: decode and read out labelled windows only",
            "tanh",
            length,
            before,
            partial(after_step, batch),
            config,
            config.repeats,
            True,
            "retrieval (one label per sequence), decoder on every window; same loss and gradients",
            later,
        )
    )
    # the same with the decoder on sampled windows, which are drawn among labelled ones: the readout's share
    before_step, after_step = (
        TrainingStep("smt-sampled", "tanh", config, task.vocab_size, task.num_classes) for _ in range(2)
    )
    rows.append(
        _before_after(
            "smt-sampled: read out labelled positions only",
            "tanh",
            length,
            partial(before, before_step),
            partial(after_step, batch),
            config,
            config.repeats,
            True,
            f"retrieval, decoder on {sampled_positions(config)} sampled windows; same loss and gradients",
            later,
        )
    )
    # 2. teacher without a cache: PyTorch's fused inference path off in Teacher.encode
    models = Models(ModelConfig(), config.vocab, config.vocab).to(config.device).eval()
    prefix = torch.randint(0, config.vocab, (1, config.encode_context), generator=torch.Generator().manual_seed(1))
    prefix = prefix.to(config.device)
    after = torch.no_grad()(partial(uncached_teacher_logits, models.teacher, prefix))

    def fused_path():
        with _swapped(teacher_module, "_without_fused_inference_path", nullcontext):
            after()

    rows.append(
        _before_after(
            "teacher encode: no fused inference path (eval, no grad)",
            "-",
            config.encode_context,
            fused_path,
            after,
            config,
            config.inference_repeats,
            True,
            "one token of the teacher without a cache; same memories to 1e-5",
            later,
        )
    )
    log("optimisations " + "  ".join(f"{r['optimisation'].split(':')[0]} x{r['speedup']:.2f}" for r in rows))
    return rows


def derived_rows(training: list[dict], config: BenchConfig) -> list[dict]:
    """Options compared inside the training matrix: decoder sampling, torch.compile, bf16 autocast."""
    table = {(r["method"], r["cell"], r["length"]): r for r in training}
    variants = {
        "smt-sampled": (
            f"smt: decoder on {sampled_positions(config)} sampled windows per sequence",
            False,
            "changes the loss: fewer decoder windows",
        ),
        "smt-compiled": ("smt: torch.compile", True, "first call (compile) in first_call_seconds"),
        "smt-bf16": ("smt: bf16 autocast (CUDA)", False, "bf16 numerics"),
    }
    rows = []
    for (method, cell, length), after in table.items():
        if method in variants and ("smt", cell, length) in table:
            before = table["smt", cell, length]
            name, exact, note = variants[method]
            rows.append(
                {
                    "optimisation": name,
                    "cell": cell,
                    "length": length,
                    "before_seconds": before["seconds_per_step"],
                    "after_seconds": after["seconds_per_step"],
                    "speedup": before["seconds_per_step"] / after["seconds_per_step"],
                    "before_peak_mb": before["peak_mb"],
                    "after_peak_mb": after["peak_mb"],
                    "exact": exact,
                    "note": note,
                }
            )
    return rows
