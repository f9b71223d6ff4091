"""Data loaders: MedMNIST ``.npz`` files, image folders, TFDS, arrays, and a shipped default set.

Every loader returns a :class:`Dataset` with one interface: ``len(ds)``, ``ds.num_classes``,
``ds.image_shape`` ``(H, W, K)``, ``ds.info``, ``ds.batches(batch_size, *, shuffle, key,
drop_remainder)`` yielding ``(x, y)`` numpy arrays (``x`` float32 ``[B, H, W, K]`` in ``[0, 1]``,
``y`` int32 ``[B]``), and ``take(n)`` / ``arrays()`` for small sets. Images are converted to float
one batch at a time; large uncompressed ``.npz`` files are memory-mapped.

Multi-label data (ChestMNIST, :func:`load_chestmnist`: int32 multi-hot ``[B, 14]`` labels,
``info.multi_label=True``) is attacked under a success rule (:mod:`jaxadv.multilabel`), or reduced
to one label per example with :func:`select_finding`. :func:`synthetic_findings` makes a small
multi-label task for tests.

Segmentation data (:func:`load_segmentation`, :func:`synthetic_segmentation`) yields int32 masks
``[B, H, W]`` as ``y``.

Example:
  >>> from jaxadv.data import load_default
  >>> ds = load_default()  # PneumoniaMNIST test split, shipped with jaxadv (CC BY 4.0)
  >>> x, y = next(ds.batches(32, shuffle=True, key=0))
  >>> x.shape, y.shape
  ((32, 28, 28, 1), (32,))
"""

from jaxadv.data._dataset import (
    ArrayDataset,
    Dataset,
    DatasetInfo,
    from_arrays,
    select_finding,
)
from jaxadv.data._npz import uncompress_npz
from jaxadv.data._tfds import RecordDataset, from_records, load_tfds
from jaxadv.data.folder import IMAGE_SUFFIXES, ImageFolderDataset, load_image_folder
from jaxadv.data.medmnist import (
    MEDMNIST_INFO,
    SIZES,
    SPLITS,
    MedMNISTFlag,
    load_chestmnist,
    load_default,
    load_medmnist,
    medmnist_path,
)
from jaxadv.data.segmentation import (
    SegmentationDataset,
    from_mask_arrays,
    load_segmentation,
    synthetic_segmentation,
)
from jaxadv.data.synthetic import synthetic_findings

__all__ = [
    "IMAGE_SUFFIXES",
    "MEDMNIST_INFO",
    "SIZES",
    "SPLITS",
    "ArrayDataset",
    "Dataset",
    "DatasetInfo",
    "ImageFolderDataset",
    "MedMNISTFlag",
    "RecordDataset",
    "SegmentationDataset",
    "from_arrays",
    "from_mask_arrays",
    "from_records",
    "load_chestmnist",
    "load_default",
    "load_image_folder",
    "load_medmnist",
    "load_segmentation",
    "load_tfds",
    "medmnist_path",
    "select_finding",
    "synthetic_findings",
    "synthetic_segmentation",
    "uncompress_npz",
]
