"""TensorFlow Datasets through ``tfds.data_source`` (random access, no TensorFlow at run time)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxadv.data._dataset import Channels, Dataset, DatasetInfo, check_channels
from jaxadv.data._images import convert_channels, normalize_size, resize_array, to_float32


class RecordDataset(Dataset):
    """A random-access sequence of ``{image_key: HWC array, label_key: int}`` records."""

    def __init__(
        self,
        records: Sequence[Any],
        info: DatasetInfo,
        *,
        image_key: str,
        label_key: str,
        size: tuple[int, int] | None,
        channels: int | None,
    ):
        super().__init__(info)
        self._records = records
        self._image_key = image_key
        self._label_key = label_key
        self._size = size
        self._channels = channels

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w, k = self.image_shape
        x = np.empty((indices.size, h, w, k), np.float32)
        y = np.empty((indices.size,), np.int32)
        # One record at a time: ArrayRecord's batched __getitems__ is not available under
        # tfds.testing.mock_data, and per-record reads are what tfds documents for data sources.
        for row, i in enumerate(indices):
            image, label = _unpack(self._records[int(i)], int(i), self._image_key, self._label_key)
            img = (
                resize_array(image, self._size)
                if self._size is not None
                else to_float32(image[None])[0]
            )
            img = convert_channels(img[None], self._channels)[0]
            if img.shape != (h, w, k):
                raise ValueError(
                    f"record {int(i)} has image shape {image.shape}, unlike the first record's; "
                    "pass size=(height, width) to resize every image"
                )
            if not 0 <= label < self.num_classes:
                raise ValueError(
                    f"record {int(i)} has label {label}, outside 0..{self.num_classes - 1}"
                )
            x[row] = img
            y[row] = label
        return x, y


def _unpack(record: Any, i: int, image_key: str, label_key: str) -> tuple[np.ndarray, int]:
    try:
        image, label = record[image_key], record[label_key]
    except (KeyError, TypeError, IndexError) as e:
        keys = list(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(
            f"record {i} has no {image_key!r} / {label_key!r} entries (it has {keys}); pass "
            "image_key= and label_key="
        ) from e
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"record {i}: image must be HWC with 1 or 3 channels, got shape {image.shape}"
        )
    if not (image.dtype in (np.uint8, np.uint16) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"record {i}: image dtype {image.dtype}; expected uint8")
    lab = np.asarray(label)
    if lab.shape != () or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(
            f"record {i}: label must be one integer, got {lab.dtype} shape {lab.shape}; "
            "multi-label records are not supported here"
        )
    return image, int(lab)


def from_records(
    records: Sequence[Any],
    *,
    num_classes: int,
    image_key: str = "image",
    label_key: str = "label",
    size: int | tuple[int, int] | None = None,
    channels: Channels | None = None,
    name: str = "records",
    split: str = "",
    label_names: Sequence[str] | None = None,
) -> Dataset:
    """Wrap a random-access sequence of ``{'image': uint8 HWC, 'label': int}`` records.

    Any object with ``len`` and integer ``__getitem__`` works: a list of dicts, a
    ``tfds.data_source``, a Grain or Hugging Face map-style source yielding such dicts.

    Args:
      records: the records.
      num_classes: number of classes.
      image_key: the image entry of a record.
      label_key: the label entry of a record.
      size: resize every image (bilinear) to ``(height, width)``; needed when sizes vary.
      channels: 1 (grey) or 3 (RGB); ``None`` keeps the first record's.
      name: dataset name for ``info``.
      split: split name for ``info``.
      label_names: optional class names.

    Returns:
      A :class:`~jaxadv.data.Dataset`.
    """
    hw = normalize_size(size)
    check_channels(channels)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    n = len(records)
    if n == 0:
        raise ValueError(f"{name}/{split} has no records")
    first, _ = _unpack(records[0], 0, image_key, label_key)
    h, w = hw if hw is not None else first.shape[:2]
    k = channels or first.shape[-1]
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"got {len(label_names)} label_names for {num_classes} classes")
    info = DatasetInfo(
        name=name,
        split=split,
        num_examples=n,
        image_shape=(int(h), int(w), int(k)),
        num_classes=int(num_classes),
        multi_label=False,
        label_names=tuple(label_names) if label_names is not None else None,
        source=type(records).__name__,
    )
    return RecordDataset(
        records, info, image_key=image_key, label_key=label_key, size=hw, channels=k
    )


def load_tfds(
    name: str,
    split: str = "test",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    num_classes: int | None = None,
    size: int | tuple[int, int] | None = None,
    channels: Channels | None = None,
) -> Dataset:
    """A TensorFlow Datasets split through ``tfds.data_source`` (random access, no TensorFlow).

    Needs the ``tfds`` extra (``pip install 'jaxadv[tfds]'``); TensorFlow itself is not needed.
    The dataset must be (or, with ``download=True``, will be) prepared in the ArrayRecord format.

    Args:
      name: the TFDS name, e.g. ``"mnist"`` or ``"cifar10"`` (``"name/config:version"`` works).
      split: the split, e.g. ``"test"`` or ``"train[:10%]"``.
      data_dir: TFDS data directory (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      download: let TFDS download and prepare the data when absent.
      image_key: the image feature.
      label_key: the integer label feature.
      num_classes: class count; read from the ``ClassLabel`` feature when omitted.
      size: resize every image (bilinear) to ``(height, width)``.
      channels: 1 (grey) or 3 (RGB); ``None`` keeps the stored channels.

    Returns:
      A :class:`~jaxadv.data.Dataset` yielding float32 ``[B, H, W, K]`` and int32 ``[B]``.

    Raises:
      ImportError: tensorflow-datasets is not installed.

    Example:
      >>> from jaxadv.data import load_tfds
      >>> ds = load_tfds("mnist", "test")  # doctest: +SKIP
      >>> ds.image_shape, ds.num_classes  # doctest: +SKIP
      ((28, 28, 1), 10)
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "jaxadv.data.load_tfds needs tensorflow-datasets: pip install 'jaxadv[tfds]' "
            "(TensorFlow itself is not needed)"
        ) from e
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    label_names = None
    feature = _feature(source, label_key)
    if num_classes is None:
        num_classes = getattr(feature, "num_classes", None)
        if num_classes is None:
            raise ValueError(
                f"cannot read the class count of {name!r} feature {label_key!r}; pass num_classes="
            )
    names = getattr(feature, "names", None)
    if names is not None and len(names) == num_classes:
        label_names = [str(n) for n in names]
    return from_records(
        source,
        num_classes=int(num_classes),
        image_key=image_key,
        label_key=label_key,
        size=size,
        channels=channels,
        name=name,
        split=split,
        label_names=label_names,
    )


def _feature(source: Any, key: str) -> Any:
    info = getattr(source, "dataset_info", None)
    try:
        return info.features[key]
    except (AttributeError, KeyError, TypeError):
        return None
