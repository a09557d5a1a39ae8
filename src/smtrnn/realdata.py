"""``smtrnn realdata``: BPTT against SMT->DMT on real data (MNIST, Quick, Draw! sketches, Brown fiction).

Each point of the grid (dataset x cell x method) is one RunConfig trained by ``smtrnn.run.run`` in
OUT/<dataset>/<cell>/<method>; a point whose result.json exists is read back, not retrained. Within a
dataset and cell every method gets the same model, the same crops, the same batch size and the same
total number of optimiser steps (SMT steps + DMT steps = BPTT steps). SMT is windowed: the teacher
encodes the first Tc tokens of a crop of Tc + Tf - 1, so that every memory has Tf future targets;
DMT rolls the RNN out over Td tokens from a teacher memory. Image crops are aligned whole images
(Tc = 784), so the RNN alone can draw an image from its initial memory m_0.

Every ``eval_every`` steps the RNN alone (from m_0, no teacher) is scored on held-out crops; the
curves put that held-out bits per byte against training tokens and against sequential compute.

    result = realdata(preset("cpu"), "runs/realdata", jobs=2)
    write_outputs(preset("cpu"), result, "runs/realdata", "smtrnn realdata --jobs 2", machine(),
                  json_path="docs/realdata.json", markdown_path="docs/realdata.md", figures_dir="docs/figures")
"""

from __future__ import annotations

import datetime
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from smtrnn import checkpoint, metrics
from smtrnn.cells import CELLS
from smtrnn.config import RunConfig
from smtrnn.errors import UserError, check_choices
from smtrnn.evaluate import held_out_batches
from smtrnn.methods import DMTConfig, SMTConfig
from smtrnn.methods.common import masked_cross_entropy
from smtrnn.models import ModelConfig, tiny_model
from smtrnn.report import table, wall_time
from smtrnn.run import depths, load_run, phase_crop
from smtrnn.sampling import decode_text, image_grid, sample_images, sample_sequences, text_tokens
from smtrnn.sweep import DIVERGED_FILE, outcome, sweep
from smtrnn.tasks import make_task
from smtrnn.train import TrainConfig

METHODS = ("bptt", "tbptt", "smt+dmt")  # the methods this experiment compares (a subset of run.METHODS)
TEXT_PROMPT = "She looked at him and said"
STYLE = {"bptt": "C2", "tbptt": "C3", "smt+dmt": "C0"}


@dataclass
class DatasetPlan:
    """How one dataset is cut: SMT context Tc (crops hold Tc + Tf - 1 tokens), DMT rollout Td."""

    context: int
    rollout: int
    options: dict = field(default_factory=dict)  # the task's options


@dataclass
class Preset:
    """Everything the experiment is sized by; cpu_preset() sets and explains every number."""

    datasets: dict[str, DatasetPlan]
    cells: list[str]
    methods: list[str]
    model: ModelConfig
    batch_size: int
    smt_steps: int
    dmt_steps: int  # BPTT trains smt_steps + dmt_steps
    lr: float  # SMT and BPTT
    dmt_lr: float
    warmup: int
    dmt_warmup: int
    decoder_positions: int  # memories per crop sent to the teacher's decoder
    dyn_warmup: int  # SMT ramps the dynamics loss in over this many steps
    dmt_every: int  # DMT supervises one memory in k of its rollout
    eval_every: int  # held-out evaluation of the RNN alone every N steps (the curves)
    eval_batches: int  # the final evaluation: batches of 64 held-out crops
    image_samples: int
    image_temperature: float
    text_steps: int
    text_temperature: float
    seed: int = 0
    threads_per_job: int = 1


def cpu_preset() -> Preset:
    """The committed experiment, sized for 2 CPU cores with --jobs 2: every number to tune is here.

    Measured per step on one core of a shared 2-core machine (batch 16): images (crops of 799) BPTT
    0.53 s, SMT 0.9 s, DMT 0.25 s; text (crops of 271) BPTT 0.22 s, SMT 0.23 s, DMT 0.08 s. So about
    1,650 core-seconds of training for 400 + 100 steps, some 15 minutes with two jobs; the preset
    takes 600 + 150 against 750, and 32 decoder positions per crop (so the decoder sees 32 x 16 = 512
    windows per step, near BPTT's 16 x 799 labelled tokens in predictions made), about 25 minutes. The periodic evaluation scores the
    same 2 x 64 held-out crops each time (0.3-0.8 s; standard error over crops about 0.03 bits/byte
    on MNIST, 0.015 on Brown); the final one scores 8 x 64."""
    image = lambda: DatasetPlan(context=784, rollout=256, options={"align": True})  # whole images
    return Preset(
        datasets={"mnist": image(), "quickdraw": image(), "brown": DatasetPlan(context=256, rollout=128)},
        cells=["mlp"],
        methods=["bptt", "smt+dmt"],
        model=ModelConfig(
            cell="mlp",
            memory_size=64,
            embed_dim=32,
            readout_hidden=128,
            teacher_width=64,
            teacher_layers=2,
            teacher_decoder_layers=1,
            teacher_heads=4,
            future=16,
        ),
        batch_size=16,
        smt_steps=600,
        dmt_steps=150,
        lr=2e-3,
        dmt_lr=1e-3,
        warmup=50,
        dmt_warmup=10,
        decoder_positions=32,
        dyn_warmup=150,
        dmt_every=16,
        eval_every=25,
        eval_batches=8,
        image_samples=16,
        image_temperature=1.0,
        text_steps=300,
        text_temperature=0.8,
    )


def smoke_preset() -> Preset:
    """Seconds-long: tiny slices, short unaligned crops, a few steps (checks the machinery, not a result)."""
    return replace(
        cpu_preset(),
        datasets={
            "mnist": DatasetPlan(16, 8, {"limit": 200, "align": False}),
            "quickdraw": DatasetPlan(16, 8, {"limit": 200, "align": False, "classes": 2}),
            "brown": DatasetPlan(16, 8, {"limit": 20000}),
        },
        model=tiny_model(cell="mlp"),
        batch_size=4,
        smt_steps=3,
        dmt_steps=2,
        warmup=1,
        dmt_warmup=1,
        dyn_warmup=2,
        dmt_every=2,
        eval_every=1,
        eval_batches=1,
        image_samples=4,
        text_steps=40,
    )


PRESETS = {"cpu": cpu_preset, "smoke": smoke_preset}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def customise(
    chosen: Preset, datasets: list[str] | None = None, methods: list[str] | None = None, cells: list[str] | None = None
) -> Preset:
    """``chosen`` narrowed to these datasets (each keeps its plan) and given these methods and cells."""
    if datasets is not None:
        if len(set(datasets)) != len(datasets):
            raise UserError(f"realdata: --datasets lists a value twice: {datasets}")
        for name in datasets:
            if name not in chosen.datasets:
                raise UserError(f"unknown dataset {name!r} for realdata; choose from {', '.join(chosen.datasets)}")
        chosen = replace(chosen, datasets={name: chosen.datasets[name] for name in datasets})
    return replace(
        chosen,
        methods=methods if methods is not None else chosen.methods,
        cells=cells if cells is not None else chosen.cells,
    )


def check(chosen: Preset) -> None:
    check_choices("realdata", "datasets", list(chosen.datasets))
    check_choices("realdata", "methods", chosen.methods, METHODS)
    check_choices("realdata", "cells", chosen.cells, CELLS)
    if chosen.eval_every < 1 or chosen.smt_steps % chosen.eval_every or chosen.dmt_steps % chosen.eval_every:
        raise UserError(
            f"realdata: SMT steps ({chosen.smt_steps}) and DMT steps ({chosen.dmt_steps}) must be positive "
            f"multiples of eval_every ({chosen.eval_every}), so that every curve ends at the trained RNN"
        )
    for name, plan in chosen.datasets.items():
        if not 1 <= plan.rollout <= plan.context:
            raise UserError(f"realdata {name}: DMT rollout {plan.rollout} must lie in 1..context ({plan.context})")


# ------------------------------------------------------------------------------------------------
# the grid


def run_config(chosen: Preset, dataset: str, cell: str, method: str) -> RunConfig:
    """One point: the same model, crops, batch and total optimiser steps for every method."""
    plan = chosen.datasets[dataset]
    schedule = dict(batch_size=chosen.batch_size, log_every=chosen.eval_every, eval_every=chosen.eval_every)
    config = RunConfig(
        task=dataset,
        length=plan.context + chosen.model.future - 1,
        method=method,
        seed=chosen.seed,
        task_options=dict(plan.options),
        eval_batches=chosen.eval_batches,
        model=replace(chosen.model, cell=cell),
        # the horizon's growth and the teacher's delay fit the SMT budget (at most half of it each), as in compare
        smt=SMTConfig(
            context=plan.context,
            decoder_positions=chosen.decoder_positions,
            dyn_warmup=chosen.dyn_warmup,
            horizon_grow=min(SMTConfig.horizon_grow, chosen.smt_steps // 2),
            teacher_delay=min(SMTConfig.teacher_delay, chosen.smt_steps // 2),
        ),
        dmt=DMTConfig(start="teacher", rollout=plan.rollout, every=chosen.dmt_every),
    )
    main_steps = chosen.smt_steps if method == "smt+dmt" else chosen.smt_steps + chosen.dmt_steps
    config.train = TrainConfig(steps=main_steps, lr=chosen.lr, warmup=chosen.warmup, **schedule)
    config.dmt_train = TrainConfig(steps=chosen.dmt_steps, lr=chosen.dmt_lr, warmup=chosen.dmt_warmup, **schedule)
    return config


def grid(chosen: Preset, out: str | Path) -> list[tuple[tuple, RunConfig, Path]]:
    """(dataset, cell, method), its config, its directory: for every point, in report order."""
    return [
        ((dataset, cell, method), run_config(chosen, dataset, cell, method), Path(out) / dataset / cell / method)
        for dataset in chosen.datasets
        for cell in chosen.cells
        for method in chosen.methods
    ]


def realdata(
    chosen: Preset, out: str | Path = "runs/realdata", jobs: int = 1, progress: bool = True, train: bool = True
) -> dict:
    """Train every point not yet finished under ``out`` (``jobs`` at a time) and return
    {"rows", "planned", "preset", "wall_seconds", "trained", "reused", "jobs"}. With ``train=False``
    nothing is trained: the rows are the points already finished."""
    if jobs < 1:
        raise UserError(f"jobs must be positive, got {jobs}")
    check(chosen)
    started = time.perf_counter()
    points = grid(chosen, out)
    planned = len(points)
    if not train:
        points = [(key, config, directory) for key, config, directory in points if outcome(config, directory)]
    describe = lambda key, _: "realdata: trained {} {} {}".format(*key)
    done = sweep(points, jobs, chosen.threads_per_job, progress, "realdata", describe)
    previous = torch.get_num_threads()
    torch.set_num_threads(chosen.threads_per_job)
    try:
        rows = [row(chosen, key, config, directory) for key, config, directory in points]
    finally:
        torch.set_num_threads(previous)
    return {
        "rows": rows,
        "planned": planned,
        "preset": asdict(chosen),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "trained": done["trained"],
        "reused": done["reused"],
        "jobs": jobs,
    }


# ------------------------------------------------------------------------------------------------
# measurements of one finished point


def phase_plan(config: RunConfig) -> list[tuple[str, int, int, int]]:
    """(phase, steps, training tokens per step, cell applications in series per step), in order.
    A step's tokens: batch x the crop length the phase reads (DMT reads the first Tc of each crop)."""
    forward = depths(config)["forward_depth"]
    plan = []
    for name in config.method.split("+"):
        train = config.dmt_train if name == "dmt" and config.method == "smt+dmt" else config.train
        crop = phase_crop(config, name) or config.length
        plan.append((name, train.steps, train.batch_size * crop, forward[name]))
    return plan


def curve(config: RunConfig, directory: Path) -> list[dict]:
    """The periodic held-out evaluations in metrics.jsonl, against cumulative tokens and sequential compute."""
    offsets, tokens, sequential = {}, 0, 0
    for name, steps, step_tokens, step_depth in phase_plan(config):
        offsets[name] = (tokens, sequential, step_tokens, step_depth)
        tokens, sequential = tokens + steps * step_tokens, sequential + steps * step_depth
    points = []
    for record in metrics.read(directory):
        if "eval_bits_per_token" in record:
            base_tokens, base_sequential, step_tokens, step_depth = offsets[record["phase"]]
            points.append(
                {
                    "phase": record["phase"],
                    "step": record["step"],
                    "tokens": base_tokens + record["step"] * step_tokens,
                    "sequential": base_sequential + record["step"] * step_depth,
                    "bits_per_byte": record["eval_bits_per_token"],
                }
            )
    return points


def held_out_crops(task, config: RunConfig, batches: int):
    """The held-out crops the run's final evaluation scored the RNN on (the same seed and sizes)."""
    return list(held_out_batches(task, config.length, batches, 64, config.seed))


@torch.no_grad()
def teacher_bits_per_byte(models, task, config: RunConfig) -> float:
    """The teacher's next-byte loss decoded from its memory m*_t alone (the ceiling SMT distils),
    on the first Tc tokens of the final evaluation's held-out crops: the longest prefix it learned."""
    models.eval()
    context, losses = config.smt.context or config.length, []
    for batch in held_out_crops(task, config, max(1, config.eval_batches // 2)):
        x, y = batch["x"][:, :context], batch["y"][:, :context]
        memories = models.teacher.encode(x)[:, 1:].reshape(-1, config.model.memory_size)
        logits = models.teacher.decode(memories, x.new_zeros(memories.shape[0], 0))[:, 0]
        losses.append(masked_cross_entropy(logits, y.reshape(-1))[0].item())
    return sum(losses) / len(losses) / math.log(2)


def unigram_bits_per_byte(task) -> float:
    """Held-out bits per byte of the training split's byte frequencies (add-one): a context-free reference."""
    counts = np.bincount(task.tokens(), minlength=256) + 1.0
    held_out = np.bincount(task.evaluation().tokens(), minlength=256)
    return float(-(held_out * np.log2(counts / counts.sum())).sum() / held_out.sum())


def text_sample(models, chosen: Preset) -> str:
    """The fixed prompt continued by the RNN alone, fixed seed and temperature."""
    generator = torch.Generator().manual_seed(chosen.seed)
    tokens = sample_sequences(
        models, text_tokens(TEXT_PROMPT), chosen.text_steps, 1, "rnn", chosen.text_temperature, generator
    )
    return decode_text(tokens[0].tolist())


def row(chosen: Preset, key: tuple, config: RunConfig, directory: Path) -> dict:
    """The report's row of a finished point: read back from its directory, the extras measured here."""
    dataset, cell, method = key
    plan = phase_plan(config)
    entry = {
        "dataset": dataset,
        "cell": cell,
        "method": method,
        "bits_per_byte": None,
        "tokens": sum(steps * tokens for _, steps, tokens, _ in plan),
        "seconds": None,
        "teacher_bits_per_byte": None,
        "unigram_bits_per_byte": None,
        "accuracy": None,
        "sequential_depth": depths(config)["sequential_depth"],
        "sequential_compute": sum(steps * depth for _, steps, _, depth in plan),
        "parameters": None,
        "teacher_parameters": None,
        "steps": {name: steps for name, steps, _, _ in plan},
        "batch_size": config.train.batch_size,
        "crop_length": config.length,
        "context": config.smt.context,
        "curve": curve(config, directory),
        "sample_text": None,
        "note": None,
    }
    if not (directory / "result.json").exists():
        entry["note"] = checkpoint.read_json(directory / DIVERGED_FILE).get("note")
        return entry
    result = checkpoint.read_json(directory / "result.json")
    _, task, models = load_run(directory)
    entry.update(
        bits_per_byte=result["bits_per_token"],
        accuracy=result["accuracy"],
        seconds=result["seconds"],
        parameters=result["parameters"]["rnn_parameters"],
        unigram_bits_per_byte=unigram_bits_per_byte(task),
    )
    if method == "smt+dmt":
        entry.update(
            teacher_bits_per_byte=teacher_bits_per_byte(models, task, config),
            teacher_parameters=result["parameters"]["teacher_parameters"],
        )
    if getattr(task, "text", False):
        entry["sample_text"] = text_sample(models, chosen)
    return entry


# ------------------------------------------------------------------------------------------------
# figures


def _figure(rows: int, columns: int, width: float, height: float):
    from matplotlib.figure import Figure  # the object API draws with Agg and touches no global state

    figure = Figure(figsize=(width * columns, height * rows))
    return figure, figure.subplots(rows, columns, squeeze=False)


def curve_figure(rows: list[dict], path: Path) -> None:
    """Held-out bits per byte of the RNN alone against training tokens and against sequential compute."""
    figure, axes = _figure(1, 2, 4.6, 3.6)
    for entry in rows:
        if not entry["curve"]:
            continue
        label = entry["method"] if len({r["cell"] for r in rows}) == 1 else f"{entry['cell']} {entry['method']}"
        color = STYLE.get(entry["method"], "k")
        for axis, x_key in zip(axes[0], ("tokens", "sequential")):
            axis.plot(
                [p[x_key] for p in entry["curve"]],
                [p["bits_per_byte"] for p in entry["curve"]],
                marker=".",
                color=color,
                label=label,
            )
            if entry["teacher_bits_per_byte"] is not None:
                axis.axhline(
                    entry["teacher_bits_per_byte"], color=color, linestyle=":", linewidth=1, label=f"{label} teacher"
                )
    for axis, xlabel in zip(axes[0], ("training tokens seen", "sequential compute (cell applications in series)")):
        axis.set_xscale("log")
        axis.set(xlabel=xlabel, ylabel="held-out bits/byte, RNN alone")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(rows[0]["dataset"])
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def sample_figure(chosen: Preset, rows: list[dict], out: Path, path: Path) -> None:
    """Per method: images drawn by the RNN alone from m_0; held-out top halves completed by the RNN
    reading them; and (a trained teacher only) completed from the teacher's memory of the top half."""
    columns = [
        ("rnn", False, "RNN alone from m_0"),
        ("rnn", True, "top half read by the RNN"),
        ("teacher", True, "top half encoded by the teacher"),
    ]
    figure, axes = _figure(len(rows), len(columns), 3.4, 3.6)
    for axes_row, entry in zip(axes, rows):
        if entry["bits_per_byte"] is None:
            continue
        _, task, models = load_run(out / entry["dataset"] / entry["cell"] / entry["method"])
        models.eval()
        for axis, (mode, primed, title) in zip(axes_row, columns):
            axis.set_axis_off()
            if mode == "teacher" and entry["method"] != "smt+dmt":
                continue  # BPTT trains no teacher
            # the same seed everywhere: every method completes the same held-out top halves
            generator = torch.Generator().manual_seed(chosen.seed)
            count = chosen.image_samples // 2 if primed else chosen.image_samples
            prime_rows = task.image_shape[0] // 2 if primed else 0
            images = sample_images(models, task, count, mode, prime_rows, chosen.image_temperature, generator)
            grid = image_grid(images, columns=math.ceil(math.sqrt(count * images.shape[1]) / images.shape[1]))
            axis.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")  # a square of images
            axis.set_title(f"{entry['method']}: {title}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def figures(chosen: Preset, result: dict, out: str | Path, folder: str | Path) -> dict[str, list[Path]]:
    """Per dataset: realdata-<dataset>-curves.png, and for images realdata-<dataset>-samples.png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for dataset, plan in chosen.datasets.items():
        rows = [entry for entry in result["rows"] if entry["dataset"] == dataset]
        paths[dataset] = [folder / f"realdata-{dataset}-curves.png"]
        curve_figure(rows, paths[dataset][0])
        if getattr(make_task(dataset, **plan.options), "image_shape", None):
            paths[dataset].append(folder / f"realdata-{dataset}-samples.png")
            sample_figure(chosen, rows, Path(out), paths[dataset][-1])
    return paths


# ------------------------------------------------------------------------------------------------
# the page


def _fixed(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _notes(rows: list[dict]) -> list[str]:
    """What the numbers say, per dataset and cell: which method scored lower, at what sequential compute."""
    notes = []
    for dataset, cell in dict.fromkeys((entry["dataset"], entry["cell"]) for entry in rows):
        group = {
            entry["method"]: entry
            for entry in rows
            if (entry["dataset"], entry["cell"]) == (dataset, cell) and entry["bits_per_byte"] is not None
        }
        if "bptt" not in group or "smt+dmt" not in group:
            continue
        bptt, smt = group["bptt"], group["smt+dmt"]
        lower = "smt+dmt" if smt["bits_per_byte"] < bptt["bits_per_byte"] else "bptt"
        notes.append(
            f"- {dataset} ({cell}): {lower} is lower, smt+dmt {smt['bits_per_byte']:.3f} against bptt "
            f"{bptt['bits_per_byte']:.3f} bits/byte (its teacher: {_fixed(smt['teacher_bits_per_byte'])}; "
            f"byte frequencies alone: {smt['unigram_bits_per_byte']:.3f}). SMT->DMT took "
            f"{bptt['sequential_compute'] / max(1, smt['sequential_compute']):.0f}x less sequential compute "
            f"and {smt['seconds'] / max(1e-9, bptt['seconds']):.2f}x BPTT's wall time."
        )
    return notes


def markdown(chosen: Preset, result: dict, command: str, machine: str, figure_links: dict | None = None) -> str:
    """The page: how and where it was measured, the table, notes, figures (``figure_links``: per
    dataset the PNG paths as seen from the page) and the text samples."""
    rows, model = result["rows"], chosen.model
    crops = "; ".join(
        f"{name}: Tc {plan.context}, crops of {plan.context + model.future - 1}, Td {plan.rollout}"
        for name, plan in chosen.datasets.items()
    )
    body = [
        [
            e["dataset"],
            e["cell"],
            e["method"],
            _fixed(e["bits_per_byte"]),
            _fixed(e["teacher_bits_per_byte"]),
            _fixed(e["accuracy"]),
            f"{e['tokens']:,}",
            " + ".join(map(str, e["steps"].values())),
            _fixed(e["seconds"], 0),
            str(e["sequential_depth"]),
            f"{e['sequential_compute']:,}",
        ]
        for e in rows
    ]
    steps = chosen.smt_steps + chosen.dmt_steps
    lines = [
        "# Real data: BPTT against SMT->DMT",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}; {result['jobs']} job(s) x {chosen.threads_per_job} thread(s)  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        wall_time(result, rows),
        "",
        f"Setup: memory {model.memory_size}, teacher width {model.teacher_width} x {model.teacher_layers} "
        f"layers, Tf {model.future}, batch {chosen.batch_size}; smt+dmt trains {chosen.smt_steps} SMT + "
        f"{chosen.dmt_steps} DMT steps, BPTT {steps} steps on the same crops ({crops}); DMT starts from a "
        f"teacher memory and supervises one memory in {chosen.dmt_every} of its rollout.",
        "",
        *table(
            [
                "dataset",
                "cell",
                "method",
                "bits/byte (RNN alone)",
                "teacher bits/byte",
                "next-byte accuracy",
                "training tokens",
                "steps",
                "train s",
                "gradient depth",
                "sequential compute",
            ],
            body,
        ),
        "Bits per byte: the RNN alone, rolled out from its own m_0 over held-out crops "
        f"({chosen.eval_batches} x 64, no teacher). Teacher: the Transformer's prediction of the next byte from "
        "its memory alone, on the first Tc tokens of the same crops. Sequential compute: cell applications in "
        "series over all of training (per step BPTT = crop length, SMT = its horizon K, DMT = its rollout Td; the teacher's "
        "layers run in parallel over time and are not counted). Train seconds include the periodic evaluations, "
        "as many for every method.",
        "",
        "## Notes",
        "",
        *_notes(rows),
        "- Every number is measured on held-out data (MNIST's test set, the last 10 sketches of each Quick, "
        "Draw! category, 13 held-out Brown samples) that no training crop touches.",
        f"- The budget is small ({steps} steps of {chosen.batch_size} crops): the numbers compare the methods at "
        "this budget, far from convergence. Uniform guessing is 8 bits/byte.",
        "",
    ]
    for dataset in chosen.datasets:
        lines += [f"## {dataset}", ""]
        for link in (figure_links or {}).get(dataset, []):
            lines += [f"![{dataset} {Path(link).stem.rsplit('-', 1)[-1]}]({link})", ""]
        for entry in (e for e in rows if e["dataset"] == dataset and e["sample_text"] is not None):
            lines += [
                f"{entry['method']} ({entry['cell']}), the RNN alone continuing {TEXT_PROMPT!r} at temperature "
                f"{chosen.text_temperature}, seed {chosen.seed}:",
                "",
                "```text",
                entry["sample_text"],
                "```",
                "",
            ]
    return "\n".join(lines)


def write_outputs(
    chosen: Preset,
    result: dict,
    out: str | Path,
    command: str,
    machine: str,
    json_path: str | None = None,
    markdown_path: str | None = None,
    figures_dir: str | None = None,
) -> None:
    """The JSON (command, machine, date, preset, rows), the figures and the page, each where asked."""
    try:
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_json(
                Path(json_path),
                {"command": command, "machine": machine, "date": datetime.date.today().isoformat(), **result},
            )
        paths = figures(chosen, result, out, figures_dir) if figures_dir else {}
        if markdown_path:
            target = Path(markdown_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            links = {name: [os.path.relpath(path, target.parent) for path in files] for name, files in paths.items()}
            checkpoint.write_atomic(target, markdown(chosen, result, command, machine, links).encode())
    except OSError as error:
        raise UserError(f"cannot write the realdata report: {error}") from None
