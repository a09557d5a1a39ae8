"""Where a retrieval run loses the needle (rungs 4 and 5 of the debugging ladder, docs/method.md):

- ``needle_probe``: a linear probe reads the needle from memories at a lag after it was written, for
  the teacher's memory m*_t, one cell step from the teacher f(m*_{t-1}, x_t), and the RNN's own
  rollout m^_t. Held-out sequences; the probe is fitted on one set and scored on another.
- ``rollout_error_curve``: the relative error ||m^_t - m*_t||^2 / spread of the RNN's own rollout
  from m_0, at each t: where the rollout departs.
- ``needle_stability``: the largest eigenvalues of the cell's Jacobian d f(m, x) / d m along the
  teacher's trajectory after the needle, and how much of each eigenvector lies in the subspace
  where the teacher stores the needle. An eigenvalue above 1 there means a stored value is unstable:
  a small error in it grows at every step of the RNN's own rollout.

Needle retrieval only (the task of the horizon study): the needle is the token after the marker.
"""

from __future__ import annotations

import torch

from smtrnn.errors import UserError
from smtrnn.methods.common import memory_spread

PROBE_SEED = 5  # probe sequences: a stream apart from training (and from evaluate.py's)


def _retrieval(task) -> None:
    if getattr(task, "name", None) != "retrieval":
        raise UserError(f"the needle probes need the retrieval task, not {getattr(task, 'name', task)!r}")


def _sample(task, count: int, length: int, generator: torch.Generator, device):
    batch = task.sample(count, length, generator)
    x = batch["x"].to(device)
    marker = (x == task.values).float().argmax(1)  # the needle is at marker + 1
    return x, batch["y"][:, -1].to(device), marker


@torch.no_grad()
def _memories(models, x):
    teacher = models.teacher.encode(x)
    return teacher[:, 1:], models.rnn.cell.step(teacher[:, :-1], x), models.rnn.cell.rollout(x)


def _fit_probe(
    train: torch.Tensor,
    labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    classes: int,
    steps: int = 300,
) -> float:
    """Accuracy on ``test`` of a linear classifier fitted (Adam, standardised inputs) on ``train``."""
    with torch.enable_grad():
        generator = torch.Generator().manual_seed(0)
        linear = torch.nn.Linear(train.shape[-1], classes).to(train.device)
        with torch.no_grad():
            linear.weight.copy_(0.01 * torch.randn(linear.weight.shape, generator=generator))
        optimizer = torch.optim.Adam(linear.parameters(), 1e-2)
        mean, std = train.mean(0), train.std(0) + 1e-6
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(linear((train - mean) / std), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (linear((test - mean) / std).argmax(-1) == test_labels).float().mean().item()


@torch.no_grad()
def needle_probe(
    models, task, length: int, lags=(0, 1, 3, 8, 16, 32), train: int = 2048, test: int = 512, device="cpu"
) -> list[dict]:
    """Per lag L: {"lag", "teacher", "one_step", "rollout"}, probe accuracies on memories L steps after
    the needle (clamped to the last step)."""
    _retrieval(task)
    models.eval()
    generator = torch.Generator().manual_seed(PROBE_SEED)
    sets = []
    for count in (train, test):
        x, needle, marker = _sample(task, count, length, generator, device)
        sets.append((_memories(models, x), needle, marker))
    rows = []
    for lag in lags:
        picked = []
        for memories, _needle, marker in sets:
            index = (marker + 1 + lag).clamp(max=length - 1)
            every = torch.arange(len(index), device=index.device)
            picked.append([memory[every, index] for memory in memories])
        scores = [_fit_probe(picked[0][k], sets[0][1], picked[1][k], sets[1][1], task.num_classes) for k in range(3)]
        rows.append({"lag": lag, "teacher": scores[0], "one_step": scores[1], "rollout": scores[2]})
    return rows


@torch.no_grad()
def rollout_error_curve(models, task, length: int, count: int = 256, device="cpu") -> list[float]:
    """Relative error of the RNN's own rollout from m_0 against the teacher, at each t = 1..T."""
    models.eval()
    generator = torch.Generator().manual_seed(PROBE_SEED)
    x = task.sample(count, length, generator)["x"].to(device)
    teacher = models.teacher.encode(x)[:, 1:]
    rollout = models.rnn.cell.rollout(x)
    return ((rollout - teacher).pow(2).mean((0, 2)) / memory_spread(teacher)).tolist()


def needle_stability(models, task, length: int, count: int = 16, top: int = 3, device="cpu") -> dict:
    """Top ``top`` Jacobian eigenvalues (by modulus) of the cell on the teacher's trajectory, at the
    middle of the span after the latest needle and before the query, averaged over ``count`` sequences:
    {"moduli": [...], "needle_share": [...]} (share of each eigenvector's real part in the span of the
    needle's class means, which has values - 1 dimensions)."""
    _retrieval(task)
    models.eval()
    generator = torch.Generator().manual_seed(PROBE_SEED)
    x, needle, marker = _sample(task, 512, length, generator, device)
    with torch.no_grad():
        teacher = models.teacher.encode(x)
    after = torch.arange(length, device=x.device).unsqueeze(0) > (marker + 1).unsqueeze(1)  # [B, T]
    memories = teacher[:, 1:]
    centre = memories[after].mean(0)
    means = torch.stack(
        [memories[(needle == value).unsqueeze(1) & after].mean(0) - centre for value in range(task.values)]
    )
    basis = torch.linalg.qr(means.T)[0][:, : task.values - 1]  # where the teacher stores the needle
    step = (length // 2 + length - 1) // 2  # after every needle (first half), before the query (last step)
    cell = models.rnn.cell
    moduli, shares = [], []
    for row in range(count):
        jacobian = torch.autograd.functional.jacobian(lambda m: cell.step(m, x[row, step]), teacher[row, step])
        values, vectors = torch.linalg.eig(jacobian)
        order = values.abs().argsort(descending=True)[:top]
        moduli.append(values[order].abs())
        real = vectors[:, order].real
        shares.append((basis.T @ (real / real.norm(dim=0))).pow(2).sum(0))
    return {"moduli": torch.stack(moduli).mean(0).tolist(), "needle_share": torch.stack(shares).mean(0).tolist()}
