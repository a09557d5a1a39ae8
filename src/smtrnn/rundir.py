"""The run directory of a training process: created, locked for the life of the run, and made to hold
this run: a new directory gets config.json and task.json; the same config resumes; a larger --steps or
--dmt-steps continues; the same data at another place is accepted; a run that never saved a checkpoint
takes a corrected command; anything else is refused with one line naming the options that differ.

    create(run_dir)
    with locked(run_dir):
        prepare(config, task_record.describe(config.task, task), run_dir)
        ...  # train
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from smtrnn import checkpoint, metrics, task_record
from smtrnn.config import RETIRED, SECTION_TYPES, RunConfig, option_name
from smtrnn.errors import UserError

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# the settings a run may grow to continue from its last checkpoint
EXTENSIBLE = ("train.steps", "dmt_train.steps")


def create(run_dir: Path) -> None:
    """Create ``run_dir`` and check that it takes files; a one-line UserError otherwise, and for a
    directory that holds files but no run (a run's files would be mixed into it, or a run nested in
    another run's checkpoints)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"cannot use {run_dir} as a run directory: it is a file")
    if run_dir.is_dir() and not (run_dir / CONFIG_FILE).exists():
        if any(not entry.name.startswith(".") for entry in run_dir.iterdir()):
            raise UserError(f"{run_dir} is not empty and holds no smtrnn run: choose a new or empty directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-test-")  # unique: ranks probe at once
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"cannot write to output directory {run_dir}: {error.strerror}") from None


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block: a second process refused with one line naming the holder.

    An flock: the kernel releases it when its holder exits in any way, SIGKILL included, so no stale lock
    ever blocks a resume. The file is left in place: removing it would let two processes lock two files."""
    path = run_dir / LOCK_FILE
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, checkpoint.plain_mode())
    except OSError as error:  # e.g. another user's run directory
        raise UserError(f"cannot lock {run_dir}: {path}: {error.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(handle, 200).decode(errors="replace").strip() or "another process"
        os.close(handle)
        raise UserError(
            f"{run_dir} is in use by {holder}; wait for it to finish or stop it, or use another --out"
        ) from None
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"smtrnn process {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(handle)  # releases the lock


def config_digest(config: RunConfig, fields: list[str] | None = None) -> str | None:
    """A short fingerprint of ``config`` as saved (device aside): two runs with the same digest were
    asked for the same thing. With ``fields`` (``config_fields()`` of an earlier version of smtrnn), the
    fingerprint that version wrote for a run asked for the same thing, as a run directory's config.json
    is read (settings added since count as their defaults, settings retired since as off); None when
    ``config`` moves a setting added since from its default, which that version could not ask for."""
    values = _comparable(config) if fields is None else _as_of(_comparable(config), set(fields))
    if values is None:
        return None
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def config_fields() -> list[str]:
    """The dotted name of every setting a config saves ("seed", "smt.horizon", ...; the task's options
    are one), written beside a study's rows so that their digests outlive settings added later."""
    names: list[str] = []
    for key, value in _comparable(RunConfig()).items():
        if key in SECTION_TYPES:
            names.extend(f"{key}.{name}" for name in value)
        else:
            names.append(key)
    return sorted(names)


def _as_of(values: dict, fields: set[str]) -> dict | None:
    """``values`` (a comparable config) restricted to ``fields``, with the retired settings among them
    back at their off values; None where a setting outside ``fields`` is not at its default."""
    defaults = _comparable(RunConfig())
    kept: dict = {}
    for key, value in values.items():
        if key not in SECTION_TYPES:
            if key in fields:
                kept[key] = value
            elif value != defaults[key]:
                return None
            continue
        if any(name.startswith(key + ".") for name in fields):
            kept[key] = {}
        for name, item in value.items():
            if f"{key}.{name}" in fields:
                kept[key][name] = item
            elif item != defaults[key][name]:
                return None
    for dotted, off in RETIRED.items():  # every retired setting lies in a section
        if dotted in fields:
            section, name = dotted.split(".")
            kept.setdefault(section, {})[name] = off
    return kept


def _comparable(config: RunConfig) -> dict:
    """The config as saved to config.json (values JSON has no type for come back as JSON reads them),
    device aside: it may change between sessions."""
    values = RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))).to_dict()
    values.pop("device")
    return values


def _flat(values: dict) -> dict:
    """{"task": ..., "train.lr": ..., "task_options.heldout": ...}: one entry per setting."""
    flat = {}
    for key, value in values.items():
        if key in SECTION_TYPES or key == "task_options":
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def _shown(dotted: str, old, new) -> str:
    """A difference as the user types it: "--lr 0.002 -> 0.01", "--task-option heldout: 0.1 -> 0.2"."""
    section, _, name = dotted.rpartition(".")
    option = f"--task-option {name}:" if section == "task_options" else option_name(dotted)
    return f"{option} {'(unset)' if old is None else old} -> {'(unset)' if new is None else new}"


def differences(saved: RunConfig, config: RunConfig, same_data: bool = False) -> dict[str, tuple]:
    """{dotted setting: (saved value, new value)} where ``config`` differs from ``saved`` (device aside);
    ``same_data``: the task's data file holds the same bytes, so its place does not count."""
    theirs, mine = _flat(_comparable(saved)), _flat(_comparable(config))
    if same_data:
        mine["task"] = theirs["task"]
    return {
        name: (theirs.get(name), mine.get(name)) for name in {**theirs, **mine} if theirs.get(name) != mine.get(name)
    }


def _check_continuation(config: RunConfig, run_dir: Path, changes: dict, shown: list[str], latest) -> None:
    """A one-line UserError naming the ``changes`` unless they only grow --steps / --dmt-steps, and
    unless they would grow an SMT phase that DMT has already started from."""
    if any(name not in EXTENSIBLE or new < old for name, (old, new) in changes.items()):
        raise UserError(
            f"{run_dir} holds a run with a different config ({', '.join(shown)}); use another --out or the same "
            "arguments (only --steps and --dmt-steps may grow, to continue the run)"
        )
    done_phase = checkpoint.load_state(latest, None)[0].get("phase")
    if config.method == "smt+dmt" and done_phase == "dmt" and "train.steps" in changes:
        raise UserError(
            f"{run_dir}: SMT has finished and DMT started from it, so SMT cannot be extended; extend "
            "--dmt-steps, or train a new SMT run and fine-tune it with --method dmt --init"
        )


def prepare(config: RunConfig, record: dict, run_dir: Path, main_process: bool = True) -> None:
    """Make ``run_dir`` (created, and locked by the caller) hold this run; ``record`` is the task's
    (task_record.describe). Only ``main_process`` writes or speaks; every process checks.

    A larger --steps or --dmt-steps extends a run from its last checkpoint (the learning-rate schedule is
    then that of the new total: warm-up, cosine decay to the new last step)."""
    saved_path = run_dir / CONFIG_FILE
    saved_record = task_record.read(run_dir)
    notes, write_config = [], not saved_path.exists()
    if not write_config:
        saved = RunConfig.from_dict(checkpoint.read_json(saved_path))
        latest = checkpoint.latest_checkpoint(run_dir)
        old_data: dict = (saved_record or {}).get("data") or {}
        new_data: dict = record.get("data") or {}
        if latest is not None and old_data and new_data:
            task_record.check_same_data(old_data, new_data)  # trained on other bytes: refused
        same_data = bool(old_data and new_data and old_data["sha256"] == new_data["sha256"])
        changes = differences(saved, config, same_data)
        shown = [_shown(name, *values) for name, values in sorted(changes.items())]
        if changes and latest is None:
            # nothing was saved: the failed start (a divergence, a kill) gives way to the corrected command
            notes.append(
                f"{run_dir} never reached a checkpoint: starting it afresh with the new config ({', '.join(shown)})"
            )
            if main_process:
                (run_dir / metrics.FILE).unlink(missing_ok=True)
        elif changes:
            _check_continuation(config, run_dir, changes, shown, latest)
            notes.append(f"continuing {run_dir}: {', '.join(shown)}")
            if main_process:
                (run_dir / "result.json").unlink(missing_ok=True)  # the longer run's result replaces it at the end
        moved = same_data and old_data["path"] != new_data["path"]
        if moved:
            notes.append(f"the data of {run_dir} moved: {old_data['path']} -> {new_data['path']} (same sha256)")
        write_config = bool(changes) or moved
    if main_process:
        for line in notes:
            print(f"smtrnn: {line}", file=sys.stderr)
        if write_config:
            checkpoint.write_json(saved_path, config.to_dict())
        if record != saved_record:
            task_record.write(run_dir, record)


def saved_config_matches(config: RunConfig, run_dir: Path) -> bool | None:
    """Whether ``run_dir``'s config.json equals ``config`` (device aside); None when it has none yet.
    Fields added to RunConfig after the run was saved count as their defaults."""
    saved_path = Path(run_dir) / CONFIG_FILE
    if not saved_path.exists():
        return None
    return _comparable(RunConfig.from_dict(checkpoint.read_json(saved_path))) == _comparable(config)
