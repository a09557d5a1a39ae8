"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A run directory holds ``config.json``, ``metrics.jsonl`` and ``checkpoints/<name>/`` folders, each
complete (model.safetensors, state.safetensors, state.json) before it is renamed into place; the
file ``checkpoints/latest`` names the newest one and is itself replaced atomically. A kill at any
moment therefore leaves the previous good checkpoint readable. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from smtrnn.errors import UserError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def plain_mode(directory: bool = False) -> int:
    """The permissions ``open()`` (0o666) or ``mkdir()`` (0o777) would give under the current umask:
    mkstemp and mkdtemp create private files (0o600, 0o700), which another user could not read."""
    return (0o777 if directory else 0o666) & ~_umask()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a synced temporary file and a rename; the file gets the
    permissions a plain ``open()`` would give it."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, plain_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, value) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"corrupt JSON in {path}: {error}") from None


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and plain JSON."""
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        plain["state"][str(index)] = {}
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().clone().contiguous()
                plain["state"][str(index)][name] = "tensor"
            else:
                plain["state"][str(index)][name] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict, plain: dict) -> dict:
    state = {}
    for index, values in plain["state"].items():
        state[int(index)] = {
            name: tensors[f"optimizer.{index}.{name}"] if value == "tensor" else value for name, value in values.items()
        }
    return {"state": state, "param_groups": plain["param_groups"]}


MODEL_CONFIG_KEY = "smtrnn.model_config"  # safetensors metadata: the ModelConfig the weights belong to


def _model_config(model: torch.nn.Module) -> dict | None:
    config = getattr(model, "config", None)
    return asdict(config) if is_dataclass(config) and not isinstance(config, type) else None


def save_checkpoint(
    run_dir: Path,
    name: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    rng: dict[str, torch.Tensor],
    meta: dict,
    keep: int = 1,
) -> Path:
    """Write a complete checkpoint folder ``PHASE-STEP``, point ``latest`` at it, prune the older ones of
    its phase: the last of every earlier phase stays (SMT's, where DMT follows, for ``--init`` and eval)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
    try:
        staging.chmod(plain_mode(directory=True))  # the checkpoint folder it becomes is readable by others
        weights = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
        config = _model_config(model)
        metadata = {MODEL_CONFIG_KEY: json.dumps(config, sort_keys=True)} if config is not None else None
        save_file(weights, staging / "model.safetensors", metadata=metadata)
        state_tensors: dict[str, torch.Tensor] = {}
        plain: dict = {}
        if optimizer is not None:
            state_tensors, plain = _flatten_optimizer(optimizer.state_dict())
        state_tensors.update({f"rng.{key}": value.cpu() for key, value in rng.items()})
        save_file({k: v.cpu() for k, v in state_tensors.items()}, staging / "state.safetensors")
        (staging / "state.json").write_text(json.dumps({"meta": meta, "optimizer": plain}, indent=1))
        for file in staging.iterdir():
            file.chmod(plain_mode())  # safetensors writes its files private (0o600)
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_atomic(root / "latest", name.encode())
    phase = name.rpartition("-")[0]
    same_phase = (
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name.rpartition("-")[0] == phase
    )
    checkpoints = sorted(same_phase, key=os.path.getmtime)
    for old in checkpoints[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    # leftovers of a writer killed mid-checkpoint (one writer per run directory: rank 0)
    for stray in root.glob(".*"):
        if stray.name.startswith(".staging-"):
            shutil.rmtree(stray, ignore_errors=True)
        elif stray.name.startswith(".latest."):
            stray.unlink(missing_ok=True)
    return final


# what a complete checkpoint folder holds (state.json written last, before the folder is renamed in)
CHECKPOINT_FILES = ("model.safetensors", "state.safetensors", "state.json")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint folder ``checkpoints/latest`` names; None when the run has none. Where the pointer
    is missing or empty but complete folders are there (a kill between a folder's rename and the
    pointer's write, or a pointer removed by hand), the newest of them: the one it would name, since
    every folder is complete before the pointer moves to it. So finished checkpoints are never taken
    for a run that never saved one, and never overwritten by a fresh start."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    name = pointer.read_text().strip() if pointer.is_file() else ""
    if not name:
        complete = [
            folder
            for folder in pointer.parent.glob("*-*")
            if not folder.name.startswith(".") and all((folder / file).is_file() for file in CHECKPOINT_FILES)
        ]
        # a file's time, not the folder's: a prune killed part-way changes an older folder's time
        return max(complete, key=lambda folder: (folder / "state.json").stat().st_mtime_ns) if complete else None
    folder = pointer.parent / name
    if not (folder / "model.safetensors").exists():
        raise UserError(f"checkpoint {folder} named by {pointer} is missing")
    return folder


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load model.safetensors into ``model``, refusing mismatched names or shapes."""
    try:
        weights = load_file(Path(folder) / "model.safetensors")
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"corrupt checkpoint {folder}/model.safetensors: {error}") from None
    _check_model_config(model, folder)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"checkpoint {folder} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for key, value in weights.items():
        if value.shape != expected[key].shape:
            raise UserError(
                f"checkpoint {folder}: {key} has shape {tuple(value.shape)}, the model wants {tuple(expected[key].shape)}"
            )
    model.load_state_dict(weights)


def _check_model_config(model: torch.nn.Module, folder: Path) -> None:
    """Refuse weights saved from a model built with another config (another cell, other sizes),
    even where names and shapes happen to agree (e.g. a different number of attention heads)."""
    mine = _model_config(model)
    try:
        with safe_open(Path(folder) / "model.safetensors", "pt") as handle:
            stored = (handle.metadata() or {}).get(MODEL_CONFIG_KEY)
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"corrupt checkpoint {folder}/model.safetensors: {error}") from None
    if mine is None or stored is None:
        return  # a plain module, or a checkpoint written before the config was recorded
    try:
        theirs = json.loads(stored)
    except json.JSONDecodeError:
        raise UserError(f"corrupt checkpoint {folder}/model.safetensors: unreadable model config") from None
    if not isinstance(theirs, dict):
        raise UserError(f"corrupt checkpoint {folder}/model.safetensors: unreadable model config")
    differ = [
        f"{key}={theirs[key]!r} (checkpoint) vs {mine[key]!r} (config)"
        for key in sorted(set(theirs) & set(mine))
        if theirs[key] != mine[key]
    ]
    if differ:
        raise UserError(f"checkpoint {folder} was saved from another model: {', '.join(differ)}")


def load_state(folder: Path, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore the optimizer (if given); return (meta, rng tensors)."""
    try:
        tensors = load_file(Path(folder) / "state.safetensors")
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"corrupt checkpoint {folder}/state.safetensors: {error}") from None
    path = Path(folder) / "state.json"
    saved = read_json(path)
    if not (
        isinstance(saved, dict) and isinstance(saved.get("meta"), dict) and isinstance(saved.get("optimizer"), dict)
    ):
        raise UserError(f"corrupt checkpoint {path}: expected an object with 'meta' and 'optimizer'")
    meta = saved["meta"]
    if "phase" in meta:  # written by the trainer: it resumes from these
        good = (
            isinstance(meta["phase"], str)
            and isinstance(meta.get("step"), int)
            and meta["step"] >= 0
            and isinstance(meta.get("seconds", 0.0), (int, float))
        )
        if not good:
            raise UserError(f"corrupt checkpoint {path}: bad meta {meta}")
    if optimizer is not None and saved["optimizer"]:
        try:
            optimizer.load_state_dict(_unflatten_optimizer(tensors, saved["optimizer"]))
            for parameter, values in optimizer.state.items():
                for name, value in values.items():
                    if torch.is_tensor(value) and value.dim() and value.shape != parameter.shape:
                        raise ValueError(
                            f"{name} has shape {tuple(value.shape)}, its parameter {tuple(parameter.shape)}"
                        )
        except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as error:
            raise UserError(
                f"checkpoint {folder}: optimizer state does not fit this run ({type(error).__name__}: {error})"
            ) from None
    rng = {key[len("rng.") :]: value for key, value in tensors.items() if key.startswith("rng.")}
    return meta, rng
