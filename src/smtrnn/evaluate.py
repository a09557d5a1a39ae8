"""Evaluation: the RNN on its own (the headline), the teacher (the ceiling), and the rungs between
them (docs/method.md sections 8 and 9): readout on teacher memories, one-step accuracy, rollout drift; length
generalisation; memory collapse (effective rank, pairwise distance).

Evaluation data come from a generator seeded apart from training (a held-out stream).
"""

from __future__ import annotations

import math

import torch

from smtrnn.errors import UserError
from smtrnn.methods.common import first_prediction_logits, masked_cross_entropy, next_prediction_logits
from smtrnn.tasks.base import IGNORE

EVAL_SEED_OFFSET = 1_000_003  # evaluation streams never share a seed with training streams


def held_out_batches(task, length: int, batches: int, batch_size: int, seed: int):
    """The evaluation's batches: the held-out split (or stream), from a generator seeded apart from training."""
    generator = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    task = task.evaluation() if hasattr(task, "evaluation") else task  # a dataset's held-out split
    for _ in range(batches):
        yield task.sample(batch_size, length, generator)


def _mean(records: list[dict], weights: list[int] | None = None) -> dict:
    """Per-key mean over batches; with ``weights`` (labelled positions per batch) every labelled position
    counts once, so a batch without labels counts for nothing (0 when no batch has any)."""
    weights = weights or [1] * len(records)
    total = sum(weights)
    return {key: sum(r[key] * w for r, w in zip(records, weights)) / total if total else 0.0 for key in records[0]}


def _labels(y: torch.Tensor) -> int:
    return int((y != IGNORE).sum())


@torch.no_grad()
def evaluate_rnn(rnn, task, length: int, batches: int = 8, batch_size: int = 64, seed: int = 0, device="cpu") -> dict:
    """Teacher-free: the RNN rolls out from its own m_0 over the whole sequence."""
    rnn.eval()
    records, labels = [], []
    for batch in held_out_batches(task, length, batches, batch_size, seed):
        x, y = batch["x"].to(device), batch["y"].to(device)
        logits, _ = rnn(x)
        loss, accuracy = masked_cross_entropy(logits, y)
        records.append({"accuracy": accuracy.item(), "loss": loss.item()})
        labels.append(_labels(y))
    result = _mean(records, labels)
    result["bits_per_token"] = result["loss"] / math.log(2)
    return result


def first_prediction_correct(teacher, memories: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether the teacher's first decoder prediction is right at each position [B, T] (False where
    unlabelled)."""
    labelled = y != IGNORE
    correct = torch.zeros_like(labelled)
    if labelled.any():
        correct[labelled] = first_prediction_logits(teacher, memories, y).argmax(-1) == y[labelled]
    return correct


def first_prediction_accuracy(teacher, memories: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of the teacher's first decoder prediction over the labelled positions."""
    labelled = y != IGNORE
    if not labelled.any():
        return memories.new_zeros(())
    return first_prediction_correct(teacher, memories, y)[labelled].float().mean()


@torch.no_grad()
def teacher_accuracy(teacher, task, length: int, batches: int = 2, batch_size: int = 64, seed: int = 0, device="cpu"):
    """The teacher's first-prediction accuracy on held-out sequences (per labelled position)."""
    was_training = teacher.training
    teacher.eval()
    scores, labels = [], []
    for batch in held_out_batches(task, length, batches, batch_size, seed):
        x, y = batch["x"].to(device), batch["y"].to(device)
        scores.append({"teacher_accuracy": first_prediction_accuracy(teacher, teacher.encode(x), y).item()})
        labels.append(_labels(y))
    teacher.train(was_training)
    return _mean(scores, labels)["teacher_accuracy"]


@torch.no_grad()
def evaluate_teacher(
    models, task, length: int, batches: int = 4, batch_size: int = 64, seed: int = 0, device="cpu"
) -> dict:
    """The rungs of docs/method.md section 8, each as one number (drift also as a curve over t)."""
    models.eval()
    rnn, teacher = models.rnn, models.teacher
    records, scored, labels, drift_curve = [], [], [], None
    for batch in held_out_batches(task, length, batches, batch_size, seed):
        x, y = batch["x"].to(device), batch["y"].to(device)
        memories = teacher.encode(x)
        # 1. the teacher: its first prediction's loss (bits per labelled token) and accuracy, decoded once
        labelled = y != IGNORE
        teacher_loss, teacher_accuracy = (
            masked_cross_entropy(first_prediction_logits(teacher, memories, y), y[labelled])
            if labelled.any()
            else (memories.new_zeros(()), memories.new_zeros(()))
        )
        # 1b. the teacher one token ahead: y_t from m*_{t-1} and x_t (its decoder's second prediction), what
        # one cell step from m*_{t-1} must match; its decoder is trained on it where the window Tf >= 2
        ahead = {}
        if teacher.config.future >= 2 and labelled.any():
            logits = next_prediction_logits(teacher, memories[:, :-1][labelled], x[labelled])
            ahead_loss, ahead_accuracy = masked_cross_entropy(logits, y[labelled])
            ahead = {
                "teacher_step_accuracy": ahead_accuracy.item(),
                "teacher_step_bits_per_token": ahead_loss.item() / math.log(2),
            }
        # 2. RNN readout on teacher memories; 3. on one cell step from teacher memories
        readout_loss, readout_accuracy = masked_cross_entropy(rnn.logits(memories[:, 1:]), y)
        one_step_loss, one_step_accuracy = masked_cross_entropy(rnn.logits(rnn.cell.step(memories[:, :-1], x)), y)
        # 4. drift of the RNN's own rollout from the teacher's memories
        rollout = rnn.cell.rollout(x)
        drift = (rollout - memories[:, 1:]).pow(2).sum(-1).sqrt().mean(0)
        drift_curve = drift if drift_curve is None else drift_curve + drift
        scale = memories[:, 1:].pow(2).sum(-1).sqrt().mean()
        scored.append(
            {
                "teacher_accuracy": teacher_accuracy.item(),
                "teacher_bits_per_token": teacher_loss.item() / math.log(2),
                **ahead,
                "readout_accuracy": readout_accuracy.item(),
                "readout_bits_per_token": readout_loss.item() / math.log(2),
                "one_step_accuracy": one_step_accuracy.item(),
                "one_step_bits_per_token": one_step_loss.item() / math.log(2),
            }
        )
        labels.append(_labels(y))
        records.append(
            {
                "drift": drift.mean().item(),
                "drift_final": drift[-1].item(),
                "memory_norm": scale.item(),
            }
        )
    result = {**_mean(scored, labels), **_mean(records)}  # accuracies per labelled position, drift per batch
    assert drift_curve is not None  # batches >= 1
    result["drift_curve"] = (drift_curve / batches).tolist()
    return result


def _networks(models_or_rnn):
    """(rnn, teacher or None): Models carry a trained teacher; an RNN alone (a BPTT run) has none."""
    teacher = getattr(models_or_rnn, "teacher", None)
    return (models_or_rnn.rnn if teacher is not None else models_or_rnn), teacher


@torch.no_grad()
def length_generalisation(
    models_or_rnn,
    task,
    length: int,
    factors=(2, 4, 8),
    batches: int = 2,
    batch_size: int = 8,
    seed: int = 0,
    device="cpu",
) -> dict:
    """Trained at ``length``, tested at factor * length (docs/method.md section 9): per factor
    ``{"length", "rnn": teacher-free accuracy, "teacher": first-prediction accuracy or None}``, or None
    where the task refuses that length. Pass Models to include the teacher, an RNN alone for BPTT runs.
    Small batches by default: at 8T the teacher's attention costs O((8T)^2) per sequence."""
    rnn, teacher = _networks(models_or_rnn)
    rnn.eval()
    results: dict[int, dict | None] = {}
    for factor in factors:
        longer = factor * length
        try:
            getattr(task, "check_length", lambda _: None)(longer)
        except UserError:
            results[factor] = None
            continue
        rnn_accuracy = evaluate_rnn(rnn, task, longer, batches, batch_size, seed, device)["accuracy"]
        entry = {"length": longer, "rnn": rnn_accuracy, "teacher": None}
        if teacher is not None:
            teacher.eval()
            accuracies, labels = [], []
            for batch in held_out_batches(task, longer, batches, batch_size, seed):  # the sequences the RNN saw
                x, y = batch["x"].to(device), batch["y"].to(device)
                accuracies.append({"teacher": first_prediction_accuracy(teacher, teacher.encode(x), y).item()})
                labels.append(_labels(y))
            entry["teacher"] = _mean(accuracies, labels)["teacher"]
        results[factor] = entry
    return results


def effective_rank(matrix: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred [N, M] matrix (Roy & Vetterli):
    about M for rows spread over all M directions, 1 for rows on a line, 0 when all rows coincide."""
    matrix = matrix.detach().double()
    singular = torch.linalg.svdvals(matrix - matrix.mean(0, keepdim=True))
    total = singular.sum()
    if total <= 1e-6 * matrix.norm():  # rows equal up to rounding: what centring leaves is noise, not spread
        return 0.0
    share = singular[singular > 0] / total
    return math.exp(-(share * share.log()).sum().item())


def mean_pairwise_distance(matrix: torch.Tensor, samples: int = 512, seed: int = 0) -> float:
    """Mean Euclidean distance between two different rows of [N, M], over at most ``samples`` random
    rows: it falls towards 0 as memories collapse onto one point."""
    if matrix.shape[0] > samples:
        matrix = matrix[torch.randperm(matrix.shape[0], generator=torch.Generator().manual_seed(seed))[:samples]]
    count = matrix.shape[0]
    if count < 2:
        return 0.0
    distances = torch.cdist(matrix.double(), matrix.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return (distances.sum() / (count * (count - 1))).item()  # the diagonal is zero


@torch.no_grad()
def memory_diagnostics(
    models_or_rnn, task, length: int, batches: int = 2, batch_size: int = 32, seed: int = 0, device="cpu"
) -> dict:
    """Memory collapse and drift (docs/method.md sections 8 and 9): effective rank and mean pairwise distance
    of the RNN's own rollout memories m^_t and, given Models, of the teacher's m*_t, plus the rollout
    drift mean ||m^_t - m*_t||, also relative to the mean teacher memory norm. An RNN alone (BPTT)
    reports its own side only."""
    rnn, teacher = _networks(models_or_rnn)
    rnn.eval()
    rollouts: list[torch.Tensor] = []
    experts: list[torch.Tensor] = []
    for batch in held_out_batches(task, length, batches, batch_size, seed):
        x = batch["x"].to(device)
        rollouts.append(rnn.cell.rollout(x).flatten(0, 1).cpu())
        if teacher is not None:
            teacher.eval()
            experts.append(teacher.encode(x)[:, 1:].flatten(0, 1).cpu())
    rollout = torch.cat(rollouts)
    result = {
        "rnn_effective_rank": effective_rank(rollout),
        "rnn_pairwise_distance": mean_pairwise_distance(rollout, seed=seed),
    }
    if teacher is None:
        return result
    expert = torch.cat(experts)
    drift = (rollout - expert).norm(dim=-1).mean().item()
    result.update(
        teacher_effective_rank=effective_rank(expert),
        teacher_pairwise_distance=mean_pairwise_distance(expert, seed=seed),
        drift=drift,
        relative_drift=drift / max(expert.norm(dim=-1).mean().item(), 1e-12),
    )
    return result
