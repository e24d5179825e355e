"""Real labelled data for the example models: scikit-learn's bundled 8x8 handwritten digits.

The 1797 images ship inside scikit-learn (no download). They are split once, stratified and
with a fixed seed, into disjoint train / calibration / validation sets, scaled to [0, 1] and
upscaled with bilinear interpolation to each model's input size. numpy only: no torch here.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

NUM_CLASSES = 10
DIGITS_SIZE = 8
DIGITS_MAX = 16.0  # load_digits pixels are integers 0..16
VAL_FRACTION = 0.3
CALIB_FRACTION = 0.1
DEFAULT_SEED = 0

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Digits:
    """All digits: images (N, 8, 8) float32 in [0, 1] and labels (N,) int64."""

    images: FloatArray
    labels: IntArray


@dataclass(frozen=True)
class SplitIndices:
    """Disjoint sample indices of the train, calibration and validation sets (sorted)."""

    train: IntArray
    calib: IntArray
    val: IntArray


def load_digits_data() -> Digits:
    """The bundled digits, scaled from 0..16 to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float64) / DIGITS_MAX).astype(np.float32)
    return Digits(images=images, labels=np.asarray(bunch.target, dtype=np.int64))


def split_indices(labels: IntArray, seed: int = DEFAULT_SEED) -> SplitIndices:
    """Stratified, seeded split into disjoint train / calibration / validation indices."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < VAL_FRACTION + CALIB_FRACTION < 1.0:  # pragma: no cover - constants
        raise ValueError("split fractions must leave room for training data")
    all_idx = np.arange(len(labels), dtype=np.int64)
    rest, val = train_test_split(
        all_idx, test_size=VAL_FRACTION, stratify=labels, random_state=seed
    )
    calib_share = CALIB_FRACTION / (1.0 - VAL_FRACTION)
    train, calib = train_test_split(
        rest, test_size=calib_share, stratify=labels[rest], random_state=seed
    )
    return SplitIndices(
        train=np.sort(np.asarray(train, dtype=np.int64)),
        calib=np.sort(np.asarray(calib, dtype=np.int64)),
        val=np.sort(np.asarray(val, dtype=np.int64)),
    )


def _bilinear_matrix(n_in: int, n_out: int) -> npt.NDArray[np.float64]:
    """(n_out, n_in) weights of 1-D bilinear resampling, half-pixel centres, edge-clamped.

    Same convention as torch's `interpolate(mode="bilinear", align_corners=False)` without
    antialiasing, so the numpy pipeline matches what a torch user would do.
    """
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def upscale(images: FloatArray, size: int) -> FloatArray:
    """Bilinear resize of (N, h, w) images to (N, size, size), clipped to [0, 1]."""
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (N, h, w), got {images.shape}")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    rows = _bilinear_matrix(images.shape[1], size)
    cols = _bilinear_matrix(images.shape[2], size)
    out: npt.NDArray[np.float64] = np.einsum(
        "yh,nhw,xw->nyx", rows, images.astype(np.float64), cols, optimize=True
    )
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def save_npz(path: Path, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
    """Write a compressed .npz whose bytes depend only on the arrays (and zlib).

    `numpy.savez` stamps each member with the current time; fixed timestamps make the
    file (and its sha256) reproducible. Compressed because the files are committed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    tmp.replace(path)
