"""The command's folder of links, ``OUT/by-cluster/``: a folder for each cluster
holding a link to each of its images, to look through in a file browser.

Links, not copies: they cost no space, and removing them never removes an image,
so a run may replace an earlier run's. A ``by-cluster`` folder that holds anything
else (copies sorted by hand, say) is the user's, and no run writes into it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._cli_messages import UserError, warn

CLUSTER_FOLDERS = "by-cluster"
NOISE_FOLDER = "noise"


def _not_links(root):
    """The first path under ``root`` that is neither a link nor a folder, or a folder
    that cannot be listed; None where there is none."""
    unlisted = []
    for directory, folders, files in os.walk(root, onerror=unlisted.append):  # links to folders: not entered
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                return path
    return unlisted[0].filename if unlisted else None


def check_cluster_folders(out):
    """Fail now, before the embedding, where ``out/by-cluster`` is the user's, or
    where links cannot be made in ``out``."""
    root = Path(out) / CLUSTER_FOLDERS
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise UserError(f"--out {out}: {root} is not a folder of links that a run made; move it, "
                        "or choose another --out")
    if root.is_dir() and (theirs := _not_links(root)) is not None:
        raise UserError(f"--out {out}: {root} holds {theirs}, which is not a link that a run made "
                        "(files sorted by hand?); move the folder, or choose another --out")
    probe = Path(out) / f".{CLUSTER_FOLDERS}-link-check"
    try:
        probe.unlink(missing_ok=True)
        os.symlink(os.path.abspath(out), probe)
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot make links there ({exc.strerror or exc}); --folders needs "
                        "a file system that takes symbolic links (on Windows, Developer Mode)") from None


def _remove_links(out):
    """Remove ``out/by-cluster`` where it holds links and folders only (an earlier
    run's); returns whether it did."""
    root = Path(out) / CLUSTER_FOLDERS
    if root.is_symlink() or not root.is_dir() or _not_links(root) is not None:
        return False
    for directory, folders, files in os.walk(root, topdown=False):
        for name in files + [folder for folder in folders if os.path.islink(os.path.join(directory, folder))]:
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
    return True


def remove_earlier_cluster_folders(out):
    """Remove the ``out/by-cluster`` of an earlier run, whose folders are not the new
    clusters, with a warning; one that holds more than links is the user's."""
    root = Path(out) / CLUSTER_FOLDERS
    try:
        removed = _remove_links(out)
    except OSError as exc:
        warn(f"could not remove {root} of an earlier run ({exc.strerror or exc}): its folders are not the "
             "new clusters, which clusters.csv holds")
        return
    if removed:
        warn(f"removed {root} of an earlier run: its folders are not the new clusters (--folders writes them "
             "anew)")


def _link_name(path, taken):
    """The file name of ``path``, numbered where another image of its cluster has it
    (in any case: macOS and Windows take IMG_1.JPG and img_1.jpg for one name)."""
    name = os.path.basename(path)
    stem, extension = os.path.splitext(name)
    number = 1
    while name.casefold() in taken:
        number += 1
        name = f"{stem}-{number}{extension}"
    taken.add(name.casefold())
    return name


def write_cluster_folders(out, files, labels):
    """Write ``out/by-cluster/cluster-<id>/`` (and ``noise/``), a link to each file
    in the folder of its label, in place of an earlier run's; returns its path, or
    None where it could not be made. Links that cannot be made are left out, with
    a warning."""
    root = Path(out) / CLUSTER_FOLDERS
    width = len(str(max(int(max(labels, default=0)), 0)))
    taken, failed = {}, []
    try:
        _remove_links(out)
        for path, label in zip(files, labels):
            folder = NOISE_FOLDER if label < 0 else f"cluster-{int(label):0{width}d}"
            if folder not in taken:
                (root / folder).mkdir(parents=True, exist_ok=True)
                taken[folder] = set()
            link = root / folder / _link_name(path, taken[folder])
            try:
                # To the file itself: the path given may be a link of an earlier run's.
                os.symlink(os.path.realpath(path), link)
            except OSError as exc:  # a name too long for the file system, say
                failed.append((link, exc))
    except OSError as exc:
        warn(f"{root} not written: {exc.filename}: {exc.strerror or exc}; clusters.csv holds every image's "
             "cluster")
        return None
    if failed:
        link, exc = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        warn(f"{root}: no link made for {len(failed)} image(s): {link}: {exc.strerror or exc}{more}; "
             "clusters.csv holds every image's cluster")
    return root
