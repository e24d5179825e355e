"""Validation and calibration samples: read from an .npz/.npy file or generated from the contract."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from kubeaccel_api.v1alpha1 import DType, TensorSpec

from kubeaccel_runtime.artifact_manifest import TensorInfo
from kubeaccel_runtime.onnx_io import numpy_dtype
from kubeaccel_runtime.optimize.errors import DataError

LABELS_KEY = "labels"
# Dynamic non-batch dimensions (e.g. sequence length) need some size to generate samples.
DEFAULT_DYNAMIC_DIM = 16
# Generated integer inputs without a declared range stay small: they are often token ids.
DEFAULT_INT_RANGE = (0, 2)

Feeds = dict[str, np.ndarray]


class SampleReader(Protocol):
    """What calibration needs: batches of model inputs keyed by input name."""

    def batches(self, size: int) -> Iterator[Feeds]:
        """Yield consecutive batches of at most `size` samples."""
        ...


@dataclass(frozen=True, eq=False)
class Samples:
    """A set of model inputs (first axis = sample) and optional integer class labels."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None
    origin: str

    @property
    def count(self) -> int:
        """Number of samples."""
        return int(next(iter(self.inputs.values())).shape[0])

    def batches(self, size: int) -> Iterator[Feeds]:
        """Yield consecutive batches of at most `size` samples."""
        for start in range(0, self.count, max(1, size)):
            yield {name: arr[start : start + size] for name, arr in self.inputs.items()}

    def take(self, n: int) -> Samples:
        """The first `n` samples."""
        labels = None if self.labels is None else self.labels[:n]
        return Samples({k: v[:n] for k, v in self.inputs.items()}, labels, self.origin)

    def first_batch(self, size: int) -> Feeds:
        """A batch of exactly `size` samples, repeating samples when there are fewer."""
        idx = np.arange(size) % self.count
        return {name: np.ascontiguousarray(arr[idx]) for name, arr in self.inputs.items()}


def _contract_dims(spec: TensorSpec | None, info: TensorInfo, batch: int) -> list[int]:
    shape = list(spec.shape) if spec is not None else list(info.shape)
    dims: list[int] = []
    for axis, dim in enumerate(shape):
        model_dim = info.shape[axis] if axis < len(info.shape) else -1
        if dim > 0:
            dims.append(dim)
        elif axis == 0:
            dims.append(batch)
        else:
            dims.append(model_dim if model_dim > 0 else DEFAULT_DYNAMIC_DIM)
    return dims


def generate(
    inputs: Sequence[TensorInfo],
    contract: Sequence[TensorSpec],
    *,
    count: int,
    seed: int,
) -> Samples:
    """Deterministic samples shaped by the contract (dynamic batch = samples), values in range."""
    rng = np.random.default_rng(seed)
    by_name = {t.name: t for t in contract}
    arrays: dict[str, np.ndarray] = {}
    for info in inputs:
        spec = by_name.get(info.name)
        dims = _contract_dims(spec, info, count)
        if dims and dims[0] != count:
            # A fixed batch dimension: stack `count` samples of that batch along axis 0.
            dims = [count * dims[0], *dims[1:]]
        low = spec.range.min if spec is not None and spec.range is not None else None
        high = spec.range.max if spec is not None and spec.range is not None else None
        arrays[info.name] = _random(rng, info.dtype, dims, low, high)
    return Samples(arrays, None, f"generated(seed={seed}, samples={count})")


def _random(
    rng: np.random.Generator, dtype: DType, dims: list[int], low: float | None, high: float | None
) -> np.ndarray:
    np_type = numpy_dtype(dtype)
    if dtype is DType.BOOL:
        return rng.integers(0, 2, size=dims).astype(np.bool_)
    if np.issubdtype(np_type, np.integer):
        lo = int(low) if low is not None else DEFAULT_INT_RANGE[0]
        hi = int(high) if high is not None else max(lo, DEFAULT_INT_RANGE[1] - 1)
        return rng.integers(lo, hi + 1, size=dims).astype(np_type)
    if low is not None and high is not None:
        values = rng.uniform(low, high, size=dims)
    else:
        values = rng.standard_normal(size=dims)
        if low is not None:
            values = np.maximum(values, low)
        if high is not None:
            values = np.minimum(values, high)
    return values.astype(np_type)


def read_file(path: Path, inputs: Sequence[TensorInfo], *, count: int | None) -> Samples:
    """Read samples from .npz (one array per input name, optional `labels`) or .npy (one input).

    `count` limits how many are used (the first ones); None uses every sample in the file.

    Arrays are loaded with allow_pickle=False; they are cast to the model's dtypes and their
    non-batch dimensions are checked against the model.

    Raises:
        DataError: unreadable file, missing input, wrong shape or inconsistent sample counts.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path.name}: cannot read samples ({exc})") from None
    raw: dict[str, np.ndarray]
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise DataError(
                f"{path.name}: an .npy file holds one array but the model has {len(inputs)} "
                "inputs; use an .npz with one array per input name"
            )
        raw = {inputs[0].name: loaded}
    else:
        with loaded:
            raw = {key: loaded[key] for key in loaded.files}
    arrays: dict[str, np.ndarray] = {}
    for info in inputs:
        if info.name not in raw:
            raise DataError(
                f"{path.name}: no array named {info.name!r} (has: {', '.join(sorted(raw))})"
            )
        arrays[info.name] = _fit(raw[info.name], info, path.name)
    labels = raw.get(LABELS_KEY)
    counts = {arr.shape[0] for arr in arrays.values()}
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path.name}: labels must be integer class ids, got {labels.dtype}")
        counts.add(labels.shape[0])
    if len(counts) != 1:
        raise DataError(f"{path.name}: arrays disagree on the number of samples: {sorted(counts)}")
    held = counts.pop()
    n = held if count is None else min(count, held)
    if n < 1:
        raise DataError(f"{path.name}: no samples")
    samples = Samples(arrays, labels, f"file({path.name})")
    return samples.take(n)


def _fit(array: np.ndarray, info: TensorInfo, where: str) -> np.ndarray:
    if array.dtype == object:
        raise DataError(f"{where}: array {info.name!r} has dtype object")
    if array.ndim != len(info.shape):
        raise DataError(
            f"{where}: {info.name!r} has rank {array.ndim}, the model expects "
            f"{len(info.shape)} (shape {info.shape})"
        )
    for axis, (got, want) in enumerate(zip(array.shape, info.shape, strict=True)):
        if axis > 0 and want > 0 and got != want:
            raise DataError(
                f"{where}: {info.name!r} has shape {list(array.shape)}, the model expects "
                f"{info.shape}"
            )
    target = numpy_dtype(info.dtype)
    if array.dtype != target:
        kind_ok = np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
        if not kind_ok:
            raise DataError(f"{where}: {info.name!r} has dtype {array.dtype}, not numeric")
        array = array.astype(target)
    return np.ascontiguousarray(array)
