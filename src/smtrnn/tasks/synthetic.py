"""Synthetic sequence tasks (docs/method.md section 9). Each is a small seeded class."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from smtrnn.errors import UserError, check_bool, check_int
from smtrnn.tasks.base import IGNORE, Task


@dataclass
class Retrieval(Task):
    """Needle retrieval: a marker then a needle value somewhere in the first half, random
    distractors elsewhere, a query marker at the last step; the label (the needle) is at the
    last step only. Tests gradient stability over a lag of at least T/2.

    Tokens: values 0..values-1, marker = values, query = values + 1.
    """

    values: int = 8
    name: str = "retrieval"
    min_length = 4
    length_needs = "a marker, its value, a filler and the query"

    def __post_init__(self):
        if self.values < 2:
            raise UserError(f"retrieval: values must be at least 2, got {self.values}")
        self.vocab_size = self.values + 2
        self.num_classes = self.values

    def sample(self, batch_size, length, generator):
        self.check_length(length)
        marker, query = self.values, self.values + 1
        x = torch.randint(0, self.values, (batch_size, length), generator=generator)
        rows = torch.arange(batch_size)
        # marker at p in [0, T/2 - 1), needle at p + 1 (both inside the first half)
        position = torch.randint(0, max(1, length // 2 - 1), (batch_size,), generator=generator)
        x[rows, position] = marker
        needle = x[rows, position + 1]
        x[:, -1] = query
        y = torch.full_like(x, IGNORE)
        y[:, -1] = needle
        return {"x": x, "y": y}


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
# string copy


@dataclass
class StringCopy(Task):
    """String copy (memory capacity): a random string of L = (T-1)//2 symbols, a delimiter, then
    the string again, teacher-forced; the whole string must be held in memory across the delimiter.

    Layout (0-based): s_0..s_{L-1} at 0..L-1, the delimiter at L, the output o_0..o_{L-1} at
    L+1..2L (o = s, or s reversed when ``reverse``), one pad token at the end when T is even.
    Labels: y[L+i] = o_i for i = 0..L-1 (the symbol to produce next); everything else is -1, so
    the last output symbol is an input but carries no label.

    Tokens: symbols 0..values-1, delimiter = values, pad = values + 1. Classes: the symbols.
    """

    values: int = 8
    reverse: bool = False
    name: str = "copy"
    min_length = 3
    length_needs = "a string, the delimiter and its copy"

    def __post_init__(self):
        check_int(self.name, "values", self.values, 2)
        check_bool(self.name, "reverse", self.reverse)
        self.vocab_size = self.values + 2
        self.num_classes = self.values

    def sample(self, batch_size, length, generator):
        self.check_length(length)
        half = (length - 1) // 2
        delimiter, pad = self.values, self.values + 1
        string = torch.randint(0, self.values, (batch_size, half), generator=generator)
        output = string.flip(1) if self.reverse else string
        x = torch.full((batch_size, length), pad, dtype=torch.long)
        x[:, :half] = string
        x[:, half] = delimiter
        x[:, half + 1 : 2 * half + 1] = output
        y = torch.full_like(x, IGNORE)
        y[:, half : 2 * half] = output
        return {"x": x, "y": y}


# ---------------------------------------------------------------------------------------------
# stack


@dataclass
class Stack(Task):
    """Stack operations (state tracking): each step pushes a symbol 1..symbols (the token is the
    symbol) or pops (token 0); the label on a pop is the popped symbol, -1 elsewhere.

    A pop never meets an empty stack and a push never meets a full one (``capacity``); otherwise
    the step pushes with probability ``push_prob``. Labels lie in 1..symbols; num_classes is
    symbols + 1 so that class ids equal token ids (class 0 is never a label), and chance accuracy
    is 1/symbols.
    """

    symbols: int = 4
    capacity: int = 10
    push_prob: float = 0.5
    name: str = "stack"

    def __post_init__(self):
        check_int(self.name, "symbols", self.symbols, 1)
        check_int(self.name, "capacity", self.capacity, 1)
        if (
            isinstance(self.push_prob, bool)
            or not isinstance(self.push_prob, (int, float))
            or not 0 < self.push_prob < 1
        ):
            raise UserError(f"{self.name}: push_prob must be a number strictly between 0 and 1, got {self.push_prob!r}")
        self.vocab_size = self.symbols + 1
        self.num_classes = self.symbols + 1

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / self.symbols

    def sample(self, batch_size, length, generator):
        self.check_length(length)
        coin = torch.rand(batch_size, length, generator=generator) < self.push_prob
        symbol = torch.randint(1, self.symbols + 1, (batch_size, length), generator=generator)
        stack = torch.zeros(batch_size, self.capacity, dtype=torch.long)
        depth = torch.zeros(batch_size, dtype=torch.long)
        rows = torch.arange(batch_size)
        x = torch.zeros(batch_size, length, dtype=torch.long)
        y = torch.full_like(x, IGNORE)
        for t in range(length):
            push = torch.where(depth == 0, True, torch.where(depth == self.capacity, False, coin[:, t]))
            top = stack[rows, (depth - 1).clamp(min=0)]
            y[:, t] = torch.where(push, IGNORE, top)
            x[:, t] = torch.where(push, symbol[:, t], 0)
            slot = depth.clamp(max=self.capacity - 1)
            stack[rows, slot] = torch.where(push, symbol[:, t], stack[rows, slot])
            depth = depth + torch.where(push, 1, -1)
        return {"x": x, "y": y}


# ---------------------------------------------------------------------------------------------
# running parity


@dataclass
class Parity(Task):
    """Running parity (state tracking): random bits; y_t = (x_0 + ... + x_t) mod 2 at every step.
    Meant to be trained short and tested long (length generalisation)."""

    name: str = "parity"

    def __post_init__(self):
        self.vocab_size = 2
        self.num_classes = 2

    def sample(self, batch_size, length, generator):
        self.check_length(length)
        x = torch.randint(0, 2, (batch_size, length), generator=generator)
        return {"x": x, "y": x.cumsum(dim=1) % 2}


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

    pairs: int = 4
    key_vocab: int = 16
    value_vocab: int = 16
    key_tokens: int = 1
    value_tokens: int = 1
    name: str = "kv"

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


# ---------------------------------------------------------------------------------------------
# modular arithmetic


@dataclass
class ModularArithmetic(Task):
    """Modular arithmetic (in-context learning): per sequence a hidden map y = (w*x + b) mod
    ``modulus`` with w a unit (gcd(w, modulus) = 1, so the map is a bijection) and b in
    0..modulus-1; inputs interleave x_1, y_1, x_2, y_2, ... with x uniform; the label at each
    x_i position is y_i (-1 at y positions). The first labels are guesses; the map is learnable
    in context from earlier pairs. Tokens and classes are 0..modulus-1 (x and y share ids).
    """

    modulus: int = 7
    name: str = "modular"

    def __post_init__(self):
        check_int(self.name, "modulus", self.modulus, 2)
        self.units = [w for w in range(1, self.modulus) if math.gcd(w, self.modulus) == 1]
        self.vocab_size = self.modulus
        self.num_classes = self.modulus

    def sample(self, batch_size, length, generator):
        self.check_length(length)
        count = (length + 1) // 2
        units = torch.tensor(self.units, dtype=torch.long)
        w = units[torch.randint(0, len(self.units), (batch_size, 1), generator=generator)]
        b = torch.randint(0, self.modulus, (batch_size, 1), generator=generator)
        xs = torch.randint(0, self.modulus, (batch_size, count), generator=generator)
        ys = (w * xs + b) % self.modulus
        x = torch.stack([xs, ys], dim=2).reshape(batch_size, 2 * count)[:, :length].contiguous()
        y = torch.full_like(x, IGNORE)
        y[:, 0::2] = ys
        return {"x": x, "y": y}


# ---------------------------------------------------------------------------------------------
# recency / primacy


@dataclass
class Recency(Task):
    """Recency / primacy bias: random tokens over ``values`` symbols, labelled with a past token.

    A geometrically distributed lag was the specification we started from; a lag that changes unannounced at each
    step is not learnable, so the lag here is a parameter fixed per task instance (sweep ``lag``
    to probe how far back the memory reaches). Positions are 0-based:
    recency (default): y[t] = x[t - lag] for t >= lag, -1 before;
    primacy (``primacy=True``): y[t] = x[lag - 1] (the lag-th token from the start) for t >= lag.
    Tokens and classes: 0..values-1.
    """

    values: int = 8
    lag: int = 4
    primacy: bool = False
    name: str = "recency"

    def __post_init__(self):
        check_int(self.name, "values", self.values, 2)
        check_int(self.name, "lag", self.lag, 1)
        check_bool(self.name, "primacy", self.primacy)
        self.vocab_size = self.values
        self.num_classes = self.values

    @property
    def min_length(self) -> int:  # type: ignore[override]
        return self.lag + 1

    @property
    def length_needs(self) -> str:  # type: ignore[override]
        return f"a label {self.lag} steps after its token"

    def sample(self, batch_size, length, generator):
        self.check_length(length)
        x = torch.randint(0, self.values, (batch_size, length), generator=generator)
        y = torch.full_like(x, IGNORE)
        if self.primacy:
            y[:, self.lag :] = x[:, self.lag - 1 : self.lag]
        else:
            y[:, self.lag :] = x[:, : length - self.lag]
        return {"x": x, "y": y}


@dataclass
class Primacy(Recency):
    """Primacy bias: ``Recency`` with ``primacy=True``, y[t] = x[lag - 1] for t >= lag."""

    primacy: bool = True
    name: str = "primacy"


REGISTRY: dict[str, type[Task]] = {
    "retrieval": Retrieval,
    "copy": StringCopy,
    "stack": Stack,
    "parity": Parity,
    "kv": KeysValues,
    "mqar": MQAR,
    "modular": ModularArithmetic,
    "recency": Recency,
    "primacy": Primacy,
}
