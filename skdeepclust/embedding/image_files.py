"""Which files under a folder are images: the search that the estimators, the
datasets and the command share.

Files are known by their extension, among those Pillow reads here (plugins' once
registered). Hidden names and the previews that photo software keeps beside the
photos are passed over; photos in formats Pillow cannot read, iCloud placeholders
and names that lead to no readable file are left out with a warning that says
what would make them readable.
"""

from __future__ import annotations

import collections
import heapq
import importlib.util
import os
import warnings
from pathlib import Path

from .._warnings import stacklevel_of_user_code


def missing_path_hint(path, parameter, takes_files=True):
    """What ``parameter``, a path that names nothing, may have meant, as a shell reads it."""
    path = os.fsdecode(os.fspath(path))
    if path.startswith("~") and os.path.expanduser(path) != path:
        return f" Python does not expand '~'; pass os.path.expanduser({parameter})."
    if any(wildcard in path for wildcard in "*?["):
        return (f" A pattern is not expanded; pass the files it matches, sorted(glob.glob({parameter}))."
                if takes_files else " A pattern is not expanded; pass one folder.")
    return ""


def _pillow_decodes_avif():
    # Pillow registers its AVIF plugin whether or not it was built with libavif, so
    # the registry cannot tell; the plugin's decoder, the extension module, can. Its
    # spec is found without importing it or any of PIL's plugins.
    return importlib.util.find_spec("PIL._avif") is not None


IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".bmp", ".gif", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k",
) + ((".avif",) if _pillow_decodes_avif() else ())
# Photo formats Pillow opens only through a plugin: HEIF, in which phones save
# photos (pillow-heif), and JPEG XL (pillow-jxl-plugin). Their files are images once
# the plugin's opener is registered; before, they are named in a warning.
PLUGIN_IMAGE_EXTENSIONS = (".heic", ".heif", ".hif", ".jxl")
# Photo formats Pillow does not read at all: camera raw files, and AVIF where it was
# built without libavif. They are named in a warning too.
UNREADABLE_PHOTO_EXTENSIONS = (
    ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2",
) + (() if ".avif" in IMAGE_EXTENSIONS else (".avif",))
IN_CLOUD_ADVICE = "Download them (in the Finder, 'Download Now' on their folder) and run again."
# What skdeepclust.datasets.extract_image_archive unpacks.
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_hidden_name(name):
    """Whether a file or folder name is one that image folders should skip.

    Dot-files (``.DS_Store``, ``._photo.jpg`` resource forks) and macOS's
    ``__MACOSX`` folders in zip files look like images by their extension but
    hold none; the ``@eaDir`` folders of a Synology NAS hold thumbnails it made of
    each photo beside them.
    """
    return name.startswith(".") or name in ("__MACOSX", "@eaDir")


# In a macOS Photos library (a folder ending .photoslibrary), the folders of the
# photos themselves; the others hold previews and thumbnails of each, made by Photos.
_PHOTOS_LIBRARY_ORIGINALS = ("originals", "Masters")


def readable_image_extensions():
    """``IMAGE_EXTENSIONS``, and those of ``PLUGIN_IMAGE_EXTENSIONS`` whose plugin
    has registered its opener with Pillow by now (pillow-heif's
    ``register_heif_opener()``, for instance)."""
    from PIL import Image

    registered = Image.registered_extensions()
    return IMAGE_EXTENSIONS + tuple(
        extension for extension in PLUGIN_IMAGE_EXTENSIONS if registered.get(extension) in Image.OPEN)


def shown_paths(paths):
    return ", ".join(repr(path) for path in paths[:3]) + (
        f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def unreadable_photos_advice(photos):
    """What makes the formats of ``photos`` readable, as a sentence, or ""."""
    counts = collections.Counter(os.path.splitext(path)[1].lower() for path in photos)
    advice = []
    if counts.keys() & {".heic", ".heif", ".hif"}:
        advice.append("HEIC/HEIF files are read once pillow-heif is installed (pip install "
                      "pillow-heif; in Python, call pillow_heif.register_heif_opener() first, "
                      "which the skdeepclust command does)")
    if ".jxl" in counts:
        advice.append("JPEG XL files once pillow-jxl-plugin is installed (in Python, import "
                      "pillow_jxl first)")
    unreadable = sorted(counts.keys() & set(UNREADABLE_PHOTO_EXTENSIONS))
    if unreadable:
        advice.append(f"convert {', '.join(unreadable)} files to JPEG or PNG, which this Pillow reads")
    advice = "; ".join(advice)
    return f"{advice[:1].upper()}{advice[1:]}." if advice else ""


def _warn_of_unreadable_photos(photos):
    """Warn of the photo files that the search skips since Pillow cannot read them here."""
    if not photos:
        return
    counts = collections.Counter(os.path.splitext(path)[1].lower() for path in photos)
    warnings.warn(
        f"Skipped {len(photos)} photo file(s) in formats Pillow cannot read here ("
        + ", ".join(f"{extension}: {count}" for extension, count in sorted(counts.items()))
        + f"): {shown_paths(photos)}. {unreadable_photos_advice(photos)}",
        UserWarning,
        stacklevel=stacklevel_of_user_code(),
    )


def _warn_of_photos_in_cloud(stubs):
    """Warn of the photos whose files are placeholders of iCloud Drive, not downloaded."""
    if stubs:
        warnings.warn(
            f"Skipped {len(stubs)} photo(s) kept in iCloud and not downloaded to this computer: "
            f"{shown_paths(stubs)}. {IN_CLOUD_ADVICE}",
            UserWarning,
            stacklevel=stacklevel_of_user_code(),
        )


def _warn_of_skipped_entries(unlisted, unreachable):
    """Warn of the folders that could not be listed and the image names that lead to
    no readable file, which the search skips, so that no image goes missing unseen."""
    if unlisted:
        warnings.warn(
            f"Skipped {len(unlisted)} folder(s) that could not be listed "
            f"({unlisted[0].strerror or unlisted[0]}): {shown_paths([error.filename for error in unlisted])}. "
            "Make them readable to include their images.",
            UserWarning,
            stacklevel=stacklevel_of_user_code(),
        )
    if unreachable:
        warnings.warn(
            f"Skipped {len(unreachable)} image name(s) that lead to no file that can be read "
            f"(a link to a missing file or to itself, or a file without permission): {shown_paths(unreachable)}.",
            UserWarning,
            stacklevel=stacklevel_of_user_code(),
        )


def find_image_files(folder) -> list:
    """All image files under ``folder``, recursively, as strings.

    Links are followed, each real folder and file taken once, hidden names skipped, and
    so are the thumbnails that photo software keeps beside the photos: a Synology
    NAS's ``@eaDir`` folders, and the previews of a macOS Photos library (in a
    folder ending ``.photoslibrary`` that holds Photos' ``database`` folder, only
    ``originals`` and ``Masters`` are searched).
    Sorted by path component, so that the files of class ``dog`` come before
    those of ``dog-1`` as their class names sort.

    This is the order in which :class:`~skdeepclust.ImageEmbedder` and
    :class:`~skdeepclust.PretrainedFeatureClusterer` take the images when given
    the folder path itself: row ``i`` of the embeddings, and ``labels_[i]``,
    belong to ``find_image_files(folder)[i]`` as long as the folder is unchanged.

    Parameters
    ----------
    folder : str, bytes or path-like
        The folder to search.

    Returns
    -------
    files : list of str
        Paths of the image files, each starting with ``folder``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> from skdeepclust.embedding import find_image_files
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["b/2.png", "a/1.jpg", "a/notes.txt", ".hidden.png"]:
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     if name.endswith("txt"):
    ...         _ = (root / name).write_text("not an image")
    ...     else:
    ...         Image.new("RGB", (4, 4)).save(root / name)
    >>> [pathlib.Path(path).relative_to(root).as_posix() for path in find_image_files(root)]
    ['a/1.jpg', 'b/2.png']
    >>> import shutil; shutil.rmtree(root)
    """
    return find_image_files_with_left_out(folder)[0]


def find_image_files_with_left_out(folder, each_image_once=True):
    """``find_image_files(folder)``, the files the search left out with a warning
    (in formats Pillow cannot read here, not downloaded from iCloud, or out of reach),
    a dict of why, by file, sorted, and the links to folders it did not walk, as it
    walked their folders. ``each_image_once=False`` keeps the links to files found already, for
    :func:`without_links_to_files_found` to leave out once other files are, and leaves the
    warning of those links to folders to :func:`warn_of_links_to_folders_found`."""
    folder = Path(os.fsdecode(os.fspath(folder)))  # a bytes path too, as the estimators take it
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder.")
    files, seen, unlisted, unreachable, unreadable_photos, in_cloud, previews, archives = (
        [], set(), [], [], [], [], [], [])
    real_folders, links = {}, []
    extensions = readable_image_extensions()
    other_photo_extensions = tuple(
        extension for extension in PLUGIN_IMAGE_EXTENSIONS + UNREADABLE_PHOTO_EXTENSIONS
        if extension not in extensions)
    photo_extensions = extensions + other_photo_extensions
    # Depth first, as os.walk goes, but on os.scandir's entries, which tell a file
    # from a folder without a stat of each file: a million files took 10.4 s with
    # os.walk and os.path.isfile, 3.7 s so.
    pending, through_links, links_to_folders_found = [os.fspath(folder)], [], []
    while pending or through_links:
        # Folders reached through links are walked once every other folder has been, the
        # shallowest path first: so that a link inside the tree to one of its folders
        # (photos/cat/frogs -> ../frog) does not take that folder's images under the link's
        # path, and of a class folder that is a link and a link inside another class to
        # the same folder, the class folder wins.
        reached_through_link = not pending
        directory = pending.pop() if pending else heapq.heappop(through_links)[1]
        real = os.path.realpath(directory)
        if real in seen:  # a link to a folder already walked, or back to one above it
            links_to_folders_found.append(directory)
            continue
        seen.add(real)
        real_folders[directory] = real
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError as error:
            unlisted.append(error)
            continue
        subfolders = []
        # A folder that may be listed but not entered (mode r--) names files that
        # cannot be opened, though its entries say "file" (os.path.isfile's stat failed).
        enterable = os.access(directory, os.X_OK)
        in_photos_library = _is_photos_library(directory, entries)
        for entry in entries:
            if is_hidden_name(entry.name):
                if _is_in_cloud(entry.name, photo_extensions):
                    in_cloud.append(entry.path)
                elif entry.name == "@eaDir":
                    previews.append(entry.path)
                continue
            if _entry_is(entry.is_dir):  # links to folders followed
                if in_photos_library and entry.name not in _PHOTOS_LIBRARY_ORIGINALS:
                    previews.append(entry.path)
                elif entry.is_symlink() or reached_through_link:
                    heapq.heappush(through_links, (entry.path.count(os.sep), entry.path))
                else:
                    subfolders.append(entry.path)
            elif (extension := os.path.splitext(entry.name)[1].lower()) in other_photo_extensions:
                unreadable_photos.append(entry.path)
            elif extension in extensions:
                if not enterable:
                    unreachable.append(entry.path)
                elif _entry_is(entry.is_file):
                    files.append(entry.path)
                    if entry.is_symlink():
                        links.append(entry.path)
                elif not os.path.exists(entry.path):
                    unreachable.append(entry.path)
            elif entry.name.lower().endswith(ARCHIVE_SUFFIXES) and _entry_is(entry.is_file):
                archives.append(entry.path)
        # Sorted, so that of several links to one folder the first by name is kept,
        # whatever order the file system lists them in (the last pushed is walked first).
        pending.extend(sorted(subfolders, reverse=True))
    _warn_of_skipped_entries(unlisted, unreachable)
    if each_image_once:
        warn_of_links_to_folders_found(links_to_folders_found)
    _warn_of_unreadable_photos(sorted(unreadable_photos))
    _warn_of_photos_in_cloud(sorted(in_cloud))
    if not files:
        skipped_previews = (f", and so are the thumbnails and previews that photo software keeps: "
                            f"{shown_paths(sorted(previews))}") if previews else ""
        unpack = (f" It holds archives, whose images are read once they are unpacked: "
                  f"{shown_paths(sorted(archives))}.") if archives else ""
        raise ValueError(
            f"No image files found under {str(folder)!r} (looked for "
            f"{', '.join(extensions)}; files and folders whose names start with '.' "
            f"are skipped{skipped_previews}).{unpack}"
        )
    if archives:
        warnings.warn(
            f"Skipped {len(archives)} archive(s) among the images, whose own images are not read: "
            f"{shown_paths(sorted(archives))}. Unpack them to include those "
            "(skdeepclust.datasets.extract_image_archive unpacks one and returns its folder).",
            UserWarning,
            stacklevel=stacklevel_of_user_code(),
        )
    below = len(os.path.join(os.fspath(folder), ""))  # the paths all start with folder
    files = sorted(files, key=lambda file: tuple(file[below:].split(os.sep)))
    if each_image_once:
        files = without_links_to_files_found(files, set(links), real_folders)
    left_out = {path: f"Pillow cannot read {os.path.splitext(path)[1].lower()} files here"
                for path in unreadable_photos}
    left_out.update(dict.fromkeys(in_cloud, "in iCloud, not downloaded"))
    left_out.update(dict.fromkeys(unreachable, "leads to no file that can be read"))
    return files, dict(sorted(left_out.items())), sorted(links_to_folders_found)


def warn_of_links_to_folders_found(links):
    """Warn of the links to folders that the search did not walk, as it had walked
    those folders (or walks them) under their own paths."""
    if links:
        warnings.warn(
            f"Skipped {len(links)} link(s) to folders found already, so that each image is taken once, "
            f"under its folder's own path or the shallowest link to it: {shown_paths(sorted(links))}.",
            UserWarning,
            stacklevel=stacklevel_of_user_code(),
        )


def without_links_to_files_found(files, links=None, real_folders=None):
    """``files`` less those that are links to another of them, or to the target of
    a link before them, with a warning: an image clustered twice is weighed twice.

    ``links`` (those of ``files`` that are links) and ``real_folders`` (the real path
    of folders by their path) spare the stats that would find them out.
    """
    if links is None:
        links = {path for path in files if os.path.islink(path)}
    if not links:
        return files
    real_folders = {} if real_folders is None else real_folders

    def real_path(path):  # from its folder's: a realpath of each file would stat every part
        folder = os.path.dirname(path)
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(folder)
        return os.path.join(real_folders[folder], os.path.basename(path))

    targets, duplicates = {real_path(path) for path in files if path not in links}, []
    for path in files:
        if path in links:
            target = os.path.realpath(path)
            if target in targets:
                duplicates.append(path)
            targets.add(target)
    if not duplicates:
        return files
    warnings.warn(
        f"Skipped {len(duplicates)} link(s) to image files found already, so that each image is taken "
        f"once: {shown_paths(duplicates)}.",
        UserWarning,
        stacklevel=stacklevel_of_user_code(),
    )
    skipped = set(duplicates)
    return [path for path in files if path not in skipped]


def _is_photos_library(directory, entries):
    """Whether ``directory``, listed as ``entries``, is a macOS Photos library: its
    name ends ``.photoslibrary`` and it holds the library's ``database`` folder."""
    return directory.rstrip(os.sep).endswith(".photoslibrary") and any(
        entry.name == "database" and _entry_is(entry.is_dir) for entry in entries)


def _is_in_cloud(name, photo_extensions):
    """Whether a hidden file name is iCloud Drive's placeholder of a photo not
    downloaded, ``.IMG_0001.JPG.icloud`` for ``IMG_0001.JPG``."""
    return (name.startswith(".") and name.endswith(".icloud")
            and os.path.splitext(name[1:-len(".icloud")])[1].lower() in photo_extensions)


def _entry_is(check):
    """``check()``, an os.DirEntry's is_dir or is_file, or False where it cannot tell
    (a link without permission to follow it), as os.walk takes it."""
    try:
        return check()
    except OSError:
        return False
