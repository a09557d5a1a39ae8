"""Real data (docs/realdata.md): BPTT against SMT->DMT on MNIST, Quick, Draw! sketches and Brown fiction
as byte streams, the same model, crops, batch and total optimiser steps for every method.

SMT is windowed: the teacher encodes the first Tc tokens of a crop of Tc + Tf - 1, so that every memory
has Tf future targets; DMT rolls the RNN out over Td tokens from a teacher memory. Image crops are
aligned whole images (Tc = 784), so the RNN alone can draw an image from its initial memory m_0. Every
25 steps the RNN alone is scored on held-out crops: the curves put that against training tokens and
against sequential compute."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from smtrnn.config import RunConfig
from smtrnn.experiments import measure
from smtrnn.experiments.pages import MISSING, STYLE, Blocks, figure, fmt, groups, header, save, table
from smtrnn.experiments.runner import directory, smoke
from smtrnn.experiments.spec import BPTT_ON_GRID, Budget, Point, Study, Variant
from smtrnn.methods import DMTConfig, SMTConfig
from smtrnn.models import ModelConfig
from smtrnn.sampling import image_grid
from smtrnn.tasks.streams import WIDE_TEACHER
from smtrnn.tasks.synthetic import LABEL_TERMS
from smtrnn.train import TrainConfig

TITLE = "Real data: BPTT against SMT->DMT"


STEPS = 750  # every method's optimiser steps, at every length (the study's budget)
# DMT's pull towards the teacher before the real data's settings dropped it: the rows measured with it
PULL = {"dmt.c_dyn": 0.1}
# SMT's horizon before the real data's settings took 64 (the default), and the pull: the rows measured so
HORIZON16 = {"smt.horizon": 16, **PULL}


def _screen(name: str, description: str, overrides: dict, **options) -> Variant:
    """A screen on the shared recipe (one change on it, or on the screen before), without the task's
    settings: the screens that chose them."""
    return Variant(name, description, overrides, task_settings=False, **options)


def _pulled(dmt_steps: int) -> Variant:
    """The task's settings with DMT's pull, ``dmt_steps`` of the study's steps in DMT: smt+dmt-dmtN."""
    smt_steps = STEPS - dmt_steps
    return Variant(
        f"smt+dmt-dmt{dmt_steps}",
        f"the task's settings with the pull, {smt_steps} SMT + {dmt_steps} DMT steps",
        {"dmt.rollout": 0, **PULL},
        dmt_steps=dmt_steps,
    )


VARIANTS = [
    # BPTT on SMT's memory grid (the same model as SMT's RNN); BPTT's own default is a continuous memory
    Variant("bptt", "BPTT over whole crops, on the memory grid", BPTT_ON_GRID),
    Variant("tbptt", "truncated BPTT", {"method": "tbptt"}),
    # the control for DMT's gradient through 64 of the RNN's own steps: truncated BPTT over whole crops
    # with the same window, no teacher (a continuous memory, as BPTT's)
    Variant("tbptt-64", "truncated BPTT, the gradient through 64 steps", {"method": "tbptt", "bptt.truncate": 64}),
    # the task's settings, as `smtrnn train --task T` gets them: stack's and a teacher twice as wide
    # (tasks/streams.py, REAL_DATA_SETTINGS), and DMT over whole crops (DMT's default, rollout 0): the
    # rollout starts from m*_0 and runs every token, as the RNN alone does when it is scored
    # 150 SMT + 600 DMT steps of the study's 750 (the budget's share, 150, is smt+dmt-dmt150), DMT
    # without the pull (the settings since the screen of that split without it)
    Variant(
        "smt+dmt",
        "windowed SMT, then DMT over whole crops from m*_0, the task's settings, 150 SMT + 600 DMT steps",
        {"dmt.rollout": 0},
        dmt_steps=600,
    ),
    # the settings before, with DMT's pull of 0.1: 450 SMT + 300 DMT steps, and 600 + 150 (the budget's)
    _pulled(300),
    _pulled(150),
    # the same with SMT's horizon of 16 (the default; the settings before they took 64): the settings'
    # rows before, and the SMT phase of the screens below that keep it
    Variant("smt+dmt-horizon16", "the task's settings with SMT's horizon 16", {"dmt.rollout": 0, **HORIZON16}),
    # and with the plan's shorter rollouts from teacher memories (256 tokens; 128 on Brown): the settings'
    # rows before DMT ran whole crops
    Variant(
        "smt+dmt-rollout256",
        "the task's settings with horizon 16, DMT rolls out 256 tokens (Brown 128) from teacher memories",
        HORIZON16,
    ),
    # the shared recipe (the page's rows before real data had settings) and the screens that chose the
    # settings, each a change on the shared recipe or on the screen before it:
    _screen("smt+dmt-shared", "windowed SMT, then DMT, the shared recipe", {}),
    # rotary codes in the teacher's encoder: a better teacher on MNIST, but is the RNN alone better?
    _screen("smt+dmt-rotary", "the shared recipe; rotary codes in the encoder", {"model.teacher_positions": "rotary"}),
    # a continuous memory, as copy's and stack's: does the teacher read more pixels from a memory off the
    # grid, and does the cell follow it there (alone, and with rotary codes)?
    _screen("smt+dmt-continuous", "the shared recipe; a continuous memory", {"model.memory_levels": 0}),
    _screen(
        "smt+dmt-continuous-rotary",
        "the shared recipe; a continuous memory and rotary codes",
        {"model.memory_levels": 0, "model.teacher_positions": "rotary"},
    ),
    # the teacher alone on MNIST reads pixels best with rotary codes and twice the width (screens, the
    # page): is the RNN alone better with that teacher, on a continuous memory?
    _screen(
        "smt+dmt-rotary-wide", "the shared recipe; a continuous memory, rotary codes, teacher width 128", WIDE_TEACHER
    ),
    # the wide teacher's readout rung (0.1-0.15 bits lost) with copy's label terms: the readout's labels
    # train the cell at every step it takes; with stack's long DMT as well, it is the real data's settings
    _screen(
        "smt+dmt-wide-labels",
        "as smt+dmt-rotary-wide, with the readout's labels through the cell",
        {**WIDE_TEACHER, **LABEL_TERMS},
    ),
    # the long DMT still gains at its last step: twice its share of the same 750 steps, SMT's shorter
    Variant(
        "smt+dmt-wide-dmt300", "the task's settings with horizon 16, 450 SMT + 300 DMT steps", HORIZON16, dmt_steps=300
    ),
    # the RNN alone loses 0.01-0.03 bits to its teacher over 784 steps from m_0 while DMT rolls out 256:
    # does a rollout of 512 (the same steps, twice the tokens) hold more of the image? (then whole crops)
    Variant(
        "smt+dmt-rollout512",
        "the task's settings with horizon 16, DMT rolls out 512 tokens",
        {"dmt.rollout": 512, **HORIZON16},
    ),
    # the RNN alone after 450 SMT + 300 DMT steps (smt+dmt-dmt300) ends below its teacher (1.10-1.11 bits against
    # 1.15-1.16): DMT's label terms learn from the data beyond the teacher's memories; a larger share again
    _pulled(450),
    _pulled(600),
    # the teacher of 4 encoder layers, whose every rung is at or below BPTT's RNN but whose memories the
    # cell followed worse (horizon 16), and with SMT's horizon of 64 (the settings') and 128
    Variant(
        "smt+dmt-deep",
        "the task's settings with horizon 16, 4 encoder layers",
        {"dmt.rollout": 0, "model.teacher_layers": 4, **HORIZON16},
    ),
    Variant(
        "smt+dmt-deep-horizon64",
        "the task's settings, 4 encoder layers and SMT's horizon 64",
        {"dmt.rollout": 0, "model.teacher_layers": 4, "smt.horizon": 64, **PULL},
    ),
    Variant(
        "smt+dmt-deep-horizon128",
        "the task's settings, 4 encoder layers and SMT's horizon 128",
        {"dmt.rollout": 0, "model.teacher_layers": 4, "smt.horizon": 128, **PULL},
    ),
    # BPTT with the memory of a plain RNN (its default): the grid is there for SMT's rollouts, and BPTT's
    # RNN need not pay for it (the page shows both: the same model, and BPTT at its best)
    Variant("bptt-continuous", "BPTT, a continuous memory (no grid; BPTT's default)", {"method": "bptt"}),
]
# MNIST's screens of the teacher and the rungs after it, 3 seeds each
SCREENS = (
    "smt+dmt-rotary",
    "smt+dmt-continuous",
    "smt+dmt-continuous-rotary",
    "smt+dmt-rotary-wide",
    "smt+dmt-wide-labels",
    "smt+dmt-wide-dmt300",
    "smt+dmt-rollout512",
)
# the MNIST screens after the settings took the horizon of 64, on fewer seeds (the seeds of each)
FEW_SEEDS = {
    "smt+dmt-deep": (0, 1),
    "smt+dmt-deep-horizon64": (0, 1),
    "smt+dmt-deep-horizon128": (0,),
    "smt+dmt-dmt450": (0, 1, 2),
    "smt+dmt-dmt600": (0, 1),
}
SEEDS = {"mnist": (0, 1, 2), "brown": (0, 1, 2)}  # MNIST and Brown (cheap) three seeds, Quick, Draw! one
# but the race on every dataset: the settings against BPTT at its best and the truncated control, 3 seeds
RACE = ("smt+dmt", "bptt-continuous", "tbptt-64")


def _seeds(variant: str, dataset: str) -> tuple[int, ...] | None:
    return SEEDS.get(dataset, (0, 1, 2) if variant in RACE else None)


FUTURE = 16


def _plan(context: int, rollout: int, **options) -> dict:
    """A dataset's cut: SMT context Tc (crops of Tc + Tf - 1 tokens), DMT rollout Td, the task's options."""
    return {"smt.context": context, "dmt.rollout": rollout, "task_options": options}


def _study(preset: str, plans: dict[str, dict], future: int = FUTURE) -> Study:
    """Measured per step on one core (batch 16): images (crops of 799) BPTT 0.53 s, SMT 0.9 s, DMT 0.25 s;
    text (crops of 271) 0.22, 0.23 and 0.08 s (the real data's settings: SMT 1.5 s and 0.8 s, with
    a teacher twice as wide and the label terms; the page's header sums the hours). 32 decoder
    positions per crop send 32 x 16 = 512 windows to the decoder per step, near BPTT's 16 x 799
    labelled tokens in predictions made."""
    schedule = dict(batch_size=16, log_every=25, eval_every=25)
    base = RunConfig(
        model=ModelConfig(cell="mlp", future=future),
        train=TrainConfig(lr=2e-3, warmup=50, **schedule),
        dmt_train=TrainConfig(lr=1e-3, warmup=10, **schedule),
        smt=SMTConfig(decoder_positions=32, dyn_warmup=150),
        dmt=DMTConfig(start="teacher", every=16),
    )
    length = {dataset: plan["smt.context"] + future - 1 for dataset, plan in plans.items()}
    at = lambda variant, dataset: Point(variant, dataset, "mlp", length[dataset], seeds=_seeds(variant, dataset))
    points = [at(variant, dataset) for dataset in plans for variant in ("bptt", "smt+dmt")]
    points += [at(variant, dataset) for variant in ("smt+dmt-rollout256", "smt+dmt-shared") for dataset in plans]
    points += [at(variant, "mnist") for variant in SCREENS if "mnist" in plans]
    points += [at("smt+dmt-horizon16", dataset) for dataset in plans]
    points += [
        Point(variant, "mnist", "mlp", length["mnist"], seeds)
        for variant, seeds in FEW_SEEDS.items()
        if "mnist" in plans
    ]
    points += [
        at(variant, dataset)
        for variant in ("smt+dmt-dmt150", "smt+dmt-dmt300", "bptt-continuous", "tbptt-64")
        for dataset in plans
    ]
    overrides = {
        name: {key: value for key, value in plan.items() if key != "task_options"} for name, plan in plans.items()
    }
    return Study(
        "realdata",
        preset,
        base,
        VARIANTS,
        points,
        [0],
        {10**6: Budget(STEPS, 150)},  # every length: 600 SMT + 150 DMT steps, BPTT 750
        tasks={name: plan["task_options"] for name, plan in plans.items()},
        task_overrides=overrides,
        measurements=["curve", "bytes"],
    )


def cpu() -> Study:
    image = _plan(784, 256, align=True)  # whole images
    return _study("cpu", {"mnist": image, "quickdraw": image, "brown": _plan(256, 128)})


def _smoke() -> Study:
    plans = {
        "mnist": _plan(16, 8, limit=200, align=False),
        "quickdraw": _plan(16, 8, limit=200, align=False, classes=2),
        "brown": _plan(16, 8, limit=20000),
    }
    return smoke(_study("smoke", plans, future=2), points=6, steps=3)


PRESETS = {"cpu": cpu, "smoke": _smoke}


# ------------------------------------------------------------------------------------------------
# the page


def _bits(row: dict) -> str:
    """The RNN alone's bits per byte, or where the run stopped: "diverged (step N)"."""
    found = re.search(r"at step (\d+)", row.get("note") or "")
    if row["bits_per_token"] is None and (row.get("note") or "").startswith("diverged"):
        return f"diverged (step {found.group(1)})" if found else "diverged"
    return fmt(row["bits_per_token"])


def main_table(rows: list[dict]) -> list[str]:
    """A line per run, the runs of a dataset together (in the study's order)."""
    rows = [row for group in groups(rows, "task").values() for row in group]
    lines = [
        [
            row["task"],
            row["cell"],
            row["variant"],
            str(row["seed"]),
            _bits(row),
            fmt(row.get("teacher_bits_per_byte")),
            fmt(row.get("unigram_bits_per_byte")),
            fmt(row["accuracy"]),
            f"{row['tokens']:,}" if row.get("tokens") else "–",
            str(row["steps"]),
            fmt(row["seconds"], 0),
            str(row["sequential_depth"] or MISSING),
            f"{row['sequential_compute']:,}" if row.get("sequential_compute") else "–",
        ]
        for row in rows
    ]
    titles = ["dataset", "cell", "method", "seed", "bits/byte (RNN alone)", "teacher bits/byte", "byte frequencies"]
    return table(
        titles + ["next-byte accuracy", "training tokens", "steps", "train s", "gradient depth", "sequential compute"],
        lines,
    )


def samples(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        if row.get("sample_text") is not None:
            lines += [
                f"{row['variant']} ({row['cell']}), the RNN alone continuing {row['sample_prompt']!r} at temperature "
                f"{measure.TEXT_TEMPERATURE}, seed {row['seed']}:",
                "",
                "```text",
                row["sample_text"],
                "```",
                "",
            ]
    return lines


def blocks(result: dict, command: str, link: str | None) -> Blocks:
    rows = result["rows"]
    page: Blocks = [("header", header(result, TITLE, command)), ("table", main_table(rows))]
    for (dataset,), group in groups(rows, "task").items():
        kinds = ["curves"] + (["samples"] if any(row.get("drew_images") for row in group) else [])
        images = [[f"![{dataset} {kind}]({link}/realdata-{dataset}-{kind}.png)", ""] for kind in kinds] if link else []
        first = [row for row in group if row["seed"] == min(row["seed"] for row in group)]  # as the drawings
        page.append((f"dataset-{dataset}", [f"## {dataset}", "", *sum(images, []), *samples(first)]))
    return page


def _folder(result: dict, row: dict) -> Path:
    return directory(result["out"], Point(row["variant"], row["task"], row["cell"], row["length"]), row["seed"])


# the methods whose curves a dataset's figure draws (the screens' rungs are in the page's tables)
CURVES = ("bptt", "bptt-continuous", "tbptt-64", "smt+dmt", "smt+dmt-dmt300", "smt+dmt-dmt150", "smt+dmt-shared")


def curves(rows: list[dict], path: Path) -> Path:
    """Held-out bits per byte of the RNN alone against training tokens and against sequential compute,
    for the methods in CURVES (the legend beside the panels, the axis cut at twice the best value)."""
    drawn, axes = figure(1, 2, 4.6, 3.6)
    labelled = set()
    rows = [row for row in rows if row["variant"] in CURVES] or rows
    values = [point["bits_per_byte"] for row in rows for point in row.get("curve") or []]
    for row in rows:
        marker, color = STYLE.get(row["variant"], ("o", "k"))
        first = row["variant"] not in labelled  # one legend entry per method, whatever its seeds
        labelled.add(row["variant"])
        for axis, key in zip(axes[0], ("tokens", "sequential")):
            points = row.get("curve") or []
            axis.plot(
                [p[key] for p in points],
                [p["bits_per_byte"] for p in points],
                marker=marker,
                markersize=3,
                color=color,
                label=row["variant"] if first else None,
            )
            if row.get("teacher_bits_per_byte") is not None:
                axis.axhline(
                    row["teacher_bits_per_byte"],
                    color=color,
                    linestyle=":",
                    linewidth=1,
                    label=f"{row['variant']} teacher" if first else None,
                )
    for axis, label in zip(axes[0], ("training tokens seen", "sequential compute (cell applications in series)")):
        axis.set(xlabel=label, ylabel="held-out bits/byte, RNN alone")
        if any(row.get("curve") for row in rows):
            axis.set_xscale("log")
        axis.grid(True, which="both", alpha=0.3)
        if values:
            axis.set_ylim(top=min(max(values), 2 * min(values)) * 1.02)
    axes[0][1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    drawn.suptitle(rows[0]["task"])
    return save(drawn, path)


def drawings(result: dict, rows: list[dict], path: Path) -> Path | None:
    """Per method: images drawn by the RNN alone from m_0; held-out top halves completed by the RNN
    reading them; and (SMT runs) completed from the teacher's memory of the top half."""
    columns = [
        ("rnn", "RNN alone from m_0"),
        ("rnn-primed", "top half read by the RNN"),
        ("teacher-primed", "top half encoded by the teacher"),
    ]
    drawn_by = [(row, measure.images(_folder(result, row))) for row in rows]
    drawn_by = [(row, images) for row, images in drawn_by if images]  # a diverged run drew nothing
    if not drawn_by:
        return None
    drawn, axes = figure(len(drawn_by), len(columns), 3.4, 3.6)
    for axes_row, (row, images) in zip(axes, drawn_by):
        for axis, (kind, title) in zip(axes_row, columns):
            axis.set_axis_off()
            if kind in images:
                batch = torch.from_numpy(images[kind])
                grid = image_grid(batch, columns=math.ceil(math.sqrt(batch.shape[0] * batch.shape[1]) / batch.shape[1]))
                axis.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                axis.set_title(f"{row['variant']}: {title}", fontsize=9)
    return save(drawn, path)


def figures(result: dict, folder: Path) -> list[Path]:
    """Per dataset: realdata-<dataset>-curves.png, and for images realdata-<dataset>-samples.png."""
    written = []
    for (dataset,), rows in groups(result["rows"], "task").items():
        written.append(curves(rows, folder / f"realdata-{dataset}-curves.png"))
        first = [row for row in rows if row["seed"] == min(row["seed"] for row in rows)]  # one drawing per method
        sampled = drawings(result, first, folder / f"realdata-{dataset}-samples.png")
        written += [sampled] if sampled else []
    return written
