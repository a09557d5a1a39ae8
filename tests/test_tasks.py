"""Tests of the synthetic tasks: interface contract, determinism, labels against slow references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smtrnn.errors import UserError
from smtrnn.tasks import make_task
from smtrnn.tasks.base import IGNORE
from smtrnn.tasks.recall import MQAR, KeysValues, _distinct_codes, _distinct_keys
from smtrnn.tasks.synthetic import (
    REGISTRY,
    ModularArithmetic,
    Parity,
    Primacy,
    Recency,
    Retrieval,
    Stack,
    StringCopy,
)

FAST = settings(max_examples=20, deadline=None, database=None)  # no .hypothesis folder in the repo
EXPECTED_NAMES = {"retrieval", "copy", "stack", "parity", "kv", "mqar", "modular", "recency", "primacy"}


def draw(task, batch, length, seed):
    return task.sample(batch, length, torch.Generator().manual_seed(seed))


def default_length(task) -> int:
    return max(24, getattr(task, "min_length", 0))


# --------------------------------------------------------------------------------------------
# the contract every registered task keeps


def test_registry_names():
    assert set(REGISTRY) == EXPECTED_NAMES
    for name, cls in REGISTRY.items():
        assert cls().name == name


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
@pytest.mark.parametrize("length_offset", [0, 1])  # odd and even lengths
def test_shapes_dtypes_and_ranges(name, length_offset):
    task = REGISTRY[name]()
    length = default_length(task) + length_offset
    batch = draw(task, 16, length, seed=3)
    assert set(batch) == {"x", "y"}
    for key in ("x", "y"):
        assert batch[key].shape == (16, length)
        assert batch[key].dtype == torch.long
    x, y = batch["x"], batch["y"]
    assert int(x.min()) >= 0 and int(x.max()) < task.vocab_size
    labelled = y != IGNORE
    assert bool(labelled.any()), "every task labels something"
    assert int(y[labelled].min()) >= 0 and int(y[labelled].max()) < task.num_classes
    assert 0 < task.chance_accuracy <= 0.5


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_seeded_determinism(name):
    task = REGISTRY[name]()
    length = default_length(task)
    first, again, other = draw(task, 8, length, 11), draw(task, 8, length, 11), draw(task, 8, length, 12)
    assert torch.equal(first["x"], again["x"]) and torch.equal(first["y"], again["y"])
    assert not torch.equal(first["x"], other["x"])


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_global_rng_untouched(name):
    """All randomness comes from the passed generator, none from torch's global state."""
    task = REGISTRY[name]()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    draw(task, 4, default_length(task), 5)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_make_task_by_name(name):
    task = make_task(name)
    assert isinstance(task, REGISTRY[name])


# --------------------------------------------------------------------------------------------
# slow references: the label at t computed from the prefix x[:t+1] only (causality built in)


def labels_from_prefixes(x_row, label_of_prefix):
    return [label_of_prefix(x_row[: t + 1]) for t in range(len(x_row))]


def check_against_reference(task, batch, label_of_prefix):
    for x_row, y_row in zip(batch["x"].tolist(), batch["y"].tolist()):
        assert y_row == labels_from_prefixes(x_row, label_of_prefix), (x_row, y_row)


def retrieval_reference(task, length):
    def label(prefix):
        if len(prefix) < length:
            return IGNORE
        marker = prefix.index(task.values)  # the first marker is the one planted (distractors < values)
        return prefix[marker + 1]

    return label


def copy_reference(task, length):
    half = (length - 1) // 2

    def label(prefix):
        t = len(prefix) - 1
        if not half <= t < 2 * half:
            return IGNORE
        string = prefix[:half]
        output = string[::-1] if task.reverse else string
        return output[t - half]

    return label


def stack_reference(task, length):
    def label(prefix):
        stack = []
        for token in prefix[:-1]:
            stack.append(token) if token else stack.pop()
        return stack[-1] if prefix[-1] == 0 else IGNORE

    return label


def parity_reference(task, length):
    return lambda prefix: sum(prefix) % 2


def kv_reference(task, length):
    kt, vt = task.key_tokens, task.value_tokens
    query = length - (kt + vt - 1)

    def label(prefix):
        t = len(prefix) - 1
        if t < query + kt - 1:
            return IGNORE
        key = tuple(prefix[query : query + kt])
        for i in range(task.pairs):
            start = i * (kt + vt)
            if tuple(prefix[start : start + kt]) == key:
                return prefix[start + kt + (t - (query + kt - 1))]
        raise AssertionError("query key not among the pairs")

    return label


def mqar_reference(task, length):
    context = 2 * task.pairs

    def label(prefix):
        t = len(prefix) - 1
        if t < context or prefix[t] < task.value_vocab or prefix[t] == task.noise:
            return IGNORE
        table = {prefix[i]: prefix[i + 1] for i in range(0, context, 2)}
        return table[prefix[t]]

    return label


def recency_reference(task, length):
    def label(prefix):
        t = len(prefix) - 1
        if t < task.lag:
            return IGNORE
        return prefix[task.lag - 1] if task.primacy else prefix[t - task.lag]

    return label


REFERENCES = {
    Retrieval: retrieval_reference,
    StringCopy: copy_reference,
    Stack: stack_reference,
    Parity: parity_reference,
    KeysValues: kv_reference,
    MQAR: mqar_reference,
    Recency: recency_reference,
    Primacy: recency_reference,
}


def make(cls, data):
    """A task instance with randomised small parameters."""
    if cls is StringCopy:
        return cls(values=data.draw(st.integers(2, 6)), reverse=data.draw(st.booleans()))
    if cls is Stack:
        return cls(
            symbols=data.draw(st.integers(1, 4)),
            capacity=data.draw(st.integers(1, 5)),
            push_prob=data.draw(st.floats(0.1, 0.9)),
        )
    if cls is KeysValues:
        key_vocab = data.draw(st.integers(2, 5))
        key_tokens = data.draw(st.integers(1, 3))
        pairs = data.draw(st.integers(1, min(6, key_vocab**key_tokens)))
        return cls(
            pairs=pairs,
            key_vocab=key_vocab,
            value_vocab=data.draw(st.integers(2, 5)),
            key_tokens=key_tokens,
            value_tokens=data.draw(st.integers(1, 3)),
        )
    if cls is MQAR:
        key_vocab = data.draw(st.integers(1, 8))
        return cls(
            pairs=data.draw(st.integers(1, key_vocab)),
            key_vocab=key_vocab,
            value_vocab=data.draw(st.integers(2, 5)),
            power_a=data.draw(st.sampled_from([0.01, 0.5, 1.0])),
            random_noise=data.draw(st.booleans()),
        )
    if cls in (Recency, Primacy):
        return cls(values=data.draw(st.integers(2, 6)), lag=data.draw(st.integers(1, 6)))
    return cls()


@pytest.mark.parametrize("cls", list(REFERENCES), ids=lambda c: c.__name__)
@FAST
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_labels_match_reference(cls, data, seed):
    task = make(cls, data)
    low = max(getattr(task, "min_length", 0), 2, getattr(task, "lag", 0) + 1, 4 if cls is Retrieval else 3)
    length = data.draw(st.integers(low, low + 30))
    batch = draw(task, 6, length, seed)
    check_against_reference(task, batch, REFERENCES[cls](task, length))


# --------------------------------------------------------------------------------------------
# structure beyond the labels


@FAST
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(3, 40), reverse=st.booleans())
def test_copy_layout(seed, length, reverse):
    task = StringCopy(values=5, reverse=reverse)
    x = draw(task, 4, length, seed)["x"]
    half = (length - 1) // 2
    string = x[:, :half]
    assert bool((string < task.values).all())
    assert bool((x[:, half] == task.values).all())
    assert torch.equal(x[:, half + 1 : 2 * half + 1], string.flip(1) if reverse else string)
    assert bool((x[:, 2 * half + 1 :] == task.values + 1).all())  # pad only when length is even
    assert x.shape[1] - (2 * half + 1) == (1 if length % 2 == 0 else 0)


def test_copy_reverse_differs_from_forward():
    forward = draw(StringCopy(reverse=False), 4, 21, 0)
    backward = draw(StringCopy(reverse=True), 4, 21, 0)
    assert torch.equal(forward["x"][:, :10], backward["x"][:, :10])
    assert torch.equal(backward["y"][:, 10:20], forward["y"][:, 10:20].flip(1))


@FAST
@given(seed=st.integers(0, 2**31 - 1), capacity=st.integers(1, 4))
def test_stack_respects_capacity_and_never_pops_empty(seed, capacity):
    x = draw(Stack(capacity=capacity), 8, 60, seed)["x"]
    depth = torch.where(x > 0, 1, -1).cumsum(dim=1)
    assert int(depth.min()) >= 0 and int(depth.max()) <= capacity
    assert bool((depth == capacity).any()), "a full stack occurs in 60 steps"


@FAST
@given(seed=st.integers(0, 2**31 - 1), capacity=st.integers(1, 4))
def test_stack_label_ages_are_the_steps_since_the_popped_push(seed, capacity):
    task = Stack(capacity=capacity)
    batch = draw(task, 4, 40, seed)
    ages = task.label_ages(batch["x"])
    for row, x in enumerate(batch["x"].tolist()):
        pushed = []  # a plain list as the reference stack of push times
        for t, token in enumerate(x):
            if token:
                pushed.append(t)
                assert ages[row, t] == -1 == batch["y"][row, t]
            else:
                assert ages[row, t] == t - pushed.pop() >= 1


def test_stack_push_probability():
    x = draw(Stack(capacity=1000), 64, 200, 0)["x"]  # never full: pushes at push_prob except from empty
    assert 0.45 < float((x > 0).float().mean()) < 0.6
    assert Stack(symbols=4).chance_accuracy == 0.25


@FAST
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(2, 50))
def test_parity_by_cumsum(seed, length):
    batch = draw(Parity(), 5, length, seed)
    x, y = batch["x"], batch["y"]
    assert bool(((x == 0) | (x == 1)).all())
    assert torch.equal(y, torch.cumsum(x, 1) % 2)


@FAST
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_kv_layout_and_distinct_keys(data, seed):
    task = make(KeysValues, data)
    length = task.min_length + data.draw(st.integers(0, 10))
    x = draw(task, 6, length, seed)["x"]
    kt, vt, n = task.key_tokens, task.value_tokens, task.pairs
    pairs = x[:, : n * (kt + vt)].reshape(6, n, kt + vt)
    keys, values = pairs[..., :kt], pairs[..., kt:]
    assert bool((keys >= task.value_vocab).all() & (keys < task.pad).all())
    assert bool((values < task.value_vocab).all())
    for row in keys.tolist():
        assert len({tuple(key) for key in row}) == n
    query = length - (kt + vt - 1)
    assert bool((x[:, n * (kt + vt) : query] == task.pad).all())
    assert bool((x[:, query : query + kt] >= task.value_vocab).all())


def test_kv_query_covers_all_pairs():
    task = KeysValues(pairs=4)
    batch = draw(task, 400, 12, 1)
    x = batch["x"]
    position = (x[:, :8:2] == x[:, -1:]).float().argmax(dim=1)
    assert set(position.tolist()) == {0, 1, 2, 3}


@FAST
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_mqar_each_key_queried_once_at_even_offsets(data, seed):
    task = make(MQAR, data)
    length = task.min_length + data.draw(st.integers(0, 20))
    batch = draw(task, 6, length, seed)
    x, y = batch["x"], batch["y"]
    context = 2 * task.pairs
    for x_row, y_row in zip(x.tolist(), y.tolist()):
        keys = x_row[0:context:2]
        assert len(set(keys)) == task.pairs
        rest = x_row[context:]
        key_positions = [i for i, token in enumerate(rest) if task.value_vocab <= token < task.noise]
        assert sorted(rest[i] for i in key_positions) == sorted(keys)
        assert all(i % 2 == 0 for i in key_positions)
        assert [i for i, label in enumerate(y_row) if label != IGNORE] == [context + i for i in key_positions]
        if not task.random_noise:
            assert all(rest[i] == task.noise for i in range(len(rest)) if i not in key_positions)


def test_mqar_small_power_a_puts_queries_early():
    task = MQAR(pairs=4, power_a=0.01)
    y = draw(task, 64, 200, 0)["y"]
    late = (y[:, 100:] != IGNORE).sum()
    uniform = draw(MQAR(pairs=4, power_a=1.0), 64, 200, 0)["y"]
    assert int(late) < int((uniform[:, 100:] != IGNORE).sum())


@FAST
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(2, 40), modulus=st.sampled_from([2, 5, 7, 8, 9]))
def test_modular_pairs_follow_one_affine_map(seed, length, modulus):
    task = ModularArithmetic(modulus=modulus)
    batch = draw(task, 6, length, seed)
    x, y = batch["x"].tolist(), batch["y"].tolist()
    for x_row, y_row in zip(x, y):
        assert all(label == IGNORE for label in y_row[1::2])
        xs = x_row[0::2]
        ys = y_row[0::2]
        assert x_row[1::2] == ys[: len(x_row[1::2])]  # the y token follows its x as input
        maps = [(w, b) for w in range(1, modulus) if math.gcd(w, modulus) == 1 for b in range(modulus)]
        assert any(all((w * a + b) % modulus == c for a, c in zip(xs, ys)) for w, b in maps)


def test_modular_ceilings_equal_a_reader_of_each_prefix():
    task, length, sequences = ModularArithmetic(modulus=5), 12, 60
    batch = task.sample(sequences, length, torch.Generator().manual_seed(3))
    maps = [(w, b) for w in task.units for b in range(5)]
    lookup = bayes = 0.0
    for xs, ys in zip(batch["x"][:, 0::2].tolist(), batch["y"][:, 0::2].tolist()):
        pairs: dict[int, int] = {}
        consistent = list(maps)
        for x, y in zip(xs, ys):
            lookup += 1.0 if x in pairs else 1 / 5
            answers = [(w * x + b) % 5 for w, b in consistent]
            bayes += max(answers.count(a) for a in range(5)) / len(consistent)
            pairs[x] = y
            consistent = [m for m, a in zip(consistent, answers) if a == y]
    labels = sequences * len(batch["x"][0, 0::2])
    ceilings = task.ceilings(length, sequences, seed=3)
    assert ceilings["lookup"] == pytest.approx(lookup / labels)
    assert ceilings["bayes"] == pytest.approx(bayes / labels)
    assert ModularArithmetic().ceilings(2) == pytest.approx({"lookup": 1 / 7, "bayes": 1 / 7})  # one guess


def test_modular_maps_vary_across_sequences():
    batch = draw(ModularArithmetic(modulus=7), 64, 40, 0)
    x = batch["x"]
    # recover b = y at x == 0 is awkward; instead, sequences disagree on the image of some x
    images = set()
    for row in x.tolist():
        table = dict(zip(row[0::2], row[1::2]))
        images.add(tuple(sorted(table.items())))
    assert len(images) > 10
    assert ModularArithmetic(modulus=9).units == [1, 2, 4, 5, 7, 8]


# --------------------------------------------------------------------------------------------
# helpers


@pytest.mark.parametrize("space", [5, 1000, 1 << 20, 1 << 40])
def test_distinct_codes(space):
    count = min(space, 50)
    codes = _distinct_codes(32, count, space, torch.Generator().manual_seed(0))
    assert codes.shape == (32, count)
    assert int(codes.min()) >= 0 and int(codes.max()) < space
    assert all(len(set(row)) == count for row in codes.tolist())


def test_distinct_codes_many_collisions():
    codes = _distinct_codes(1, 30000, 66001, torch.Generator().manual_seed(0))  # redraw path, nearly half full
    assert all(len(row.unique()) == 30000 for row in codes)
    assert int(codes.max()) < 66001


def test_distinct_keys_beyond_int64():
    keys = _distinct_keys(8, 30, 2, 80, torch.Generator().manual_seed(0))  # 2**80 keys: prefix + tail
    assert keys.shape == (8, 30, 80)
    assert all(len({tuple(k) for k in row}) == 30 for row in keys.tolist())


# --------------------------------------------------------------------------------------------
# impossible parameters: one-line UserError naming the task


@pytest.mark.parametrize(
    "build, length, fragment",
    [
        (lambda: StringCopy(values=1), None, "values"),
        (lambda: StringCopy(reverse="yes"), None, "reverse"),
        (lambda: StringCopy(), 2, "length"),
        (lambda: Stack(capacity=0), None, "capacity"),
        (lambda: Stack(symbols=0), None, "symbols"),
        (lambda: Stack(push_prob=1.0), None, "push_prob"),
        (lambda: Parity(), 1, "length"),
        (lambda: KeysValues(pairs=5, key_vocab=2, key_tokens=2), None, "pairs"),
        (lambda: KeysValues(pairs=0), None, "pairs"),
        (lambda: KeysValues(value_vocab=1), None, "value_vocab"),
        (lambda: KeysValues(key_tokens=1.5), None, "key_tokens"),
        (lambda: KeysValues(pairs=4, key_tokens=2, value_tokens=2), 18, "length"),
        (lambda: MQAR(pairs=20, key_vocab=16), None, "pairs"),
        (lambda: MQAR(power_a=0), None, "power_a"),
        (lambda: MQAR(pairs=4), 14, "length"),
        (lambda: ModularArithmetic(modulus=1), None, "modulus"),
        (lambda: Recency(lag=0), None, "lag"),
        (lambda: Recency(lag=5), 5, "length"),
        (lambda: Primacy(values=True), None, "values"),
    ],
)
def test_impossible_parameters(build, length, fragment):
    with pytest.raises(UserError) as caught:
        task = build()
        task.sample(2, length, torch.Generator().manual_seed(0))
    message = str(caught.value)
    assert "\n" not in message and fragment in message
    assert message.split(":")[0].removeprefix("task ") in EXPECTED_NAMES


def test_minimum_lengths_work():
    generator = torch.Generator().manual_seed(0)
    KeysValues(pairs=4, key_tokens=2, value_tokens=2).sample(2, 19, generator)
    MQAR(pairs=4).sample(2, 15, generator)
    StringCopy().sample(2, 3, generator)
    Recency(lag=5).sample(2, 6, generator)
