"""Build jaxadv/assets/pneumoniamnist_test.npz: the PneumoniaMNIST test split shipped with jaxadv.

Usage (from the repository root):

    python scripts/make_embedded_data.py [--src ../shared/data/pneumoniamnist.npz]
                                         [--dst jaxadv/assets/pneumoniamnist_test.npz]

The output keeps the MedMNIST layout (``test_images`` uint8 [624, 28, 28], ``test_labels`` uint8
[624, 1]), is deflate-compressed, and is byte-reproducible (fixed zip timestamps).

Data: PneumoniaMNIST from MedMNIST v2 (Yang et al., Scientific Data 2023), derived from Kermany et
al., Cell 2018; licence CC BY 4.0 (see jaxadv/assets/README.md).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import zipfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "pneumoniamnist.npz"
DEFAULT_DST = ROOT / "jaxadv" / "assets" / "pneumoniamnist_test.npz"
EXPECTED = {"test_images": ((624, 28, 28), np.uint8), "test_labels": ((624, 1), np.uint8)}


def write_npz(dst: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but with fixed timestamps so the bytes do not change run to run."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, arr in arrays.items():
            zi = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(zi, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=pathlib.Path, default=DEFAULT_SRC)
    parser.add_argument("--dst", type=pathlib.Path, default=DEFAULT_DST)
    args = parser.parse_args(argv)
    if not args.src.exists():
        parser.error(f"{args.src} not found; pass --src path/to/pneumoniamnist.npz")
    with np.load(args.src, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in EXPECTED}
    for key, (shape, dtype) in EXPECTED.items():
        if arrays[key].shape != shape or arrays[key].dtype != dtype:
            parser.error(
                f"{key} is {arrays[key].dtype}{arrays[key].shape}, expected {dtype}{shape}"
            )
    write_npz(args.dst, arrays)
    counts = np.bincount(arrays["test_labels"][:, 0], minlength=2)
    sys.stdout.write(
        f"wrote {args.dst} ({args.dst.stat().st_size} bytes): 624 images, "
        f"normal={counts[0]} pneumonia={counts[1]}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
