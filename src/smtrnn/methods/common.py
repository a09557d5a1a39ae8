"""Loss pieces shared by the methods."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from smtrnn.tasks.base import IGNORE


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None):
    """Mean cross-entropy over labelled positions (targets != -1), and the accuracy there.

    Returns zeros (with a gradient path) when nothing is labelled."""
    labelled = targets != IGNORE
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_targets = targets.reshape(-1)
    losses = F.cross_entropy(flat_logits, flat_targets.clamp(min=0), reduction="none").reshape(targets.shape)
    mask = labelled.float() if weights is None else labelled.float() * weights
    total = mask.sum()
    loss = (losses * mask).sum() / total.clamp(min=1e-9)
    correct = (logits.argmax(-1) == targets) & labelled
    accuracy = correct.sum().float() / labelled.sum().clamp(min=1)
    return loss, accuracy.detach()


def uniformity(memories: torch.Tensor, tokens: int, samples: int = 512) -> torch.Tensor:
    """log mean_{a != b} exp(-2 ||u_a - u_b||^2) over unit-normalised memory tokens (Wang & Isola).

    ``memories`` [..., M] are split into ``tokens`` tokens each; at most ``samples`` tokens are used."""
    units = F.normalize(memories.reshape(-1, memories.shape[-1] // tokens), dim=-1)
    if units.shape[0] > samples:
        units = units[torch.randperm(units.shape[0], device=units.device)[:samples]]
    count = units.shape[0]
    if count < 2:
        return units.sum() * 0
    squared_distance = (2 - 2 * units @ units.T).clamp(min=0)
    off_diagonal = ~torch.eye(count, dtype=torch.bool, device=units.device)
    return torch.logsumexp(-2 * squared_distance[off_diagonal], 0) - math.log(count * (count - 1))


def memory_spread(memories: torch.Tensor) -> torch.Tensor:
    """Mean variance of memory elements across all memories (of all sequences and time steps)."""
    flat = memories.reshape(-1, memories.shape[-1])
    return (flat - flat.mean(0)).pow(2).mean()


def relative_memory_error(predicted: torch.Tensor, target: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Mean squared error per memory element divided by the spread of the teacher's memories: the
    fraction of the memories' variation that the prediction misses (1 - R^2).

    Normalised by the spread, not the raw scale, so the teacher cannot shrink the dynamics loss by
    shrinking its memories or by collapsing them onto one point: an absolute MSE rewards both, while
    the relative one-step error, which is what compounds along a rollout, stays as large as before."""
    return (predicted - target).pow(2).mean() / spread.clamp(min=1e-8)


def first_prediction_logits(teacher, memories: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The teacher's first decoder prediction, y_t from m*_t alone (memories [B, T+1, M]), at the
    labelled positions of ``y`` [B, T], in their order: logits [N, C]. Only labelled positions are
    decoded: far less work on sparse-label tasks."""
    chosen = memories[:, 1:][y != IGNORE]
    return teacher.decode(chosen, y.new_zeros(chosen.shape[0], 0))[:, 0]


def next_prediction_logits(teacher, memories: torch.Tensor, next_inputs: torch.Tensor) -> torch.Tensor:
    """The teacher's second decoder prediction: the label after the next input, from memories [N, M]
    and those inputs [N], as logits [N, C]. It answers what one cell step from the memory must answer,
    and the decoder is trained on it where the window Tf >= 2."""
    return teacher.decode(memories, next_inputs[:, None])[:, 1]
