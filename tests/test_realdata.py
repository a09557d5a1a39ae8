"""Real data from the npm packages in data/ (installed by `make test`): MNIST, Quick, Draw!, Brown."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from smtrnn.errors import UserError
from smtrnn.tasks import make_task
from smtrnn.tasks.pixels import PIXELS, mnist_split
from smtrnn.tasks.text import _tinystories_text, brown_fiction_files, brown_prose


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def crop_starts(stream: np.ndarray, crops: torch.Tensor) -> list[int]:
    """Where in ``stream`` each crop (a row) begins; fails if a row is not a piece of the stream."""
    windows = np.lib.stride_tricks.sliding_window_view(stream, crops.shape[1])
    starts = []
    for crop in crops.numpy():
        matches = np.flatnonzero((windows == crop).all(axis=1))
        assert len(matches) > 0, "a crop is not a contiguous piece of the stream"
        starts.append(int(matches[0]))
    return starts


def as_byte_strings(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


# ---------------------------------------------------------------------------------------------
# MNIST


def test_mnist_is_complete_and_well_formed():
    for split, count in (("train", 60_000), ("test", 10_000)):
        images, labels = mnist_split(split)
        assert images.shape == (count, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (count,) and set(np.unique(labels)) == set(range(10))
        assert images.min() == 0 and images.max() == 255
    assert np.bincount(mnist_split("train")[1])[0] == 5923  # the published class counts


def test_mnist_through_the_registry():
    task = make_task("mnist", limit=4)
    assert (task.vocab_size, task.num_classes, task.image_shape) == (256, 256, (28, 28))
    assert task.tokens().shape == (4 * PIXELS,)
    assert np.array_equal(task.images(), mnist_split("train")[0][:4])


def test_crops_are_next_token_pairs_and_deterministic():
    task = make_task("mnist", limit=6)
    batch = task.sample(8, 900, generator(3))
    assert batch["x"].shape == batch["y"].shape == (8, 900) and batch["x"].dtype == torch.long
    assert torch.equal(batch["x"][:, 1:], batch["y"][:, :-1])  # y_t = x_{t+1}
    assert bool((batch["y"] >= 0).all())  # every position labelled
    again = task.sample(8, 900, generator(3))
    assert torch.equal(batch["x"], again["x"]) and torch.equal(batch["y"], again["y"])
    assert not torch.equal(batch["x"], task.sample(8, 900, generator(4))["x"])


def test_aligned_crops_start_at_image_boundaries_and_unaligned_do_not_have_to():
    length = 1000
    aligned = make_task("mnist", limit=5)
    batch = aligned.sample(16, length, generator())
    crops = torch.cat([batch["x"], batch["y"][:, -1:]], dim=1)
    assert all(start % PIXELS == 0 for start in crop_starts(aligned.tokens(), crops))

    anywhere = make_task("mnist", limit=5, align=False)
    batch = anywhere.sample(16, length, generator())
    crops = torch.cat([batch["x"], batch["y"][:, -1:]], dim=1)
    assert any(start % PIXELS != 0 for start in crop_starts(anywhere.tokens(), crops))


def test_mnist_held_out_split_is_the_test_set_and_disjoint_from_train():
    task = make_task("mnist", limit=100)
    held_out = task.evaluation()
    assert held_out.split == "test" and task.split == "train"
    assert np.array_equal(held_out.images(), mnist_split("test")[0][:100])
    test_images = as_byte_strings(mnist_split("test")[0])
    assert not test_images & as_byte_strings(mnist_split("train")[0])
    batch = held_out.sample(4, 800, generator())
    starts = crop_starts(held_out.tokens(), torch.cat([batch["x"], batch["y"][:, -1:]], dim=1))
    assert all(start % PIXELS == 0 for start in starts)


def test_mnist_digit_subset():
    task = make_task("mnist", digits="0,1")
    assert task.digits == [0, 1] and len(task.images()) == 5923 + 6742


# ---------------------------------------------------------------------------------------------
# Quick, Draw!


def test_quickdraw_category_subset_interleaved_and_split():
    task = make_task("quickdraw", classes=["cat", "airplane"])
    train, test = task.images(), task.evaluation().images()
    assert train.shape == (180, 28, 28) and test.shape == (20, 28, 28)  # 90 + 10 sketches per category
    assert train.dtype == np.uint8 and train.max() == 255 and train.min() == 0
    assert not as_byte_strings(train) & as_byte_strings(test)
    only_cats = make_task("quickdraw", classes="cat").images()
    assert np.array_equal(train[0::2], only_cats)  # sketches alternate cat, airplane, cat, ...
    assert make_task("quickdraw", classes=3, limit=5).tokens().shape == (5 * PIXELS,)


def test_quickdraw_unknown_category_suggests_names():
    with pytest.raises(UserError, match="did you mean cat"):
        make_task("quickdraw", classes=["catt"]).sample(2, 10, generator())


# ---------------------------------------------------------------------------------------------
# Brown corpus


def test_brown_detokenises_form_c():
    tagged = (
        "\n\n\tChapter/nn-tl-hl 6/cd-tl-hl\n``/`` How's/wrb+bez Scotty/np ''/'' ?/. ?/.\n"
        "He/pps said/vbd ,/, '/' Go/vb '/' ;/. ;/. then/rb (/( quietly/rb )/) left/vbd ./.\n\n"
        "\t``/`` Stop/vb !/. !/.\n\n\n''/'' She/pps ran/vbd ./.\n"
    )
    assert brown_prose(tagged) == 'Chapter 6\n"How\'s Scotty?" He said, \'Go\'; then (quietly) left.\n"Stop!"\nShe ran.'


def test_brown_is_plain_prose_with_a_disjoint_held_out_part():
    train_files, test_files = brown_fiction_files("train"), brown_fiction_files("test")
    assert (len(train_files), len(test_files)) == (113, 13) and not set(train_files) & set(test_files)
    assert {path.name[1] for path in test_files} == set("klmnpr")  # every fiction genre is held out too

    task = make_task("brown")
    assert task.text and (task.vocab_size, task.num_classes) == (256, 256)
    train = bytes(task.tokens())
    test = bytes(task.evaluation().tokens())
    assert 1_100_000 < len(train) < 1_400_000 and 100_000 < len(test) < 250_000
    text = train.decode("utf-8")
    assert "/" not in text and "``" not in text and "''" not in text  # POS tags and quote tokens are gone
    prose_characters = sum(character.isalpha() or character in " \n.,'\"" for character in text)
    assert prose_characters / len(text) > 0.97
    for offset in range(0, len(test) - 200, len(test) // 5):
        assert test[offset : offset + 200] not in train

    batch = make_task("brown", limit=5000).sample(4, 64, generator())
    assert torch.equal(batch["x"][:, 1:], batch["y"][:, :-1])


# ---------------------------------------------------------------------------------------------
# errors a user can meet


@pytest.mark.parametrize("name", ["mnist", "quickdraw", "brown"])
def test_missing_data_names_the_fix(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SMTRNN_DATA", str(tmp_path))
    task = make_task(name)  # constructing never touches the files
    with pytest.raises(UserError, match=r"npm ci --ignore-scripts --prefix data") as error:
        task.sample(2, 10, generator())
    assert "make test" in str(error.value) and str(tmp_path) in str(error.value)


@pytest.mark.parametrize(
    "name, options",
    [
        ("mnist", {"limit": 0}),
        ("mnist", {"split": "validation"}),
        ("mnist", {"digits": [12]}),
        ("mnist", {"align": "yes"}),
        ("quickdraw", {"classes": 0}),
        ("brown", {"limit": -5}),
    ],
)
def test_bad_options_are_user_errors(name, options):
    with pytest.raises(UserError):
        make_task(name, **options)


def test_length_longer_than_the_data_is_a_user_error():
    with pytest.raises(UserError, match="raise limit"):
        make_task("mnist", limit=1).sample(2, PIXELS, generator())


def test_tinystories_without_datasets_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    _tinystories_text.cache_clear()
    with pytest.raises(UserError, match=r"pip install 'smtrnn\[tinystories\]'; offline use brown"):
        make_task("tinystories", limit=100).sample(2, 10, generator())


def test_tinystories_streams_stories_up_to_the_limit(monkeypatch):
    requested = []

    def load_dataset(name, split, streaming):
        requested.append((name, split, streaming))
        return iter([{"text": f" Story {index} about a cat. "} for index in range(1000)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    _tinystories_text.cache_clear()
    try:
        task = make_task("tinystories", limit=60)
        stories = b"".join(b"Story %d about a cat.\n\n" % index for index in range(3))  # stripped, blank line apart
        assert bytes(task.tokens()) == stories[:60]
        task.evaluation().tokens()
        assert requested == [("roneneldan/TinyStories", "train", True), ("roneneldan/TinyStories", "validation", True)]
    finally:
        _tinystories_text.cache_clear()
