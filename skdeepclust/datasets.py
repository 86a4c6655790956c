"""Loading images kept on disk the usual way: ``root/<class>/<file>``, or an archive of that."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import hashlib
import math
import os
import shutil
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch, check_random_state

from ._device import usable_cores
from ._grouping import rows_of_each
from ._progress import progress_bar
from .embedding.decoding import decode_file, unreadable_file_reason
from .embedding.image_files import ARCHIVE_SUFFIXES, find_image_files, is_hidden_name, missing_path_hint

# Files each thread of the readability check gets at least.
FILES_PER_CHECK_THREAD = 256
# Unreadable files named in load_image_folder's warning; the Bunch lists them all.
UNREADABLE_FILES_SHOWN = 5
# Raised when extract_image_archive unpacks differently: 2, zips made on Windows with
# backslashes between folder names unpack into those folders.
UNPACKING_REVISION = 2


def load_image_folder(root, *, max_per_class=None, skip_unreadable=False, random_state=None,
                      return_X_y=False):
    """List the images under ``root``, with labels taken from their class folders.

    Parameters
    ----------
    root : str, bytes or path-like
        A folder. Images in ``root/<class>/...`` (any depth below the class folder)
        get the label ``<class>``. If any image lies directly in ``root``, the folder
        is treated as unlabelled and ``target`` is None (with a warning when it also
        has class folders).
    max_per_class : int, default=None
        Keep at most this many images of each class, drawn at random (seeded by
        ``random_state``). Needs a labelled folder.
    skip_unreadable : bool, default=False
        Decode every listed file once (JPEGs at a reduced scale), in one thread
        per core for many files, and leave out those that cannot be read (damaged,
        cut short, or not images after all), with a warning that names them.
        Without it such a file is found only when the images are embedded, and
        stops the fit with an error that names it. The check is made after
        ``max_per_class`` has drawn its sample, so a class may then keep fewer
        images; it took 3.5 s for CIFAR-10's 10,000 test JPEGs on one core.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw of ``max_per_class``.
    return_X_y : bool, default=False
        Return ``(filenames, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``filenames`` (list of str), ``target`` (int ndarray or None),
        ``target_names`` (list of class folder names). The files are in the order
        of :func:`~skdeepclust.embedding.find_image_files` (sorted by class, then
        path), less those that ``max_per_class`` leaves out. Given the folder path
        ``root`` itself, :class:`~skdeepclust.ImageEmbedder` and
        :class:`~skdeepclust.PretrainedFeatureClusterer` take the images in that
        order too, so with ``max_per_class=None`` row ``i`` of the embeddings, and
        ``labels_[i]``, belong to ``filenames[i]``. With ``skip_unreadable=True``
        also ``unreadable``: a dict from each file left out to why it could not be
        read (a class whose files are all unreadable keeps its name in
        ``target_names``, with no samples).
    (filenames, target) : tuple
        If ``return_X_y`` is True.

    Raises
    ------
    ValueError
        If ``root`` is not a folder or holds no images, or if ``max_per_class`` is
        given for an unlabelled folder, or if ``skip_unreadable=True`` leaves no image.

    Warns
    -----
    UserWarning
        If ``root`` has class folders but also images directly in it, so that no
        labels are returned, or if ``skip_unreadable=True`` leaves files out.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> from skdeepclust.datasets import load_image_folder
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["cat/1.png", "cat/2.png", "dog/1.png"]:
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(root / name)
    >>> data = load_image_folder(root)
    >>> data.target_names, data.target.tolist()
    (['cat', 'dog'], [0, 0, 1])
    >>> _ = (root / "dog" / "2.png").write_bytes(b"not a picture")
    >>> data = load_image_folder(root, skip_unreadable=True)  # warns, naming dog/2.png
    >>> len(data.filenames), list(data.unreadable) == [str(root / "dog" / "2.png")]
    (3, True)
    >>> import shutil; shutil.rmtree(root)
    """
    if not isinstance(root, (str, bytes, os.PathLike)):
        raise ValueError(f"root must be the path of a folder; got {root!r}.")
    given, root = root, Path(os.fsdecode(os.fspath(root)))
    if not root.is_dir():
        hint = "" if root.exists() else missing_path_hint(given, "root", takes_files=False)
        raise ValueError(f"root={str(root)!r} is not a folder.{hint}")
    for name, flag in (("skip_unreadable", skip_unreadable), ("return_X_y", return_X_y)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False; got {flag!r}.")
    if max_per_class is not None:
        is_count = isinstance(max_per_class, (int, np.integer)) and not isinstance(max_per_class, bool)
        if not is_count or max_per_class < 1:
            raise ValueError(f"max_per_class must be a positive integer; got {max_per_class!r}.")
    files = find_image_files(root)
    target, target_names = class_folder_labels(root, files)
    if target is None:
        loose = [file for file in files if len(Path(file).relative_to(root).parts) == 1]
        where = (
            f"{len(loose)} image file(s) lie directly in {str(root)!r} (e.g. {Path(loose[0]).name!r}), "
            "not in a class folder root/<class>/"
        )
        if max_per_class is not None:
            # Returning every image when a sample was asked for would go unnoticed until much later.
            raise ValueError(
                f"max_per_class needs class folders, but {where}. Move those files into class "
                "folders, or pass max_per_class=None and subsample the filenames yourself."
            )
        if len(loose) < len(files):
            warnings.warn(
                f"Labels are not returned (target is None): {where}. Move them into a class "
                "folder to get labels.",
                UserWarning,
                stacklevel=2,
            )
        return _folder_contents(root, files, None, [], skip_unreadable, return_X_y)
    if max_per_class is not None:
        rng = check_random_state(random_state)
        kept = np.concatenate(
            [
                np.sort(rng.permutation(members)[:max_per_class])
                for members in rows_of_each(target, np.arange(len(target_names)))
            ]
        )
        files = [files[i] for i in kept]
        target = target[kept]
    return _folder_contents(root, files, target, target_names, skip_unreadable, return_X_y)


def _folder_contents(root, files, target, target_names, skip_unreadable, return_X_y):
    """What :func:`load_image_folder` returns, less the unreadable files if asked."""
    unreadable = {}
    if skip_unreadable:
        readable, reasons = split_readable(files)
        if not any(readable):
            raise ValueError(
                f"None of the {len(files)} image files under {str(root)!r} could be read; "
                f"{files[0]!r}, for one: {reasons[0]}"
            )
        unreadable = {path: reason for path, reason in zip(files, reasons) if reason is not None}
        if unreadable:
            shown = "; ".join(f"{path}: {reason}" for path, reason in
                              list(unreadable.items())[:UNREADABLE_FILES_SHOWN])
            more = len(unreadable) - UNREADABLE_FILES_SHOWN
            warnings.warn(
                f"Left out {len(unreadable)} unreadable image file(s) of {len(files)} "
                f"(skip_unreadable=True): {shown}"
                + (f"; and {more} more, listed in the result's 'unreadable'" if more > 0 else ""),
                UserWarning,
                stacklevel=3,
            )
            if target is not None:
                target = target[np.asarray(readable)]
            files = [path for path, keep in zip(files, readable) if keep]
    if return_X_y:
        return files, target
    contents = Bunch(filenames=files, target=target, target_names=target_names)
    if skip_unreadable:
        contents.unreadable = unreadable
    return contents


def unreadable_reason(path):
    """Why ``path`` cannot be decoded as an image, in one line, or None if it can.

    Uses the embedder's own decoder (JPEGs at a cheap reduced scale), so a file
    that passes is one the embedder reads.
    """
    try:
        decode_file(path, min_size=(64, 64), reduce=False)
        return None
    except Exception as exc:  # PIL raises many types for damaged files
        return unreadable_file_reason(exc)


def split_readable(files, progress=False):
    """Decode each of ``files``; return ``(readable, reasons)``.

    ``readable[i]`` tells whether ``files[i]`` decodes and ``reasons[i]`` why it
    does not (None where it does). Many files are checked in one thread per core
    (Pillow decodes without holding the GIL; threads, unlike processes, need no
    ``if __name__ == "__main__"`` guard in the caller's script); ``progress=True``
    shows a progress bar.
    """
    threads = min(usable_cores(), math.ceil(len(files) / FILES_PER_CHECK_THREAD))
    with contextlib.ExitStack() as stack:
        if threads > 1:
            pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(threads))
            reasons = pool.map(unreadable_reason, files)
        else:
            reasons = map(unreadable_reason, files)
        reasons = list(progress_bar(reasons, enabled=progress, total=len(files), desc="checking files",
                                    unit="file"))
    return [reason is None for reason in reasons], reasons


def class_folder_labels(root, files):
    """Labels of ``files`` from their class folder, ``root/<class>/...``.

    Returns ``(target, target_names)``: int labels indexing the sorted class
    names, or ``(None, [])`` if any file lies directly in ``root``.
    """
    prefix = os.path.join(os.fspath(root), "")
    class_of = [_class_folder(file, root, prefix) for file in files]
    if None in class_of:  # a file directly in root
        return None, []
    target_names = sorted(set(class_of))
    index = {name: label for label, name in enumerate(target_names)}
    return np.array([index[name] for name in class_of], dtype=np.int64), target_names


def _class_folder(file, root, prefix):
    """The folder of ``file`` right below ``root`` (whose path with a final separator is
    ``prefix``), or None for a file directly in ``root``."""
    if isinstance(file, str) and prefix and file.startswith(prefix):
        below = file[len(prefix):]
        # Cut as a string where that reads it as Path does, a normalised path as
        # find_image_files gives: a Path per file took 10 s for a million files.
        if os.path.normpath(below) == below and not below.startswith(os.sep):
            first, separator, _ = below.partition(os.sep)
            return first if separator else None
    parts = Path(file).relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def extract_image_archive(archive, cache_dir=None):
    """Unpack a ``.tar``, ``.tar.gz``, ``.tgz`` or ``.zip`` of images once, and return where.

    Parameters
    ----------
    archive : str or path-like
        The archive file.
    cache_dir : str or path-like, default=None
        Where to unpack; default ``$SKDEEPCLUST_CACHE`` or ``~/.cache/skdeepclust``.
        Each archive gets a sub-folder of its own, named after the archive and its
        location. It is unpacked again only when the archive changes (its size or
        modification time) or the last unpacking did not finish. Processes that
        unpack one archive at once take turns (not on Windows).

    Returns
    -------
    folder : pathlib.Path
        The folder holding the archive's contents; when those are a single folder
        (``photos.zip`` holding ``photos/<class>/...``), that folder, so that
        :func:`load_image_folder` finds the classes in it.

    Raises
    ------
    ValueError
        If ``archive`` is not a file of those kinds, is damaged or cut short
        (nothing is left in the cache then), or is a tar file holding links or
        paths leading outside itself. In a zip file, such paths are unpacked
        inside the folder, as :mod:`zipfile` cleans them (``../a.png`` as
        ``a.png``).
    """
    if not isinstance(archive, (str, os.PathLike)):
        raise ValueError(f"archive must be the path of a file; got {archive!r}.")
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise ValueError(f"archive={str(archive)!r} is not a file.")
    cache_dir = Path(
        cache_dir or os.environ.get("SKDEEPCLUST_CACHE") or Path.home() / ".cache" / "skdeepclust"
    ).expanduser()
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):  # PHOTOS.ZIP too, as some Windows tools write it
            name = name[: -len(suffix)]
            break
    else:
        raise ValueError(f"{archive.name!r} is not a .tar, .tar.gz, .tgz or .zip archive.")
    location = str(archive.resolve())
    stat = archive.stat()
    # The revision unpacks anew what an older way of unpacking left in the cache.
    identity = f"{location}\n{stat.st_size}\n{stat.st_mtime_ns}\nunpacking revision {UNPACKING_REVISION}\n"
    # Archives of one name from different places must not share a folder.
    folder = cache_dir / f"{name}-{hashlib.sha256(location.encode()).hexdigest()[:10]}"
    complete = folder / ".extracted"

    def unpacked():
        return complete.is_file() and complete.read_text() == identity

    if not unpacked():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(cache_dir / f".{folder.name}.lock"):
            # Another process may have unpacked it while this one waited for the lock.
            if not unpacked():
                _unpack(archive, folder, complete.name, identity)
    return _contents_folder(folder)


@contextlib.contextmanager
def _exclusive_lock(path):
    """Hold an exclusive lock on the file ``path`` for the block, where the OS has ``fcntl``.

    Two processes unpacking one archive at once (the ranks of one job, two
    notebooks) would otherwise delete each other's files. Without ``fcntl``
    (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _unpack(archive, folder, marker_name, identity):
    """Unpack ``archive`` beside ``folder``, then put it in the folder's place, marked with ``identity``.

    A damaged archive, or an unpacking cut short, leaves the folder as it was.
    """
    # Not tempfile.mkdtemp, whose folder only its owner may read. Under the lock, a
    # folder of this name is left from an unpacking that was killed.
    unpacking = folder.parent / f".{folder.name}-unpacking"
    shutil.rmtree(unpacking, ignore_errors=True)
    unpacking.mkdir()
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                members = zipped.infolist()
                for member in members:
                    # Some Windows tools (PowerShell's Compress-Archive on .NET 4.5) separate
                    # folders with backslashes, which no Windows name holds, as unzip takes
                    # them; zipfile on POSIX made each path one file name, losing the classes.
                    if member.create_system == 0:
                        member.filename = member.filename.replace("\\", "/")
                zipped.extractall(unpacking, members)
        else:
            with tarfile.open(archive) as tarred:
                tarred.extractall(unpacking, filter="data")
                # tarfile takes a damaged member header for the end of the archive, so
                # only zero padding may follow where it stopped. Reading to the end
                # also checks a compressed stream whole (gzip's CRC, a cut end).
                while chunk := tarred.fileobj.read(1 << 20):
                    if chunk.count(0) != len(chunk):
                        raise tarfile.ReadError(
                            "data follows where tarfile saw the end: a damaged member "
                            "header, or several archives joined into one"
                        )
        (unpacking / marker_name).write_text(identity)
        if folder.exists():  # an older version of the archive
            shutil.rmtree(folder)
        os.replace(unpacking, folder)
    except tarfile.FilterError as exc:
        raise ValueError(
            f"archive={str(archive)!r} holds a member that is refused for safety ({exc}): a link "
            "or path leading outside the archive, or a device file. Unpack it yourself, if you "
            "trust it, and pass the folder to load_image_folder."
        ) from exc
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        reason = " ".join(str(exc).split())  # tarfile's runs over several lines
        raise ValueError(
            f"archive={str(archive)!r} is damaged or cut short ({type(exc).__name__}: {reason}); "
            "copy or download it again."
        ) from exc
    finally:  # after a failure; once moved into place, there is nothing left here
        shutil.rmtree(unpacking, ignore_errors=True)


def _contents_folder(folder):
    """``folder``, or the one folder it holds besides hidden entries and macOS's ``__MACOSX``."""
    entries = [entry for entry in folder.iterdir() if not is_hidden_name(entry.name)]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder
