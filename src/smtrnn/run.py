"""A training run from one config: build the task and models, run the method's phases through the
trainer (resuming where a checkpoint says), evaluate the RNN alone, write result.json.

    config = RunConfig(task="retrieval", length=128, method="smt+dmt")
    result = run(config, "runs/retrieval-smt")
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from smtrnn import checkpoint
from smtrnn.evaluate import evaluate_rnn, evaluate_teacher, length_generalisation, memory_diagnostics
from smtrnn.methods import BPTTConfig, DMTConfig, SMTConfig, bptt_loss, dmt_loss, smt_loss
from smtrnn.models import ModelConfig, Models
from smtrnn.tasks import make_task
from smtrnn.tasks.base import UserError
from smtrnn.train import TrainConfig, is_main_process, train

METHODS = ("smt", "dmt", "smt+dmt", "bptt", "tbptt")


@dataclass
class RunConfig:
    task: str = "retrieval"
    length: int = 64
    method: str = "smt+dmt"
    seed: int = 0
    device: str = "cpu"
    init: str | None = None  # a run directory to start from (``dmt`` fine-tunes an SMT run)
    task_options: dict = field(default_factory=dict)
    eval_batches: int = 8
    length_generalisation: bool = False  # also evaluate at 2T, 4T and 8T (into result.json)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # the main phase (smt, bptt, tbptt; dmt alone)
    # DMT: four times SMT's batch, so that the readout sees enough labels on the RNN's own memories
    dmt_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=128, lr=1e-3, warmup=20))
    smt: SMTConfig = field(default_factory=SMTConfig)
    dmt: DMTConfig = field(default_factory=DMTConfig)
    bptt: BPTTConfig = field(default_factory=BPTTConfig)

    def validate(self):
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.length < 1:
            raise UserError(f"length must be positive, got {self.length}")
        if self.method == "dmt" and not self.init:
            raise UserError("method dmt fine-tunes an SMT run: give --init DIR")
        if self.model.future > self.length:
            raise UserError(f"future length {self.model.future} is longer than the sequence ({self.length})")
        if self.smt.context < 0:
            raise UserError(f"smt context must be 0 (all prefixes) or positive, got {self.smt.context}")
        if self.smt.context and self.length < self.smt.context + self.model.future - 1:
            raise UserError(f"smt context {self.smt.context} with future {self.model.future} needs crops of length >= "
                            f"{self.smt.context + self.model.future - 1} (context + future - 1), got {self.length}")
        if self.dmt.every < 1 or self.dmt.truncate < 1:
            raise UserError("dmt every and truncate must be positive")
        if self.dmt.start not in ("initial", "teacher"):
            raise UserError(f"dmt start must be initial or teacher, got {self.dmt.start!r}")
        self.model.validate()
        self.train.validate()
        self.dmt_train.validate()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        nested = {f.name: f.default_factory for f in fields(cls) if f.name in
                  ("model", "train", "dmt_train", "smt", "dmt", "bptt")}
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserError(f"unknown config keys {sorted(unknown)}")
        kwargs = {}
        for key, value in values.items():
            if key in nested:
                sub_type = type(nested[key]())
                sub_known = {f.name for f in fields(sub_type)}
                if not isinstance(value, dict) or set(value) - sub_known:
                    raise UserError(f"bad config section {key!r}: {value}")
                kwargs[key] = sub_type(**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)


class Objective(nn.Module):
    """``objective(batch) -> (loss, metrics)``: a method's loss over the models, as a Module so the
    trainer (and DistributedDataParallel) can call it."""

    def __init__(self, models: Models, loss_fn, method_config):
        super().__init__()
        self.models, self.loss_fn, self.method_config = models, loss_fn, method_config

    def forward(self, batch):
        return self.loss_fn(self.models, batch, self.method_config)


def phases(config: RunConfig, models: Models) -> list[tuple]:
    """(name, loss function, method config, train config, parameters) for each phase in order."""
    everything, rnn_only = list(models.parameters()), list(models.rnn.parameters())
    tbptt = BPTTConfig(truncate=config.bptt.truncate or 16)
    table = {
        "smt": [("smt", smt_loss, config.smt, config.train, everything)],
        "dmt": [("dmt", dmt_loss, config.dmt, config.train, rnn_only)],
        "smt+dmt": [("smt", smt_loss, config.smt, config.train, everything),
                    ("dmt", dmt_loss, config.dmt, config.dmt_train, rnn_only)],
        "bptt": [("bptt", bptt_loss, BPTTConfig(truncate=0), config.train, rnn_only)],
        "tbptt": [("tbptt", bptt_loss, tbptt, config.train, rnn_only)],
    }
    return table[config.method]


def phase_crop(config: RunConfig, phase: str) -> int:
    """Tokens of each crop that a phase trains on (0 = all). A windowed SMT teacher (context Tc) never
    encoded a prefix longer than Tc, so its memories further into a crop would be untrained labels:
    DMT rolls out within the first Tc tokens of each crop."""
    return config.smt.context if phase == "dmt" else 0


def depths(config: RunConfig) -> dict:
    """Cell applications in series in one training step: on the gradient path and in the forward pass."""
    length = config.length
    dmt_length = phase_crop(config, "dmt") or length
    rollout = min(config.dmt.rollout or dmt_length, dmt_length)
    smt_length = config.smt.context or length
    horizon = min(max(1, config.smt.horizon), smt_length)
    burnin = min(config.smt.horizon_burnin, smt_length - horizon)
    per_phase = {"smt": (horizon, burnin + horizon), "dmt": (config.dmt.truncate, rollout), "bptt": (length, length),
                 "tbptt": (min(config.bptt.truncate or 16, length), length)}
    names = config.method.split("+")
    gradient = max(per_phase[name][0] for name in names)
    forward = {name: per_phase[name][1] for name in names}
    return {"sequential_depth": gradient, "forward_depth": forward}


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


def _phase_seconds(run_dir: Path) -> dict:
    seconds = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            seconds[record["phase"]] = record["seconds"]
    return seconds


def _prepare(config: RunConfig, run_dir: Path) -> None:
    """Create or check the run directory: a resumed run must have the same config."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=run_dir, prefix=".write-test-")  # unique: ranks probe at once
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"cannot write to output directory {run_dir}: {error.strerror}") from None
    saved_path = run_dir / "config.json"
    if saved_path.exists():
        if not saved_config_matches(config, run_dir):
            raise UserError(f"{run_dir} holds a run with a different config; use another --out or the same arguments")
    elif is_main_process():
        checkpoint.write_json(saved_path, config.to_dict())


def saved_config_matches(config: RunConfig, run_dir: Path) -> bool | None:
    """Whether ``run_dir``'s config.json equals ``config`` (device aside); None when it has none yet.
    Fields added to RunConfig after the run was saved count as their defaults."""
    saved_path = Path(run_dir) / "config.json"
    if not saved_path.exists():
        return None
    saved = RunConfig.from_dict(checkpoint.read_json(saved_path)).to_dict()
    mine = RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))).to_dict()
    return {k: v for k, v in saved.items() if k != "device"} == {k: v for k, v in mine.items() if k != "device"}


def run(config: RunConfig, run_dir: str | Path, progress: bool = True, sample_hook=None) -> dict:
    """Train (or resume) the run in ``run_dir`` and return its result (also in result.json)."""
    config.validate()
    run_dir = Path(run_dir)
    _prepare(config, run_dir)
    task, models = build(config)
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is not None:
        checkpoint.load_weights(models, latest)
    elif config.init:
        init_config, _, init_models = load_run(config.init, config.device)
        if asdict(init_config.model) != asdict(config.model):
            raise UserError(f"--init {config.init} has a different model config")
        models.load_state_dict(init_models.state_dict())
    done_phase = checkpoint.load_state(latest, None)[0].get("phase") if latest is not None else None
    plan = phases(config, models)
    names = [name for name, *_ in plan]
    if latest is not None and done_phase not in names:
        raise UserError(f"checkpoint {latest} is from phase {done_phase!r}, not one of this run's ({', '.join(names)})")
    generator = torch.Generator().manual_seed(config.seed)

    def sample(gen, batch_size, phase):
        batch = task.sample(batch_size, config.length, gen)
        if sample_hook is not None:
            batch = sample_hook(batch)
        crop = phase_crop(config, phase)
        return {key: (value[:, :crop] if crop else value).to(config.device) for key, value in batch.items()}

    for index, (name, loss_fn, method_config, train_config, parameters) in enumerate(plan):
        if done_phase in names and names.index(done_phase) > index:
            continue  # finished before the checkpoint we resumed from
        if name == "dmt" and done_phase != "dmt":
            models.hand_off_initial_memory()  # DMT rolls out from m*_0 (not resumed: still exact)
        for module, trains in ((models.teacher, name == "smt"), (models.rnn, True)):
            module.requires_grad_(trains)
        evaluate = lambda: {"eval_" + k: v for k, v in evaluate_rnn(models.rnn, task, config.length, 2, 64, config.seed, config.device).items()}
        # the RNN leaves SMT starting exactly where the teacher's memories begin (in the final checkpoint)
        finish = models.hand_off_initial_memory if name == "smt" else None
        train(Objective(models, loss_fn, method_config), parameters,
              lambda gen, size=train_config.batch_size, phase=name: sample(gen, size, phase), train_config,
              model=models, phase=name, earlier_phases=tuple(names[:index]), run_dir=run_dir,
              generator=generator, evaluate=evaluate, progress=progress, finish=finish)
    models.requires_grad_(True)

    result = {"task": config.task, "length": config.length, "method": config.method, "cell": config.model.cell,
              "seed": config.seed, **depths(config)}
    rnn_metrics = evaluate_rnn(models.rnn, task, config.length, config.eval_batches, 64, config.seed, config.device)
    result.update(rnn_metrics)
    if config.method != "bptt" and config.method != "tbptt":
        teacher_metrics = evaluate_teacher(models, task, config.length, max(1, config.eval_batches // 2), 64, config.seed, config.device)
        teacher_metrics.pop("drift_curve")
        result.update(teacher_metrics)
    result["chance"] = getattr(task, "chance_accuracy", None)
    trained = models.rnn if config.method in ("bptt", "tbptt") else models  # BPTT's teacher is never trained
    result["diagnostics"] = memory_diagnostics(trained, task, config.length, seed=config.seed, device=config.device)
    if config.length_generalisation:
        result["generalisation"] = {str(factor): entry for factor, entry in
                                    length_generalisation(trained, task, config.length, seed=config.seed,
                                                          device=config.device).items()}
    seconds = _phase_seconds(run_dir)
    result["phase_seconds"] = {name: seconds.get(name, 0.0) for name in names}
    result["seconds"] = round(sum(result["phase_seconds"].values()), 3)
    result["steps"] = sum(train_config.steps for _, _, _, train_config, _ in plan)
    result["parameters"] = models.describe()
    if is_main_process():
        checkpoint.write_json(run_dir / "result.json", result)
    return result
