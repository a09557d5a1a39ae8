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

- ``lookup_probe``: key-value's one-step rung as a probe (docs/kv-step.md). Readers of several kinds
  are fitted to name the query's value from the teacher's memory before the query, m*_{T-1}, and the
  query key: what a step from those memories would have to compute, and which kind of step can.
"""

from __future__ import annotations

import torch

from smtrnn.errors import UserError
from smtrnn.methods.common import memory_spread, next_prediction_logits

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


# the readers of key-value's lookup: ``additive`` ones see the memory and the query side by side (a cell
# step that adds the token's embedding to a map of the memory, then a readout: the tanh and MLP cells),
# ``bilinear`` applies a linear map of the memory chosen by the query key (a step whose transition the
# token picks); "mlp-H" has H hidden units
LOOKUP_HIDDEN = (64, 256, 1024)
LOOKUP_STEPS, LOOKUP_BATCH, LOOKUP_LR = 2000, 512, 3e-3


def _kv(task) -> None:
    if getattr(task, "name", None) != "kv" or task.key_tokens != 1 or task.value_tokens != 1:
        raise UserError("the lookup probe needs the key-value task with one token per key and per value")


def _fit_reader(reader: torch.nn.Module, train: tuple, test: tuple, steps: int, generator: torch.Generator) -> float:
    """Test accuracy of ``reader(memory, query)`` fitted with Adam on minibatches of ``train``."""
    memories, queries, labels = train
    with torch.enable_grad():
        optimizer = torch.optim.Adam(reader.parameters(), LOOKUP_LR)
        for _ in range(steps):
            pick = torch.randint(0, len(labels), (LOOKUP_BATCH,), generator=generator)
            loss = torch.nn.functional.cross_entropy(reader(memories[pick], queries[pick]), labels[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (reader(test[0], test[1]).argmax(-1) == test[2]).float().mean().item()


class _Additive(torch.nn.Module):
    """Memory and one-hot query side by side: a softmax of them (``hidden`` 0) or one GELU layer first."""

    def __init__(self, memory_size: int, keys: int, classes: int, hidden: int = 0):
        super().__init__()
        self.keys = keys
        inputs = memory_size + keys
        if hidden:
            self.net = torch.nn.Sequential(
                torch.nn.Linear(inputs, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, classes)
            )
        else:
            self.net = torch.nn.Sequential(torch.nn.Linear(inputs, classes))

    def forward(self, memory, query):
        return self.net(torch.cat([memory, torch.nn.functional.one_hot(query, self.keys).to(memory)], -1))


class _Bilinear(torch.nn.Module):
    def __init__(self, memory_size: int, keys: int, classes: int):
        super().__init__()
        self.maps = torch.nn.Embedding(keys, (memory_size + 1) * classes)
        torch.nn.init.normal_(self.maps.weight, std=memory_size**-0.5)
        self.shape = (memory_size + 1, classes)

    def forward(self, memory, query):
        extended = torch.cat([memory, torch.ones_like(memory[:, :1])], -1)
        return torch.einsum("bm,bmc->bc", extended, self.maps(query).view(-1, *self.shape))


def _layouts(task, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two memories written by hand from the pairs, as references: ``by position``, the pairs in order
    (one-hot key and value of each), and ``by key``, one slot per key holding its value (one-hot; empty
    for a key not in the sequence)."""
    count, rows = task.pairs, torch.arange(len(x))
    keys, values = x[:, 0 : 2 * count : 2] - task.value_vocab, x[:, 1 : 2 * count : 2]
    one_hot = torch.nn.functional.one_hot
    by_position = torch.cat([one_hot(keys, task.key_vocab), one_hot(values, task.value_vocab)], -1).flatten(1)
    by_key = torch.zeros(len(x), task.key_vocab, task.value_vocab)
    for pair in range(count):
        by_key[rows, keys[:, pair]] = one_hot(values[:, pair], task.value_vocab).float()
    return {"by position": by_position.float(), "by key": by_key.flatten(1)}


@torch.no_grad()
def lookup_probe(
    models,
    task,
    length: int,
    train: int = 32768,
    test: int = 4096,
    steps: int = LOOKUP_STEPS,
    hidden: tuple[int, ...] = LOOKUP_HIDDEN,
    device="cpu",
) -> dict:
    """Held-out accuracy of readers fitted to name the query's value (key-value, one-token keys and
    values): ``{"teacher": {reader: accuracy}, "by position": {...}, "by key": {...}, "after query":
    accuracy, "decoder before": accuracy}``. "teacher" reads m*_{T-1}, the teacher's memory before the
    query, beside the query key; "by position" and "by key" read the hand-written layouts of
    ``_layouts``; "after query" is a linear reader of m*_T, the teacher's memory after the query (its
    own step); "decoder before" is the teacher's decoder reading m*_{T-1} with the query key as the next
    input. Readers: "linear", "mlp-H" (H hidden units, for each H of ``hidden``) and "bilinear" (a linear
    map of the memory per query key)."""
    _kv(task)
    models.eval()
    generator = torch.Generator().manual_seed(PROBE_SEED)
    sets = []
    for count in (train, test):
        batch = task.sample(count, length, generator)
        x, label = batch["x"].to(device), batch["y"][:, length - 1].to(device)  # the query's value
        before, after = [], []
        for chunk in x.split(1024):
            memories = models.teacher.encode(chunk)
            before.append(memories[:, length - 1])
            after.append(memories[:, length])
        query = x[:, length - 1] - task.value_vocab
        sets.append({"teacher": torch.cat(before), **_layouts(task, x.cpu()), "after": torch.cat(after)})
        sets[-1].update(query=query, label=label)
    train_set, test_set = sets
    result: dict = {}
    fit_generator = torch.Generator().manual_seed(PROBE_SEED)
    for memory in ("teacher", "by position", "by key"):
        inputs = [one[memory].to(device) for one in sets]
        mean, std = inputs[0].mean(0), inputs[0].std(0) + 1e-6
        train_in = ((inputs[0] - mean) / std, train_set["query"], train_set["label"])
        test_in = ((inputs[1] - mean) / std, test_set["query"], test_set["label"])
        size, scores = inputs[0].shape[-1], {}
        torch.manual_seed(PROBE_SEED)
        readers: dict[str, torch.nn.Module] = {"linear": _Additive(size, task.key_vocab, task.num_classes)}
        readers.update(
            {f"mlp-{h}": _Additive(size, task.key_vocab, task.num_classes, h) for h in hidden},
            bilinear=_Bilinear(size, task.key_vocab, task.num_classes),
        )
        for name, reader in readers.items():
            scores[name] = _fit_reader(reader.to(device), train_in, test_in, steps, fit_generator)
        result[memory] = scores
    after = [one["after"] for one in sets]
    result["after query"] = _fit_probe(after[0], train_set["label"], after[1], test_set["label"], task.num_classes)
    # the teacher's own decoder from the memory before the query, given the query as the next input (its
    # second prediction), where its predictive loss asks for the answer when the window reaches the query
    decoded = next_prediction_logits(
        models.teacher, test_set["teacher"].to(device), test_set["query"] + task.value_vocab
    )
    result["decoder before"] = (decoded.argmax(-1) == test_set["label"]).float().mean().item()
    return result
