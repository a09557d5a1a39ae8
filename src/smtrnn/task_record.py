"""A run's task.json: what its RNN needs without the data, and which data file it was trained on.

    {"task": "text:/home/me/a.txt", "vocab_size": 256, "num_classes": 256, "text": true,
     "next_token": true, "image_shape": null, "chance": 0.0039, "data": {"path": "/home/me/a.txt", "size": 5120, "sha256": "..."}}

Building a run's models (export, ``smtrnn.load``, generation) reads only this file: ``RecordedTask``
stands for the task and builds the real one, which reads the data, when a sequence is first drawn
(evaluation, images primed with held-out rows). ``data`` (the file-backed tasks ``text:``, ``tokens:``
and ``sequences:``, else null) tells a moved file (the same sha256 at another place: accepted) from a
changed one (refused, naming the file). A run written before task.json existed has none: its task is
built from its config as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from smtrnn import checkpoint
from smtrnn.errors import UserError
from smtrnn.tasks import make_task, recorded_next_token
from smtrnn.tasks.base import predicts_next_token
from smtrnn.tasks.files import file_form

FILE = "task.json"
MOVED_HINT = "if the data moved, give its new place with --data NEW_PATH"


def digest(path: Path) -> str:
    """The sha256 of a file's bytes, read in pieces (a data file may be large)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(piece)
    return hasher.hexdigest()


def data_file(path: Path) -> dict:
    """The place, size and sha256 of a data file."""
    return {"path": str(path), "size": path.stat().st_size, "sha256": digest(path)}


def describe(spec: str, task) -> dict:
    """The record of ``task`` built from ``spec`` (a config's ``task``), with its data file if it has one."""
    image_shape = getattr(task, "image_shape", None)
    chance = getattr(task, "chance_accuracy", None)
    form = file_form(spec)
    return {
        "task": spec,
        "vocab_size": int(task.vocab_size),
        "num_classes": int(task.num_classes),
        "text": bool(getattr(task, "text", False)),
        "next_token": predicts_next_token(task),
        "image_shape": [int(size) for size in image_shape] if image_shape is not None else None,
        "chance": float(chance) if chance is not None else None,
        "data": data_file(Path(form[1])) if form is not None else None,
    }


def read(run_dir: Path) -> dict | None:
    """``run_dir``'s task.json, None for a run written before there was one."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return None
    record = checkpoint.read_json(path)
    good = (
        isinstance(record, dict)
        and isinstance(record.get("task"), str)
        and all(isinstance(record.get(key), int) for key in ("vocab_size", "num_classes"))
        and (record.get("data") is None or isinstance(record["data"].get("sha256"), str))
    )
    if not good:
        raise UserError(f"corrupt {path}: expected task, vocab_size, num_classes and data")
    return record


def write(run_dir: Path, record: dict) -> None:
    checkpoint.write_json(Path(run_dir) / FILE, record)


def check_same_data(recorded: dict, found: dict) -> None:
    """A one-line UserError naming the file unless ``found`` (``data_file``) holds the bytes ``recorded``."""
    if found["sha256"] == recorded["sha256"]:
        return
    if found["path"] == recorded["path"]:
        what = f"{found['path']} has changed since this run was trained on it"
    else:
        what = f"{found['path']} is not the data this run was trained on ({recorded['path']})"
    raise UserError(
        f"{what}: sha256 {found['sha256'][:12]}... where the run recorded {recorded['sha256'][:12]}...; "
        "restore that file, or train a new run with another --out"
    )


def located(record: dict, new_place: str | None = None) -> str:
    """The task spec that builds the run's task from its data: at the recorded place, or at ``new_place``
    when the data moved; a one-line UserError when the file is missing or holds other bytes. A record
    without ``data`` (``{"task": spec}`` of a run from before task.json) has no sha256 to check."""
    spec, form = record["task"], file_form(record["task"])
    if form is None:
        if new_place is not None:
            raise UserError(f"task {spec} reads no data file: --data does not apply")
        return spec
    path = Path(new_place).expanduser().resolve() if new_place is not None else Path(form[1])
    if not path.is_file():
        if new_place is not None:
            raise UserError(f"--data {new_place}: file not found")
        raise UserError(f"{spec}: file not found; {MOVED_HINT}")
    if record.get("data") is not None:
        check_same_data(record["data"], data_file(path))
    return f"{spec.partition(':')[0]}:{path}"


class RecordedTask:
    """A run's task as its task.json describes it: vocabulary, classes, byte text, image shape and chance,
    without reading any data. Drawing sequences (``sample``, ``evaluation``, ``check_length``) builds the
    real task on first use, from ``new_place`` when the data moved."""

    def __init__(self, record: dict, options: dict, new_place: str | None = None):
        self.name: str = record["task"]
        self.vocab_size: int = record["vocab_size"]
        self.num_classes: int = record["num_classes"]
        self.text: bool = bool(record.get("text"))
        self.next_token: bool = (
            bool(record["next_token"])
            if "next_token" in record
            else recorded_next_token(self.name, self.vocab_size, self.num_classes)  # a task.json from before
        )
        shape = record.get("image_shape")
        self.image_shape: tuple[int, ...] | None = tuple(shape) if shape else None
        self.chance_accuracy: float | None = record.get("chance")
        self._record, self._options, self._new_place = record, options, new_place
        self._task = None
        if new_place is not None:
            self.built()  # a wrong --data is refused now, not in the middle of an evaluation

    def built(self):
        """The real task, built (and its data read) once."""
        if self._task is None:
            self._task = make_task(located(self._record, self._new_place), **self._options)
        return self._task

    def sample(self, batch_size: int, length: int, generator):
        return self.built().sample(batch_size, length, generator)

    def evaluation(self):
        task = self.built()
        return task.evaluation() if hasattr(task, "evaluation") else task

    def check_length(self, length: int) -> None:
        getattr(self.built(), "check_length", lambda _: None)(length)

    def __getattr__(self, name: str):
        """Anything else a task offers (a study's measurements read e.g. ``values`` or ``tokens()``)."""
        if name.startswith("_"):  # not built yet, or being copied: never read the data for these
            raise AttributeError(name)
        return getattr(self.built(), name)
