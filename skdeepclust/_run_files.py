"""What the command keeps between runs in its --out folder: the embeddings with a
record of the settings and files they were made from (reused by the next run), the
embeddings of a run stopped early, and the saved model that ``assign`` reads."""

from __future__ import annotations

import errno
import json
import os
import sys
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from ._cli_messages import UserError, listed, warn

# With --embeddings: the features, a row for each row of clusters.csv.
EMBEDDINGS_FILE = "embeddings.npy"
# Beside embeddings.npy: the settings that made it and the file of each row (see
# file_stamp), so that a rerun reuses the rows of unchanged files.
EMBEDDINGS_RECORD = "embeddings.json"
# What a run stopped before its results (Ctrl-C, or an error after the embedding) keeps
# for the next: named apart, since the rows of embeddings.npy match clusters.csv.
PARTIAL_FILE = "embeddings.partial.npy"
PARTIAL_RECORD = "embeddings.partial.json"
# With --save-model: what ``assign`` needs to put new images into this run's clusters.
MODEL_FILE = "model.joblib"
MODEL_FORMAT = "skdeepclust cluster model"
MODEL_FORMAT_VERSION = 3
# Version 3 added the NeighborSmoother of a --smooth run (None for others).
# The embedding settings a model keeps; version 1 had no normalisation or
# interpolation of its own (the model's, from timm).
MODEL_EMBEDDER_KEYS = ("backbone", "pretrained", "image_size", "crop_pct", "mean", "std", "interpolation")
_NEWER_EMBEDDER_KEYS = ("mean", "std", "interpolation")
# Settings that records of embeddings gained later, None in those written before.
_NEWER_SETTINGS = (*_NEWER_EMBEDDER_KEYS, "precision")


# What in a local-dir: folder the model is made from: its config and weights. Notes,
# hidden files (.DS_Store, .gitattributes) and the hub's .cache/ may come and go.
_MODEL_FOLDER_SUFFIXES = (".json", ".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def _model_folder_files(folder):
    """The config and weights files in a ``local-dir:`` folder, sorted, hidden ones
    and those in hidden folders left out."""
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [os.path.join(root, name) for name in names
                  if not name.startswith(".") and name.lower().endswith(_MODEL_FOLDER_SUFFIXES)]
    return sorted(found)


# Held by a run while it writes into its --out, and removed when it ends; a run that
# is killed leaves it, unlocked, for the next to take.
LOCK_FILE = ".skdeepclust-run.lock"


class OutputFolderInUse(UserError):
    """Another run holds the --out folder."""


# The folders (device, inode) that runs of this process hold: a POSIX lock does not
# keep a process from itself, and closing any descriptor of its file would drop it.
_FOLDERS_HELD = set()


def _locked_file(path):
    """A descriptor of ``path`` that holds the lock on it; raises OutputFolderInUse
    where another process holds it, OSError where the system has no such locks."""
    import fcntl

    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # A POSIX lock, unlike flock, is neither shared with the processes this one
            # forks (DataLoader workers, which would hold it after a kill) nor refused on NFS.
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            status, now = os.fstat(handle), os.stat(path)
        except BaseException as exc:
            os.close(handle)
            if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EAGAIN):
                raise OutputFolderInUse("") from None
            if isinstance(exc, FileNotFoundError):
                continue  # removed by the run that held it, as it ended
            if isinstance(exc, OSError):  # no locks here: the file would only be left behind
                with suppress(OSError):
                    path.unlink()
            raise
        if (status.st_dev, status.st_ino) == (now.st_dev, now.st_ino):
            return handle
        os.close(handle)  # the file of a run that ended as this one opened it


@contextmanager
def only_run_writing_into(out):
    """Hold ``out`` for this run alone: a second run into the same folder would
    reuse, rewrite or remove the embeddings and results this one is making. The
    lock goes with the process, so a run that is killed leaves none held. Where
    the system has no such locks (Windows, some network drives) runs are not kept apart."""
    path = Path(out) / LOCK_FILE
    folder = os.stat(out)
    folder = (folder.st_dev, folder.st_ino)
    try:
        if folder in _FOLDERS_HELD:
            raise OutputFolderInUse("")
        handle = _locked_file(path)
    except OutputFolderInUse:
        raise OutputFolderInUse(f"--out {out}: another skdeepclust run is writing there now; wait for it "
                                "to end, or choose another --out") from None
    except (ImportError, OSError):
        handle = None
    _FOLDERS_HELD.add(folder)
    try:
        yield
    finally:
        _FOLDERS_HELD.discard(folder)
        if handle is not None:
            with suppress(OSError):  # a read-only --out, whose error the run reports
                path.unlink(missing_ok=True)
            os.close(handle)


def file_stamp(path):
    """``path`` as the record of embeddings names it, so that a file changed since
    has another stamp: absolute path, size, modification time, inode and ctime."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    # The inode and ctime change when the file is replaced or renamed, or its mtime
    # set back (os.utime, cp -p, tar): size and mtime alone are often shared.
    return (os.path.abspath(path), status.st_size, status.st_mtime_ns, status.st_ino, status.st_ctime_ns)


def embedding_settings(embedder_params, random_state):
    """What the embeddings' values depend on, as the record of embeddings keeps it.

    Weights given as a file or folder are named by their stamps, so that new weights
    under the same name are not taken for the old. The device, batch size and
    decoding workers are left out: they change the features by rounding at most
    (bfloat16 on a GPU), and embeddings made on a GPU are worth reusing on a CPU.
    So is the precision ``"auto"``, which is that of the device; one given outright
    is kept, as a user who compares precisions must not be given the same rows twice.
    The dtype the backbone computes in is kept beside it, so that a precision given
    outright reuses the rows of another run that computed in that dtype.
    """
    import timm

    from . import __version__
    from ._device import resolve_device
    from .embedding.decoding import DECODING_REVISION
    from .embedding.embedder import compute_dtype

    def stamped(path):
        path = os.fspath(path)
        if os.path.isdir(path):
            return [file_stamp(file) for file in _model_folder_files(path)]
        return file_stamp(path)

    backbone, pretrained = embedder_params["backbone"], embedder_params["pretrained"]
    precision = embedder_params.get("precision", "auto")
    source, _, rest = backbone.partition(":")
    settings = {
        "skdeepclust": __version__,
        # A name without a tag may stand for other weights in another timm.
        "timm": timm.__version__,
        # The version stays while the package is changed between releases.
        "decoding": DECODING_REVISION,
        "backbone": [backbone, stamped(rest)] if source == "local-dir" and rest else backbone,
        "pretrained": pretrained if isinstance(pretrained, bool) else stamped(pretrained),
        "image_size": embedder_params["image_size"],
        "crop_pct": embedder_params["crop_pct"],
        **{name: embedder_params.get(name) for name in _NEWER_EMBEDDER_KEYS},
        "precision": None if precision == "auto" else precision,
        "computed_in": str(compute_dtype(resolve_device(embedder_params.get("device", "auto")), precision)
                           ).removeprefix("torch."),
        # Random weights are drawn from the seed.
        "random_state": random_state if pretrained is False else None,
    }
    return json.loads(json.dumps(settings))  # as read back: tuples become lists


def earlier_embeddings(out, settings, partial_only=False):
    """The features that earlier runs wrote to ``out`` with ``settings``, by file stamp;
    ``partial_only``: only those of a run stopped early (for a run without --embeddings).

    Returns the rows (a dict, empty where there are none to reuse); where that run
    had other settings, their names, for the command's summary; and the dtype each
    row was computed in (its record's ``computed_in``, None where it does not say),
    by file stamp.
    """
    rows, changed, computed_in = ({}, [], None) if partial_only else _recorded_rows(
        out / EMBEDDINGS_RECORD, out / EMBEDDINGS_FILE, settings)
    partial_rows, partial_changed, partial_computed_in = _recorded_rows(out / PARTIAL_RECORD, out / PARTIAL_FILE,
                                                                        settings)
    dtypes = {**dict.fromkeys(rows, computed_in), **dict.fromkeys(partial_rows, partial_computed_in)}
    return {**rows, **partial_rows}, changed or partial_changed, dtypes


def settings_of_rows(settings, reused_dtypes, n_new):
    """The settings to record for rows of which earlier runs computed some, in the
    dtypes ``reused_dtypes`` (None where unknown), and this run ``n_new``.

    Rows keep the dtype they were computed in (``precision="auto"`` computes in
    bfloat16 on a GPU and float32 on a CPU); where they are of several, or of one
    not known, it is None, so that a later run given a precision outright takes
    none of them for its own.
    """
    if settings["precision"] is not None:
        return settings  # rows reused under a precision given outright were computed in it
    dtypes = set(reused_dtypes) | ({settings["computed_in"]} if n_new else set())
    if not dtypes or dtypes == {settings["computed_in"]}:
        return settings
    return {**settings, "computed_in": dtypes.pop() if len(dtypes) == 1 else None}


def _array_stamp(path):
    """Size and modification time of a saved array, which its record keeps: an array
    edited since (reduced, rescaled) is not taken for the rows the record lists."""
    status = os.stat(path)
    return [status.st_size, status.st_mtime_ns]


def _recorded_rows(record_path, array_path, settings):
    """The rows of one array and its record, as ``earlier_embeddings`` returns them,
    and the dtype the record says they were computed in."""
    if not (record_path.is_file() and array_path.is_file()):
        return {}, [], None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        stamps = [tuple(stamp) if stamp else None for stamp in record["files"]]
        # Records written before these settings existed had the model's own.
        earlier_settings = {**dict.fromkeys(_NEWER_SETTINGS), **record["settings"]}
        if any(stamp is not None and not all(isinstance(part, (str, int)) for part in stamp)
               for stamp in stamps):
            raise ValueError("a file stamp is not a path and numbers")
        if record.get("array") != _array_stamp(array_path):
            raise ValueError(f"{array_path.name} was changed after the record was written")
        features = np.load(array_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warn(f"cannot reuse {array_path}: its record {record_path} is unreadable ({exc}); "
             "every image is embedded anew")
        return {}, [], None
    if features.ndim != 2 or features.dtype != np.float32 or len(features) != len(stamps):
        warn(f"cannot reuse {array_path}: its {features.shape} {features.dtype} array does not "
             f"hold the {len(stamps)} float32 rows that {record_path} lists; every image is embedded anew")
        return {}, [], None
    changed = _changed_settings(earlier_settings, settings)
    if changed:
        return {}, changed, None
    rows = {stamp: row for stamp, row in zip(stamps, features) if stamp is not None}
    return rows, [], earlier_settings.get("computed_in")


def _changed_settings(earlier, now):
    """The names of the embedding settings by which ``earlier`` differs from ``now``,
    empty where rows made with ``earlier`` are reused.

    ``computed_in`` is no setting of its own: it stands in for the precision where
    either run gave one outright, so that ``--precision float32`` reuses the rows
    of a run whose ``auto`` computed in float32, and the other way round.
    """
    if earlier == now:
        return []
    changed = [name for name in now if name != "computed_in" and earlier.get(name) != now[name]]
    if "pretrained" in changed:  # the seed is recorded for random weights only
        changed = [name for name in changed if name != "random_state"]
    if "precision" in changed and earlier.get("computed_in") == now["computed_in"]:
        changed.remove("precision")
    # Else only settings this version does not know differ: a newer one wrote the record.
    return changed or (["settings"] if set(earlier) - set(now) else [])


def is_our_model(path):
    """Whether ``path`` is a model.joblib that ``cluster --save-model`` wrote (its
    format tag is in the uncompressed pickle; nothing is unpickled)."""
    try:
        with open(path, "rb") as handle:
            return MODEL_FORMAT.encode() in handle.read(4096)  # the model's first key
    except OSError:
        return False


def is_our_record(path):
    """Whether ``path`` is a record of embeddings that a run wrote."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"settings", "files"} <= record.keys()


def being_written(path):
    """The name under which ``path`` is written before it is renamed to its own."""
    return path.with_name(f"{path.stem}.writing{path.suffix}")


def _file_identity(path):
    """Size, modification time and inode of ``path`` (None if it is gone): a file
    written anew has another, even where times are coarse (FAT, SMB)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns, status.st_ino]


def write_embeddings(out, features, record, partial=False, kept_as=None):
    """Write ``features`` and their ``record`` (settings and file stamps) into ``out``:
    as embeddings.npy, or those of a run stopped before its results (``partial``).
    ``kept_as``: the identity of the partial array that this run wrote before the
    clustering, which holds ``features`` already and becomes embeddings.npy without a
    second copy on the disk, unless it has changed since (another run into ``out``).
    Returns the identity (see ``_file_identity``) of the array written."""
    array_path, record_path = (out / PARTIAL_FILE, out / PARTIAL_RECORD) if partial else (
        out / EMBEDDINGS_FILE, out / EMBEDDINGS_RECORD)
    from_partial = kept_as is not None and _file_identity(out / PARTIAL_FILE) == kept_as
    if not (partial or from_partial) and _holds_already(record_path, array_path, record):
        # A rerun that reused every row in order (another --n-clusters): rewriting them
        # took time, up to gigabytes, and a full disk then cost every row.
        return _file_identity(array_path)
    # New rows and their record are written under names of their own, then renamed
    # over those they replace, which stay whole with their record until then: a write
    # that fails (a full disk) or is stopped (Ctrl-C, a kill) loses none. An old record
    # beside new rows, between the two renames, has another stamp of them than theirs.
    array_source = out / PARTIAL_FILE if from_partial else being_written(array_path)
    record_source = being_written(record_path)
    replaced = False
    try:
        if not from_partial:
            np.save(array_source, features)
        with open(record_source, "w", encoding="utf-8") as handle:
            # ASCII: file names that are not UTF-8 are escaped. A rename keeps the stamp.
            json.dump(dict(record, array=_array_stamp(array_source)), handle)
        identity = _file_identity(array_source)
        os.replace(array_source, array_path)
        replaced = True
        os.replace(record_source, record_path)
    except BaseException as exc:
        record_source.unlink(missing_ok=True)
        if replaced and from_partial:
            # Back beside its record, whose stamp of it still holds: the next run goes
            # on from these rows rather than embedding every image again.
            os.replace(array_path, array_source)
        elif replaced:
            array_path.unlink(missing_ok=True)
            record_path.unlink(missing_ok=True)
        elif not from_partial:
            array_source.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            if from_partial:  # Ctrl-C, say: the command says only "interrupted" of it
                print(f"skdeepclust: kept the embeddings in {array_source}; a rerun into this --out goes on "
                      "from there", file=sys.stderr)
            raise
        kept = f"; the embeddings stay in {array_source}, for the next run" if from_partial else ""
        reason = write_failure(exc)
        advice = "free some space, or choose another --out" if reason.endswith("?") else "choose another --out"
        error = OSError(f"cannot write {array_path} ({reason}){kept}; {advice}")
        error.strerror = reason  # for a warning that names the file itself
        raise error from exc
    if from_partial:
        (out / PARTIAL_RECORD).unlink()
    return identity


def write_failure(exc):
    """Why a write failed, as the ``OSError`` says, asking "a full disk?" where it may be."""
    full = exc.errno in (None, errno.ENOSPC, errno.EDQUOT)  # numpy's short write has none
    return f"{exc.strerror or exc}{'; a full disk?' if full else ''}"


def _holds_already(record_path, array_path, record):
    """Whether ``array_path`` and its record hold the rows that ``record`` lists, in its order."""
    try:
        written = json.loads(record_path.read_text(encoding="utf-8"))
        return (written.get("array") == _array_stamp(array_path)
                and {key: written.get(key) for key in record} == json.loads(json.dumps(record)))
    except (OSError, ValueError, AttributeError):
        return False


def keep_partial_embeddings(out, features, record, n_files, interrupted, kept_as=None, replacing=0):
    """Keep the embeddings of a run stopped early, and say so; a failure to write
    them is a warning, which leaves the error that stopped the run to be seen.
    ``kept_as``: the identity of the partial array this run wrote before the
    clustering, which holds ``features`` already unless it has changed since.
    ``replacing``: the count of other files whose kept rows these replace."""
    if kept_as is None or _file_identity(out / PARTIAL_FILE) != kept_as:
        try:
            write_embeddings(out, features, record, partial=True)
        except OSError as exc:
            warn(f"could not keep the embeddings made so far in {out / PARTIAL_FILE} ({exc.strerror or exc})")
            return
        warn_of_other_files_in_partial(out, replacing, "replaced")
    again = "the same command" if interrupted else "a rerun into this --out"
    which = f"all {n_files:,}" if len(features) == n_files else f"{len(features):,} of the {n_files:,}"
    print(f"skdeepclust: kept the embeddings of {which} images in "
          f"{out / PARTIAL_FILE}; {again} goes on from there", file=sys.stderr)


def rows_of_other_files(out, stamps, partial=True):
    """How many files other than those of ``stamps`` the embeddings that a run
    stopped early kept in ``out`` hold rows of (0 where there are none of ours);
    ``partial=False``: those of embeddings.npy, of files that are still there (the
    rows of files removed since are of no use)."""
    array_path, record_path = (out / PARTIAL_FILE, out / PARTIAL_RECORD) if partial else (
        out / EMBEDDINGS_FILE, out / EMBEDDINGS_RECORD)
    if not (array_path.is_file() and is_our_record(record_path)):
        return 0
    try:
        recorded = [stamp for stamp in json.loads(record_path.read_text(encoding="utf-8"))["files"] if stamp]
        kept = {stamp[0] for stamp in recorded}
    except (OSError, ValueError, TypeError, IndexError):
        return 0
    # By path: a file changed since (a chmod changes its ctime) was embedded anew.
    others = kept - {stamp[0] for stamp in stamps if stamp}
    if partial:
        return len(others)
    # Nor those of this run's files reached by another path (a link to the folder):
    # the same size, modification time and inode.
    identities = {tuple(stamp[1:4]) for stamp in stamps if stamp}
    return sum(1 for stamp in recorded if stamp[0] in others and tuple(stamp[1:4]) not in identities
               and os.path.exists(stamp[0]))


def warn_of_other_files_in_partial(out, other_files, done):
    """Say that the rows of ``other_files`` files, kept by a run stopped early, are
    ``done`` ("removed", "replaced"), so that they are not lost without a word."""
    if other_files:
        warn(f"{done} {out / PARTIAL_FILE}, the embeddings of a run stopped early, {other_files:,} of them of "
             "images this run did not cluster")


def remove_partial_embeddings(out, stamps):
    """Remove what a run stopped early kept in ``out`` (and what a write that a kill
    cut short left), now that a run on the files of ``stamps`` has finished; say so
    where it held rows of other files, which that run did not take up (rows of other
    settings its summary names)."""
    for name in (EMBEDDINGS_FILE, EMBEDDINGS_RECORD, PARTIAL_FILE, PARTIAL_RECORD, MODEL_FILE):
        being_written(out / name).unlink(missing_ok=True)
    array_path, record_path = out / PARTIAL_FILE, out / PARTIAL_RECORD
    if not (array_path.is_file() and is_our_record(record_path)):
        return
    warn_of_other_files_in_partial(out, rows_of_other_files(out, stamps), "removed")
    record_path.unlink()
    array_path.unlink()


def saved_model(embedder_params, random_state, stage, out, smoother=None):
    """What ``assign`` needs: the embedding settings, the fitted NeighborSmoother of a
    --smooth run (None otherwise) and the fitted clustering stage.

    The weights are named, not copied: a checkpoint file (or ``local-dir:``
    folder) by its absolute path and its path from ``out``, where the model lies,
    and by a digest of what it holds, so that other weights put there are found out.
    """
    import timm

    from . import __version__
    from .embedding.decoding import DECODING_REVISION

    kept = {name: embedder_params.get(name) for name in MODEL_EMBEDDER_KEYS}
    if not isinstance(kept["pretrained"], bool):
        kept["pretrained"] = os.path.abspath(kept["pretrained"])
    source, _, folder = kept["backbone"].partition(":")
    if source == "local-dir" and folder:  # assign may run in another folder
        kept["backbone"] = f"local-dir:{os.path.abspath(folder)}"
    # Also from the model's folder, where a project moved as a whole has them still.
    relative = {name: _relative_path(where, out) for name, where in _named_weights(kept).items()}
    return {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "skdeepclust": __version__,
            "timm": timm.__version__, "decoding": DECODING_REVISION, "embedder": kept,
            "weights_digest": _weights_digest(kept),
            "weights_from_model": relative, "random_state": random_state, "smoother": smoother, "stage": stage}


def _named_weights(embedder):
    """The weights a model's embedding settings name, by where they come from: the
    ``pretrained`` checkpoint file and the ``local-dir:`` folder of the backbone,
    each None where the settings name none."""
    pretrained = embedder["pretrained"]
    source, _, folder = str(embedder["backbone"]).partition(":")
    return {"pretrained": None if isinstance(pretrained, bool) or not pretrained else pretrained,
            "backbone": folder if source == "local-dir" and folder else None}


def _content_digest(path):
    """sha256 of a file, or of the names and contents of a model folder's config and
    weights files."""
    import hashlib

    digest = hashlib.sha256()
    paths = [path] if os.path.isfile(path) else _model_folder_files(path)
    for file in paths:
        digest.update(os.path.relpath(file, path).encode("utf-8", "surrogateescape") + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _weights_digest(embedder):
    """What the weights files named by ``embedder`` hold, so that other weights put
    under the same name are not taken for the model's own."""
    return {name: None if where is None else _content_digest(where)
            for name, where in _named_weights(embedder).items()}


def _relative_path(path, start):
    """``path`` from the folder ``start``, or None (no path, or another drive)."""
    try:
        return None if path is None else os.path.relpath(path, os.path.abspath(start))
    except ValueError:
        return None


def _find_moved_weights(model, folder):
    """Where the weights a model names are gone, but the same weights (by digest)
    lie where they were from the model's ``folder``, or beside it, name those: a
    project moved as a whole, or a model sent with its weights."""
    embedder, digest = model["embedder"], model.get("weights_digest") or {}
    from_model = model.get("weights_from_model") or {}
    for name, where in _named_weights(embedder).items():
        if where is None or os.path.exists(where):
            continue
        candidates = [os.path.join(folder, os.path.basename(where.rstrip("/\\")))]
        if from_model.get(name):
            candidates.insert(0, os.path.normpath(os.path.join(folder, from_model[name])))
        found = next((candidate for candidate in candidates if os.path.exists(candidate)
                      and _content_digest(candidate) == digest.get(name)), None)
        if found and name == "pretrained":
            embedder["pretrained"] = found
        elif found:
            embedder["backbone"] = f"local-dir:{found}"


def _put_weights_at(model, weights):
    """Point the model at its weights' new place ``weights`` (``assign --weights``): a
    file for a ``pretrained`` checkpoint, a folder for a ``local-dir:`` backbone."""
    embedder = model["embedder"]
    named = _named_weights(embedder)
    names_file, names_folder = named["pretrained"] is not None, named["backbone"] is not None
    if not names_file and not names_folder:
        from .embedding.packaged_weights import PACKAGED_BACKBONES

        made_with = ("random weights" if embedder["pretrained"] is False
                     else "the weights packaged with skdeepclust" if embedder["backbone"] in PACKAGED_BACKBONES
                     else "timm's own weights from the hub")
        raise UserError(f"--weights {weights}: the model was made with {made_with}, not with a weights "
                        "file or local-dir: folder; leave --weights out")
    given = weights
    if weights.startswith("local-dir:"):  # spelled as --backbone spells the folder
        weights = weights[len("local-dir:"):]
    if not os.path.exists(weights):
        raise UserError(f"--weights {given}: no such file or folder")
    weights = os.path.abspath(weights)
    if os.path.isdir(weights) and names_folder:
        embedder["backbone"] = f"local-dir:{weights}"
    elif os.path.isfile(weights) and names_file:
        embedder["pretrained"] = weights
    else:
        wanted = "the weights file it was made with" if names_file else "the local-dir: folder it was made with"
        raise UserError(f"--weights {weights}: the model needs {wanted}, not a "
                        f"{'folder' if os.path.isdir(weights) else 'file'}")
    return weights


def load_model(path, weights=None):
    """The model that ``cluster --save-model`` wrote to ``path`` (the file, or its
    folder), with its weights at ``weights`` when given (they were moved)."""
    import joblib

    if not path:
        raise UserError(f"--model is empty; give the {MODEL_FILE} that 'skdeepclust cluster --save-model' "
                        "wrote, or its --out folder")
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise UserError(f"--model {path}: no such file; give the {MODEL_FILE} that "
                        "'skdeepclust cluster --save-model' wrote, or its --out folder")
    try:
        model = joblib.load(path)
    except Exception as exc:  # unpickling raises almost anything on a file that is not a model
        raise UserError(f"--model {path}: not a model that 'skdeepclust cluster --save-model' wrote "
                        f"({type(exc).__name__}: {exc})") from None
    if not (isinstance(model, dict) and model.get("format") == MODEL_FORMAT):
        raise UserError(f"--model {path}: not a model that 'skdeepclust cluster --save-model' wrote")
    from . import __version__
    from .clustering import FeatureClusterer, NeighborSmoother

    written_by = model.get("skdeepclust", "an unknown version")
    embedder = model.get("embedder")
    if model.get("format_version") == 1 and isinstance(embedder, dict):
        embedder.update({name: None for name in _NEWER_EMBEDDER_KEYS if name not in embedder})
        model["format_version"] = 2
    if model.get("format_version") == 2:  # written before --smooth
        model.update(format_version=MODEL_FORMAT_VERSION, smoother=None)
    if (model.get("format_version") != MODEL_FORMAT_VERSION or not isinstance(embedder, dict)
            or set(embedder) != set(MODEL_EMBEDDER_KEYS)
            or not isinstance(model.get("stage"), FeatureClusterer)
            or not isinstance(model.get("smoother", ()), (NeighborSmoother, type(None)))
            or not hasattr(model["stage"], "cluster_ids_") or "random_state" not in model):
        raise UserError(f"--model {path}: written by skdeepclust {written_by}, in a form that skdeepclust "
                        f"{__version__} does not read; run cluster --save-model again with this version")
    if model["stage"].cluster_ids_.size == 0:
        raise UserError(f"--model {path}: its run found no clusters (all its images were noise), so "
                        "there are none to assign images to")
    if weights is not None:
        weights = _put_weights_at(model, weights)
    else:
        _find_moved_weights(model, path.parent)
    named = [where for where in _named_weights(embedder).values() if where is not None]
    for where in named:
        if not os.path.exists(where):
            raise UserError(f"--model {path}: its weights {where} are gone; the model names the "
                            "weights it was made with rather than holding them, so put them back there "
                            "(or beside the model), or give their new place with --weights")
    if _weights_digest(embedder) != model.get("weights_digest"):
        if weights is not None:
            raise UserError(f"--weights {weights}: other weights than those the model {path} was made with")
        raise UserError(f"--model {path}: {listed(named)} hold other weights than those the model was made "
                        "with; put the model's own back there, or give their new place with --weights")
    import timm

    from .embedding.decoding import DECODING_REVISION

    for name, then, now in (("skdeepclust", model.get("skdeepclust"), __version__),
                            ("timm", model.get("timm"), timm.__version__),
                            # Kept since revision 2; most models without it decoded as 1.
                            ("image decoding revision", model.get("decoding", 1), DECODING_REVISION)):
        if then != now:
            warn(f"--model {path} was made with {name} {then}, this is {now}: the images "
                 "may be embedded a little otherwise than that run's")
    return path, model
