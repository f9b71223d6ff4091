"""Train / val / test splits used as meant, for every data source.

Model selection (per-epoch metrics, the best checkpoint, early stopping) uses ``val``; the test split
is read once, after training, and reported as test. Where a source has no validation split, a
seeded, stratified hold-out of train takes its place; where it has no test split either (a plain
image folder), a second hold-out of the pool becomes the test set. How each split was obtained is
recorded (:meth:`Splits.describe`) and goes into the checkpoint metadata.

Rules per source:

* MedMNIST-layout ``.npz`` (PneumoniaMNIST, ISIC ``isic2017_seg.npz``): ``train``, ``val``,
  ``test`` as stored; a file without ``val_*`` keys gets a hold-out of train.
* Image folder: ``root/train``, ``root/val`` (or ``root/validation``), ``root/test`` when
  ``root/train`` exists (class order taken from train); otherwise ``root`` is one pool split into
  train / val / test by stratified hold-outs.
* ``tfds:NAME``: ``train``; ``validation`` (or ``val``) else a hold-out of train; ``test``.

Example:
    >>> import numpy as np
    >>> from jaxadv.splits import stratified_holdout
    >>> keep, held = stratified_holdout(np.array([0] * 8 + [1] * 12), 0.25, seed=0)
    >>> len(keep), len(held), int(np.sum(np.array([0] * 8 + [1] * 12)[held]))
    (15, 5, 3)
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

from jaxadv.data import Dataset

#: Default fraction of the pool held out for validation (and for test, where none exists).
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


def stratified_holdout(y: Any, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into (kept, held out), the same fraction of every class held out.

    Each class ``c`` with ``n_c`` examples contributes ``round(fraction · n_c)`` held-out examples
    (at least one when ``n_c >= 2``, so every class appears in both parts where it can), drawn by
    ``numpy.random.default_rng(seed)``: the same labels and seed always give the same split.

    Args:
        y: integer labels ``[N]``.
        fraction: in ``(0, 1)``.
        seed: the split's seed.

    Returns:
        ``(kept, held)``: sorted ``int64`` index arrays partitioning ``range(N)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"a hold-out fraction must lie in (0, 1), got {fraction}")
    y = np.asarray(y).reshape(-1)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(fraction * idx.size))
        if idx.size >= 2:
            k = min(max(k, 1), idx.size - 1)
        held.append(rng.permutation(idx)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(y.shape[0]), held_idx)
    return keep.astype(np.int64), held_idx.astype(np.int64)


class Subset(Dataset):
    """The examples ``indices`` of another dataset, read lazily from it."""

    def __init__(self, base: Dataset, indices: np.ndarray, split: str):
        idx = np.asarray(indices, np.int64)
        super().__init__(dataclasses.replace(base.info, split=split, num_examples=int(idx.size)))
        self._base, self._idx = base, idx

    def _get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._base.get(self._idx[indices])

    def labels(self) -> np.ndarray:
        return self._base.labels()[self._idx]


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train, validation and (optionally) test data, with how each was obtained.

    Attributes:
        train: training examples. val: the selection set. test: evaluated once at the end, or
            ``None`` when the source has none.
        val_source, test_source: ``'split'`` (stored by the source) or a description of the
            hold-out (``'hold-out 15% of train, seed 0'``); ``'none'`` for a missing test set.
    """

    train: Dataset
    val: Dataset
    test: Dataset | None
    val_source: str
    test_source: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for checkpoint metadata."""
        return {
            "train": len(self.train),
            "val": len(self.val),
            "test": None if self.test is None else len(self.test),
            "val_source": self.val_source,
            "test_source": self.test_source,
        }


def _holdout(ds: Dataset, fraction: float, seed: int, name: str) -> tuple[Dataset, Dataset, str]:
    keep, held = stratified_holdout(ds.labels(), fraction, seed=seed)
    if keep.size == 0 or held.size == 0:
        raise ValueError(
            f"{ds.name}: {len(ds)} examples are too few for a {fraction:.0%} {name} hold-out"
        )
    note = f"hold-out {fraction:.0%} of {ds.split or 'pool'}, stratified, seed {seed}"
    return Subset(ds, keep, "train"), Subset(ds, held, name), note


def _folder_splits(root: pathlib.Path, size, channels, seed, val_fraction, test_fraction):
    from jaxadv.data import load_image_folder

    if size is None:
        raise ValueError("--image-size (size) is required for an image folder")
    if (root / "train").is_dir():
        train = load_image_folder(root / "train", size=size, channels=channels, split="train")
        names = train.label_names

        def sub(name):
            return load_image_folder(
                root / name, size=size, channels=channels, class_names=names, split=name
            )

        vdir = next((d for d in ("val", "validation") if (root / d).is_dir()), None)
        if vdir is not None:
            val, vsrc = sub(vdir), "split"
        else:
            train, val, vsrc = _holdout(train, val_fraction, seed, "val")
        test = sub("test") if (root / "test").is_dir() else None
        return Splits(train, val, test, vsrc, "split" if test is not None else "none")
    pool = load_image_folder(root, size=size, channels=channels, split="pool")
    rest, test, tsrc = _holdout(pool, test_fraction, seed, "test")
    # the val fraction is of the whole pool, not of what is left after the test hold-out
    train, val, _ = _holdout(rest, val_fraction / (1.0 - test_fraction), seed + 1, "val")
    vsrc = f"hold-out {val_fraction:.0%} of pool, stratified, seed {seed + 1}"
    return Splits(train, val, test, vsrc, tsrc)


def _has_split(data: str, split: str) -> bool:
    """Whether a ``.npz`` holds ``{split}_images`` (reads the zip directory only) or a TFDS data
    set has ``split``."""
    if str(data).startswith("tfds:"):
        from jaxadv.vocab import SpecError, load_dataset

        try:
            load_dataset(data, split)
        except (SpecError, ValueError):
            return False
        return True
    with np.load(data) as z:
        return f"{split}_images" in z.files


def training_splits(
    data: str,
    *,
    size: int | None = None,
    channels: int | None = None,
    seed: int = 0,
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
) -> Splits:
    """The train / val / test :class:`Splits` of a data source (see the module rules).

    Nothing is decoded except labels needed for a hold-out; the test set is only opened (its
    pixels are read when the caller evaluates it).

    Args:
        data: a MedMNIST-layout ``.npz``, an image folder, or ``tfds:NAME``.
        size, channels: as for :func:`jaxadv.vocab.load_dataset`.
        seed: seed of any hold-out.
        val_fraction, test_fraction: hold-out sizes where a split is missing.

    Returns:
        :class:`Splits`.
    """
    from jaxadv.vocab import load_dataset

    p = pathlib.Path(data)
    if p.is_dir():
        return _folder_splits(p, size, channels, seed, val_fraction, test_fraction)
    train = load_dataset(data, "train", size, channels)
    val = None
    for name in ("validation", "val") if str(data).startswith("tfds:") else ("val",):
        if _has_split(data, name):
            val = load_dataset(data, name, size, channels)
            break
    if val is None:
        train, val, vsrc = _holdout(train, val_fraction, seed, "val")
    else:
        vsrc = "split"
    if _has_split(data, "test"):
        test, tsrc = load_dataset(data, "test", size, channels), "split"
    else:
        test, tsrc = None, "none"
    return Splits(train, val, test, vsrc, tsrc)


__all__ = ["Splits", "Subset", "stratified_holdout", "training_splits"]
