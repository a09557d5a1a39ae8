"""Render a ``compare.compare`` result: a markdown page (per task: accuracy by cell, method and length;
length generalisation; memory diagnostics) and one figure per task (accuracy against length)."""
from __future__ import annotations

import datetime
import statistics
from pathlib import Path

STYLE = {"bptt": ("^", "C2"), "tbptt": ("v", "C3"), "smt": ("s", "C1"), "smt+dmt": ("o", "C0")}


def _groups(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Rows grouped by the values of ``keys``, groups in order of first appearance."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    return groups


def _mean(values) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _spread(values: list[float | None]) -> str:
    """'mean ± std' over seeds (std only with two or more), noting runs that diverged (None)."""
    present = [value for value in values if value is not None]
    failed = len(values) - len(present)
    if not present:
        return f"diverged ({failed})" if failed else "–"
    text = f"{statistics.fmean(present):.3f}"
    if len(present) > 1:
        text += f" ± {statistics.stdev(present):.3f}"
    return text + (f" ({failed} diverged)" if failed else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _accuracy_table(rows: list[dict], lengths: list[int]) -> list[str]:
    lines = []
    for (cell, method), group in _groups(rows, "cell", "method").items():
        by_length = _groups(group, "length")
        at = lambda length, key: [row[key] for row in by_length.get((length,), [])]
        lines.append([cell, method, *(_spread(at(length, "accuracy")) for length in lengths),
                      " / ".join(_number(_mean(at(length, "teacher_accuracy"))) for length in lengths),
                      " / ".join(_number(_mean(at(length, "seconds"))) for length in lengths)])
    per_length = " / ".join(str(length) for length in lengths)
    return _table(["cell", "method", *(f"T={length}" for length in lengths), f"teacher (T={per_length})",
                   f"training s per run (T={per_length})"], lines)


def _generalisation_table(rows: list[dict]) -> list[str]:
    rows = [row for row in rows if row.get("generalisation")]
    if not rows:
        return []
    factors = sorted({factor for row in rows for factor in row["generalisation"]}, key=int)
    lines = []
    for (cell, method, length), group in _groups(rows, "cell", "method", "length").items():
        cells = []
        for factor in factors:
            entries = [row["generalisation"].get(factor) for row in group]
            if all(entry is None for entry in entries):
                cells.append("n/a")  # the task refuses that length
                continue
            text = _spread([entry["rnn"] for entry in entries if entry is not None])
            teacher = _mean(entry["teacher"] for entry in entries if entry is not None)
            cells.append(text + ("" if teacher is None else f" (teacher {teacher:.3f})"))
        lines.append([cell, method, str(length), *cells])
    return ["Length generalisation: trained at T, tested at longer lengths; the RNN alone, mean ± std over "
            "seeds, the teacher's first prediction in brackets.", "",
            *_table(["cell", "method", "trained T", *(f"{factor}T" for factor in factors)], lines)]


def _diagnostics_table(rows: list[dict]) -> list[str]:
    columns = [("rnn_effective_rank", "eff. rank RNN"), ("teacher_effective_rank", "eff. rank teacher"),
               ("rnn_pairwise_distance", "mean distance RNN"), ("teacher_pairwise_distance", "mean distance teacher"),
               ("drift", "drift"), ("relative_drift", "relative drift")]
    lines = [[cell, method, str(length), *(_number(_mean(row.get(key) for row in group)) for key, _ in columns)]
             for (cell, method, length), group in _groups(rows, "cell", "method", "length").items()]
    return ["Memory diagnostics at the trained length (means over seeds): effective rank of the memories "
            "m_1..m_T (a collapse shows as a small rank and distance), mean distance between two memories, "
            "and the drift ||m^_t - m*_t|| of the RNN's own rollout from the teacher's memories (also relative "
            "to the mean teacher memory norm). BPTT trains no teacher: RNN side only.", "",
            *_table(["cell", "method", "T", *(title for _, title in columns)], lines)]


def _task_section(task: str, rows: list[dict], options: dict, figures_link: str | None) -> list[str]:
    lengths = sorted({row["length"] for row in rows})
    settings = ", ".join(f"{key}={value}" for key, value in options.items())
    chance = _mean(row["chance"] for row in rows)
    steps = ", ".join(f"T={length}: {max(row['steps'] for row in group)}"
                      for (length,), group in sorted(_groups(rows, "length").items()))
    figure = [f"![{task}: accuracy against length]({figures_link}/{task}.png)", ""] if figures_link else []
    return [f"## {task}" + (f" ({settings})" if settings else ""), "",
            f"Chance accuracy {_number(chance)}. Optimiser steps per run, every method: {steps}.", "",
            *_accuracy_table(rows, lengths), *figure, *_generalisation_table(rows), *_diagnostics_table(rows)]


def markdown(result: dict, command: str, machine: str | None = None, figures_link: str | None = None) -> str:
    """The comparison page: how and where it was measured, then one section per task.
    ``figures_link``: the folder of ``figures()``'s PNGs as seen from the page (None: no images)."""
    rows = result["rows"]
    seeds = sorted({row["seed"] for row in rows})
    trained_seconds = sum(row["seconds"] or 0.0 for row in rows)
    lines = ["# SMT->DMT against BPTT: synthetic tasks across lengths", "",
             f"Command: `{command}`  ",
             f"Machine: {machine or 'not recorded'}; {result['jobs']} job(s) x {result['threads_per_job']} thread(s)  ",
             f"Date: {datetime.date.today().isoformat()}  ",
             f"Wall time: {_duration(result['wall_seconds'])} for this invocation ({result['trained']} runs trained, "
             f"{result['reused']} reused from earlier invocations); training time of all runs summed: "
             f"{_duration(trained_seconds)}", "",
             "Accuracy is that of the RNN alone, rolled out from its own initial memory over held-out sequences "
             f"(no teacher), mean ± std over seeds {', '.join(map(str, seeds))}. Within a task every method runs the "
             "same model and the same total number of optimiser steps (smt+dmt: SMT and DMT steps together). "
             "Teacher: the Transformer teacher's first prediction from its memory, the ceiling SMT distils from "
             "(– for BPTT, which trains none).", ""]
    for (task,), group in _groups(rows, "task").items():
        lines += _task_section(task, group, result.get("task_options", {}).get(task, {}), figures_link)
    return "\n".join(lines)


def figures(rows: list[dict], folder: str | Path) -> list[Path]:
    """<folder>/<task>.png per task: accuracy against length (log2 axis), one subplot per cell, one
    line per method (mean over seeds, band from min to max), chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (task,), task_rows in _groups(rows, "task").items():
        cells = _groups(task_rows, "cell")
        figure, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.6), sharey=True, squeeze=False)
        for axis, ((cell,), cell_rows) in zip(axes[0], cells.items()):
            for (method,), method_rows in _groups(cell_rows, "method").items():
                points = []
                for (length,), group in sorted(_groups(method_rows, "length").items()):
                    accuracies = [row["accuracy"] for row in group if row["accuracy"] is not None]
                    if accuracies:  # a length where every seed diverged has no point
                        points.append((length, statistics.fmean(accuracies), min(accuracies), max(accuracies)))
                if not points:
                    continue
                lengths, means, lows, highs = zip(*points)
                marker, color = STYLE.get(method, ("x", "k"))
                axis.plot(lengths, means, marker=marker, color=color, label=method)
                axis.fill_between(lengths, lows, highs, color=color, alpha=0.2, linewidth=0)
            chance = _mean(row["chance"] for row in cell_rows)
            if chance is not None:
                axis.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
            lengths = sorted({row["length"] for row in cell_rows})
            axis.set_xscale("log", base=2)
            axis.set_xticks(lengths, [str(length) for length in lengths])
            axis.set(title=f"{cell} cell", xlabel="sequence length T", ylim=(-0.02, 1.02))
            axis.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("accuracy, RNN alone")
        legend = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
        axes[0][0].legend(legend.values(), legend.keys(), fontsize=8)
        figure.suptitle(task)
        figure.tight_layout()
        path = folder / f"{task}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths.append(path)
    return paths
