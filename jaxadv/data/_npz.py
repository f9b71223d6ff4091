"""Reading ``.npz`` members, memory-mapped where the archive stores them uncompressed.

``np.load(path, mmap_mode="r")`` ignores ``mmap_mode`` for ``.npz`` archives and reads every member
it is asked for into memory. A member written with ``ZIP_STORED`` (what ``np.savez`` does) is,
however, a plain ``.npy`` file lying at a fixed offset inside the archive: we locate it from the
zip local file header, parse the ``.npy`` header there, and map the data with ``np.memmap``.
Compressed members (``np.savez_compressed``) cannot be mapped and are read normally; convert such
an archive once with :func:`uncompress_npz` to map it.
"""

from __future__ import annotations

import os
import pathlib
import struct
import zipfile

import numpy as np

_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"


def open_npz(path: str | os.PathLike, *, hint: str = "") -> tuple[pathlib.Path, list[str]]:
    """Check ``path`` is a readable ``.npz`` archive and list its array names."""
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}.{hint}")
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a directory; pass the path of an .npz file")
    if not zipfile.is_zipfile(p):
        extra = " It looks like a single .npy array." if p.suffix == ".npy" else ""
        raise ValueError(
            f"{p} is not an .npz archive (a zip of .npy arrays, as np.savez writes).{extra} "
            "Re-download the file or re-save it with np.savez(path, train_images=..., ...)."
        )
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{p} is a corrupt .npz archive ({e}); re-download it") from e
    return p, [n[: -len(".npy")] for n in names if n.endswith(".npy")]


def load_member(path: pathlib.Path, key: str, *, mmap: bool = True) -> np.ndarray:
    """Array ``key`` of the archive: a read-only ``np.memmap`` when stored uncompressed and
    ``mmap`` is set, else an in-memory array. Pickled (object) arrays are refused."""
    if mmap:
        mapped = _try_memmap(path, key)
        if mapped is not None:
            return mapped
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]
    except ValueError as e:
        raise ValueError(f"cannot read array {key!r} from {path}: {e}") from e


def _try_memmap(path: pathlib.Path, key: str) -> np.ndarray | None:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
    encrypted = info.flag_bits & 0x1
    if info.compress_type != zipfile.ZIP_STORED or encrypted or info.file_size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        raw = f.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size:
            return None
        fields = _LOCAL_HEADER.unpack(raw)
        if fields[0] != _LOCAL_MAGIC:
            return None
        name_len, extra_len = fields[-2], fields[-1]
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        f.seek(start)
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            return None
        # Format 3.0 (utf-8 field names) has no public header reader; a normal load handles it.
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(
            f"array {key!r} in {path} holds Python objects (pickled); jaxadv reads numeric "
            "arrays only"
        )
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0 or offset - start + nbytes != info.file_size:
        return None
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


def uncompress_npz(src: str | os.PathLike, dst: str | os.PathLike) -> pathlib.Path:
    """Re-write an ``.npz`` archive with uncompressed members, so loaders can memory-map it.

    One member is held in memory at a time. Useful for the large MedMNIST sizes (``_128``,
    ``_224``) when they come compressed.

    Args:
      src: the source ``.npz``.
      dst: where to write the uncompressed copy (must differ from ``src``).

    Returns:
      The path written.
    """
    src_p, keys = open_npz(src)
    dst_p = pathlib.Path(dst)
    if dst_p.exists() and dst_p.resolve() == src_p.resolve():
        raise ValueError("dst must differ from src")
    dst_p.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst_p, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in keys:
            arr = load_member(src_p, key, mmap=True)
            with zf.open(key + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
            del arr
    return dst_p
