"""The one writer of a study's outputs: its JSON (command, machine, date, the study spec, the rows), its
figures and its markdown page, and the formatting every page shares.

A page is prose written by people around generated blocks. Each block sits between
``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``; writing a page replaces the blocks and keeps
every other line as it is, so what a person wrote about the data survives the data being regenerated.
A block the page does not have yet is added at its end; a new page is its blocks in order.

    write_outputs(result, "smtrnn experiment horizon", blocks, figures, markdown="docs/horizon.md",
                  json_path="docs/horizon.json", figures_dir="docs/figures")
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from smtrnn import checkpoint
from smtrnn.errors import UserError

MISSING = "–"  # how every page shows a value that is not there
# every figure draws a method or variant in the same marker and colour
STYLE = {
    "bptt": ("^", "C2"),
    "bptt-fused": ("v", "C3"),
    "tbptt": ("v", "C3"),
    "smt": ("s", "C1"),
    "smt-sampled": ("s", "C1"),
    "smt-windowed": ("X", "C6"),
    "smt-compiled": ("D", "C4"),
    "smt-bf16": ("P", "C5"),
    "smt+dmt": ("o", "C0"),
    "recipe": ("o", "C0"),
    "bptt-10x": ("D", "C4"),
    "bptt-4x": ("D", "C4"),
    "bptt-continuous": ("v", "C3"),
    "smt+dmt-rotary": ("o", "C7"),
    "smt+dmt-continuous": ("o", "C1"),
    "smt+dmt-continuous-rotary": ("o", "C4"),
    "smt+dmt-rotary-wide": ("o", "C8"),
    "smt+dmt-wide-labels": ("o", "C9"),
    "smt+dmt-shared": ("o", "C5"),
    "smt+dmt-wide-dmt300": ("o", "C6"),
    "smt+dmt-rollout512": ("s", "C0"),
    "smt+dmt-rollout256": ("^", "C4"),
    "smt+dmt-horizon16": ("^", "C1"),
    "smt+dmt-dmt150": ("s", "C6"),
    "smt+dmt-dmt300": ("s", "C8"),
    "smt+dmt-dmt450": ("s", "C2"),
    "smt+dmt-dmt600": ("s", "C3"),
    "tbptt-64": ("v", "k"),
    "smt+dmt-pull": ("s", "C8"),
    "smt+dmt-deep": ("D", "C8"),
    "smt+dmt-deep-horizon64": ("D", "C9"),
    "smt+dmt-deep-horizon128": ("D", "C6"),
}
Blocks = list[tuple[str, list[str]]]


def fmt(value: float | None, digits: int = 3) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def mean(values: Iterable) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def spread(values: list[float | None]) -> str:
    """'mean ± std' over seeds (std only with two or more), noting runs that diverged (None)."""
    present = [value for value in values if value is not None]
    failed = len(values) - len(present)
    if not present:
        return f"diverged ({failed})" if failed else MISSING
    text = f"{statistics.fmean(present):.3f}"
    if len(present) > 1:
        text += f" ± {statistics.stdev(present):.3f}"
    return text + (f" ({failed} diverged)" if failed else "")


def per_seed(rows: list[dict], key: str = "accuracy") -> str:
    """Each row's value, ' / '-separated (the seeds of one point)."""
    return " / ".join("diverged" if row.get("note") else fmt(row.get(key)) for row in rows)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def groups(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Rows grouped by the values of ``keys``, groups in order of first appearance."""
    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault(tuple(row[key] for key in keys), []).append(row)
    return grouped


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _first(path: str, pattern: str) -> str | None:
    try:
        with open(path) as handle:
            found = re.search(pattern, handle.read(), re.M)
        return found.group(1).strip() if found else None
    except OSError:
        return None


def machine_details() -> dict:
    """The processor, CPUs, memory, PyTorch build and threads (and GPU) of this machine."""
    memory_kb = _first("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    info = {
        "cpu": _first("/proc/cpuinfo", r"^model name\s*:(.*)$") or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(int(memory_kb) / 2**20, 1) if memory_kb else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine() -> str:
    """One line naming the processor, core count and PyTorch build of this machine."""
    info = machine_details()
    return f"{info['cpu']}, {info['logical_cpus']} cores, torch {info['torch']}" + (
        f", {info['gpu']}" if "gpu" in info else ""
    )


def header(result: dict, title: str, command: str) -> list[str]:
    """A page's opening lines: what it is, the command that wrote it, where, when and how long."""
    rows, study = result["rows"], result["study"]
    missing = result["planned"] - len(rows)
    # a run that took another's training (trained_in) only evaluated: its seconds are that run's
    compute = sum(row.get("seconds") or 0.0 for row in rows if not row.get("trained_in"))
    shared = sum(bool(row.get("trained_in")) for row in rows)
    return [
        f"# {title}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; {result['jobs']} run(s) at a time, {study['threads_per_job']} thread(s) each  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Runs: {len(rows)} of {result['planned']}"
        + (f" (**{missing} not finished when this page was written**)" if missing else "")
        + (
            f" ({carried} of them rows of this page's earlier JSON, same configs, their runs not on this machine)"
            if (carried := result.get("carried"))
            else ""
        )
        + (
            f" ({shared} of them trained once for several lengths: another run's training, evaluated at their own T)"
            if shared
            else ""
        )
        + f", seeds {', '.join(map(str, study['seeds']))}; training time summed over them: {duration(compute)}; "
        f"this invocation trained {result['trained']} in {duration(result['wall_seconds'])}.",
        "",
    ]


def block(name: str, lines: list[str]) -> str:
    return "\n".join([f"<!-- generated: {name} -->", *lines, f"<!-- end: {name} -->"])


def render(blocks: Blocks, existing: str | None = None) -> str:
    """The page: ``existing`` with its generated blocks replaced (the rest kept), new blocks appended."""
    text = existing or ""
    for name, lines in blocks:
        pattern = re.compile(rf"<!-- generated: {re.escape(name)} -->.*?<!-- end: {re.escape(name)} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: block(name, lines), text, count=1)
        else:
            text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block(name, lines) + "\n"
    return text


def write_outputs(
    result: dict,
    command: str,
    blocks: Callable[[dict, str, str | None], Blocks],
    figures: Callable[[dict, Path], list[Path]] | None = None,
    markdown: str | None = None,
    json_path: str | None = None,
    figures_dir: str | None = None,
) -> None:
    """The JSON, the figures and the page, each where asked. ``blocks(result, link)`` builds the page's
    generated blocks (``command``: how the page was made), with ``link`` the figures folder as seen from the page (None: no figures)."""
    try:
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            stamp = {"command": command, "machine": machine(), "date": datetime.date.today().isoformat()}
            checkpoint.write_json(Path(json_path), {**stamp, **result})
        if figures_dir and figures is not None:
            Path(figures_dir).mkdir(parents=True, exist_ok=True)
            figures(result, Path(figures_dir))
        if markdown:
            target = Path(markdown)
            target.parent.mkdir(parents=True, exist_ok=True)
            link = os.path.relpath(figures_dir, target.parent) if figures_dir and figures is not None else None
            existing = target.read_text() if target.exists() else None
            checkpoint.write_atomic(target, render(blocks(result, command, link), existing).encode())
    except OSError as error:
        raise UserError(f"cannot write the outputs: {error.strerror or error}: {error.filename or ''}") from None


def figure(rows: int = 1, columns: int = 1, width: float = 4.6, height: float = 3.6):
    """A matplotlib Figure and its axes grid (the object API draws with Agg and touches no global state)."""
    from matplotlib.figure import Figure

    drawn = Figure(figsize=(width * columns, height * rows))
    return drawn, drawn.subplots(rows, columns, squeeze=False)


def save(drawn, path: Path) -> Path:
    drawn.tight_layout()
    drawn.savefig(path, dpi=110, bbox_inches="tight")  # a legend beside the panels stays in the picture
    return path


def seeds_against_length(
    rows: list[dict], variants: list[tuple[str, str, str]], path: Path, chance: float
) -> Path | None:
    """One panel per cell: every seed's RNN-alone accuracy against T (log axis), one marker per variant
    (``variants``: (name, label, marker)), chance dotted."""
    rows = [row for row in rows if row["variant"] in {name for name, _, _ in variants} and row["accuracy"] is not None]
    cells = list(dict.fromkeys(row["cell"] for row in rows))
    if not cells:
        return None
    drawn, axes = figure(1, len(cells), 3.4, 3.4)
    ticks = sorted({row["length"] for row in rows})
    for axis, cell in zip(axes[0], cells):
        for name, label, marker in variants:
            picked = [row for row in rows if row["cell"] == cell and row["variant"] == name]
            lengths, values = [row["length"] for row in picked], [row["accuracy"] for row in picked]
            axis.scatter(lengths, values, marker=marker, label=label, alpha=0.7)
        axis.axhline(chance, color="grey", lw=0.8, ls=":")
        axis.set(xscale="log", xlabel="T", title=cell, ylim=(0, 1.05))
        axis.set_xticks(ticks, [str(value) for value in ticks])
    axes[0][0].set_ylabel("RNN-alone accuracy (each seed)")
    axes[0][0].legend(fontsize=8)
    return save(drawn, path)
