"""Associative recall (docs/method.md section 9): keys-values and its multi-query form (MQAR), and the
sampling of distinct keys they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smtrnn.errors import UserError, check_bool, check_int
from smtrnn.tasks.base import IGNORE, Task

# ---------------------------------------------------------------------------------------------
# helpers


_ARGSORT_LIMIT = 1 << 16  # code spaces up to this size are sampled by a random permutation
_CODE_LIMIT = 1 << 62  # the largest code space sampled as one int64


def _distinct_codes(batch: int, count: int, space: int, generator: torch.Generator) -> torch.Tensor:
    """LongTensor[batch, count]: per row, ``count`` distinct codes drawn uniformly from [0, space)."""
    if count > space or space > _CODE_LIMIT:
        raise ValueError(f"cannot draw {count} distinct codes from {space}")
    if space <= max(_ARGSORT_LIMIT, 2 * count):
        return torch.rand(batch, space, generator=generator).argsort(dim=1)[:, :count]
    # large space (more than twice count): draw with replacement, redraw the repeats until none
    # are left; each round redraws at most half of the repeats, so this ends quickly
    codes = torch.randint(0, space, (batch, count), generator=generator)
    while True:
        ordered, order = codes.sort(dim=1, stable=True)
        repeat_sorted = torch.zeros_like(codes, dtype=torch.bool)
        repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        if not bool(repeat_sorted.any()):
            return codes
        repeat = torch.zeros_like(repeat_sorted).scatter_(1, order, repeat_sorted)
        codes[repeat] = torch.randint(0, space, (int(repeat.sum()),), generator=generator)


def _distinct_keys(batch: int, count: int, vocab: int, tokens: int, generator: torch.Generator) -> torch.Tensor:
    """LongTensor[batch, count, tokens] over 0..vocab-1: ``count`` distinct token tuples per row."""
    digits = 1  # how many leading tokens are drawn jointly as one distinct code
    while digits < tokens and vocab ** (digits + 1) <= _CODE_LIMIT:
        digits += 1
    codes = _distinct_codes(batch, count, vocab**digits, generator)
    powers = vocab ** torch.arange(digits - 1, -1, -1)
    head = (codes.unsqueeze(-1) // powers) % vocab  # distinct prefixes make distinct keys
    if digits == tokens:
        return head
    tail = torch.randint(0, vocab, (batch, count, tokens - digits), generator=generator)
    return torch.cat([head, tail], dim=-1)


# ---------------------------------------------------------------------------------------------
# keys-values


@dataclass
class KeysValues(Task):
    """Keys-values (associative recall): ``pairs`` (key, value) pairs, keys distinct within a
    sequence, then pad tokens up to the query, then a query key; its value must be produced.

    A key is ``key_tokens`` tokens and a value ``value_tokens`` tokens (multi-token when > 1).
    Layout: k_1 v_1 ... k_n v_n, pad..., query key, then the first value_tokens - 1 tokens of
    its value (teacher-forced), so the sequence is exactly T long. Labels: at the last query key
    token, the first value token; at each teacher-forced value token, the next one; -1 elsewhere.
    The query key is one of the pairs' keys, uniformly.

    Tokens: values 0..value_vocab-1, keys value_vocab..value_vocab+key_vocab-1, pad after that.
    Classes: the value tokens (class id = token id).
    """

    next_token = False  # labels, not the next input

    pairs: int = 4
    key_vocab: int = 16
    value_vocab: int = 16
    key_tokens: int = 1
    value_tokens: int = 1
    name: str = "kv"
    # Trained on 16 tokens and run at any T (docs/kv-recipe.md, the GRU, 12,900 steps, 3 seeds): the
    # teacher learns the lookup at T=16 (first prediction 1.000) but not from the memory before the query
    # at T=64 (0.26-0.30), while the RNN trained at 16 on the memory grid keeps what it learned at 64 and
    # 256 (0.715 / 0.715 / 0.715 at T = 16 / 64 / 256), its grid memory resting under the pads. SMT
    # without the pull towards the RNN, then DMT on the rollout's own labels through 16 cell steps, rate
    # 2e-3, no pull, 8,900 + 4,000 steps (docs/kv-step.md: the readout alone cannot do the lookup in one
    # cell step from the teacher's memories). The grid is set for BPTT too (its default is a continuous
    # memory): trained at 16 it holds on the grid (0.753 / 0.750 / 0.750) and not on a continuous memory
    # (0.903 at 16, 0.212 / 0.082 at 64 / 256); trained at T it reaches 0.616 at 64 and 0.096 at 256.
    settings = {
        "train_length": 16,
        "model.memory_levels": 5,
        "smt.teacher_pull": False,
        "dmt.truncate": 16,
        "dmt.c_dyn": 0.0,
        "dmt.readout_grad": True,
        "dmt_train.lr": 2e-3,
        "train.steps": 8900,
        "dmt_train.steps": 4000,
    }

    def __post_init__(self):
        check_int(self.name, "pairs", self.pairs, 1)
        check_int(self.name, "key_vocab", self.key_vocab, 1)
        check_int(self.name, "value_vocab", self.value_vocab, 2)
        check_int(self.name, "key_tokens", self.key_tokens, 1)
        check_int(self.name, "value_tokens", self.value_tokens, 1)
        if self.key_vocab**self.key_tokens < self.pairs:
            raise UserError(
                f"{self.name}: pairs={self.pairs} distinct keys do not exist with key_vocab={self.key_vocab} "
                f"and key_tokens={self.key_tokens} ({self.key_vocab**self.key_tokens} keys)"
            )
        self.pad = self.value_vocab + self.key_vocab
        self.vocab_size = self.value_vocab + self.key_vocab + 1
        self.num_classes = self.value_vocab

    @property
    def min_length(self) -> int:  # type: ignore[override]
        return self.pairs * (self.key_tokens + self.value_tokens) + self.key_tokens + self.value_tokens - 1

    @property
    def length_needs(self) -> str:  # type: ignore[override]
        return f"{self.pairs} pairs and a query"

    def sample(self, batch_size, length, generator):
        self.check_length(length)
        kt, vt, n = self.key_tokens, self.value_tokens, self.pairs
        keys = _distinct_keys(batch_size, n, self.key_vocab, kt, generator) + self.value_vocab  # [B, n, kt]
        values = torch.randint(0, self.value_vocab, (batch_size, n, vt), generator=generator)  # [B, n, vt]
        rows = torch.arange(batch_size)
        chosen = torch.randint(0, n, (batch_size,), generator=generator)
        x = torch.full((batch_size, length), self.pad, dtype=torch.long)
        x[:, : n * (kt + vt)] = torch.cat([keys, values], dim=2).reshape(batch_size, -1)
        query = length - (kt + vt - 1)  # first query token
        answer = values[rows, chosen]  # [B, vt]
        x[:, query : query + kt] = keys[rows, chosen]
        x[:, query + kt :] = answer[:, : vt - 1]
        y = torch.full_like(x, IGNORE)
        y[:, query + kt - 1 :] = answer
        return {"x": x, "y": y}


# ---------------------------------------------------------------------------------------------
# multi-query associative recall


@dataclass
class MQAR(Task):
    """Multi-query associative recall (Zoology MQAR): ``pairs`` (key, value) pairs with distinct
    keys fill the first 2*pairs steps; the rest holds each key once as a query, at random even
    offsets drawn Zoology style (gap g in 0..S-1 with weight (g+1)^(power_a-1), without
    replacement, so queries cluster near the context for small power_a); the label at a query
    position is that key's value, -1 elsewhere. The remaining positions hold the noise token, or
    random value tokens when ``random_noise`` (never key tokens, so noise is never a query).
    The value itself is not fed back after a query (as in Zoology).

    Tokens: values 0..value_vocab-1, keys value_vocab..value_vocab+key_vocab-1, noise after that.
    Classes: the value tokens (class id = token id). Values may repeat across keys.
    """

    next_token = False  # labels, not the next input

    pairs: int = 4
    key_vocab: int = 16
    value_vocab: int = 16
    power_a: float = 0.01
    random_noise: bool = False
    name: str = "mqar"

    def __post_init__(self):
        check_int(self.name, "pairs", self.pairs, 1)
        check_int(self.name, "key_vocab", self.key_vocab, 1)
        check_int(self.name, "value_vocab", self.value_vocab, 2)
        check_bool(self.name, "random_noise", self.random_noise)
        if isinstance(self.power_a, bool) or not isinstance(self.power_a, (int, float)) or not self.power_a > 0:
            raise UserError(f"{self.name}: power_a must be a positive number, got {self.power_a!r}")
        if self.pairs > self.key_vocab:
            raise UserError(
                f"{self.name}: pairs={self.pairs} distinct keys need key_vocab >= {self.pairs}, got {self.key_vocab}"
            )
        self.noise = self.value_vocab + self.key_vocab
        self.vocab_size = self.value_vocab + self.key_vocab + 1
        self.num_classes = self.value_vocab

    @property
    def min_length(self) -> int:  # type: ignore[override]
        return 4 * self.pairs - 1  # 2*pairs context, queries at offsets 0, 2, ..., 2*(pairs-1)

    @property
    def length_needs(self) -> str:  # type: ignore[override]
        return f"{self.pairs} pairs and their queries"

    def sample(self, batch_size, length, generator):
        self.check_length(length)
        n, context = self.pairs, 2 * self.pairs
        keys = _distinct_codes(batch_size, n, self.key_vocab, generator) + self.value_vocab  # [B, n]
        values = torch.randint(0, self.value_vocab, (batch_size, n), generator=generator)
        if self.random_noise:
            x = torch.randint(0, self.value_vocab, (batch_size, length), generator=generator)
        else:
            x = torch.full((batch_size, length), self.noise, dtype=torch.long)
        x[:, 0:context:2] = keys
        x[:, 1:context:2] = values
        slots = (length - context + 1) // 2
        weight = self.power_a * torch.arange(1, slots + 1, dtype=torch.float64) ** (self.power_a - 1)
        gaps = torch.multinomial(weight.expand(batch_size, slots), n, replacement=False, generator=generator)
        where = context + 2 * gaps  # [B, n]
        rows = torch.arange(batch_size).unsqueeze(1)
        x[rows, where] = keys
        y = torch.full_like(x, IGNORE)
        y[rows, where] = values
        return {"x": x, "y": y}
