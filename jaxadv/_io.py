"""Files written whole or not at all (results, reports, checkpoints)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import tempfile


def fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``path`` whole or not at all: temporary file in the same folder, fsync, rename,
    fsync of the folder (so the rename itself survives a power cut)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


# ----------------------------------------------------------------------------- untrusted names
#: Longest file-name component we build (most file systems allow 255 bytes; leave room for
#: suffixes such as ``.json.corrupt.12`` and the ``.NAME.XXXX.tmp`` of :func:`write_atomic`).
MAX_NAME = 200
_SAFE = re.compile(r"[A-Za-z0-9._-]+")


class UnsafePathError(ValueError):
    """A name or path read from a file (or given) would leave the folder it belongs in."""


def is_safe_name(name: object) -> bool:
    """True for a plain file-name component: ``[A-Za-z0-9._-]``, not starting with a dot,
    at most :data:`MAX_NAME` characters (so no ``/``, ``..``, NUL, absolute path or hidden file)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME
        and _SAFE.fullmatch(name) is not None
        and not name.startswith(".")
    )


def safe_name(text: object, *, max_len: int = 80) -> str:
    """A file-name component made from arbitrary text (a label read from a result file).

    Characters outside ``[A-Za-z0-9._-]`` become ``-``; leading dots and dashes are dropped; a
    name that had to be changed or shortened gets 8 hex digits of the original's SHA-256, so two
    different texts never share a name."""
    s = str(text)
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", s).lstrip(".-") or "x"
    if clean == s and len(s) <= max_len:
        return s
    tag = hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{clean[: max_len - 9].rstrip('.-') or 'x'}-{tag}"


def path_inside(root: str | os.PathLike, name: str) -> pathlib.Path:
    """``root / name`` for a safe ``name`` (see :func:`is_safe_name`), checked to stay inside
    ``root`` once symbolic links are resolved (a link inside ``root`` pointing out is refused).

    Raises:
        UnsafePathError: an unsafe name, or a path that resolves outside ``root``.
    """
    if not is_safe_name(name):
        raise UnsafePathError(f"refusing to use {name!r} as a file name inside {root}")
    base = pathlib.Path(root).resolve()
    p = pathlib.Path(root) / name
    real = p.resolve()
    if real.parent != base:
        raise UnsafePathError(
            f"{p} resolves to {real}, outside {base} (a symbolic link?); remove it and retry"
        )
    return p


def check_inside(root: str | os.PathLike, path: str | os.PathLike) -> pathlib.Path:
    """``path`` itself if, with symbolic links resolved, it lies inside ``root``.

    Raises:
        UnsafePathError: it does not.
    """
    base = pathlib.Path(root).resolve()
    real = pathlib.Path(path).resolve()
    if real != base and base not in real.parents:
        raise UnsafePathError(f"{path} resolves to {real}, outside {base}")
    return pathlib.Path(path)


# ----------------------------------------------------------------------------- content hashes
_HASHES: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content, streamed, cached in this process by (path, size, mtime, inode)
    so that a run hashes each input once."""
    p = pathlib.Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def content_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, or for a folder of every regular file in it (recursively, in
    sorted order: relative path, size and content hash of each)."""
    p = pathlib.Path(path)
    if not p.is_dir():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        rel = f.relative_to(p).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()
