"""Image folders: ``root/<class_name>/*.png|jpg|jpeg``, decoded with Pillow one batch at a time."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jaxadv.data._dataset import Channels, Dataset, DatasetInfo, check_channels
from jaxadv.data._images import normalize_size, pil_channels, pil_to_array

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageFolderDataset(Dataset):
    """Image files with their labels; decoded, converted and resized per batch."""

    def __init__(
        self,
        files: Sequence[pathlib.Path],
        labels: np.ndarray,
        info: DatasetInfo,
        *,
        size: tuple[int, int] | None,
    ):
        super().__init__(info)
        self._files = tuple(files)
        self._labels = labels
        self._size = size

    @property
    def files(self) -> tuple[pathlib.Path, ...]:
        """The image files, in label order then file-name order (index = example)."""
        return self._files

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w, k = self.image_shape
        x = np.empty((indices.size, h, w, k), np.float32)
        for row, i in enumerate(indices):
            path = self._files[int(i)]
            img = _decode(path, k, self._size)
            if img.shape != (h, w, k):
                raise ValueError(
                    f"{path} is {img.shape[1]}x{img.shape[0]} pixels but the first image is "
                    f"{w}x{h}; pass size=(height, width) to resize every image"
                )
            x[row] = img
        return x, self._labels[indices]

    def labels(self) -> np.ndarray:
        return self._labels


def _decode(path: pathlib.Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_array(ImageOps.exif_transpose(img), channels, size)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot decode image {path}: {e}; remove or replace the file") from e


def load_image_folder(
    root: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    channels: Channels | None = None,
    class_names: Sequence[str] | None = None,
    split: str = "",
) -> Dataset:
    """Images in ``root/<class_name>/`` (``.png``, ``.jpg``, ``.jpeg``), labelled by folder.

    Labels follow the sorted class-folder names (or ``class_names``, to fix the order across
    splits). Files are decoded with Pillow only when a batch is read, converted to grey or RGB
    (16-bit grey PNGs keep their precision) and resized bilinearly to ``size``. EXIF orientation is
    applied.

    Args:
      root: the folder holding one sub-folder per class.
      size: ``(height, width)`` or one int for square images; ``None`` keeps the first image's size
        and requires every image to match it.
      channels: 1 (grey) or 3 (RGB); ``None`` takes it from the first image (grey modes give 1).
      class_names: the classes, in label order; each must be a sub-folder of ``root`` (it may be
        empty). Default: every non-hidden sub-folder, sorted; each must hold at least one image.
      split: split name recorded in ``info``.

    Returns:
      A :class:`~jaxadv.data.Dataset` yielding float32 ``[B, H, W, K]`` in ``[0, 1]`` and int32
      ``[B]`` labels.

    Raises:
      FileNotFoundError: ``root`` or a named class folder is missing.
      ValueError: no images, an empty class folder, or an image that cannot be decoded.

    Example:
      >>> from jaxadv.data import load_image_folder
      >>> ds = load_image_folder("xrays/test", size=64, channels=1)  # doctest: +SKIP
      >>> ds.image_shape, ds.label_names  # doctest: +SKIP
      ((64, 64, 1), ('normal', 'pneumonia'))
    """
    root_p = pathlib.Path(root)
    if not root_p.is_dir():
        raise FileNotFoundError(
            f"no such folder: {root_p}; expected root/<class_name>/*.png|jpg|jpeg"
        )
    hw = normalize_size(size)
    check_channels(channels)
    if class_names is None:
        names = sorted(
            d.name for d in root_p.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not names:
            raise ValueError(
                f"{root_p} has no class sub-folders; expected root/<class_name>/*.png|jpg|jpeg"
            )
        explicit = False
    else:
        names = [str(n) for n in class_names]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"class_names must be non-empty and unique, got {names}")
        explicit = True
    files: list[pathlib.Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        d = root_p / name
        if not d.is_dir():
            raise FileNotFoundError(f"class folder {d} is missing")
        found = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found and not explicit:
            raise ValueError(
                f"class folder {d} holds no .png/.jpg/.jpeg images; remove it, or pass "
                "class_names= to keep it as an empty class"
            )
        files += found
        labels += [label] * len(found)
    if not files:
        raise ValueError(f"no .png/.jpg/.jpeg images under {root_p}/<class_name>/")

    from PIL import Image

    with Image.open(files[0]) as first:
        k = channels or pil_channels(first)
    # EXIF may rotate the first image; decode it once to get the shape that batches will have.
    h, w = hw if hw is not None else _decode(files[0], k, None).shape[:2]
    info = DatasetInfo(
        name=root_p.name,
        split=split,
        num_examples=len(files),
        image_shape=(int(h), int(w), int(k)),
        num_classes=len(names),
        multi_label=False,
        label_names=tuple(names),
        source=str(root_p),
    )
    return ImageFolderDataset(files, np.asarray(labels, np.int32), info, size=hw)
