"""A training run from one config: build the task and models, run the method's phases through the
trainer (resuming where a checkpoint says), evaluate the RNN alone, write result.json.

    config = RunConfig(task="retrieval", length=128, method="smt+dmt")
    result = run(config, "runs/retrieval-smt")
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smtrnn import checkpoint, distributed, interrupt, metrics, rundir, task_record
from smtrnn.config import RunConfig, check_device, option_name
from smtrnn.errors import UserError
from smtrnn.evaluate import evaluate_rnn, evaluate_teacher, length_generalisation, memory_diagnostics, teacher_accuracy
from smtrnn.methods import depths, phases, planned_steps, uses_teacher
from smtrnn.methods.smt import sequence_length
from smtrnn.models import Models
from smtrnn.tasks import make_task
from smtrnn.tasks.files import file_form
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
        task.check_length(config.trained_length())
    return task, build_models(config, task)


def build_models(config: RunConfig, task) -> Models:
    torch.manual_seed(config.seed)
    return Models(config.model, task.vocab_size, task.num_classes).to(config.device)


@dataclass
class LoadedRun:
    """A run read back from its directory: its config, its task (a ``RecordedTask`` that reads the data
    only when a sequence is drawn), its models with the weights of ``checkpoint`` (that checkpoint's
    meta: phase, step) and whether those are the finished run's final weights (result.json)."""

    config: RunConfig
    task: Any
    models: Models
    checkpoint: dict
    finished: bool


def checkpoint_folder(path: str | Path) -> tuple[Path, Path | None]:
    """(run directory, checkpoint folder or None): ``path`` is a run directory (its latest checkpoint is
    meant) or one of its checkpoint folders, RUN/checkpoints/NAME (e.g. the last of its SMT phase, which a
    run of SMT then DMT keeps beside DMT's)."""
    path = Path(path)
    if path.parent.name == "checkpoints" and (path / "model.safetensors").is_file():
        return path.parent.parent, path
    return path, None


def read_run(run_dir: str | Path, device: str = "cpu", data: str | None = None) -> LoadedRun:
    """A finished or interrupted run, weights from its latest checkpoint (or from the checkpoint folder
    ``run_dir`` names, see ``checkpoint_folder``), built from its task.json without reading its data;
    ``data``: the new place of a data file that moved (same sha256)."""
    run_dir, folder = checkpoint_folder(run_dir)
    check_device(device)
    if not run_dir.is_dir():
        raise UserError(f"no run directory {run_dir}")
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not an smtrnn run directory (it has no config.json)")
    config = RunConfig.from_dict(checkpoint.read_json(run_dir / "config.json"))
    config.device = device
    record = task_record.read(run_dir)
    task: Any
    if record is None:  # a run from before task.json: its task is built (and its data read) now
        task = make_task(task_record.located({"task": config.task}, data), **config.task_options)
    else:
        task = task_record.RecordedTask(record, config.task_options, data)
    models = build_models(config, task)
    if folder is None:
        meta = _load_latest(models, run_dir)
        finished = (run_dir / "result.json").is_file()
    else:
        checkpoint.load_weights(models, folder)
        meta = checkpoint.load_state(folder, None)[0]
        finished = (run_dir / "result.json").is_file() and folder == checkpoint.latest_checkpoint(run_dir)
    return LoadedRun(config, task, models, meta, finished)


def _load_latest(models: Models, run_dir: Path) -> dict:
    """Load the latest checkpoint's weights into ``models`` and return its meta. A run in progress may
    replace its checkpoint while it is being read: then the new one is read."""
    for attempt in range(3):
        try:
            folder = checkpoint.latest_checkpoint(run_dir)
            if folder is None:
                break
            checkpoint.load_weights(models, folder)
            return checkpoint.load_state(folder, None)[0]
        except UserError:
            if attempt == 2:
                raise
    raise UserError(f"run {run_dir} has no checkpoint yet")


def load_run(run_dir: str | Path, device: str = "cpu", data: str | None = None):
    """(config, task, models) of a finished or interrupted run (see ``read_run``)."""
    loaded = read_run(run_dir, device, data)
    return loaded.config, loaded.task, loaded.models


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
    config: RunConfig,
    run_dir: str | Path,
    progress: bool = True,
    sample_hook=None,
    tensorboard: bool = False,
    on_start: Callable[[], None] | None = None,
) -> dict:
    """Train (or resume) the run in ``run_dir`` and return its result (also in result.json).
    ``tensorboard``: also write the logged metrics as TensorBoard scalars under RUN/tensorboard.
    ``on_start``: called once every check has passed, just before training (a refused run never calls
    it). The run directory is locked while it runs; SIGINT or SIGTERM stops it with a checkpoint
    (``Interrupted``)."""
    config.validate()
    run_dir = Path(run_dir)
    if tensorboard:
        _summary_writer()  # a missing package is refused before the directory is touched
    # everything that can refuse the command runs before the directory is touched: a typo leaves nothing behind
    form = file_form(config.task)
    if form is not None and form[1] and not Path(form[1]).is_file() and task_record.read(run_dir) is not None:
        raise UserError(
            f"{config.task}: file not found; if this run's data moved, give --task {config.task.partition(':')[0]}:NEW_PATH"
        )
    task, models = build(config)
    record = task_record.describe(config.task, task)
    init_models = None
    if config.init and checkpoint.latest_checkpoint(run_dir) is None:
        init_config, _, init_models = load_run(config.init, config.device)
        theirs, ours = asdict(init_config.model), asdict(config.model)
        if theirs != ours:
            name = next(name for name in ours if theirs.get(name) != ours[name])
            raise UserError(
                f"--init {config.init} has a different model: it was trained with {option_name('model.' + name)}"
                f" {theirs.get(name)}, this run asks for {ours[name]} (give the same model options)"
            )
    rundir.create(run_dir)
    with contextlib.ExitStack() as held:
        if is_main_process():
            held.enter_context(rundir.locked(run_dir))  # before anything in it is read to decide or written
        held.enter_context(interrupt.caught())
        rundir.prepare(config, record, run_dir, is_main_process())
        writer, log_hook = tensorboard_writer(run_dir) if tensorboard and is_main_process() else (None, None)
        if writer is not None:
            held.callback(writer.close)
        latest = checkpoint.latest_checkpoint(run_dir)
        if latest is not None:
            checkpoint.load_weights(models, latest)
        elif init_models is not None:
            models.load_state_dict(init_models.state_dict())
        done_phase = checkpoint.load_state(latest, None)[0].get("phase") if latest is not None else None
        names = [phase.name for phase in phases(config)]
        if latest is not None and done_phase not in names:
            raise UserError(
                f"checkpoint {latest} is from phase {done_phase!r}, not one of this run's ({', '.join(names)})"
            )
        if on_start is not None:
            on_start()
        _train_phases(config, task, models, run_dir, done_phase, progress, sample_hook, log_hook)
        signum = distributed.max_over_ranks(interrupt.pending())
        if signum:
            raise interrupt.Interrupted(
                signum,
                f"interrupted ({interrupt.name(signum)}) after training, before the final evaluation; the "
                "checkpoint is saved, the same command evaluates it",
            )
        return _finish(config, task, models, run_dir)


def _train_phases(config: RunConfig, task, models: Models, run_dir: Path, done_phase, progress, sample_hook, log_hook):
    """Every phase of the run's method after ``done_phase`` (the phase of the checkpoint resumed from)."""
    plan = phases(config)
    names = [phase.name for phase in plan]
    generator = torch.Generator().manual_seed(config.seed)

    def sample(gen: torch.Generator, step: int, batch_size: int, crop: int, grows: bool) -> dict:
        shortest = getattr(task, "min_length", 1)  # a task of the user's need not subclass Task
        trained = config.trained_length()  # every phase trains at this length, the evaluation sees T
        length = sequence_length(config.smt, trained, step, shortest) if grows else trained
        batch = task.sample(batch_size, length, gen)
        if sample_hook is not None:
            batch = sample_hook(batch)
        return {key: (value[:, :crop] if crop else value).to(config.device) for key, value in batch.items()}

    def evaluate() -> dict:
        scores = evaluate_rnn(models.rnn, task, config.length, 2, 64, config.seed, config.device)
        if uses_teacher(config):
            scores["teacher_accuracy"] = teacher_accuracy(
                models.teacher, task, config.length, 2, 64, config.seed, config.device
            )
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
            functools.partial(
                sample,
                batch_size=phase.train(config).batch_size,
                crop=phase.crop,
                grows=phase.name in ("smt", "teacher") and not config.smt.context,
            ),
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


def _finish(config: RunConfig, task, models: Models, run_dir: Path) -> dict:
    """The trained run's result: its scores, times and sizes, written to result.json."""
    names = [phase.name for phase in phases(config)]
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
