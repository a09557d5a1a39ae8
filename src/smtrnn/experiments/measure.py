"""Measurements taken once, right after a run finishes (in its worker), and kept in its directory as
``measure-<name>.json`` (images as ``samples.npz``), so that a study's rows and page are written from
files and never need a checkpoint.

- ``needle``: where a retrieval run loses the needle (smtrnn.probe): probes at lags after it, the
  rollout's error against t, the Jacobian's largest eigenvalues in the needle subspace;
- ``unrounded``: a grid run's RNN alone without rounding at run time;
- ``curve``: the periodic held-out scores of training against tokens seen and sequential compute;
- ``ages``: for a task whose labels were written some steps before they are asked for (stack: the
  popped symbol's push), accuracy by how long the label was held, the RNN alone and the teacher;
- ``lookup``: for key-value, readers fitted to name the query's value from the teacher's memory before
  the query (smtrnn.probe.lookup_probe): which kind of step could follow the teacher there;
- ``after_smt``: for a run of SMT then DMT, the RNN alone and the rungs from SMT's last checkpoint (kept
  beside DMT's): what DMT started from, so that a page can say what DMT added or took away;
- ``bytes``: for byte streams, the teacher's bits per byte from its memory alone, the byte frequencies'
  bits per byte, a text sample of the RNN alone, or images it draws (for image tasks).

    take(config, run_dir, ("needle",)); read(run_dir, ("needle",))  # {"probe": [...], ...}
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from smtrnn import checkpoint
from smtrnn.config import RunConfig
from smtrnn.evaluate import held_out_batches
from smtrnn.methods import uses_teacher
from smtrnn.methods.common import masked_cross_entropy
from smtrnn.run import load_run
from smtrnn.tasks.base import IGNORE

PROBE_LAGS = (0, 1, 3, 8, 16, 32, 64, 128, 256, 512)
TEXT_PROMPT = "She looked at him and said"
TEXT_STEPS, TEXT_TEMPERATURE = 300, 0.8
IMAGE_SAMPLES, IMAGE_TEMPERATURE = 16, 1.0
SAMPLES_FILE = "samples.npz"  # images drawn by the RNN: "rnn" from m_0, "rnn-primed", "teacher-primed"


def _file(folder: Path, name: str) -> Path:
    return Path(folder) / f"measure-{name}.json"


def needle(config: RunConfig, folder: Path) -> dict:
    """Where the run's rollout loses the needle (smtrnn.probe); nothing for a run without a teacher."""
    from smtrnn.probe import needle_probe, needle_stability, rollout_error_curve

    if not uses_teacher(config):
        return {}
    _, task, models = load_run(folder)
    lags = tuple(lag for lag in PROBE_LAGS if lag < config.length)
    # a tiny smoke model: a handful of sequences; long ones: fewer (the probes hold every memory at once)
    size = 64 if config.model.memory_size <= 8 else 2048 if config.length <= 256 else 512
    return {
        "probe": needle_probe(models, task, config.length, lags, train=size, test=size // 4),
        "error_curve": rollout_error_curve(models, task, config.length),
        "stability": needle_stability(models, task, config.length, count=16 if size > 64 else 2),
    }


def lookup(config: RunConfig, folder: Path) -> dict:
    """Key-value's one-step rung as a probe (smtrnn.probe.lookup_probe); {} for other tasks and for a
    run without a teacher."""
    from smtrnn.probe import lookup_probe

    if config.task != "kv" or not uses_teacher(config):
        return {}
    _, task, models = load_run(folder)
    if config.model.memory_size <= 8:  # a tiny smoke model: a handful of sequences and steps
        return {"lookup": lookup_probe(models, task, config.length, train=64, test=16, steps=2)}
    return {"lookup": lookup_probe(models, task, config.length)}


AFTER_SMT = ("accuracy", "one_step_accuracy", "readout_accuracy", "teacher_step_accuracy")


def after_smt(config: RunConfig, folder: Path) -> dict:
    """The scores of SMT's last checkpoint at the run's T, as ``smt_<score>`` (``AFTER_SMT``: the RNN
    alone, one cell step and the readout on the teacher's memories, the teacher one token ahead); {} for
    other methods and for a run that kept no SMT checkpoint."""
    from smtrnn.run import evaluate_run, read_run

    kept = sorted(Path(folder).glob("checkpoints/smt-*")) if config.method == "smt+dmt" else []
    if not kept:
        return {}
    loaded = read_run(kept[-1], config.device)
    scores = evaluate_run(config, loaded.task, loaded.models)
    return {f"smt_{key}": scores[key] for key in AFTER_SMT if key in scores}


@torch.no_grad()
def teacher_bits_per_byte(models, task, config: RunConfig) -> float:
    """The teacher's next-byte loss decoded from its memory m*_t alone (the ceiling SMT distils), on the
    first Tc tokens of the final evaluation's held-out crops: the longest prefix it learned."""
    models.eval()
    context, losses = config.smt.context or config.length, []
    for batch in held_out_batches(task, config.length, max(1, config.eval_batches // 2), 64, config.seed):
        x, y = batch["x"][:, :context], batch["y"][:, :context]
        memories = models.teacher.encode(x)[:, 1:].reshape(-1, config.model.memory_size)
        logits = models.teacher.decode(memories, x.new_zeros(memories.shape[0], 0))[:, 0]
        losses.append(masked_cross_entropy(logits, y.reshape(-1))[0].item())
    return sum(losses) / len(losses) / math.log(2)


def unigram_bits_per_byte(task) -> float:
    """Held-out bits per byte of the training split's byte frequencies (add-one): a context-free reference."""
    counts = np.bincount(task.tokens(), minlength=256) + 1.0
    held_out = np.bincount(task.evaluation().tokens(), minlength=256)
    return float(-(held_out * np.log2(counts / counts.sum())).sum() / held_out.sum())


def byte_stream(config: RunConfig, folder: Path) -> dict:
    """A byte-stream run's extras: the teacher's and the byte frequencies' bits per byte, and a text
    sample of the RNN alone; for image tasks, images it draws go to samples.npz."""
    from smtrnn.sampling import decode_text, sample_images, sample_sequences, text_tokens

    _, task, models = load_run(folder)
    models.eval()
    values: dict = {"unigram_bits_per_byte": unigram_bits_per_byte(task), "teacher_bits_per_byte": None}
    if uses_teacher(config):
        values["teacher_bits_per_byte"] = teacher_bits_per_byte(models, task, config)
    values["sample_text"] = None
    if getattr(task, "text", False):
        generator = torch.Generator().manual_seed(config.seed)
        prompt = text_tokens(TEXT_PROMPT)
        tokens = sample_sequences(models, prompt, TEXT_STEPS, 1, "rnn", TEXT_TEMPERATURE, generator)
        values.update(sample_text=decode_text(tokens[0].tolist()), sample_prompt=TEXT_PROMPT)
    if getattr(task, "image_shape", None):
        images = {}
        modes = [("rnn", False), ("rnn", True)] + ([("teacher", True)] if uses_teacher(config) else [])
        for mode, primed in modes:
            # the same seed everywhere: every method completes the same held-out top halves
            generator = torch.Generator().manual_seed(config.seed)
            count = IMAGE_SAMPLES // 2 if primed else IMAGE_SAMPLES
            rows = task.image_shape[0] // 2 if primed else 0
            drawn = sample_images(models, task, count, mode, rows, IMAGE_TEMPERATURE, generator)
            images[mode + ("-primed" if primed else "")] = np.asarray(drawn, dtype=np.uint8)
        np.savez_compressed(Path(folder) / SAMPLES_FILE, **images)  # type: ignore[arg-type]
    values["drew_images"] = bool(getattr(task, "image_shape", None))
    return values


def training_curve(config: RunConfig, folder: Path) -> dict:
    """The periodic held-out scores of the RNN alone (metrics.jsonl, ``--eval-every``) against the
    training tokens seen and the sequential compute spent (cell applications in series), and their
    totals over the run: per step, a phase reads batch x its crop tokens and runs its forward depth."""
    from smtrnn import metrics
    from smtrnn.methods import phases

    offsets, tokens, sequential = {}, 0, 0
    for phase in phases(config):
        train = phase.train(config)
        step_tokens = train.batch_size * (phase.crop or config.length)
        offsets[phase.name] = (tokens, sequential, step_tokens, phase.forward_depth)
        tokens, sequential = tokens + train.steps * step_tokens, sequential + train.steps * phase.forward_depth
    points = []
    for record in metrics.read(folder):
        if "eval_accuracy" in record:
            base_tokens, base_sequential, step_tokens, depth = offsets[record["phase"]]
            points.append(
                {
                    "phase": record["phase"],
                    "step": record["step"],
                    "tokens": base_tokens + record["step"] * step_tokens,
                    "sequential": base_sequential + record["step"] * depth,
                    "bits_per_byte": record.get("eval_bits_per_token"),
                    "accuracy": record.get("eval_accuracy"),
                    "teacher_accuracy": record.get("eval_teacher_accuracy"),
                }
            )
    return {"curve": points, "tokens": tokens, "sequential_compute": sequential}


def unrounded(config: RunConfig, folder: Path) -> dict:
    """A grid run's RNN alone with the cell not rounding at run time (what rounding adds); {} otherwise."""
    from smtrnn.evaluate import evaluate_rnn

    if not (config.model.grid_levels() and config.model.round_at_run_time):
        return {}
    _, task, models = load_run(folder)
    models.rnn.cell.round_at_run_time = False
    scores = evaluate_rnn(models.rnn, task, config.length, config.eval_batches, 64, config.seed)
    return {"accuracy_unrounded": scores["accuracy"]}


AGE_BINS = ((1, 4), (5, 16), (17, 64), (65, None))  # steps a label was held (None: no end)


@torch.no_grad()
def ages(config: RunConfig, folder: Path) -> dict:
    """Accuracy on held-out sequences by how long each label was held (``Task.label_ages``), per bin of
    AGE_BINS (``age_bins``): the share of labels in it (``age_share``), the RNN alone (``age_rnn``, but for a teacher
    trained alone) and the teacher's first prediction from m*_t (``age_teacher``, where the run has a
    trained one); {} for other tasks."""
    from smtrnn.evaluate import first_prediction_correct
    from smtrnn.tasks import load_task_class

    if not hasattr(load_task_class(config.task), "label_ages"):
        return {}
    _, task, models = load_run(folder)
    batches = list(held_out_batches(task, config.length, config.eval_batches, 64, config.seed))
    x, y = torch.cat([batch["x"] for batch in batches]), torch.cat([batch["y"] for batch in batches])
    held, labelled = task.label_ages(x), y != IGNORE
    correct = {}
    if config.method != "teacher":
        logits, _ = models.rnn(x)
        correct["rnn"] = logits.argmax(-1) == y
    if uses_teacher(config):
        correct["teacher"] = first_prediction_correct(models.teacher, models.teacher.encode(x), y)
    bins = [labelled & (held >= lo) & (held <= (hi or held.max())) for lo, hi in AGE_BINS]
    values: dict = {"age_bins": [list(bin) for bin in AGE_BINS]}
    values["age_share"] = [inside.sum().item() / max(1, labelled.sum().item()) for inside in bins]
    for name, right in correct.items():
        values[f"age_{name}"] = [right[inside].float().mean().item() if inside.any() else None for inside in bins]
    return values


MEASUREMENTS = {
    "needle": needle,
    "lookup": lookup,
    "bytes": byte_stream,
    "curve": training_curve,
    "unrounded": unrounded,
    "ages": ages,
    "after_smt": after_smt,
}


def take(config: RunConfig, folder: Path, names: tuple[str, ...]) -> None:
    """Take each named measurement of a finished run that its directory does not hold yet."""
    for name in names:
        if not _file(folder, name).exists():
            checkpoint.write_json(_file(folder, name), MEASUREMENTS[name](config, Path(folder)))


def read(folder: Path, names: tuple[str, ...]) -> dict:
    """The named measurements of a run, merged (a missing one adds nothing)."""
    values: dict = {}
    for name in names:
        if _file(folder, name).exists():
            values.update(checkpoint.read_json(_file(folder, name)))
    return values


def images(folder: Path) -> dict[str, np.ndarray]:
    """The images a run drew (see ``byte_stream``), by mode; {} when it drew none."""
    path = Path(folder) / SAMPLES_FILE
    if not path.exists():
        return {}
    with np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}
