"""MedMNIST v2 ``.npz`` files and the PneumoniaMNIST test split shipped with jaxadv.

MedMNIST v2 (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D
biomedical image classification", Scientific Data 2023; https://medmnist.com) distributes each
2-D dataset as ``<flag>.npz`` (28x28) and ``<flag>_64.npz``, ``_128``, ``_224``, with arrays
``{train,val,test}_images`` (uint8 ``[N, H, W]`` grey or ``[N, H, W, 3]`` RGB) and
``{train,val,test}_labels`` (``[N, 1]``, or ``[N, 14]`` multi-hot for ChestMNIST). The data are
licensed CC BY 4.0 by their authors.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import re
from importlib import resources

import numpy as np

from jaxadv.data._dataset import (
    ArrayDataset,
    Channels,
    Dataset,
    check_image_array,
    check_labels,
    make_info,
)
from jaxadv.data._npz import load_member, open_npz

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)

_CHEST_FINDINGS = (
    "atelectasis",
    "cardiomegaly",
    "effusion",
    "infiltration",
    "mass",
    "nodule",
    "pneumonia",
    "pneumothorax",
    "consolidation",
    "edema",
    "emphysema",
    "fibrosis",
    "pleural",
    "hernia",
)


@dataclasses.dataclass(frozen=True)
class MedMNISTFlag:
    """What jaxadv knows of one MedMNIST 2-D dataset.

    Attributes:
      num_classes: classes (for ChestMNIST: findings).
      task: the MedMNIST task type.
      label_names: class names where jaxadv ships them.
    """

    num_classes: int
    task: str
    label_names: tuple[str, ...] | None = None


#: The MedMNIST v2 2-D datasets. Unknown flags are accepted; their class count is inferred.
MEDMNIST_INFO: dict[str, MedMNISTFlag] = {
    "pathmnist": MedMNISTFlag(9, "multi-class"),
    "chestmnist": MedMNISTFlag(14, "multi-label, binary-class", _CHEST_FINDINGS),
    "dermamnist": MedMNISTFlag(7, "multi-class"),
    "octmnist": MedMNISTFlag(4, "multi-class"),
    "pneumoniamnist": MedMNISTFlag(2, "binary-class", ("normal", "pneumonia")),
    "retinamnist": MedMNISTFlag(5, "ordinal-regression"),
    "breastmnist": MedMNISTFlag(2, "binary-class"),
    "bloodmnist": MedMNISTFlag(8, "multi-class"),
    "tissuemnist": MedMNISTFlag(8, "multi-class"),
    "organamnist": MedMNISTFlag(11, "multi-class"),
    "organcmnist": MedMNISTFlag(11, "multi-class"),
    "organsmnist": MedMNISTFlag(11, "multi-class"),
}

_NAME = re.compile(r"^(?P<flag>.+?)(?:_(?P<size>\d+))?$")
_DOWNLOAD_HINT = (
    " Download the MedMNIST .npz files from https://medmnist.com (e.g. pneumoniamnist.npz, "
    "pneumoniamnist_64.npz) and pass their path."
)


def medmnist_path(root: str | os.PathLike, flag: str, size: int = 28) -> pathlib.Path:
    """The file name MedMNIST uses: ``root/<flag>.npz`` for 28x28, ``root/<flag>_<size>.npz``."""
    if size not in SIZES:
        raise ValueError(f"MedMNIST sizes are {SIZES}, got {size}")
    return pathlib.Path(root) / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


def load_medmnist(
    path: str | os.PathLike,
    split: str = "test",
    *,
    flag: str | None = None,
    size: int = 28,
    num_classes: int | None = None,
    channels: Channels | None = None,
    mmap: bool = True,
) -> Dataset:
    """Load one split of a MedMNIST ``.npz`` file (any flag, any size, grey or RGB).

    Images stay uint8 on disk or in memory and become float32 in ``[0, 1]`` one batch at a time.
    Members stored uncompressed are memory-mapped (``mmap=True``), so even ``_224`` files never
    need to fit in memory; compressed members are read into memory as uint8 (re-save the file with
    :func:`jaxadv.data.uncompress_npz` to map it).

    Args:
      path: the ``.npz`` file, or a directory holding it (then ``flag`` and ``size`` pick the file
        name ``<flag>.npz`` / ``<flag>_<size>.npz``).
      split: ``"train"``, ``"val"`` or ``"test"``.
      flag: the MedMNIST dataset (``"pneumoniamnist"``, ``"chestmnist"``, ...) when ``path`` is a
        directory; otherwise read from the file name.
      size: image size when ``path`` is a directory: 28, 64, 128 or 224.
      num_classes: override the class count (known MedMNIST flags have it built in; others infer
        it from the labels of every split in the file).
      channels: convert to 1 (grey) or 3 (RGB) channels; ``None`` keeps the stored ones.
      mmap: memory-map uncompressed members.

    Returns:
      A :class:`~jaxadv.data.Dataset` yielding float32 ``[B, H, W, K]`` and int32 ``[B]`` labels.
      ChestMNIST is multi-label: its labels are int32 multi-hot ``[B, 14]`` and
      ``info.multi_label`` is ``True``; attack it under a multi-label rule
      (:mod:`jaxadv.multilabel`) or pick one finding with :func:`~jaxadv.data.select_finding`.

    Raises:
      FileNotFoundError: the file is missing.
      ValueError: the file is not an ``.npz`` archive, lacks the split's arrays, or holds arrays of
        the wrong shape.

    Example:
      >>> from jaxadv.data import load_medmnist
      >>> ds = load_medmnist("pneumoniamnist_64.npz", "test")  # doctest: +SKIP
      >>> for x, y in ds.batches(128):  # doctest: +SKIP
      ...     pass  # x: float32 [128, 64, 64, 1], y: int32 [128]
    """
    p = pathlib.Path(path)
    if p.is_dir():
        if flag is None:
            raise ValueError(
                f"{p} is a directory: pass flag= (e.g. 'pneumoniamnist') and size=, or the .npz path"
            )
        p = medmnist_path(p, flag, size)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    p, keys = open_npz(p, hint=_DOWNLOAD_HINT)
    m = _NAME.match(p.stem)
    file_flag = m.group("flag") if m else p.stem
    flag = flag or file_flag
    known = MEDMNIST_INFO.get(flag.lower())

    img_key, lab_key = f"{split}_images", f"{split}_labels"
    missing = [k for k in (img_key, lab_key) if k not in keys]
    if missing and f"{split}_masks" in keys:
        raise ValueError(
            f"{p} holds segmentation masks ({split}_masks), not one label per image: attack a "
            "segmentation model (e.g. --model unet_isic) with a dense attack (segpgd, dag, asma), "
            "or load it with jaxadv.data.load_segmentation"
        )
    if missing:
        raise ValueError(
            f"{p} has no {' / '.join(missing)}; it holds {sorted(keys)}. A MedMNIST file has "
            "train_images, train_labels, val_images, val_labels, test_images and test_labels; "
            "pick a split it has."
        )
    images = load_member(p, img_key, mmap=mmap)
    check_image_array(images, what=f"{p.name}:{img_key}")
    labels = load_member(p, lab_key, mmap=False)
    y, multi, inferred = check_labels(
        labels, images.shape[0], what=f"{p.name}:{lab_key}", num_classes=num_classes
    )
    if num_classes is None:
        if known is not None:
            num_classes = known.num_classes
        elif multi:
            num_classes = inferred
        else:
            # Infer from every split so that train and test agree on the class count.
            num_classes = inferred
            for s in SPLITS:
                if s != split and f"{s}_labels" in keys:
                    other = load_member(p, f"{s}_labels", mmap=False)
                    if other.size and np.issubdtype(other.dtype, np.integer):
                        num_classes = max(num_classes, int(other.max()) + 1)
    label_names = known.label_names if known is not None else None
    if label_names is not None and len(label_names) != num_classes:
        label_names = None
    info = make_info(
        images,
        y,
        multi_label=multi,
        num_classes=num_classes,
        name=p.stem,
        split=split,
        label_names=label_names,
        channels=channels,
        source=str(p),
    )
    if multi and info.num_classes != y.shape[1]:
        raise ValueError(
            f"{p.name}: {y.shape[1]} findings per example but num_classes={num_classes}"
        )
    return ArrayDataset(images, y, info, channels=channels)


def load_chestmnist(
    path: str | os.PathLike,
    split: str = "test",
    *,
    size: int = 28,
    channels: Channels | None = None,
    mmap: bool = True,
) -> Dataset:
    """One split of ChestMNIST (MedMNIST v2, from NIH ChestX-ray14): grey chest X-rays with all
    14 findings as multi-hot labels.

    ``path`` is the ``chestmnist.npz`` / ``chestmnist_<size>.npz`` file (any file name: the
    ChestMNIST layout is checked, not the name) or the folder holding it. Labels are int32
    ``[B, 14]`` in the order of :data:`MEDMNIST_INFO` ``['chestmnist'].label_names``
    (atelectasis, cardiomegaly, effusion, infiltration, mass, nodule, pneumonia, pneumothorax,
    consolidation, edema, emphysema, fibrosis, pleural thickening, hernia). Attack it under a
    multi-label rule (``jaxadv.evaluate(..., rule=jaxadv.multilabel.any_finding())``) or reduce it
    to one finding with :func:`~jaxadv.data.select_finding`. jaxadv ships no ChestMNIST file and
    never downloads: get ``chestmnist.npz`` from https://medmnist.com.

    Raises:
      ValueError: the file's labels are not ``[N, 14]`` multi-hot (e.g. another MedMNIST flag).

    Example:
      >>> from jaxadv.data import load_chestmnist
      >>> ds = load_chestmnist("chestmnist.npz", "test")  # doctest: +SKIP
      >>> ds.multi_label, ds.num_classes, ds.label_names[6]  # doctest: +SKIP
      (True, 14, 'pneumonia')
    """
    p = pathlib.Path(path)
    if p.is_dir():
        p = medmnist_path(p, "chestmnist", size)
    ds = load_medmnist(p, split, flag="chestmnist", channels=channels, mmap=mmap)
    if not ds.multi_label:
        raise ValueError(
            f"{p.name} holds one label per example, not ChestMNIST's 14 multi-hot findings "
            "([N, 14]); load it with load_medmnist instead"
        )
    return ds


DEFAULT_ASSET = "pneumoniamnist_test.npz"


def load_default(*, channels: Channels | None = None) -> Dataset:
    """The PneumoniaMNIST test split (624 paediatric chest X-rays, 28x28 grey) shipped with jaxadv.

    Labels: 0 normal (234), 1 pneumonia (390). Works offline, with no download.

    Data attribution (CC BY 4.0): PneumoniaMNIST from MedMNIST v2 - Yang, Shi, Wei, Liu, Zhao, Ke,
    Pfister, Ni, "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
    classification", Scientific Data 10, 41 (2023); derived from Kermany et al., "Identifying
    Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning", Cell 172(5), 2018.
    Licence: Creative Commons Attribution 4.0 (https://creativecommons.org/licenses/by/4.0/).

    Args:
      channels: convert to 1 (grey, as stored) or 3 (grey repeated) channels.

    Returns:
      A :class:`~jaxadv.data.Dataset`: 624 examples, ``image_shape (28, 28, 1)``, 2 classes.

    Example:
      >>> from jaxadv.data import load_default
      >>> ds = load_default()
      >>> len(ds), ds.image_shape, ds.num_classes
      (624, (28, 28, 1), 2)
      >>> x, y = ds.take(4)
      >>> x.dtype, x.shape, y.dtype
      (dtype('float32'), (4, 28, 28, 1), dtype('int32'))
    """
    resource = resources.files("jaxadv").joinpath("assets").joinpath(DEFAULT_ASSET)
    try:
        data = resource.read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"the embedded dataset jaxadv/assets/{DEFAULT_ASSET} is missing from this install; "
            "reinstall jaxadv, or rebuild it with scripts/make_embedded_data.py"
        ) from e
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        images, labels = npz["test_images"], npz["test_labels"]
    check_image_array(images, what=DEFAULT_ASSET)
    y, multi, _ = check_labels(labels, images.shape[0], what=DEFAULT_ASSET, num_classes=2)
    info = make_info(
        images,
        y,
        multi_label=multi,
        num_classes=2,
        name="pneumoniamnist",
        split="test",
        label_names=MEDMNIST_INFO["pneumoniamnist"].label_names,
        channels=channels,
        source=f"jaxadv/assets/{DEFAULT_ASSET}",
    )
    return ArrayDataset(images, y, info, channels=channels)
