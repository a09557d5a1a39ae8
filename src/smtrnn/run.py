"""A training run from one config: build the task and models, run the method's phases through the
trainer (resuming where a checkpoint says), evaluate the RNN alone, write result.json.

    config = RunConfig(task="retrieval", length=128, method="smt+dmt")
    result = run(config, "runs/retrieval-smt")
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from smtrnn import checkpoint, metrics
from smtrnn.config import RunConfig
from smtrnn.errors import UserError
from smtrnn.evaluate import evaluate_rnn, evaluate_teacher, length_generalisation, memory_diagnostics
from smtrnn.methods import depths, phases, planned_steps, uses_teacher
from smtrnn.models import Models
from smtrnn.tasks import make_task
from smtrnn.train import is_main_process, train


class Objective(nn.Module):
    """``objective(batch) -> (loss, metrics)``: a method's loss over the models, as a Module so the
    trainer (and DistributedDataParallel) can call it."""

    def __init__(self, models: Models, loss_fn, method_config):
        super().__init__()
        self.models, self.loss_fn, self.method_config = models, loss_fn, method_config

    def forward(self, batch: dict, step: int):
        return self.loss_fn(self.models, batch, self.method_config, step=step)


def evaluate_run(
    config: RunConfig, task, models: Models, length: int | None = None, batches: int | None = None, full: bool = False
) -> dict:
    """A trained run's scores on held-out sequences of ``length`` (default: the trained length): the RNN
    alone and, for the methods that train one, the teacher. ``full`` adds what result.json keeps: chance,
    memory diagnostics and, where the config asks, length generalisation."""
    length = length or config.length
    batches = batches or config.eval_batches
    getattr(task, "check_length", lambda _: None)(length)  # a user task need not subclass Task
    result = evaluate_rnn(models.rnn, task, length, batches, 64, config.seed, config.device)
    teacher_trained = uses_teacher(config)
    if teacher_trained:
        teacher = evaluate_teacher(models, task, length, max(1, batches // 2), 64, config.seed, config.device)
        teacher.pop("drift_curve")
        result.update(teacher)
    if full:
        trained = models if teacher_trained else models.rnn
        result["chance"] = getattr(task, "chance_accuracy", None)
        result["diagnostics"] = memory_diagnostics(trained, task, length, seed=config.seed, device=config.device)
        if config.length_generalisation:
            scores = length_generalisation(trained, task, length, seed=config.seed, device=config.device)
            result["generalisation"] = {str(factor): entry for factor, entry in scores.items()}
    return result


def build(config: RunConfig):
    task = make_task(config.task, **config.task_options)
    if hasattr(task, "check_length"):
        task.check_length(config.length)
    torch.manual_seed(config.seed)
    models = Models(config.model, task.vocab_size, task.num_classes).to(config.device)
    return task, models


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(config, task, models) of a finished or interrupted run, weights from its latest checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no run directory {run_dir}")
    config = RunConfig.from_dict(checkpoint.read_json(run_dir / "config.json"))
    config.device = device
    task, models = build(config)
    folder = checkpoint.latest_checkpoint(run_dir)
    if folder is None:
        raise UserError(f"run {run_dir} has no checkpoint yet")
    checkpoint.load_weights(models, folder)
    return config, task, models


EXTENSIBLE = (("train", "steps", "--steps"), ("dmt_train", "steps", "--dmt-steps"))


def _comparable(config: RunConfig) -> dict:
    """The config as saved to config.json, device aside (it may change between sessions)."""
    values = RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))).to_dict()
    values.pop("device")
    return values


def _extension(config: RunConfig, run_dir: Path) -> list[str] | None:
    """How ``config`` extends the run saved in ``run_dir`` (e.g. ["--steps 2000 -> 3000"]); None when it
    changes anything but a larger --steps / --dmt-steps. UserError when the extension cannot be honoured."""
    saved = RunConfig.from_dict(checkpoint.read_json(run_dir / "config.json"))
    mine, theirs = _comparable(config), _comparable(saved)
    changes = []
    for section, name, flag in EXTENSIBLE:
        old, new = theirs[section][name], mine[section][name]
        if new < old:
            return None  # fewer steps: a different run, not a longer one
        if new > old:
            changes.append(f"{flag} {old} -> {new}")
        theirs[section][name] = new
    if theirs != mine or not changes:
        return None
    latest = checkpoint.latest_checkpoint(run_dir)
    done_phase = checkpoint.load_state(latest, None)[0].get("phase") if latest is not None else None
    if config.method == "smt+dmt" and done_phase == "dmt" and config.train.steps > saved.train.steps:
        raise UserError(
            f"{run_dir}: SMT has finished and DMT started from it, so SMT cannot be extended; extend "
            "--dmt-steps, or train a new SMT run and fine-tune it with --method dmt --init"
        )
    return changes


def _prepare(config: RunConfig, run_dir: Path) -> None:
    """Create or check the run directory: a resumed run must have the same config, except that a larger
    --steps or --dmt-steps extends a run from its last checkpoint (the learning-rate schedule is then that
    of the new total: warm-up, cosine decay to the new last step)."""
    saved_path = run_dir / "config.json"
    if saved_path.exists() and not saved_config_matches(config, run_dir):
        changes = _extension(config, run_dir)
        if changes is None:
            raise UserError(
                f"{run_dir} holds a run with a different config; use another --out or the same arguments "
                "(only --steps and --dmt-steps may grow, to continue the run)"
            )
        if is_main_process():
            checkpoint.write_json(saved_path, config.to_dict())
            (run_dir / "result.json").unlink(missing_ok=True)  # the longer run's result replaces it at the end
            print(f"continuing {run_dir}: {', '.join(changes)}", file=sys.stderr)
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-test-")  # unique: ranks probe at once
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"cannot write to output directory {run_dir}: {error.strerror}") from None
    if not saved_path.exists() and is_main_process():
        checkpoint.write_json(saved_path, config.to_dict())


def saved_config_matches(config: RunConfig, run_dir: Path) -> bool | None:
    """Whether ``run_dir``'s config.json equals ``config`` (device aside); None when it has none yet.
    Fields added to RunConfig after the run was saved count as their defaults."""
    saved_path = Path(run_dir) / "config.json"
    if not saved_path.exists():
        return None
    return _comparable(RunConfig.from_dict(checkpoint.read_json(saved_path))) == _comparable(config)


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'smtrnn[tensorboard]'") from None
    return SummaryWriter


def tensorboard_writer(run_dir: Path):
    """(writer, hook): a TensorBoard SummaryWriter into RUN/tensorboard and a log hook that writes every
    logged number of a record as the scalar ``phase/key`` at its step."""
    writer = _summary_writer()(str(run_dir / "tensorboard"))

    def hook(record: dict) -> None:
        for key, value in record.items():
            if key not in ("phase", "step") and isinstance(value, (int, float)):
                writer.add_scalar(f"{record['phase']}/{key}", value, record["step"])
        writer.flush()

    return writer, hook


def run(
    config: RunConfig, run_dir: str | Path, progress: bool = True, sample_hook=None, tensorboard: bool = False
) -> dict:
    """Train (or resume) the run in ``run_dir`` and return its result (also in result.json).
    ``tensorboard``: also write the logged metrics as TensorBoard scalars under RUN/tensorboard."""
    config.validate()
    run_dir = Path(run_dir)
    if tensorboard:
        _summary_writer()  # a missing package is refused before the directory is touched
    # everything that can refuse the command runs before the directory is touched: a typo leaves nothing behind
    task, models = build(config)
    init_models = None
    if config.init and checkpoint.latest_checkpoint(run_dir) is None:
        init_config, _, init_models = load_run(config.init, config.device)
        if asdict(init_config.model) != asdict(config.model):
            raise UserError(f"--init {config.init} has a different model config")
    _prepare(config, run_dir)
    writer, log_hook = tensorboard_writer(run_dir) if tensorboard and is_main_process() else (None, None)
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is not None:
        checkpoint.load_weights(models, latest)
    elif init_models is not None:
        models.load_state_dict(init_models.state_dict())
    done_phase = checkpoint.load_state(latest, None)[0].get("phase") if latest is not None else None
    plan = phases(config)
    names = [phase.name for phase in plan]
    if latest is not None and done_phase not in names:
        raise UserError(f"checkpoint {latest} is from phase {done_phase!r}, not one of this run's ({', '.join(names)})")
    generator = torch.Generator().manual_seed(config.seed)

    def sample(gen: torch.Generator, batch_size: int, crop: int) -> dict:
        batch = task.sample(batch_size, config.length, gen)
        if sample_hook is not None:
            batch = sample_hook(batch)
        return {key: (value[:, :crop] if crop else value).to(config.device) for key, value in batch.items()}

    def evaluate() -> dict:
        scores = evaluate_rnn(models.rnn, task, config.length, 2, 64, config.seed, config.device)
        return {"eval_" + key: value for key, value in scores.items()}

    for index, phase in enumerate(plan):
        if done_phase in names and names.index(done_phase) > index:
            continue  # finished before the checkpoint we resumed from
        if phase.name == "dmt" and done_phase != "dmt":
            models.hand_off_initial_memory()  # DMT rolls out from m*_0 (not resumed: still exact)
        models.teacher.requires_grad_(phase.trains_teacher)
        models.rnn.requires_grad_(True)
        # the RNN leaves SMT starting exactly where the teacher's memories begin (in the final checkpoint)
        finish = models.hand_off_initial_memory if phase.name == "smt" else None
        train(
            Objective(models, phase.loss, phase.method_config),
            phase.parameters(models),
            functools.partial(sample, batch_size=phase.train(config).batch_size, crop=phase.crop),
            phase.train(config),
            model=models,
            phase=phase.name,
            earlier_phases=tuple(names[:index]),
            run_dir=run_dir,
            generator=generator,
            evaluate=evaluate,
            progress=progress,
            finish=finish,
            log_hook=log_hook,
        )
    models.requires_grad_(True)
    if writer is not None:
        writer.close()

    result = {
        "task": config.task,
        "length": config.length,
        "method": config.method,
        "cell": config.model.cell,
        "seed": config.seed,
        **depths(config),
    }
    result.update(evaluate_run(config, task, models, full=True))
    seconds = metrics.phase_seconds(run_dir)
    result["phase_seconds"] = {name: seconds.get(name, 0.0) for name in names}
    result["seconds"] = round(sum(result["phase_seconds"].values()), 3)
    result["steps"] = planned_steps(config)
    result["parameters"] = models.describe()
    if is_main_process():
        checkpoint.write_json(run_dir / "result.json", result)
    return result
