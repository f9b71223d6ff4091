"""Segmentation data: images with one class id per pixel.

:func:`load_segmentation` reads an ``.npz`` file with ``{split}_images`` and ``{split}_masks``
arrays (the shared ISIC 2017 lesion file is one) or a pair of PNG folders (image + mask with the
same file stem); :func:`synthetic_segmentation` makes a small deterministic task for tests. Each
returns a :class:`SegmentationDataset`: the one :class:`~jaxadv.data.Dataset` interface, with
``y`` int32 masks ``[B, H, W]`` instead of labels ``[B]``, and ``info.num_classes`` the number of
pixel classes ``C``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from jaxadv.data._dataset import (
    ArrayDataset,
    Channels,
    DatasetInfo,
    check_channels,
    check_image_array,
)
from jaxadv.data._images import pil_to_array
from jaxadv.data._npz import load_member, open_npz
from jaxadv.data.folder import IMAGE_SUFFIXES


class SegmentationDataset(ArrayDataset):
    """Images with masks; batches are ``(x f32[B, H, W, K] in [0, 1], y int32[B, H, W])``."""

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, m = super()._get(indices)
        return x, np.asarray(m, np.int32)

    @property
    def masks(self) -> np.ndarray:
        """The masks as stored ``[N, H, W]`` (class ids)."""
        return self._labels


def check_masks(
    masks: np.ndarray, images: np.ndarray, *, what: str, num_classes: int | None
) -> int:
    """Masks ``[N, H, W]`` (or ``[N, H, W, 1]``) of integer class ids matching ``images``;
    returns the number of classes (given, or ``max + 1``, at least 2)."""
    m = masks
    if not np.issubdtype(m.dtype, np.integer) and m.dtype != np.bool_:
        raise TypeError(f"{what} has dtype {m.dtype}; masks must hold integer class ids")
    want = tuple(images.shape[:3])
    if tuple(m.shape[:3]) != want or m.ndim not in (3, 4) or (m.ndim == 4 and m.shape[3] != 1):
        raise ValueError(
            f"{what} has shape {tuple(m.shape)} but the images {tuple(images.shape)} need masks "
            f"[N, H, W] = {list(want)} (one class id per pixel)"
        )
    lo, hi = (int(m.min()), int(m.max())) if m.size else (0, 0)
    if lo < 0:
        raise ValueError(f"{what} has negative class ids (min {lo}); class ids are 0..C-1")
    if num_classes is None:
        if hi == 255:
            raise ValueError(
                f"{what} holds 255: a 0/255 binary mask? Divide by 255 (mask // 255) or pass "
                "num_classes= if 255 really is a class id"
            )
        return max(hi + 1, 2)
    if hi >= num_classes:
        raise ValueError(
            f"{what} has class id {hi} but num_classes={num_classes}; class ids must lie in "
            f"0..{num_classes - 1}"
        )
    return int(num_classes)


def _info(images, num_classes, name, split, label_names, channels, source) -> DatasetInfo:
    check_channels(channels)
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"got {len(label_names)} label_names for {num_classes} classes")
    k = int(images.shape[3]) if images.ndim == 4 else 1
    return DatasetInfo(
        name=name,
        split=split,
        num_examples=int(images.shape[0]),
        image_shape=(int(images.shape[1]), int(images.shape[2]), channels or k),
        num_classes=int(num_classes),
        label_names=None if label_names is None else tuple(label_names),
        source=source,
    )


def from_mask_arrays(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    num_classes: int | None = None,
    name: str = "arrays",
    split: str = "",
    label_names: Sequence[str] | None = None,
    channels: Channels | None = None,
    source: str = "arrays",
) -> SegmentationDataset:
    """Wrap image and mask arrays (or memory maps) as a :class:`SegmentationDataset`.

    Args:
        images: ``[N, H, W]`` or ``[N, H, W, K]``, ``K`` in ``{1, 3}``; uint8, uint16 or float in
            ``[0, 1]``.
        masks: integer class ids ``[N, H, W]`` (or ``[N, H, W, 1]``).
        num_classes: pixel classes ``C``; inferred as ``max(masks) + 1`` (at least 2) when omitted.
        name, split, label_names, channels, source: as for :func:`jaxadv.data.from_arrays`.
    """
    check_image_array(images, what="images")
    m = np.asarray(masks)
    c = check_masks(m, images, what="masks", num_classes=num_classes)
    if m.ndim == 4:
        m = m[..., 0]
    info = _info(images, c, name, split, label_names, channels, source)
    return SegmentationDataset(images, m, info, channels=channels)


def load_segmentation(
    path: str | os.PathLike,
    *,
    split: str = "test",
    masks: str | os.PathLike | None = None,
    num_classes: int | None = None,
    channels: Channels | None = None,
    size: tuple[int, int] | None = None,
    label_names: Sequence[str] | None = None,
) -> SegmentationDataset:
    """Load a segmentation data set.

    * ``path`` an ``.npz`` file: arrays ``{split}_images`` ``[N, H, W(, K)]`` and
      ``{split}_masks`` ``[N, H, W]`` (e.g. ``../shared/data/isic2017_seg.npz``: uint8 RGB images,
      masks 0 = skin, 1 = lesion). Uncompressed members are memory-mapped.
    * ``path`` a folder of images and ``masks`` a folder of masks (PNG; JPEG images are read too):
      image ``name.*`` pairs with the mask of the same stem (``name.png``, or ``name_mask.png`` /
      ``name_segmentation.png``). Mask pixels are class ids; 0/255 binary masks become 0/1.
      Folders are decoded once into memory (use ``size=`` to resize; masks use nearest neighbour).

    Args:
        path: the ``.npz`` file or the image folder.
        split: the split of an ``.npz`` file (``train``, ``val``, ``test``).
        masks: the mask folder (folders only).
        num_classes: pixel classes ``C``; inferred when omitted.
        channels: convert images to 1 or 3 channels; ``None`` keeps them.
        size: ``(height, width)`` to resize folder images and masks to.
        label_names: optional class names (e.g. ``("skin", "lesion")``).

    Returns:
        A :class:`SegmentationDataset` yielding ``(x f32[B, H, W, K], y int32[B, H, W])``.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from jaxadv.data import load_segmentation
        >>> p = os.path.join(tempfile.mkdtemp(), "toy.npz")
        >>> np.savez(p, test_images=np.zeros((3, 8, 8, 3), np.uint8),
        ...          test_masks=np.ones((3, 8, 8), np.uint8))
        >>> ds = load_segmentation(p)
        >>> x, y = next(ds.batches(2))
        >>> x.shape, y.shape, ds.num_classes
        ((2, 8, 8, 3), (2, 8, 8), 2)
    """
    p = pathlib.Path(path)
    if p.is_dir():
        if masks is None:
            raise ValueError(
                f"{p} is a folder: pass masks= the folder of mask PNGs (same file stems)"
            )
        return _load_folders(p, pathlib.Path(masks), num_classes, channels, size, label_names)
    if masks is not None:
        raise ValueError("masks= is for image folders; an .npz file holds {split}_masks itself")
    p, keys = open_npz(p)
    ik, mk = f"{split}_images", f"{split}_masks"
    missing = [k for k in (ik, mk) if k not in keys]
    if missing:
        splits = sorted({k.rsplit("_", 1)[0] for k in keys if k.endswith("_masks")})
        raise ValueError(
            f"{p} has no {' / '.join(missing)}; it holds {sorted(keys)}. A segmentation .npz "
            f"needs {{split}}_images and {{split}}_masks (splits with masks here: {splits})"
        )
    images = load_member(p, ik)
    m = np.asarray(load_member(p, mk))
    return from_mask_arrays(
        images,
        m,
        num_classes=num_classes,
        name=p.stem,
        split=split,
        label_names=label_names,
        channels=channels,
        source=str(p),
    )


def _mask_file(masks: pathlib.Path, stem: str) -> pathlib.Path | None:
    for cand in (stem, f"{stem}_mask", f"{stem}_segmentation"):
        f = masks / f"{cand}.png"
        if f.is_file():
            return f
    return None


def _load_folders(images, masks, num_classes, channels, size, label_names) -> SegmentationDataset:
    from PIL import Image

    if not masks.is_dir():
        raise ValueError(f"masks={masks} is not a folder of mask PNGs")
    files = sorted(f for f in images.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    pairs = [(f, _mask_file(masks, f.stem)) for f in files]
    lost = [f.name for f, m in pairs if m is None]
    if lost:
        raise ValueError(
            f"{len(lost)} images have no mask in {masks} (first: {lost[0]}); name the mask "
            "<stem>.png, <stem>_mask.png or <stem>_segmentation.png"
        )
    with Image.open(files[0]) as im0:
        k = channels or (1 if im0.mode in ("1", "L", "LA", "I;16", "I", "F") else 3)
    xs, ms = [], []
    for f, mf in pairs:
        with Image.open(f) as im:
            im.load()
            x = pil_to_array(im, k, size)
        with Image.open(mf) as mi:
            mi.load()
            mi = mi.convert("L") if mi.mode not in ("L", "P", "I", "I;16") else mi
            if size is not None and mi.size != (size[1], size[0]):
                mi = mi.resize((size[1], size[0]), Image.Resampling.NEAREST)
            m = np.asarray(mi)
        if m.shape != x.shape[:2]:
            raise ValueError(
                f"mask {mf.name} is {m.shape[1]}x{m.shape[0]} but image {f.name} is "
                f"{x.shape[1]}x{x.shape[0]}; masks must have the image's size (or pass size=)"
            )
        if xs and x.shape != xs[0].shape:
            raise ValueError(
                f"{f.name} is {x.shape[1]}x{x.shape[0]} but the first image is "
                f"{xs[0].shape[1]}x{xs[0].shape[0]}; pass size=(height, width) to resize"
            )
        xs.append(x)
        ms.append(m)
    m = np.stack(ms)
    vals = np.unique(m)
    if num_classes is None and set(vals.tolist()) <= {0, 255}:
        m = m // 255  # binary 0/255 masks, as most tools save them
    return from_mask_arrays(
        np.stack(xs),
        m.astype(np.int32),
        num_classes=num_classes,
        name=images.name,
        split="",
        label_names=label_names,
        channels=None,
        source=f"{images} + {masks}",
    )


def synthetic_segmentation(
    num_examples: int = 64,
    *,
    size: int = 16,
    num_classes: int = 2,
    channels: int = 1,
    noise: float = 0.1,
    seed: int = 0,
) -> SegmentationDataset:
    """A small deterministic segmentation task: bright discs on a dark background.

    Each image holds ``num_classes - 1`` discs at random places (radius 2 to ``size // 4``), disc
    ``k`` of class ``k`` with intensity ``k / (num_classes - 1)`` scaled into ``[0.5, 1]`` (later
    discs overwrite earlier ones); background uniform noise in ``[0, noise]``. The mask is the
    class of each pixel, so a per-pixel threshold model segments it.

    Args:
        num_examples: ``N``.
        size: image side (at least 8).
        num_classes: pixel classes ``C`` (at least 2).
        channels: 1 or 3 (the grey image repeated).
        noise: background noise amplitude in ``[0, 0.4]``.
        seed: NumPy seed (the same seed gives the same data).

    Example:
        >>> from jaxadv.data import synthetic_segmentation
        >>> x, y = synthetic_segmentation(4, size=16).take(4)
        >>> x.shape, y.shape, sorted(set(y.ravel().tolist()))
        ((4, 16, 16, 1), (4, 16, 16), [0, 1])
    """
    for n, v, lo in (("num_examples", num_examples, 1), ("size", size, 8)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{n} must be an integer >= {lo}, got {v!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if not 0.0 <= noise <= 0.4:
        raise ValueError(f"noise must lie in [0, 0.4], got {noise!r}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    x = rng.uniform(0.0, noise, (num_examples, size, size)).astype(np.float32)
    m = np.zeros((num_examples, size, size), np.int32)
    for i in range(num_examples):
        for k in range(1, num_classes):
            r = rng.integers(2, max(size // 4, 2) + 1)
            cy, cx = rng.integers(r, size - r, size=2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            m[i][disc] = k
            x[i][disc] = 0.5 + 0.5 * k / (num_classes - 1)
    img = x[..., None] if channels == 1 else np.repeat(x[..., None], 3, axis=-1)
    return from_mask_arrays(
        img, m, num_classes=num_classes, name="synthetic_segmentation", split="", source="synthetic"
    )


__all__ = [
    "SegmentationDataset",
    "check_masks",
    "from_mask_arrays",
    "load_segmentation",
    "synthetic_segmentation",
]
