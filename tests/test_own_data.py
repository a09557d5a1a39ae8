"""The user's own data as a task: text:PATH, tokens:PATH.npy, sequences:PATH.npz (tasks/files.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smtrnn.config import RunConfig
from smtrnn.errors import UserError
from smtrnn.methods import SMTConfig
from smtrnn.models import ModelConfig
from smtrnn.run import run
from smtrnn.tasks import load_task_class, make_task
from smtrnn.tasks.base import IGNORE
from smtrnn.train import TrainConfig

TEXT = ("The quick brown fox jumps over the lazy dog. Ünïcödé too. " * 8).encode("utf-8")


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def is_piece_of(row: np.ndarray, stream: np.ndarray) -> bool:
    windows = np.lib.stride_tricks.sliding_window_view(stream, len(row))
    return bool((windows == row).all(axis=1).any())


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT)
    return path


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "tokens.npy"
    np.save(path, (np.arange(500) * 7 % 13).astype(np.int32))  # tokens 0..12
    return path


def save_sequences(path: Path, rows: int = 20, columns: int = 12, **arrays) -> Path:
    x = (np.arange(rows * columns).reshape(rows, columns) % 9).astype(np.int64)
    x[:, 0], x[:, 1] = np.divmod(np.arange(rows), 9)  # every row different (rows <= 81), tokens 0..8
    y = np.full_like(x, IGNORE)
    y[:, -1] = np.arange(rows) % 4  # labels 0..3 at the last column
    y[:, 3] = 2
    np.savez(path, **{"x": x, "y": y, **arrays})
    return path


@pytest.fixture
def sequence_file(tmp_path) -> Path:
    return save_sequences(tmp_path / "data.npz")


def tiny_config(task: str, method: str) -> RunConfig:
    config = RunConfig(task=task, length=8, method=method, eval_batches=1)
    config.model = ModelConfig(
        memory_size=8, embed_dim=4, readout_hidden=8, teacher_width=8, teacher_layers=1, teacher_heads=2, future=2
    )
    config.train = TrainConfig(steps=3, batch_size=4, warmup=1, log_every=1)
    config.dmt_train = TrainConfig(steps=2, batch_size=4, warmup=1, log_every=1)
    config.smt = SMTConfig(dyn_warmup=1, horizon=2, horizon_grow=1)
    return config


# ---------------------------------------------------------------------------------------------
# text


def test_text_file_is_a_byte_stream_with_a_held_out_tail(text_file):
    task = make_task(f"text:{text_file}")
    assert task.vocab_size == task.num_classes == 256 and task.text
    held = round(len(TEXT) * 0.1)
    train, test = task.tokens(), task.evaluation().tokens()
    assert bytes(test) == TEXT[-held:] and bytes(train) == TEXT[:-held]
    batch = task.sample(5, 16, generator())
    assert batch["x"].shape == batch["y"].shape == (5, 16) and batch["x"].dtype == torch.long
    assert torch.equal(batch["x"][:, 1:], batch["y"][:, :-1])
    crops = torch.cat([batch["x"], batch["y"][:, -1:]], 1).numpy()
    assert all(is_piece_of(row, train) for row in crops)
    assert torch.equal(task.sample(5, 16, generator(3))["x"], task.sample(5, 16, generator(3))["x"])
    assert task.decode(list("héllo".encode())) == "héllo"


def test_text_options(text_file):
    task = make_task(f"text:{text_file}", heldout=0.5, limit=30, split="test")
    assert bytes(task.tokens()) == TEXT[len(TEXT) - round(len(TEXT) * 0.5) :][:30]
    assert task.evaluation() is task
    for bad in ({"heldout": 0}, {"heldout": 1}, {"heldout": "half"}, {"split": "valid"}, {"limit": 0}, {"vocab": 9}):
        with pytest.raises(UserError):
            make_task(f"text:{text_file}", **bad)


def test_text_crops_longer_than_a_split_are_refused(text_file):
    task = make_task(f"text:{text_file}")
    task.check_length(40)
    with pytest.raises(UserError, match=r"test split \(the held-out end of the file\) has \d+"):
        task.check_length(len(TEXT) // 5)  # longer than the held-out tail, shorter than training


@pytest.mark.parametrize("form", ["text", "tokens", "sequences"])
def test_empty_files(tmp_path, form):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(UserError, match="the file is empty"):
        make_task(f"{form}:{tmp_path / 'empty'}")


# ---------------------------------------------------------------------------------------------
# tokens


def test_tokens_vocabulary_from_data_and_option(token_file):
    task = make_task(f"tokens:{token_file}")
    assert task.vocab_size == task.num_classes == 13 and not getattr(task, "text", False)
    batch = task.sample(4, 10, generator())
    assert batch["x"].shape == (4, 10) and torch.equal(batch["x"][:, 1:], batch["y"][:, :-1])
    assert int(batch["x"].max()) < 13
    assert bytes(task.evaluation().tokens()) == bytes(np.load(token_file)[-50:])
    wide = make_task(f"tokens:{token_file}", vocab=20)
    assert wide.vocab_size == wide.num_classes == 20 and wide.evaluation().vocab_size == 20
    with pytest.raises(UserError, match="largest token, 12, is not below vocab=12"):
        make_task(f"tokens:{token_file}", vocab=12)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.linspace(0, 1, 10), "integers"),
        (np.ones(10, dtype=bool), "integers"),
        (np.zeros((4, 5), dtype=np.int64), "1 dimension"),
        (np.zeros(0, dtype=np.int64), "empty"),
        (np.array([3, -1, 2]), "non-negative"),
    ],
)
def test_bad_token_arrays(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(UserError, match=message):
        make_task(f"tokens:{path}")


def test_token_files_that_are_not_one_array(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "archive.npz", x=np.arange(5))
    (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
    for name in ("objects.npy", "archive.npz", "garbage.npy"):
        with pytest.raises(UserError, match=name):
            make_task(f"tokens:{tmp_path / name}")


# ---------------------------------------------------------------------------------------------
# sequences


def test_sequences_shapes_labels_and_held_out_rows(sequence_file):
    task = make_task(f"sequences:{sequence_file}")
    assert (task.vocab_size, task.num_classes, task.chance_accuracy) == (9, 4, 0.25)
    x, y = np.load(sequence_file)["x"], np.load(sequence_file)["y"]
    batch = task.sample(6, 12, generator())
    assert batch["x"].shape == batch["y"].shape == (6, 12) and batch["y"].dtype == torch.long
    train_rows = {row.tobytes() for row in x[:18]}
    assert all(row.tobytes() in train_rows for row in batch["x"].numpy())
    assert (batch["y"][:, :3] == IGNORE).all() and (batch["y"][:, 3] == 2).all()
    held = task.evaluation()
    assert held.split == "test" and np.array_equal(held.rows()[0], x[18:]) and np.array_equal(held.rows()[1], y[18:])
    held_batch = held.sample(6, 12, generator())
    assert all(row.tobytes() not in train_rows for row in held_batch["x"].numpy())


def test_sequences_crop_shorter_lengths(sequence_file):
    task = make_task(f"sequences:{sequence_file}")
    x, y = task.rows()
    batch = task.sample(8, 5, generator())
    assert batch["x"].shape == (8, 5)
    for crop_x, crop_y in zip(batch["x"].numpy(), batch["y"].numpy()):
        hits = [
            (r, s)
            for r in range(len(x))
            for s in range(8)
            if np.array_equal(x[r, s : s + 5], crop_x) and np.array_equal(y[r, s : s + 5], crop_y)
        ]
        assert hits, "a crop is not one window of one row, x and y together"
    with pytest.raises(UserError, match="12 columns"):
        task.sample(2, 13, generator())


def test_sequence_options(sequence_file):
    task = make_task(f"sequences:{sequence_file}", vocab=16, classes=10, heldout=0.5)
    assert (task.vocab_size, task.num_classes) == (16, 10) and len(task.rows()[0]) == 10
    with pytest.raises(UserError, match="label, 3, is not below classes=3"):
        make_task(f"sequences:{sequence_file}", classes=3)
    with pytest.raises(UserError, match="vocab=8"):
        make_task(f"sequences:{sequence_file}", vocab=8)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"y": np.full((20, 12), 5) - 7}, "-1 where unlabelled"),
        ({"y": np.full((20, 12), IGNORE)}, "no labels"),
        ({"y": np.zeros((20, 11), dtype=np.int64)}, "one shape"),
        ({"x": np.zeros((20, 12))}, "integers"),
        ({"x": np.zeros(12, dtype=np.int64), "y": np.zeros(12, dtype=np.int64)}, "2 dimensions"),
        ({"x": np.zeros((0, 12), dtype=np.int64), "y": np.zeros((0, 12), dtype=np.int64)}, "empty"),
    ],
)
def test_bad_sequence_files(tmp_path, change, message):
    path = save_sequences(tmp_path / "bad.npz", **change)
    with pytest.raises(UserError, match=message):
        make_task(f"sequences:{path}")


def test_sequence_files_missing_arrays_rows_or_sense(tmp_path):
    np.savez(tmp_path / "only_x.npz", x=np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(UserError, match="missing y"):
        make_task(f"sequences:{tmp_path / 'only_x.npz'}")
    save_sequences(tmp_path / "one_row.npz", rows=1)
    with pytest.raises(UserError, match="held-out"):
        make_task(f"sequences:{tmp_path / 'one_row.npz'}")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is no zip archive")
    with pytest.raises(UserError, match="corrupt.npz"):
        make_task(f"sequences:{tmp_path / 'corrupt.npz'}")


# ---------------------------------------------------------------------------------------------
# all forms


@pytest.mark.parametrize("form", ["text", "tokens", "sequences"])
def test_missing_file_names_the_path(tmp_path, form):
    missing = tmp_path / "nowhere" / "data.bin"
    with pytest.raises(UserError, match="not found") as caught:
        make_task(f"{form}:{missing}")
    assert str(missing) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserError, match="give a path"):
        make_task(f"{form}:")
    with pytest.raises(UserError, match="is a directory"):
        make_task(f"{form}:{tmp_path}")


def test_rebuilt_from_its_spec_and_options(sequence_file, text_file):
    first = make_task(f"text:{text_file}", heldout=0.2)
    again = make_task(f"text:{text_file}", **json.loads(json.dumps({"heldout": 0.2})))
    assert first == again and first.name == f"text:{text_file}"
    assert torch.equal(first.sample(3, 8, generator(1))["x"], again.sample(3, 8, generator(1))["x"])
    assert load_task_class(f"sequences:{sequence_file}").__name__ == "SequenceFile"


def test_unknown_task_names_the_file_forms():
    with pytest.raises(UserError, match="text:PATH, tokens:PATH.npy, sequences:PATH.npz"):
        make_task("no-such-task")


def test_python_class_files_still_load(tmp_path):
    source = tmp_path / "mytask.py"
    source.write_text(
        "import torch\nclass Echo:\n    vocab_size = 3\n    def __init__(self, shift=1):\n"
        "        self.shift = shift\n    def sample(self, b, t, g):\n"
        "        x = torch.randint(0, 3, (b, t), generator=g)\n        return {'x': x, 'y': x}\n"
    )
    task = make_task(f"{source}:Echo", shift=2)
    assert task.shift == 2 and task.num_classes == 3


# ---------------------------------------------------------------------------------------------
# training on a file


@pytest.mark.parametrize("form, method", [("text", "bptt"), ("sequences", "smt+dmt")])
def test_tiny_training_run(tmp_path, text_file, sequence_file, form, method):
    path = text_file if form == "text" else sequence_file
    result = run(tiny_config(f"{form}:{path}", method), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert 0.0 <= saved["accuracy"] <= 1.0 and saved["task"] == f"{form}:{path}" == result["task"]
