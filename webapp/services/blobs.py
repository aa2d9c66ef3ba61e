"""Raw message storage: content-addressed, byte-for-byte, fsynced.

The store is a small interface (put/get/open/delete/exists by SHA-256) so that a store
every machine can reach (object storage, the database) can replace the local one.
Reference counts live in the database (`Blob` rows) and change in the same transaction
as the messages that use them; files are written before that transaction commits, so a
crash can leave an unreferenced file (swept by `collect_garbage`) but never a row
without its bytes.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from webapp.models import Blob
from webapp.models._types import utcnow


class BlobStore(Protocol):
    """What every blob store offers."""

    def put(self, data: bytes, *, durable: bool = True) -> str: ...
    def sync(self, digests: list[str]) -> None: ...
    def get(self, sha256: str) -> bytes: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def exists(self, sha256: str) -> bool: ...
    def delete(self, sha256: str) -> None: ...


def _load_syncfs():
    """libc's syncfs(2), or None where the system has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


_syncfs = _load_syncfs()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobMissingError(FileNotFoundError):
    """A blob the database references is not in the store."""


def _check_hash(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("not a SHA-256 hex digest")
    return sha256


class LocalBlobStore:
    """Blobs as files under a root folder: ab/cd/abcdef…, written atomically and fsynced."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, sha256: str) -> Path:
        _check_hash(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes, *, durable: bool = True) -> str:
        """Store bytes (idempotent) and return their SHA-256.

        ``durable=False`` skips the per-file fsync: the caller must call ``sync()`` for the
        batch before committing anything that references these blobs.
        """
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if self._intact(path, digest, len(data)):
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if durable:
            # The rename is durable only once the directory entry is.
            _fsync_path(path.parent)
        return digest

    @staticmethod
    def _intact(path: Path, digest: str, size: int) -> bool:
        """Whether the file holds exactly these bytes (a crash before a sync can leave less)."""
        try:
            if path.stat().st_size != size:
                return False
            with open(path, "rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest() == digest
        except FileNotFoundError:
            return False

    def sync(self, digests: list[str]) -> None:
        """Make blobs written with ``durable=False`` durable, before the commit that uses them.

        One syncfs() of the store's filesystem where the system has it (Linux): a batch of
        files costs one flush instead of two fsyncs each. Elsewhere each file and folder.
        """
        if _syncfs is not None and self.root.exists():
            fd = os.open(self.root, os.O_RDONLY)
            try:
                if _syncfs(fd) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"syncfs: {os.strerror(error)}")
            finally:
                os.close(fd)
            return
        folders: set[Path] = set()
        for digest in digests:
            path = self._path(digest)
            _fsync_path(path)
            folders.update((path.parent, path.parent.parent, self.root))
        for folder in folders:
            _fsync_path(folder)

    def get(self, sha256: str) -> bytes:
        """The stored bytes, exactly as put."""
        with self.open(sha256) as handle:
            return handle.read()

    def open(self, sha256: str) -> BinaryIO:
        """A binary file object of the stored bytes (close it)."""
        try:
            return open(self._path(sha256), "rb")
        except FileNotFoundError:
            raise BlobMissingError(sha256) from None

    def exists(self, sha256: str) -> bool:
        """Whether the store holds this blob."""
        return self._path(sha256).exists()

    def delete(self, sha256: str) -> None:
        """Remove a blob (no error if it is already gone)."""
        self._path(sha256).unlink(missing_ok=True)

    def mtime(self, sha256: str) -> float:
        """When the blob was written (seconds since the epoch)."""
        return self._path(sha256).stat().st_mtime

    def iter_hashes(self):
        """Every stored hash (for garbage collection)."""
        for path in self.root.glob("??/??/*"):
            if not path.name.startswith(".tmp-"):
                yield path.name


def get_store(blob_dir: str) -> LocalBlobStore:
    """The configured store (local files under BLOB_DIR)."""
    return LocalBlobStore(blob_dir)


def add_reference(session: Session, sha256: str, size: int) -> None:
    """Count one more message using this blob (row created on first use)."""
    updated = session.execute(update(Blob).where(Blob.sha256 == sha256)
                              .values(refcount=Blob.refcount + 1)).rowcount
    if not updated:
        session.add(Blob(sha256=sha256, size=size, refcount=1))
        session.flush()


def add_references(session: Session, uses: dict[str, tuple[int, int]]) -> None:
    """Count uses of many blobs at once: ``{sha256: (size, uses)}``, one upsert statement."""
    if not uses:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    else:
        for digest, (size, count) in uses.items():
            for _ in range(count):
                add_reference(session, digest, size)
        return
    statement = upsert(Blob)
    statement = statement.on_conflict_do_update(
        index_elements=[Blob.sha256],
        set_={"refcount": Blob.refcount + statement.excluded.refcount})
    now = utcnow()
    # Sorted, so two batches sharing blobs lock their rows in the same order.
    session.execute(statement, [{"sha256": digest, "size": size, "refcount": count,
                                 "created_at": now}
                                for digest, (size, count) in sorted(uses.items())])


# Built once: sending drops one reference per message, and building costs more than running.
_DROP_REFERENCE = (update(Blob.__table__)
                   .where(Blob.__table__.c.sha256 == bindparam("b_sha256"),
                          Blob.__table__.c.refcount > 0)
                   .values(refcount=Blob.__table__.c.refcount - 1))


def drop_reference(session: Session, sha256: str) -> None:
    """Count one message fewer; the bytes go when garbage is collected at zero."""
    drop_references(session, [sha256])


def drop_references(session: Session, digests: list[str]) -> None:
    """Count one use fewer of each of these blobs, in one executemany."""
    if digests:
        session.connection().execute(_DROP_REFERENCE, [{"b_sha256": d} for d in digests])


def collect_garbage(session: Session, store: LocalBlobStore, orphan_age: float = 3600) -> int:
    """Delete blobs no message uses (rows at zero, and old files without rows); return how many.

    A file without a row may belong to a delivery that has not committed yet, so only
    files older than ``orphan_age`` seconds are taken.
    """
    removed = 0
    for blob in session.scalars(select(Blob).where(Blob.refcount <= 0)).all():
        session.delete(blob)
        session.flush()
        store.delete(blob.sha256)
        removed += 1
    session.commit()
    known = set(session.scalars(select(Blob.sha256)))
    cutoff = time.time() - orphan_age
    for digest in list(store.iter_hashes()):
        if digest not in known and store.mtime(digest) < cutoff:
            store.delete(digest)
            removed += 1
    return removed
