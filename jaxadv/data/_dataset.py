"""The one batch interface shared by every data source.

Every loader returns a :class:`Dataset`: ``len(ds)``, ``ds.num_classes``, ``ds.image_shape``
``(H, W, K)``, ``ds.batches(batch_size, ...)`` yielding ``(x, y)`` numpy arrays with ``x`` float32
``[B, H, W, K]`` in ``[0, 1]`` and ``y`` int32 ``[B]`` (``[B, L]`` multi-hot for multi-label data),
and ``take(n)`` / ``arrays()`` for small sets. Images are converted to float per batch, so no source
ever needs the whole dataset as float32 in memory.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from jaxadv.data._images import convert_channels, to_float32

Channels = Literal[1, 3]

#: Above this many bytes of float32 images, ``Dataset.arrays()`` refuses and points to batches().
DEFAULT_MAX_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a :class:`Dataset` holds.

    Attributes:
      name: dataset name, e.g. ``"pneumoniamnist_64"``.
      split: ``"train"``, ``"val"``, ``"test"`` or a source-specific split string.
      num_examples: number of examples ``N``.
      image_shape: ``(H, W, K)`` of one image as yielded (after any resize or channel conversion).
      num_classes: number of classes ``C`` (for multi-label data: the number of findings ``L``).
      multi_label: ``True`` when labels are multi-hot ``[N, L]`` (e.g. ChestMNIST). Attacks need one
        integer label per example: pick one finding with :func:`jaxadv.data.select_finding`.
      label_names: optional class (or finding) names, index = label.
      source: where the data came from (a path or a description).
    """

    name: str
    split: str
    num_examples: int
    image_shape: tuple[int, int, int]
    num_classes: int
    multi_label: bool = False
    label_names: tuple[str, ...] | None = None
    source: str = ""


class Dataset(abc.ABC):
    """A finite, indexable image-classification dataset with lazy float conversion.

    Subclasses implement :meth:`_get` (decode the examples at given indices); everything else
    (index checks, shuffling, batching) lives here.
    """

    def __init__(self, info: DatasetInfo):
        self._info = info

    @abc.abstractmethod
    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode examples ``indices`` (int64 [B], valid, any order) -> (x f32 [B,H,W,K], y i32)."""

    # -- description -----------------------------------------------------------------------------

    @property
    def info(self) -> DatasetInfo:
        return self._info

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def split(self) -> str:
        return self._info.split

    @property
    def num_classes(self) -> int:
        return self._info.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._info.image_shape

    @property
    def multi_label(self) -> bool:
        return self._info.multi_label

    @property
    def label_names(self) -> tuple[str, ...] | None:
        return self._info.label_names

    def __len__(self) -> int:
        return self._info.num_examples

    def __repr__(self) -> str:
        i = self._info
        ml = ", multi_label=True" if i.multi_label else ""
        return (
            f"{type(self).__name__}(name={i.name!r}, split={i.split!r}, n={i.num_examples}, "
            f"image_shape={i.image_shape}, num_classes={i.num_classes}{ml})"
        )

    # -- access ----------------------------------------------------------------------------------

    def get(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Examples at ``indices``.

        Args:
          indices: integer indices ``[B]`` in ``[0, len(self))``, any order, repeats allowed.

        Returns:
          ``(x, y)``: float32 ``[B, H, W, K]`` in ``[0, 1]`` and int32 ``[B]`` (``[B, L]`` if
          multi-label).
        """
        idx = np.asarray(indices)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise TypeError(
                f"indices must be a 1-D sequence of integers, got shape {idx.shape} dtype "
                f"{idx.dtype}"
            )
        idx = idx.astype(np.int64)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(
                f"indices must lie in [0, {n}) for this dataset of {n} examples; got "
                f"[{idx.min()}, {idx.max()}]"
            )
        return self._get(idx)

    def labels(self) -> np.ndarray:
        """All labels ``int32[N]`` (``[N, L]`` multi-hot), without decoding images where the
        subclass keeps them in memory (the default decodes every example once)."""
        return self.get(np.arange(len(self)))[1]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        key: Any = None,
        drop_remainder: bool = False,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate over the dataset in batches; each example appears exactly once per pass.

        Args:
          batch_size: examples per batch ``B``.
          shuffle: visit examples in a random order drawn from ``key``.
          key: randomness for ``shuffle``: an int seed, a ``jax.random.key`` (or legacy uint32
            ``PRNGKey``), or a ``numpy.random.Generator``. Required when ``shuffle=True``: jaxadv
            never seeds from the clock.
          drop_remainder: drop the last, smaller batch. Under ``jit`` a smaller last batch compiles
            a second program; drop it (or pad it yourself) when that matters.

        Yields:
          ``(x, y)``: float32 ``[B, H, W, K]`` in ``[0, 1]`` and int32 ``[B]`` (``[B, L]`` if
          multi-label) numpy arrays.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size must be a positive int, got {batch_size!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size}")
        n = len(self)
        order = _permutation(n, key) if shuffle else np.arange(n, dtype=np.int64)
        stop = n - n % batch_size if drop_remainder else n
        return self._iterate(order, int(batch_size), stop)

    def _iterate(
        self, order: np.ndarray, batch_size: int, stop: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, stop, batch_size):
            yield self._get(order[start : min(start + batch_size, stop)])

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``min(n, len(self))`` examples as ``(x, y)`` arrays (for small sets)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"take(n) needs a non-negative int, got {n!r}")
        return self._get(np.arange(min(int(n), len(self)), dtype=np.int64))

    def arrays(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
        """The whole dataset as ``(x, y)`` arrays; refuses above ``max_bytes`` of float32 images.

        Raises:
          ValueError: if the images would take more than ``max_bytes`` as float32; iterate with
            :meth:`batches` instead, or raise ``max_bytes``.
        """
        h, w, k = self.image_shape
        need = len(self) * h * w * k * 4
        if need > max_bytes:
            raise ValueError(
                f"{self.name}/{self.split} would take {need / 2**20:.0f} MiB as float32, over "
                f"max_bytes={max_bytes}; iterate with ds.batches(batch_size) or pass a larger "
                "max_bytes"
            )
        return self._get(np.arange(len(self), dtype=np.int64))


def _permutation(n: int, key: Any) -> np.ndarray:
    if key is None:
        raise ValueError(
            "shuffle=True needs key= (an int seed, a jax.random.key or a numpy Generator); "
            "jaxadv never seeds from the clock"
        )
    if isinstance(key, np.random.Generator):
        return key.permutation(n).astype(np.int64)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return np.random.default_rng(int(key)).permutation(n).astype(np.int64)
    import jax

    if isinstance(key, jax.Array):
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        legacy = key.dtype == np.uint32 and key.shape == (2,)
        if typed or legacy:
            return np.asarray(jax.random.permutation(key, n)).astype(np.int64)
    raise TypeError(
        f"key must be an int seed, a jax.random.key or a numpy Generator, got {type(key).__name__}"
    )


class ArrayDataset(Dataset):
    """A dataset over in-memory or memory-mapped arrays.

    ``images`` are uint8 (scaled by 1/255), uint16 (by 1/65535) or floating (assumed in
    ``[0, 1]``), shaped ``[N, H, W]`` (grey) or ``[N, H, W, K]`` with ``K`` in ``{1, 3}``; they stay
    in their stored dtype (a ``np.memmap`` stays on disk) and become float32 one batch at a time.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        info: DatasetInfo,
        *,
        channels: Channels | None = None,
    ):
        super().__init__(info)
        self._images = images
        self._labels = labels
        self._channels = channels

    @property
    def storage(self) -> np.ndarray:
        """The images as stored (e.g. uint8 ``[N, H, W]``); a read-only ``np.memmap`` when mapped."""
        return self._images

    def labels(self) -> np.ndarray:
        return self._labels

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = _gather(self._images, indices)
        x = convert_channels(to_float32(raw), self._channels)
        return x, self._labels[indices]


def _gather(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``arr[idx]``, reading a memory map in increasing order (contiguous runs as one slice)."""
    if idx.size == 0:
        return np.asarray(arr[:0])
    if idx.size > 1 and np.all(np.diff(idx) == 1):
        return np.asarray(arr[int(idx[0]) : int(idx[-1]) + 1])
    if idx.size > 1 and not np.all(np.diff(idx) >= 0):
        order = np.argsort(idx, kind="stable")
        out = np.empty((idx.size, *arr.shape[1:]), arr.dtype)
        out[order] = np.asarray(arr[idx[order]])
        return out
    return np.asarray(arr[idx])


def check_image_array(images: Any, *, what: str) -> None:
    """Raise a ValueError / TypeError unless ``images`` is ``[N, H, W]`` or ``[N, H, W, 1|3]``."""
    shape = getattr(images, "shape", None)
    dtype = getattr(images, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{what} must be an array, got {type(images).__name__}")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
        raise ValueError(
            f"{what} must be [N, H, W] (grey) or [N, H, W, K] with K in {{1, 3}} (NHWC); got "
            f"shape {tuple(shape)}. 3-D volumes (MedMNIST 3D) are not supported; channels-first "
            "arrays need images.transpose(0, 2, 3, 1)."
        )
    if not (dtype in (np.uint8, np.uint16) or np.issubdtype(dtype, np.floating)):
        raise TypeError(
            f"{what} has dtype {dtype}; use uint8 (0-255), uint16 or floating images in [0, 1]"
        )


def check_labels(
    labels: Any, n: int, *, what: str, num_classes: int | None = None
) -> tuple[np.ndarray, bool, int]:
    """Validate and convert labels.

    Returns:
      ``(y, multi_label, inferred_num_classes)``: int32 ``[N]`` for ``[N]`` / ``[N, 1]`` labels,
      int32 multi-hot ``[N, L]`` for ``[N, L > 1]`` labels.
    """
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_:
        raise TypeError(f"{what} has dtype {y.dtype}; labels must be integers")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(
            f"{what} must be [N] or [N, 1] (one class per example) or [N, L] (multi-hot), with "
            f"N = {n} matching the images; got shape {tuple(np.shape(labels))}"
        )
    multi = y.ndim == 2
    if multi:
        if y.size and not np.all((y == 0) | (y == 1)):
            raise ValueError(f"{what} is [N, L] multi-label and must hold only 0 and 1")
        inferred = y.shape[1]
        if num_classes is not None and num_classes != inferred:
            raise ValueError(
                f"{what} has {inferred} findings per example but num_classes={num_classes}"
            )
        return y.astype(np.int32), True, inferred
    if y.size and y.min() < 0:
        raise ValueError(f"{what} contains negative labels (min {y.min()}); labels are 0..C-1")
    inferred = int(y.max()) + 1 if y.size else 0
    if num_classes is not None and inferred > num_classes:
        raise ValueError(
            f"{what} contains label {inferred - 1} but num_classes={num_classes}; labels must lie "
            "in 0..num_classes-1"
        )
    return y.astype(np.int32), False, inferred


def from_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int | None = None,
    name: str = "arrays",
    split: str = "",
    label_names: Sequence[str] | None = None,
    channels: Channels | None = None,
) -> Dataset:
    """Wrap image and label arrays (or memory maps) in the :class:`Dataset` interface.

    Args:
      images: ``[N, H, W]`` or ``[N, H, W, K]``, ``K`` in ``{1, 3}``; uint8, uint16 or float in
        ``[0, 1]``. Kept as given (not copied, not converted) until a batch is read.
      labels: ``[N]`` / ``[N, 1]`` integer classes, or ``[N, L]`` multi-hot (multi-label).
      num_classes: number of classes; inferred as ``max(labels) + 1`` when omitted.
      name: dataset name for ``info``.
      split: split name for ``info``.
      label_names: optional names, index = label.
      channels: convert to 1 (grey, ITU-R 601 luma) or 3 (grey repeated) channels; ``None`` keeps
        the stored channels.

    Returns:
      A :class:`Dataset`.

    Example:
      >>> import numpy as np
      >>> from jaxadv.data import from_arrays
      >>> ds = from_arrays(np.zeros((5, 8, 8), np.uint8), np.array([0, 1, 0, 1, 1]))
      >>> [x.shape for x, _ in ds.batches(2)]
      [(2, 8, 8, 1), (2, 8, 8, 1), (1, 8, 8, 1)]
    """
    check_image_array(images, what="images")
    y, multi, inferred = check_labels(
        labels, images.shape[0], what="labels", num_classes=num_classes
    )
    info = make_info(
        images,
        y,
        multi_label=multi,
        num_classes=num_classes if num_classes is not None else max(inferred, 1),
        name=name,
        split=split,
        label_names=label_names,
        channels=channels,
        source="arrays",
    )
    return ArrayDataset(images, y, info, channels=channels)


def make_info(
    images: np.ndarray,
    y: np.ndarray,
    *,
    multi_label: bool,
    num_classes: int,
    name: str,
    split: str,
    label_names: Sequence[str] | None,
    channels: Channels | None,
    source: str,
) -> DatasetInfo:
    check_channels(channels)
    if not multi_label and y.size and int(y.max()) >= num_classes:
        raise ValueError(
            f"labels contain {int(y.max())} but num_classes={num_classes}; labels must lie in "
            "0..num_classes-1"
        )
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"got {len(label_names)} label_names for {num_classes} classes")
    h, w = int(images.shape[1]), int(images.shape[2])
    k = int(images.shape[3]) if images.ndim == 4 else 1
    return DatasetInfo(
        name=name,
        split=split,
        num_examples=int(images.shape[0]),
        image_shape=(h, w, channels or k),
        num_classes=int(num_classes),
        multi_label=multi_label,
        label_names=tuple(label_names) if label_names is not None else None,
        source=source,
    )


def check_channels(channels: Any) -> None:
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 (grey), 3 (RGB) or None, got {channels!r}")


class _MappedLabels(Dataset):
    """``base`` with labels passed through ``fn`` and a new ``info``."""

    def __init__(self, base: Dataset, fn: Callable[[np.ndarray], np.ndarray], info: DatasetInfo):
        super().__init__(info)
        self._base = base
        self._fn = fn

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = self._base._get(indices)
        return x, self._fn(y)


def select_finding(ds: Dataset, finding: int | str) -> Dataset:
    """Turn one finding of a multi-label dataset into a binary task (0 absent, 1 present).

    Attacks take one integer label per example; multi-label data such as ChestMNIST (14 findings,
    multi-hot ``[N, 14]`` labels) must first be reduced to a single-label task.

    Args:
      ds: a multi-label dataset (``ds.multi_label`` is ``True``).
      finding: the finding's column index, or its name from ``ds.label_names`` (case-insensitive,
        e.g. ``"pneumonia"`` for ChestMNIST).

    Returns:
      A :class:`Dataset` with ``num_classes=2``, ``multi_label=False`` and int32 ``[B]`` labels.
    """
    if not ds.multi_label:
        raise ValueError(
            f"{ds.name} is single-label already; select_finding needs multi-label data"
        )
    num = ds.num_classes
    if isinstance(finding, str):
        names = [n.lower() for n in (ds.label_names or ())]
        if finding.lower() not in names:
            raise ValueError(
                f"unknown finding {finding!r} for {ds.name}; known: {list(ds.label_names or ())}. "
                "Pass a column index instead."
            )
        col = names.index(finding.lower())
    elif isinstance(finding, (int, np.integer)) and not isinstance(finding, bool):
        col = int(finding)
        if not 0 <= col < num:
            raise ValueError(f"finding index must lie in [0, {num}), got {col}")
    else:
        raise TypeError(f"finding must be an int column or a name, got {type(finding).__name__}")
    fname = ds.label_names[col] if ds.label_names else f"finding {col}"
    info = dataclasses.replace(
        ds.info,
        name=f"{ds.name}[{fname}]",
        num_classes=2,
        multi_label=False,
        label_names=(f"no {fname}", fname),
    )
    return _MappedLabels(ds, lambda y: np.ascontiguousarray(y[:, col]), info)
