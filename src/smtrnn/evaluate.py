"""Evaluation: the RNN on its own (the headline), the teacher (the ceiling), and the rungs between
them (SMT.md sections 9 and 10): readout on teacher memories, one-step accuracy, rollout drift.

Evaluation data come from a generator seeded apart from training (a held-out stream).
"""
from __future__ import annotations

import math

import torch

from smtrnn.methods.common import masked_cross_entropy

EVAL_SEED_OFFSET = 1_000_003  # evaluation streams never share a seed with training streams


def _batches(task, length, batches, batch_size, seed):
    generator = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    task = task.evaluation() if hasattr(task, "evaluation") else task  # a dataset's held-out split
    for _ in range(batches):
        yield task.sample(batch_size, length, generator)


def _mean(records: list[dict]) -> dict:
    return {key: sum(r[key] for r in records) / len(records) for key in records[0]}


@torch.no_grad()
def evaluate_rnn(rnn, task, length: int, batches: int = 8, batch_size: int = 64, seed: int = 0, device="cpu") -> dict:
    """Teacher-free: the RNN rolls out from its own m_0 over the whole sequence."""
    rnn.eval()
    records = []
    for batch in _batches(task, length, batches, batch_size, seed):
        x, y = batch["x"].to(device), batch["y"].to(device)
        logits, _ = rnn(x)
        loss, accuracy = masked_cross_entropy(logits, y)
        records.append({"accuracy": accuracy.item(), "loss": loss.item()})
    result = _mean(records)
    result["bits_per_token"] = result["loss"] / math.log(2)
    return result


@torch.no_grad()
def evaluate_teacher(models, task, length: int, batches: int = 4, batch_size: int = 64, seed: int = 0, device="cpu") -> dict:
    """The rungs of SMT.md section 10, each as one number (drift also as a curve over t)."""
    models.eval()
    rnn, teacher = models.rnn, models.teacher
    records, drift_curve = [], None
    for batch in _batches(task, length, batches, batch_size, seed):
        x, y = batch["x"].to(device), batch["y"].to(device)
        memories = teacher.encode(x)
        # 1. teacher: first decoder prediction from m*_t alone
        flat = memories[:, 1:].reshape(-1, memories.shape[-1])
        first = teacher.decode(flat, x.new_zeros(flat.shape[0], 0))
        _, teacher_accuracy = masked_cross_entropy(first[:, 0], y.reshape(-1))
        # 2. RNN readout on teacher memories; 3. on one cell step from teacher memories
        _, readout_accuracy = masked_cross_entropy(rnn.logits(memories[:, 1:]), y)
        _, one_step_accuracy = masked_cross_entropy(rnn.logits(rnn.cell.step(memories[:, :-1], x)), y)
        # 4. drift of the RNN's own rollout from the teacher's memories
        rollout = rnn.cell.rollout(x)
        drift = (rollout - memories[:, 1:]).pow(2).sum(-1).sqrt().mean(0)
        drift_curve = drift if drift_curve is None else drift_curve + drift
        scale = memories[:, 1:].pow(2).sum(-1).sqrt().mean()
        records.append({"teacher_accuracy": teacher_accuracy.item(), "readout_accuracy": readout_accuracy.item(),
                        "one_step_accuracy": one_step_accuracy.item(), "drift": drift.mean().item(),
                        "drift_final": drift[-1].item(), "memory_norm": scale.item()})
    result = _mean(records)
    result["drift_curve"] = (drift_curve / batches).tolist()
    return result
