"""Where does a retrieval run lose the needle? Linear probes on memories at a lag after the needle.

    python scripts/probe_retrieval.py RUN_DIR

For lags 0..16 after the needle it fits a linear classifier (300 Adam steps on 2,048 held-out
sequences, tested on 512 others) that reads the needle from: the teacher's memory m*_t, one cell
step from the teacher's previous memory f(m*_{t-1}, x_t), and the RNN's own rollout m^_t.
"""
import sys

import torch

from smtrnn.run import load_run

torch.manual_seed(0)
config, task, models = load_run(sys.argv[1])
length = config.length
generator = torch.Generator().manual_seed(5)


def sample(count):
    batch = task.sample(count, length, generator)
    x = batch["x"]
    return x, batch["y"][:, -1], (x == task.values).float().argmax(1)  # the marker's position


@torch.no_grad()
def memories_at(x, marker, lag):
    teacher = models.teacher.encode(x)
    rollout = models.rnn.cell.rollout(x)
    one_step = models.rnn.cell.step(teacher[:, :-1], x)
    index = (marker + 1 + lag).clamp(max=length - 1)  # the needle is at marker + 1
    rows = torch.arange(len(x))
    return teacher[:, 1:][rows, index], one_step[rows, index], rollout[rows, index]


def probe(train, labels, test, test_labels):
    linear = torch.nn.Linear(train.shape[-1], task.num_classes)
    optimizer = torch.optim.Adam(linear.parameters(), 1e-2)
    mean, std = train.mean(0), train.std(0) + 1e-6
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(linear((train - mean) / std), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (linear((test - mean) / std).argmax(-1) == test_labels).float().mean().item()


x, needle, marker = sample(2048)
x_test, needle_test, marker_test = sample(512)
print("| lag after the needle | teacher m*_t | one step f(m*_t-1, x_t) | RNN rollout m^_t |")
print("|---|---|---|---|")
for lag in (0, 1, 3, 8, 16):
    train, test = memories_at(x, marker, lag), memories_at(x_test, marker_test, lag)
    scores = [probe(a, needle, b, needle_test) for a, b in zip(train, test)]
    print(f"| {lag} | " + " | ".join(f"{score:.3f}" for score in scores) + " |")
