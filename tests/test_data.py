"""jaxadv.data: MedMNIST .npz (memory-mapped or not), image folders, TFDS, the shipped default."""

from __future__ import annotations

import pathlib
import sys
import zipfile

import jax
import numpy as np
import pytest

from jaxadv import data

RNG = np.random.default_rng(0)


def _medmnist_arrays(n: dict[str, int], hw: int, *, rgb: bool, labels_dim: int = 1, classes=2):
    arrays = {}
    for split, count in n.items():
        shape = (count, hw, hw, 3) if rgb else (count, hw, hw)
        arrays[f"{split}_images"] = RNG.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = RNG.integers(
            0, 2 if labels_dim > 1 else classes, (count, labels_dim), dtype=np.uint8
        )
    return arrays


def _write(path: pathlib.Path, arrays: dict[str, np.ndarray], *, compressed: bool):
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    with zipfile.ZipFile(path) as zf:
        kinds = {i.compress_type for i in zf.infolist()}
    assert kinds == {zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED}
    return path


SPLIT_SIZES = {"train": 13, "val": 5, "test": 7}


# -- MedMNIST .npz ------------------------------------------------------------------------------


def test_grey_compressed_file_all_splits(tmp_path):
    arrays = _medmnist_arrays(SPLIT_SIZES, 28, rgb=False)
    path = _write(tmp_path / "pneumoniamnist.npz", arrays, compressed=True)
    for split, count in SPLIT_SIZES.items():
        ds = data.load_medmnist(path, split)
        assert len(ds) == count and ds.image_shape == (28, 28, 1) and ds.num_classes == 2
        assert ds.name == "pneumoniamnist" and ds.split == split and not ds.multi_label
        assert ds.label_names == ("normal", "pneumonia")
        assert not isinstance(ds.storage, np.memmap)  # compressed members cannot be mapped
        x, y = ds.arrays()
        assert x.dtype == np.float32 and x.shape == (count, 28, 28, 1)
        assert y.dtype == np.int32 and y.shape == (count,)
        np.testing.assert_array_equal(x[..., 0], arrays[f"{split}_images"] / np.float32(255))
        np.testing.assert_array_equal(y, arrays[f"{split}_labels"][:, 0])


def test_rgb_stored_64_is_memory_mapped(tmp_path):
    arrays = _medmnist_arrays(SPLIT_SIZES, 64, rgb=True, classes=7)
    path = _write(tmp_path / "dermamnist_64.npz", arrays, compressed=False)
    ds = data.load_medmnist(path, "train")
    assert isinstance(ds.storage, np.memmap) and ds.storage.dtype == np.uint8
    assert ds.name == "dermamnist_64" and ds.num_classes == 7
    assert ds.image_shape == (64, 64, 3)
    x, y = ds.get([12, 0, 5, 5])  # unsorted, repeated
    np.testing.assert_array_equal(x, arrays["train_images"][[12, 0, 5, 5]] / np.float32(255))
    np.testing.assert_array_equal(y, arrays["train_labels"][[12, 0, 5, 5], 0])
    # mmap=False reads the same values into memory
    plain = data.load_medmnist(path, "train", mmap=False)
    assert not isinstance(plain.storage, np.memmap)
    np.testing.assert_array_equal(plain.arrays()[0], ds.arrays()[0])
    # directory + flag + size picks the same file name MedMNIST uses
    by_dir = data.load_medmnist(tmp_path, "val", flag="dermamnist", size=64)
    np.testing.assert_array_equal(by_dir.arrays()[0], arrays["val_images"] / np.float32(255))


def test_uncompress_npz_enables_memmap(tmp_path):
    arrays = _medmnist_arrays(SPLIT_SIZES, 28, rgb=False)
    src = _write(tmp_path / "pneumoniamnist.npz", arrays, compressed=True)
    dst = data.uncompress_npz(src, tmp_path / "stored" / "pneumoniamnist.npz")
    ds = data.load_medmnist(dst, "test")
    assert isinstance(ds.storage, np.memmap)
    np.testing.assert_array_equal(ds.storage, arrays["test_images"])


def test_fortran_order_member_is_mapped_correctly(tmp_path):
    imgs = np.asfortranarray(RNG.integers(0, 256, (6, 8, 8), dtype=np.uint8))
    path = tmp_path / "x.npz"
    np.savez(path, test_images=imgs, test_labels=np.zeros((6, 1), np.uint8))
    ds = data.load_medmnist(path, "test")
    assert isinstance(ds.storage, np.memmap)
    np.testing.assert_array_equal(ds.storage, imgs)


def test_channel_conversion(tmp_path):
    grey = _medmnist_arrays({"test": 4}, 28, rgb=False)
    rgb = _medmnist_arrays({"test": 4}, 28, rgb=True)
    pg = _write(tmp_path / "pneumoniamnist.npz", grey, compressed=False)
    pr = _write(tmp_path / "bloodmnist.npz", rgb, compressed=False)
    x3, _ = data.load_medmnist(pg, channels=3).arrays()
    assert x3.shape == (4, 28, 28, 3)
    np.testing.assert_array_equal(x3[..., 0], x3[..., 2])
    ds1 = data.load_medmnist(pr, channels=1)
    assert ds1.image_shape == (28, 28, 1)
    x1, _ = ds1.arrays()
    luma = rgb["test_images"].astype(np.float32) / 255 @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(x1[..., 0], luma, atol=1e-6)


def test_multi_label_chestmnist_and_select_finding(tmp_path):
    arrays = _medmnist_arrays(SPLIT_SIZES, 28, rgb=False, labels_dim=14)
    path = _write(tmp_path / "chestmnist.npz", arrays, compressed=True)
    ds = data.load_medmnist(path, "train")
    assert ds.multi_label and ds.info.multi_label and ds.num_classes == 14
    assert ds.label_names is not None and ds.label_names[6] == "pneumonia"
    _, y = next(ds.batches(4))
    assert y.dtype == np.int32 and y.shape == (4, 14)
    binary = data.select_finding(ds, "Pneumonia")
    by_index = data.select_finding(ds, 6)
    assert not binary.multi_label and binary.num_classes == 2 and len(binary) == len(ds)
    assert binary.label_names == ("no pneumonia", "pneumonia")
    yb = binary.arrays()[1]
    assert yb.dtype == np.int32 and yb.shape == (13,)
    np.testing.assert_array_equal(yb, arrays["train_labels"][:, 6])
    np.testing.assert_array_equal(yb, by_index.arrays()[1])
    with pytest.raises(ValueError, match="unknown finding"):
        data.select_finding(ds, "fracture")
    with pytest.raises(ValueError, match="single-label"):
        data.select_finding(binary, 0)


def test_unknown_flag_infers_classes_from_every_split(tmp_path):
    path = tmp_path / "mydata_128.npz"
    np.savez(
        path,
        train_images=np.zeros((3, 4, 4), np.uint8),
        train_labels=np.array([[0], [4], [1]], np.uint8),
        test_images=np.zeros((2, 4, 4), np.uint8),
        test_labels=np.array([[0], [2]], np.uint8),
    )
    ds = data.load_medmnist(path, "test")
    assert ds.num_classes == 5 and ds.name == "mydata_128" and ds.label_names is None
    assert data.load_medmnist(path, "test", num_classes=9).num_classes == 9


@pytest.mark.parametrize(
    ("arrays", "error", "match"),
    [
        ({"train_images": np.zeros((2, 4, 4), np.uint8)}, ValueError, "has no test_images"),
        (
            {"test_images": np.zeros((2, 4), np.uint8), "test_labels": np.zeros((2, 1), np.uint8)},
            ValueError,
            r"\[N, H, W\]",
        ),
        (
            {
                "test_images": np.zeros((2, 4, 4, 5), np.uint8),
                "test_labels": np.zeros((2, 1), np.uint8),
            },
            ValueError,
            "3-D volumes",
        ),
        (
            {
                "test_images": np.zeros((2, 4, 4), np.uint8),
                "test_labels": np.zeros((3, 1), np.uint8),
            },
            ValueError,
            "N = 2",
        ),
        (
            {
                "test_images": np.zeros((2, 4, 4), np.uint8),
                "test_labels": np.zeros((2, 1), np.float32),
            },
            TypeError,
            "integers",
        ),
        (
            {
                "test_images": np.zeros((2, 4, 4), np.int64),
                "test_labels": np.zeros((2, 1), np.uint8),
            },
            TypeError,
            "uint8",
        ),
        (
            {
                "test_images": np.zeros((2, 4, 4), np.uint8),
                "test_labels": np.array([[0], [2]], np.uint8),
            },
            ValueError,
            "num_classes=2",
        ),
    ],
    ids=[
        "missing-keys",
        "2d-images",
        "5-channels",
        "label-count",
        "float-labels",
        "int64",
        "range",
    ],
)
@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_malformed_files_raise_clear_errors(tmp_path, arrays, error, match, compressed):
    path = _write(tmp_path / "pneumoniamnist.npz", arrays, compressed=compressed)
    with pytest.raises(error, match=match):
        data.load_medmnist(path, "test")


def test_missing_and_non_npz_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="medmnist.com"):
        data.load_medmnist(tmp_path / "pneumoniamnist_224.npz")
    with pytest.raises(FileNotFoundError, match="octmnist_64.npz"):
        data.load_medmnist(tmp_path, flag="octmnist", size=64)
    with pytest.raises(ValueError, match="pass flag="):
        data.load_medmnist(tmp_path)
    bad = tmp_path / "pneumoniamnist.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not an .npz archive"):
        data.load_medmnist(bad)
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        data.load_medmnist(npy)
    good = _write(
        tmp_path / "ok.npz", _medmnist_arrays({"test": 2}, 4, rgb=False), compressed=False
    )
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_medmnist(good, "validation")


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(
        path,
        test_images=np.array([None, 1], dtype=object),
        test_labels=np.zeros((2, 1), np.uint8),
    )
    with pytest.raises(ValueError, match="[Oo]bject|pickle"):
        data.load_medmnist(path)


# -- batching -----------------------------------------------------------------------------------


def _indexed(n: int) -> data.Dataset:
    """Image i is filled with the value i / 255, label i % 3: batches reveal which examples came."""
    imgs = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 2, 2)).copy()
    return data.from_arrays(imgs, np.arange(n) % 3)


def _ids(x: np.ndarray) -> np.ndarray:
    return np.rint(x[:, 0, 0, 0] * 255).astype(np.int64)


@pytest.mark.parametrize(
    "key", [None, 0, "jax", "jax-legacy", "numpy"], ids=["ordered", "int", "jax", "legacy", "np"]
)
@pytest.mark.parametrize("batch_size", [1, 5, 23, 40])
def test_batches_cover_every_example_once(key, batch_size):
    n = 23
    ds = _indexed(n)
    make_key = {
        "jax": lambda: jax.random.key(3),
        "jax-legacy": lambda: jax.random.PRNGKey(3),
        "numpy": lambda: np.random.default_rng(3),
    }
    k = make_key[key]() if isinstance(key, str) else key
    batches = list(ds.batches(batch_size, shuffle=key is not None, key=k))
    assert [len(x) for x, _ in batches[:-1]] == [batch_size] * (len(batches) - 1)
    ids = np.concatenate([_ids(x) for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    np.testing.assert_array_equal(labels, ids % 3)
    if key is None:
        np.testing.assert_array_equal(ids, np.arange(n))
    elif batch_size == 5:
        assert not np.array_equal(ids, np.arange(n))
        k2 = make_key[key]() if isinstance(key, str) else key
        again = np.concatenate([_ids(x) for x, _ in ds.batches(batch_size, shuffle=True, key=k2)])
        np.testing.assert_array_equal(ids, again)  # same key, same order


def test_drop_remainder_and_argument_checks():
    ds = _indexed(23)
    sizes = [len(x) for x, _ in ds.batches(5, drop_remainder=True)]
    assert sizes == [5, 5, 5, 5]
    sizes = [len(x) for x, _ in ds.batches(5, shuffle=True, key=1, drop_remainder=True)]
    assert sizes == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="never seeds from the clock"):
        ds.batches(5, shuffle=True)
    with pytest.raises(ValueError, match="positive"):
        ds.batches(0)
    with pytest.raises(TypeError, match="batch_size"):
        ds.batches(2.5)
    with pytest.raises(TypeError, match="key must be"):
        ds.batches(5, shuffle=True, key="seed")
    with pytest.raises(IndexError, match=r"\[0, 23\)"):
        ds.get([0, 23])
    assert len(ds.take(4)[0]) == 4 and len(ds.take(100)[0]) == 23
    with pytest.raises(ValueError, match="max_bytes"):
        ds.arrays(max_bytes=100)


def test_from_arrays_errors():
    with pytest.raises(ValueError, match="num_classes=2"):
        data.from_arrays(np.zeros((2, 4, 4), np.uint8), np.array([0, 2]), num_classes=2)
    with pytest.raises(ValueError, match="channels must be"):
        data.from_arrays(np.zeros((2, 4, 4), np.uint8), np.array([0, 1]), channels=2)
    with pytest.raises(ValueError, match="only 0 and 1"):
        data.from_arrays(np.zeros((2, 4, 4), np.uint8), np.array([[0, 2], [1, 0]]))


# -- the real file and the embedded default ------------------------------------------------------


@pytest.mark.realdata
def test_real_pneumoniamnist(pneumonia_path):
    expected = {"train": (4707, 1213), "val": (524, 135), "test": (624, 234)}
    for split, (count, normal) in expected.items():
        ds = data.load_medmnist(pneumonia_path, split)
        assert len(ds) == count and ds.image_shape == (28, 28, 1) and ds.num_classes == 2
        seen = 0
        normals = 0
        for x, y in ds.batches(1024):
            assert x.dtype == np.float32 and y.dtype == np.int32
            assert x.min() >= 0.0 and x.max() <= 1.0
            seen += len(y)
            normals += int(np.sum(y == 0))
        assert seen == count and normals == normal


@pytest.mark.realdata
def test_embedded_default_equals_shared_test_split(pneumonia_path):
    x_ref, y_ref = data.load_medmnist(pneumonia_path, "test").arrays()
    x, y = data.load_default().arrays()
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_embedded_default():
    asset = pathlib.Path(data.__file__).parents[1] / "assets" / "pneumoniamnist_test.npz"
    assert asset.stat().st_size < 1_000_000
    ds = data.load_default()
    assert len(ds) == 624 and ds.image_shape == (28, 28, 1) and ds.num_classes == 2
    assert ds.label_names == ("normal", "pneumonia") and ds.split == "test"
    x, y = ds.arrays()
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(y), [234, 390])
    assert data.load_default(channels=3).image_shape == (28, 28, 3)
    # the asset keeps the MedMNIST layout, so the .npz loader reads it too
    np.testing.assert_array_equal(data.load_medmnist(asset, "test").arrays()[0], x)


# -- image folders -------------------------------------------------------------------------------


def _make_folder(root: pathlib.Path) -> None:
    from PIL import Image

    (root / "pneumonia").mkdir(parents=True)
    (root / "normal").mkdir()
    # grey PNG 20x30 (w x h), uniform 128
    Image.fromarray(np.full((30, 20), 128, np.uint8)).save(root / "normal" / "a.png")
    # RGB JPEG 40x40, uniform
    Image.fromarray(np.full((40, 40, 3), (200, 100, 50), np.uint8)).save(root / "normal" / "b.JPG")
    # RGBA PNG 10x12
    Image.fromarray(np.full((12, 10, 4), 255, np.uint8)).save(root / "pneumonia" / "c.png")
    # 16-bit grey PNG, uniform half-scale
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(root / "pneumonia" / "d.png")
    # a .jpeg and a non-image file that is ignored
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "pneumonia" / "e.jpeg")
    (root / "pneumonia" / "notes.txt").write_text("ignored")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder(tmp_path, channels):
    _make_folder(tmp_path)
    ds = data.load_image_folder(tmp_path, size=(16, 12), channels=channels)
    assert len(ds) == 5 and ds.num_classes == 2 and ds.label_names == ("normal", "pneumonia")
    assert ds.image_shape == (16, 12, channels)
    assert [p.name for p in ds.files] == ["a.png", "b.JPG", "c.png", "d.png", "e.jpeg"]
    x, y = ds.arrays()
    assert x.dtype == np.float32 and x.shape == (5, 16, 12, channels)
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 1])
    assert y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x[0], 128 / 255, atol=1e-6)  # uniform stays uniform
    np.testing.assert_allclose(x[2], 1.0)
    np.testing.assert_allclose(x[3], 32768 / 65535, atol=1e-6)  # 16-bit precision kept
    np.testing.assert_allclose(x[4], 0.0)
    if channels == 3:
        np.testing.assert_allclose(
            x[1].mean(axis=(0, 1)), np.array([200, 100, 50]) / 255, atol=0.03
        )
    got = np.concatenate([b for b, _ in ds.batches(2, shuffle=True, key=0)])
    assert got.shape == x.shape


def test_image_folder_size_inference_and_errors(tmp_path):
    from PIL import Image

    _make_folder(tmp_path / "mixed")
    mixed = data.load_image_folder(tmp_path / "mixed")  # first image sets shape and channels
    assert mixed.image_shape == (30, 20, 1)
    with pytest.raises(ValueError, match="pass size="):
        mixed.arrays()

    same = tmp_path / "same"
    for cls in ("b", "a"):
        (same / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((6, 9, 3), 60 * i, np.uint8)).save(same / cls / f"{i}.png")
    ds = data.load_image_folder(same)
    assert ds.image_shape == (6, 9, 3) and ds.label_names == ("a", "b")
    assert ds.arrays()[0].shape == (4, 6, 9, 3)
    ordered = data.load_image_folder(same, class_names=["b", "a"], size=4)
    np.testing.assert_array_equal(ordered.arrays()[1], [0, 0, 1, 1])

    with pytest.raises(FileNotFoundError, match="no such folder"):
        data.load_image_folder(tmp_path / "absent")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no"):
        data.load_image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="no .png"):
        data.load_image_folder(tmp_path / "empty", class_names=["cls"])
    with pytest.raises(FileNotFoundError, match="class folder"):
        data.load_image_folder(same, class_names=["a", "c"])
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.load_image_folder(tmp_path / "flat")
    with pytest.raises(ValueError, match="size must be"):
        data.load_image_folder(same, size=(4, 0))
    broken = tmp_path / "broken"
    (broken / "x").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(broken / "x" / "0.png")
    (broken / "x" / "1.png").write_bytes(b"garbage")
    ds = data.load_image_folder(broken)
    with pytest.raises(ValueError, match="cannot decode image"):
        ds.arrays()


# -- records and TFDS ----------------------------------------------------------------------------


def test_from_records():
    records = [
        {"image": np.full((10, 8, 3), 10 * i, np.uint8), "label": np.int64(i % 4)} for i in range(6)
    ]
    ds = data.from_records(records, num_classes=4, size=5, channels=1)
    assert len(ds) == 6 and ds.image_shape == (5, 5, 1) and ds.num_classes == 4
    x, y = ds.arrays()
    np.testing.assert_allclose(x[:, 0, 0, 0], 10 * np.arange(6) / 255, atol=1e-6)
    np.testing.assert_array_equal(y, np.arange(6) % 4)
    with pytest.raises(ValueError, match="outside"):
        data.from_records(records, num_classes=2).arrays()
    with pytest.raises(ValueError, match="image_key"):
        data.from_records([{"img": records[0]["image"], "label": 0}], num_classes=2)


def test_load_tfds_without_tfds_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'jaxadv\[tfds\]'"):
        data.load_tfds("mnist")


def test_load_tfds_with_mock_data():
    tfds = pytest.importorskip(
        "tensorflow_datasets",
        reason="tensorflow-datasets not installed (optional extra jaxadv[tfds])",
    )
    with tfds.testing.mock_data(num_examples=11):
        ds = data.load_tfds("mnist", "train")
        source = tfds.data_source("mnist", split="train")
        assert len(ds) == 11 and ds.image_shape == (28, 28, 1) and ds.num_classes == 10
        assert ds.label_names is not None and len(ds.label_names) == 10
        x, y = np.concatenate([b[0] for b in ds.batches(4)]), ds.arrays()[1]
        assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape == (11, 28, 28, 1)
        expected = np.stack([source[i]["image"] for i in range(11)]).astype(np.float32) / 255
        np.testing.assert_array_equal(x, expected)
        np.testing.assert_array_equal(y, [int(source[i]["label"]) for i in range(11)])
        rgb = data.load_tfds("mnist", "test", size=16, channels=3)
        assert rgb.take(2)[0].shape == (2, 16, 16, 3)
