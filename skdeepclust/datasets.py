"""Loading images kept on disk the usual way: ``root/<class>/<file>``, or an archive of that."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch, check_random_state

from .embedding.images import find_image_files, is_hidden_name


def load_image_folder(root, *, max_per_class=None, random_state=None, return_X_y=False):
    """List the images under ``root``, with labels taken from their class folders.

    Parameters
    ----------
    root : str or path-like
        A folder. Images in ``root/<class>/...`` (any depth below the class folder)
        get the label ``<class>``. If any image lies directly in ``root``, the folder
        is treated as unlabelled and ``target`` is None (with a warning when it also
        has class folders).
    max_per_class : int, default=None
        Keep at most this many images of each class, drawn at random (seeded by
        ``random_state``). Needs a labelled folder.
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
        ``labels_[i]``, belong to ``filenames[i]``.
    (filenames, target) : tuple
        If ``return_X_y`` is True.

    Raises
    ------
    ValueError
        If ``root`` is not a folder or holds no images, or if ``max_per_class`` is
        given for an unlabelled folder.

    Warns
    -----
    UserWarning
        If ``root`` has class folders but also images directly in it, so that no
        labels are returned.

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
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root={str(root)!r} is not a folder.")
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
        return (files, None) if return_X_y else Bunch(filenames=files, target=None, target_names=[])
    if max_per_class is not None:
        rng = check_random_state(random_state)
        kept = np.concatenate(
            [
                np.sort(rng.permutation(np.flatnonzero(target == label))[:max_per_class])
                for label in range(len(target_names))
            ]
        )
        files = [files[i] for i in kept]
        target = target[kept]
    if return_X_y:
        return files, target
    return Bunch(filenames=files, target=target, target_names=target_names)


def class_folder_labels(root, files):
    """Labels of ``files`` from their class folder, ``root/<class>/...``.

    Returns ``(target, target_names)``: int labels indexing the sorted class
    names, or ``(None, [])`` if any file lies directly in ``root``.
    """
    class_of = [Path(file).relative_to(root).parts for file in files]
    if any(len(parts) == 1 for parts in class_of):
        return None, []
    target_names = sorted({parts[0] for parts in class_of})
    index = {name: label for label, name in enumerate(target_names)}
    return np.array([index[parts[0]] for parts in class_of], dtype=np.int64), target_names


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
        modification time) or the last unpacking did not finish.

    Returns
    -------
    folder : pathlib.Path
        The folder holding the archive's contents; when those are a single folder
        (``photos.zip`` holding ``photos/<class>/...``), that folder, so that
        :func:`load_image_folder` finds the classes in it.
    """
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise ValueError(f"archive={str(archive)!r} is not a file.")
    cache_dir = Path(
        cache_dir or os.environ.get("SKDEEPCLUST_CACHE") or Path.home() / ".cache" / "skdeepclust"
    ).expanduser()
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        raise ValueError(f"{archive.name!r} is not a .tar, .tar.gz, .tgz or .zip archive.")
    location = str(archive.resolve())
    stat = archive.stat()
    identity = f"{location}\n{stat.st_size}\n{stat.st_mtime_ns}\n"
    # Archives of one name from different places must not share a folder.
    folder = cache_dir / f"{name}-{hashlib.sha256(location.encode()).hexdigest()[:10]}"
    complete = folder / ".extracted"
    if complete.is_file() and complete.read_text() == identity:
        return _contents_folder(folder)
    if folder.exists():  # an older version of the archive, or an unpacking cut short
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(folder)
    else:
        with tarfile.open(archive) as tarred:
            tarred.extractall(folder, filter="data")
    complete.write_text(identity)
    return _contents_folder(folder)


def _contents_folder(folder):
    """``folder``, or the one folder it holds besides hidden entries and macOS's ``__MACOSX``."""
    entries = [entry for entry in folder.iterdir() if not is_hidden_name(entry.name)]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder
