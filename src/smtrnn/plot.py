"""``smtrnn plot RUN [RUN ...]``: the training curves of one or more runs, from their metrics.jsonl, in one PNG.

Left: the loss against the optimiser step (log scale); right: every logged accuracy (SMT's teacher,
readout and one-step accuracies, DMT's rollout accuracy, the periodic held-out evaluations). A run's
phases follow each other on the step axis (DMT's steps continue after SMT's), a dotted line marks the
hand-over.

    plot_runs(["runs/a", "runs/b"], "curves.png")
"""

from __future__ import annotations

import math
from pathlib import Path

from smtrnn import metrics
from smtrnn.errors import UserError


def curves(run_dir: str | Path) -> tuple[dict[str, list[tuple[int, float]]], list[int]]:
    """``({key: [(global step, value), ...]}, phase boundaries)`` for the loss and every accuracy."""
    records = metrics.read(run_dir)
    if not records:
        raise UserError(f"{run_dir} has no metrics.jsonl records to plot (is it a run directory?)")
    series: dict[str, list[tuple[int, float]]] = {}
    offset, boundaries, phase, last_step = 0, [], records[0]["phase"], 0
    for record in records:
        if record["phase"] != phase:
            offset += last_step
            boundaries.append(offset)
            phase = record["phase"]
        last_step = record["step"]
        for key, value in record.items():
            if isinstance(value, (int, float)) and (key == "loss" or "acc" in key):
                series.setdefault(f"{record['phase']} {key}", []).append((offset + record["step"], float(value)))
    return series, boundaries


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Draw the curves of ``run_dirs`` to ``out`` (a PNG where its name has no suffix; the suffix chooses
    the format, e.g. .pdf or .svg) and return the path written."""
    out = Path(out)
    out = out if out.suffix else out.with_name(out.name + ".png")
    figure = draw(run_dirs)
    import matplotlib.pyplot as plt  # after draw() chose the Agg backend

    formats = figure.canvas.get_supported_filetypes()
    try:
        if out.suffix[1:].lower() not in formats:
            raise UserError(f"cannot write {out}: plots are written as {', '.join('.' + kind for kind in formats)}")
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=110)
    except OSError as error:
        raise UserError(f"cannot write {out}: {error.strerror}") from None
    finally:
        plt.close(figure)
    return out


def draw(run_dirs: list[str | Path]):
    """The figure of the curves of ``run_dirs`` (close it with ``matplotlib.pyplot.close``)."""
    if not run_dirs:
        raise UserError("plot needs at least one run directory")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = [(Path(run_dir), *curves(run_dir)) for run_dir in run_dirs]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (run_dir, series, boundaries) in enumerate(loaded):
        color = f"C{index % 10}"
        name = run_dir.name if len(loaded) > 1 else ""
        styles = iter(["-", "--", ":", "-."] * 4)
        for key, points in series.items():
            steps, values = zip(*points)
            label = f"{name} {key}".strip()
            # markers: a phase logged once (a short run, a large --log-every) is a point, and a line needs two
            style = {"color": color, "label": label, "marker": "o", "markersize": 2.5}
            if key.endswith(" loss"):
                loss_axis.plot(steps, values, **style)
            else:
                accuracy_axis.plot(steps, values, linestyle=next(styles), **style)
        for boundary in boundaries:
            for axis in (loss_axis, accuracy_axis):
                axis.axvline(boundary, color=color, linestyle=":", linewidth=1)
    loss_axis.set(xlabel="optimiser step", ylabel="training loss", title="loss")
    losses = [
        value
        for _, series, _ in loaded
        for key, points in series.items()
        if key.endswith(" loss")
        for _, value in points
    ]
    if losses and min(losses) > 0:
        loss_axis.set_yscale("log")  # labels the minor ticks where the curves span less than a decade
    elif any(value > 0 for value in losses):
        # SMT's loss can be negative (the uniformity term): symmetric log. Its default ticks are the powers
        # of ten, none of which may fall within a curve's range: where the axis spans two decades or
        # fewer, ticks at 1, 2 and 5 times each power label it
        from matplotlib.ticker import ScalarFormatter, SymmetricalLogLocator

        linthresh = 1e-2

        def decades(value: float) -> float:
            return math.copysign(math.log10(max(abs(value) / linthresh, 1.0)), value)

        subs = [1.0, 2.0, 5.0] if decades(max(losses)) - decades(min(losses)) <= 2 else [1.0]
        loss_axis.set_yscale("symlog", linthresh=linthresh)
        loss_axis.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=linthresh, subs=subs))
        loss_axis.yaxis.set_major_formatter(ScalarFormatter())
    accuracy_axis.set(xlabel="optimiser step", ylabel="accuracy", title="accuracies", ylim=(-0.02, 1.02))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
