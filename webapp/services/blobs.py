"""Raw message storage: content-addressed, byte-for-byte, fsynced.

The store is a small interface (put/get/open/delete/exists by SHA-256) so that a store
every machine can reach (object storage, the database) can replace the local one.
Reference counts live in the database (`Blob` rows) and change in the same transaction
as the messages that use them; files are written before that transaction commits, so a
crash can leave an unreferenced file (swept by `collect_garbage`) but never a row
without its bytes.

A single message is a file of its own. A delivered batch (a POP round, Sent copies) is
one pack file: the messages one after another, written and fsynced once, each located
by the pack and offset on its `Blob` row. A file per message costs a create, a rename
and folder updates each, several times what the bytes cost; a pack costs one of each
per batch. `get()` and `open()` read both kinds by hash, and check the bytes against it.
Packs whose messages are all deleted are removed by `collect_garbage`, and packs left
mostly empty are rewritten as files of their own (`compact`).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import io
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from webapp.models import Blob
from webapp.models._types import utcnow


class BlobStore(Protocol):
    """What every blob store offers."""

    def put(self, data: bytes, *, durable: bool = True) -> str: ...
    def write_pack(self, raws: list[bytes], *, digests: list[str] | None = None,
                   durable: bool = True) -> tuple[str, list[tuple[str, int]]]: ...
    def sync_pack(self, pack: str) -> None: ...
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


_IOV_MAX = 1024  # buffers per writev(2), the Linux and BSD limit


def _write_all(fd: int, buffers: list[bytes]) -> None:
    """Write the buffers in order with writev(2), resuming after partial writes."""
    views = [memoryview(buffer) for buffer in buffers if buffer]
    start = 0
    while start < len(views):
        written = os.writev(fd, views[start:start + _IOV_MAX])
        while written:
            if written >= len(views[start]):
                written -= len(views[start])
                start += 1
            else:
                views[start] = views[start][written:]
                written = 0


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobMissingError(FileNotFoundError):
    """A blob the database references is not in the store."""


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _check_hash(sha256: str) -> str:
    if not _SHA256_HEX.fullmatch(sha256):
        raise ValueError("not a SHA-256 hex digest")
    return sha256


# Where a packed blob is, by hash: (pack, offset, size), or None when it is not packed.
Locator = Callable[[str], "tuple[str, int, int] | None"]

PACK_FOLDER = "packs"


class LocalBlobStore:
    """Blobs under a root folder: files ab/cd/abcdef…, and packs/ab/<name>.pack.

    Files are written atomically and fsynced; packs are written once, fsynced, never
    changed. ``locate`` finds a packed blob by hash (the database's `Blob` row).
    """

    def __init__(self, root: str | os.PathLike, locate: Locator | None = None):
        self.root = Path(root)
        self._root = os.fspath(self.root)
        self.locate = locate

    def _path(self, sha256: str) -> Path:
        return Path(self._file(sha256))

    def _file(self, sha256: str) -> str:
        # A plain string: building a Path costs more than reading a small blob does.
        _check_hash(sha256)
        return os.path.join(self._root, sha256[:2], sha256[2:4], sha256)

    def put(self, data: bytes, *, durable: bool = True) -> str:
        """Store bytes (idempotent) and return their SHA-256.

        ``durable=False`` skips the per-file fsync: the caller must call ``sync()`` for the
        batch before committing anything that references these blobs.
        """
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if self._intact(path, digest, len(data)):
            return digest
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except FileNotFoundError:  # the first blob of its fan-out folder
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

    def pack_path(self, pack: str) -> Path:
        """The file of a pack name (``ab/<32 hex>``)."""
        folder, _, name = pack.partition("/")
        if (len(folder) != 2 or len(name) != 32
                or any(c not in "0123456789abcdef" for c in folder + name)):
            raise ValueError("not a pack name")
        return self.root / PACK_FOLDER / folder / f"{name}.pack"

    def write_pack(self, raws: list[bytes], *, digests: list[str] | None = None,
                   durable: bool = True) -> tuple[str, list[tuple[str, int]]]:
        """Write messages one after another into a new pack file.

        Returns the pack's name and each message's (SHA-256, offset), in order; the
        caller may pass the digests it computed already. The bytes go in as few system
        calls as the system allows: a thread writing beside busy Python code waits for the
        interpreter lock after each call, so a call per message made packs slow. The file
        and its folder entry are fsynced before this returns, or with ``durable=False`` by
        ``sync_pack()``, which the caller runs before committing anything that references
        the pack. Until a commit does, the pack is an orphan that `collect_garbage` removes.
        """
        name = uuid.uuid4().hex
        pack = f"{name[:2]}/{name}"
        path = self.pack_path(pack)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # the first pack of its fan-out folder
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        located: list[tuple[str, int]] = []
        offset = 0
        try:
            try:
                for index, raw in enumerate(raws):
                    digest = digests[index] if digests else hashlib.sha256(raw).hexdigest()
                    located.append((digest, offset))
                    offset += len(raw)
                _write_all(fd, raws)
            finally:
                os.close(fd)
            if durable:
                self.sync_pack(pack)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return pack, located

    def sync_pack(self, pack: str) -> None:
        """Make a pack written with ``durable=False`` durable: its bytes and folder entries."""
        path = self.pack_path(pack)
        _fsync_path(path)
        for folder in (path.parent, path.parent.parent):
            _fsync_path(folder)

    def read_packed(self, sha256: str, pack: str, offset: int, size: int) -> bytes:
        """A packed blob's bytes, checked against its hash."""
        try:
            with open(self.pack_path(pack), "rb") as handle:
                handle.seek(offset)
                data = handle.read(size)
        except FileNotFoundError:
            raise BlobMissingError(sha256) from None
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
            raise BlobMissingError(f"{sha256}: pack {pack} does not hold these bytes")
        return data

    def get(self, sha256: str) -> bytes:
        """The stored bytes, exactly as put, checked against their hash.

        A file of the blob's own that holds exactly these bytes is the blob, whatever the
        database says, so the common case costs no query. Otherwise (no file, or a short
        leftover of a delivery that never committed) the blob is looked for in its pack.
        """
        try:
            with open(self._file(sha256), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            data = None
        if data is not None and hashlib.sha256(data).hexdigest() == sha256:
            return data
        where = self.locate(sha256) if self.locate else None
        if where is not None:
            return self.read_packed(sha256, *where)
        if data is None:
            raise BlobMissingError(sha256)
        raise BlobMissingError(f"{sha256}: the stored file does not hold these bytes")

    def open(self, sha256: str) -> BinaryIO:
        """A binary file object of the stored bytes (checked as get() does)."""
        return io.BytesIO(self.get(sha256))

    def exists(self, sha256: str) -> bool:
        """Whether the store holds this blob (a file of its own, or a pack)."""
        if self._path(sha256).exists():
            return True
        where = self.locate(sha256) if self.locate else None
        return where is not None and self.pack_path(where[0]).exists()

    def delete(self, sha256: str) -> None:
        """Remove a blob's own file (no error if it is already gone; packs go whole)."""
        self._path(sha256).unlink(missing_ok=True)

    def mtime(self, sha256: str) -> float:
        """When the blob was written (seconds since the epoch)."""
        return self._path(sha256).stat().st_mtime

    def iter_hashes(self):
        """Every hash stored as a file of its own (for garbage collection)."""
        for path in self.root.glob("??/??/*"):
            if not path.name.startswith(".tmp-"):
                yield path.name

    def iter_packs(self):
        """Every pack: (name, size in bytes, mtime)."""
        for path in self.root.glob(f"{PACK_FOLDER}/??/*.pack"):
            stat = path.stat()
            yield f"{path.parent.name}/{path.stem}", stat.st_size, stat.st_mtime


def _locate_in(session: Session, sha256: str) -> tuple[str, int, int] | None:
    with session.no_autoflush:  # a read must not write the caller's pending changes
        row = session.execute(select(Blob.pack, Blob.pack_offset, Blob.size)
                              .where(Blob.sha256 == sha256)).first()
    return (row.pack, row.pack_offset, row.size) if row and row.pack else None


def _locate_in_database(sha256: str) -> tuple[str, int, int] | None:
    from webapp.extensions import db

    return _locate_in(db.session, sha256)


def get_store(blob_dir: str, session: Session | None = None) -> LocalBlobStore:
    """The configured store (local files under BLOB_DIR; packs located by `Blob` rows).

    Packs are located through `session` if given (a job with a session of its own: a
    lookup must not leave the app's session in a transaction), else the app's session.
    """
    if session is not None:
        return LocalBlobStore(blob_dir, locate=functools.partial(_locate_in, session))
    return LocalBlobStore(blob_dir, locate=_locate_in_database)


def add_reference(session: Session, sha256: str, size: int, pack: str | None = None,
                  pack_offset: int | None = None) -> None:
    """Count one more message using this blob (row created on first use, where ``pack`` says)."""
    updated = session.execute(update(Blob).where(Blob.sha256 == sha256)
                              .values(refcount=Blob.refcount + 1)).rowcount
    if not updated:
        session.add(Blob(sha256=sha256, size=size, refcount=1, pack=pack, pack_offset=pack_offset))
        session.flush()


def add_references(session: Session, uses: dict[str, tuple[int, int]],
                   packed: tuple[str, dict[str, int]] | None = None) -> None:
    """Count uses of many blobs at once: ``{sha256: (size, uses)}``, one upsert statement.

    ``packed`` is (pack, {sha256: offset}) when the bytes were written to a pack: a new
    row records where they are; a blob stored before keeps its place (this copy in the
    pack is never read, and goes with the pack).
    """
    if not uses:
        return
    pack, offsets = packed or (None, {})
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    else:
        for digest, (size, count) in uses.items():
            for _ in range(count):
                add_reference(session, digest, size, pack if digest in offsets else None,
                              offsets.get(digest))
        return
    table = Blob.__table__  # Core: the ORM's bulk path costs more than the statement
    statement = upsert(table)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.sha256],
        set_={"refcount": table.c.refcount + statement.excluded.refcount})
    now = utcnow()
    # Sorted, so two batches sharing blobs lock their rows in the same order.
    session.execute(statement, [{"sha256": digest, "size": size, "refcount": count,
                                 "created_at": now, "pack": pack if digest in offsets else None,
                                 "pack_offset": offsets.get(digest)}
                                for digest, (size, count) in sorted(uses.items())])


# Built once: building costs more than running, and it runs often (a deleted message, a
# sent message whose Sent copy was not kept).
_DROP_REFERENCE = (update(Blob.__table__)
                   .where(Blob.__table__.c.sha256 == bindparam("b_sha256"),
                          Blob.__table__.c.refcount > 0)
                   .values(refcount=Blob.__table__.c.refcount - 1))


def drop_reference(session: Session, sha256: str) -> None:
    """Count one message fewer; the bytes go when garbage is collected at zero."""
    drop_references(session, [sha256])


def drop_references(session: Session | Connection, digests: list[str]) -> None:
    """Count one use fewer of each of these blobs, in one executemany (in the session's
    transaction, or the connection's)."""
    if digests:
        # Not isinstance(Session): Flask-SQLAlchemy's db.session is a scoped_session.
        connection = session if isinstance(session, Connection) else session.connection()
        connection.execute(_DROP_REFERENCE, [{"b_sha256": d} for d in digests])


def collect_garbage(session: Session, store: LocalBlobStore, orphan_age: float = 3600,
                    sparse: float = 0.5) -> int:
    """Delete blobs no message uses; return how many files were removed.

    Rows at zero go, with their own files. Files and packs without a row are taken only
    when older than ``orphan_age`` seconds (they may belong to a delivery that has not
    committed yet). A pack whose live messages fill less than ``sparse`` of it is
    compacted: its live messages become files of their own, then the pack goes.
    """
    removed = 0
    for blob in session.scalars(select(Blob).where(Blob.refcount <= 0)).all():
        session.delete(blob)
        session.flush()
        if blob.pack is None:
            store.delete(blob.sha256)
            removed += 1
    session.commit()
    known = set(session.scalars(select(Blob.sha256).where(Blob.pack.is_(None))))
    cutoff = time.time() - orphan_age
    for digest in list(store.iter_hashes()):
        if digest not in known and store.mtime(digest) < cutoff:
            store.delete(digest)
            removed += 1
    live = dict(session.execute(select(Blob.pack, func.sum(Blob.size))
                                .where(Blob.pack.is_not(None)).group_by(Blob.pack)).all())
    for pack, size, mtime in list(store.iter_packs()):
        if pack not in live:
            if mtime < cutoff:
                store.pack_path(pack).unlink(missing_ok=True)
                removed += 1
        elif live[pack] < sparse * size:
            compact(session, store, pack)
            removed += 1
    return removed


def compact(session: Session, store: LocalBlobStore, pack: str) -> int:
    """Move a pack's live messages into files of their own, then remove the pack.

    Each file is durable before the commit that points its row at it, so a crash leaves
    either the old place or the new one whole. Returns how many messages moved.
    """
    rows = session.execute(select(Blob.sha256, Blob.pack_offset, Blob.size)
                           .where(Blob.pack == pack)).all()
    if not rows:
        return 0  # no row points here (yet): an orphan is collect_garbage's, by its age
    for digest, offset, size in rows:
        data = store.read_packed(digest, pack, offset, size)
        store.put(data)
    session.execute(update(Blob).where(Blob.pack == pack).values(pack=None, pack_offset=None))
    session.commit()
    store.pack_path(pack).unlink(missing_ok=True)
    return len(rows)
