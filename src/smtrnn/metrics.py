"""A run's metrics.jsonl: one JSON record per logged step, ``{"phase", "step", "loss", ..., "seconds"}``,
appended by the trainer (main process only). The one reader and writer of that file.

    records = read(run_dir)            # every complete line, in order
    append(run_dir, {"phase": "smt", "step": 25, "loss": 1.2})
"""

from __future__ import annotations

import json
from pathlib import Path

from smtrnn import checkpoint

FILE = "metrics.jsonl"


def read(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir``'s metrics.jsonl ([] when it has none); a line cut by a kill is skipped."""
    path = Path(run_dir) / FILE
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append(run_dir: str | Path, record: dict) -> None:
    with open(Path(run_dir) / FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate(run_dir: str | Path, phase: str, step: int, earlier_phases: list[str]) -> None:
    """Keep the records of ``earlier_phases`` and those of ``phase`` up to ``step`` (a resumed run
    writes the later ones again); rewritten atomically, and only when something changes."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return
    kept = [
        json.dumps(record)
        for record in read(run_dir)
        if record.get("phase") in earlier_phases or (record.get("phase") == phase and record.get("step", 0) <= step)
    ]
    text = ("\n".join(kept) + "\n") if kept else ""
    if text != path.read_text():
        checkpoint.write_atomic(path, text.encode())


def phase_seconds(run_dir: str | Path) -> dict[str, float]:
    """Training seconds of each phase: its last record's clock."""
    return {record["phase"]: record["seconds"] for record in read(run_dir) if "seconds" in record}
