"""The ``skdeepclust`` command: cluster a folder of images, put new images into the
clusters of an earlier run, or run the offline demo.

Every user mistake ends in one line on stderr and exit status 2, never a traceback
(set ``SKDEEPCLUST_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from ._cli_messages import UserError, counted, listed, warn
from ._cluster_folders import (
    CLUSTER_FOLDERS,
    check_cluster_folders,
    remove_earlier_cluster_folders,
    write_cluster_folders,
)
from ._run_files import (
    EMBEDDINGS_FILE,
    EMBEDDINGS_RECORD,
    MODEL_FILE,
    PARTIAL_FILE,
    PARTIAL_RECORD,
    OutputFolderInUse,
    being_written,
    earlier_embeddings,
    embedding_settings,
    file_stamp,
    is_our_model,
    is_our_record,
    keep_partial_embeddings,
    load_model,
    only_run_writing_into,
    remove_partial_embeddings,
    rows_of_other_files,
    saved_model,
    settings_of_rows,
    warn_of_other_files_in_partial,
    write_embeddings,
    write_failure,
)
from .clustering._registry import CLUSTERER_NAMES, FINDS_ITS_CLUSTER_COUNT
from .embedding.presets import SIMCLR_RESNET18_CIFAR10

EXIT_USAGE = 2
# ImageEmbedder's precisions and interpolations (a test keeps them the same), spelled
# here so that the command's help needs no torch.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
SIMCLR_FILE = Path("models") / "resnet18-simclr-cifar10.safetensors"
CIFAR10_ARCHIVE = Path("data") / "cifar10" / "cifar10-jpg.tar.gz"
# What a run writes to --out; a folder holding both is recognised as an earlier run's output.
RESULTS_FILE = "clusters.csv"
RESULTS_HEADER = ["file", "cluster", "confidence"]
MONTAGE_FILE = "montage.png"
# Up to this many images, the clusterer is first fitted on stand-in features, so that
# what it cannot do with so few (hdbscan's min_samples, a mixture of one image)
# fails before the embedding.
TRIAL_FIT_MAX_SAMPLES = 20
# An embedding that took this long is worth keeping for a rerun: the summary says how.
EMBEDDING_SECONDS_WORTH_KEEPING = 60.0
PRECISION_HELP = ("compute precision of the backbone: auto is bfloat16 on a GPU and float32 on the "
                  "CPU, where bfloat16 can be faster on CPUs that compute in it natively (AVX-512 BF16, "
                  "AMX); features are float32 either way (default: %(default)s)")
# Library parameters that may be options of a command. In library messages they are
# respelled where they stand alone, or as name=, or as 'name'; quoted text and parts of
# paths (a/random_state/b.pt) are left as they are. The one-word names are respelled
# only as name=: "device" is also a word.
_PARAMETERS_WITH_UNDERSCORES = ("n_clusters", "image_size", "crop_pct", "batch_size", "num_workers",
                                "random_state")
_PARAMETERS_THAT_ARE_WORDS = ("backbone", "pretrained", "clusterer", "device", "precision", "mean", "std",
                              "interpolation")
_QUOTED_OR_PARAMETER = re.compile(
    r"""((?<!\w)'[^']*'(?!\w)|(?<!\w)"[^"]*"(?!\w))"""  # an apostrophe (model's) opens no quote
    r"|(?<![/\\])\b(?:(?:%s)\b|(?:%s)(?==))(?![/\\]|\.\w)"
    % ("|".join(_PARAMETERS_WITH_UNDERSCORES), "|".join(_PARAMETERS_THAT_ARE_WORDS))
)
# Library advice to use a class, as the command's option that picks it.
_ADVICE_IN_OPTION_WORDS = {"use TorchKMeans": ("clusterer", "use --clusterer torch_kmeans"),
                           "use 'kmeans'": ("clusterer", "use --clusterer kmeans")}
# The record a run writes beside each array of embeddings.
_RECORD_OF_ARRAY = {EMBEDDINGS_FILE: EMBEDDINGS_RECORD, PARTIAL_FILE: PARTIAL_RECORD}
# Words of the Python API in library messages, as the command says them.
_LIBRARY_WORDS = {" (n_clusters_ holds the number kept)": "",
                  ", and labels_ keep its numbering, with gaps": ", and the clusters keep their numbers, with gaps",
                  "Possibly due to duplicate points in X": "Possibly due to duplicate images"}
# Python values that the command spells as words, once their parameter is respelled.
_VALUES_IN_OPTION_WORDS = {"--pretrained=True": "--pretrained hub",
                           "--pretrained=False": "--pretrained none",
                           **{f"--precision='{name}'": f"--precision {name}" for name in PRECISIONS},
                           **{f"--clusterer='{name}'": f"--clusterer {name}" for name in CLUSTERER_NAMES}}


# ``stage_features``: the rows the stage was fitted on, which --smooth's ``smoother``
# (None without it) made of ``features``.
_Clustered = collections.namedtuple(
    "_Clustered", "features stage readable unreadable n_reused embedding_seconds stage_features smoother")


def _in_option_words(message, options):
    """A library message with the parameter names among ``options`` (the command's
    own, e.g. ``vars(args)``), and its advice to use a class, spelled as the
    command's options."""
    def respell(match):
        quoted = match.group(1)
        name = match.group(0) if quoted is None else quoted[1:-1]
        if name not in options:
            return match.group(0)
        option = "--" + name.replace("_", "-")
        return option if quoted is None else f"{quoted[0]}{option}{quoted[0]}"

    message = _QUOTED_OR_PARAMETER.sub(respell, message)
    # The command's samples are images: "n_samples=200 is fewer than ..." reads "200 images are".
    message = re.sub(r"\bn_samples=(\d+) is\b",
                     lambda match: "1 image is" if match[1] == "1" else f"{match[1]} images are", message)
    message = re.sub(r"\bgot n_samples=(\d+)",
                     lambda match: "got 1 image" if match[1] == "1" else f"got {match[1]} images", message)
    message = re.sub(r"\b([pP])ass more samples\b",
                     lambda match: ("g" if match[1] == "p" else "G") + "ive more images", message)
    for advice, (option, in_option_words) in _ADVICE_IN_OPTION_WORDS.items():
        if option in options:
            message = message.replace(advice, in_option_words)
    for value, in_option_words in _VALUES_IN_OPTION_WORDS.items():
        message = re.sub(re.escape(value) + r"(?!\w)", in_option_words, message)
    for words, in_command_words in _LIBRARY_WORDS.items():
        message = message.replace(words, in_command_words)
    return message


def _library_warning_printer(options):
    """A ``warnings.showwarning`` that prints a library warning as one line of the
    command's own, in its option words, without the source line."""
    def show(message, category, filename, lineno, file=None, line=None):
        warn(_in_option_words(" ".join(str(message).split()), options))

    return show


def _holds_earlier_results(directory):
    """Whether ``directory`` holds the output of a run: a clusters.csv of ours beside
    the montage or the folder of links (a run may have written no montage)."""
    return ((os.path.isfile(os.path.join(directory, MONTAGE_FILE))
             or os.path.isdir(os.path.join(directory, CLUSTER_FOLDERS))) and _holds_results_table(directory))


def _holds_results_table(directory):
    """Whether ``directory`` holds a clusters.csv of ours (a run whose montage was too
    large to write left no montage)."""
    try:
        with open(os.path.join(directory, RESULTS_FILE), newline="", encoding="utf-8",
                  errors="surrogateescape") as handle:
            return next(csv.reader(handle), None) == RESULTS_HEADER
    except OSError:
        return False


def _holds_our_embeddings(out):
    """Whether ``out`` holds the embeddings.npy of a run with --embeddings, with its
    record, both of which this run may write (read-only ones are left to the checks
    of a run that asks for them)."""
    files = (out / EMBEDDINGS_FILE, out / EMBEDDINGS_RECORD)
    return (files[0].is_file() and is_our_record(files[1])
            and all(os.access(path, os.W_OK) for path in files))


def _without_output_folders(folder, files, out):
    """``files`` less those in ``out`` and in the output folders of earlier runs below ``folder``.

    The current ``out`` is left out silently; each earlier output folder gets a warning,
    since the user may not expect it to be skipped.
    """
    if out.resolve() == folder.resolve():
        raise UserError(f"--out {out} is the folder of images itself; give another --out (a folder "
                        f"inside it will do, such as {out / 'skdeepclust-out'}, and is not clustered)")
    if folder.resolve().is_relative_to((out / CLUSTER_FOLDERS).resolve()):
        raise UserError(f"{folder} is in {out / CLUSTER_FOLDERS}, the links of the run in --out {out}, which "
                        "this run would replace; give another --out")
    if out.resolve().is_relative_to(folder.resolve()):
        inside = os.path.join(str(folder), *out.resolve().relative_to(folder.resolve()).parts) + os.sep
        files = [path for path in files if not path.startswith(inside)]
        if not files:
            raise UserError(f"{folder} holds no images outside the output folder {out}")
    # PATH itself is never skipped, as the user named it as the input, but the montage
    # of an earlier run written there is no photo of theirs.
    if _holds_earlier_results(str(folder)):
        own_montage = os.path.join(str(folder), MONTAGE_FILE)
        if own_montage in files:
            files = [path for path in files if path != own_montage]
            warn(f"skipping {own_montage}: it is the montage of an earlier skdeepclust run "
                 f"(beside its {RESULTS_FILE}); rename it to cluster it")
            if not files:
                raise UserError(f"{folder} holds no images but the montage of an earlier skdeepclust run")
    # An output folder holds a montage or the links of its by-cluster folder, which
    # the search for images follows, so the folders of those are the only candidates.
    below = len(os.path.join(str(folder), ""))  # find_image_files's paths all start with folder
    candidates = set()
    for path in files:
        parts = path[below:].split(os.sep)
        if parts[-1] == MONTAGE_FILE and len(parts) > 1:
            candidates.add(os.path.dirname(path))
        if CLUSTER_FOLDERS in parts[:-1]:
            candidates.add(os.path.join(str(folder), *parts[:parts.index(CLUSTER_FOLDERS)]))
    candidates = sorted(candidates)
    skipped_folders = []
    for directory in candidates:
        if any(directory.startswith(earlier + os.sep) for earlier in skipped_folders):
            continue  # inside a folder skipped already
        if _holds_earlier_results(directory):
            skipped_folders.append(directory)
            warn(
                f"skipping {directory}: it holds the output of an earlier skdeepclust run "
                f"({RESULTS_FILE}, with {MONTAGE_FILE} or {CLUSTER_FOLDERS}/); move your images out of it to "
                "cluster them"
            )
    if skipped_folders:
        prefixes = tuple(directory + os.sep for directory in skipped_folders)
        files = [path for path in files if not path.startswith(prefixes)]
        if not files:
            by_cluster = os.path.join(str(folder), CLUSTER_FOLDERS)
            further = sorted(name for name in os.listdir(by_cluster)
                             if os.path.isdir(os.path.join(by_cluster, name))) if os.path.isdir(by_cluster) else []
            hint = (f"; to split one of its clusters further, pass that cluster's folder, such as "
                    f"{os.path.join(by_cluster, further[0])}, with another --out" if further else "")
            raise UserError(
                f"{folder} holds no images outside the output folders of earlier skdeepclust runs{hint}")
    return files


def _register_installed_pillow_plugins():
    """Let Pillow read HEIC/HEIF and JPEG XL files where their plugins are installed:
    in Python the user registers them, which a user of the command cannot."""
    import importlib

    for module, register in (("pillow_heif", "register_heif_opener"), ("pillow_jxl", None)):
        try:
            plugin = importlib.import_module(module)  # pillow_jxl registers itself
            if register is not None:
                getattr(plugin, register)()
        except ImportError:
            continue
        except Exception as exc:  # installed but broken (a missing shared library): run without it
            warn(f"the installed {module} could not be loaded ({type(exc).__name__}: {exc}); "
                 "its formats are skipped")


def _image_files(folder, out):
    """The image files under ``folder``, less those in ``out`` and in the output folders
    of earlier runs, so that a run writing its results inside ``folder`` does not
    cluster them in the next run; and why the search left out others, by file."""
    from .embedding.image_files import (
        find_image_files_with_left_out,
        warn_of_links_to_folders_found,
        without_links_to_files_found,
    )

    _register_installed_pillow_plugins()
    # The links of an earlier run's by-cluster folder go with it, without a word.
    files, left_out, links_to_folders = find_image_files_with_left_out(folder, each_image_once=False)
    # Nor do the links to folders in those (a user's own in by-cluster, say).
    below, out_prefix = len(os.path.join(str(folder), "")), os.path.join(os.path.realpath(out), "")
    warn_of_links_to_folders_found([
        link for link in links_to_folders if CLUSTER_FOLDERS not in link[below:].split(os.sep)
        and not os.path.join(os.path.realpath(os.path.dirname(link)), "").startswith(out_prefix)])
    return without_links_to_files_found(_without_output_folders(folder, files, out)), left_out


def _embed_and_cluster(files, embedder_params, clusterer, n_clusters, random_state, quiet,
                       earlier_features=None, keep=None, smooth=False):
    """Both stages, decoding and embedding each file once; with ``smooth``, the
    features go through a NeighborSmoother before the clustering.

    ``earlier_features`` holds, for each file, the features an earlier run gave it
    with the same settings, or None; only the files with None are embedded.
    A file that does not decode is left out, with a warning. Returns a
    ``_Clustered``: the features and the fitted FeatureClusterer of the files
    that decoded, a boolean mask of those files, how many of them kept an earlier
    run's features, and the seconds the embedding took. An
    exception (Ctrl-C included) raised once new features exist leaves with
    ``embedded``: the positions of the files embedded so far (or reused) and
    their features, for the command to keep; ``keep(positions, features)`` is
    given them before the clustering starts, which the process may not survive
    (the kernel's out-of-memory killer, ``kill -9``).
    """
    from .clustering import FeatureClusterer, NeighborSmoother
    from .embedding import ImageEmbedder

    stage = FeatureClusterer(
        clusterer,
        n_clusters=n_clusters,
        device=embedder_params.get("device", "auto"),
        random_state=random_state,
        verbose=0 if quiet else 1,
    )
    # Mistakes in the clustering settings surface now, not after the embedding.
    clusterer = stage._validate_params()
    _check_image_count(stage, clusterer, len(files), smooth)
    earlier = earlier_features or [None] * len(files)
    to_embed = [position for position, row in enumerate(earlier) if row is None]
    readable = np.ones(len(files), dtype=bool)
    unreadable = {}
    new_features = features = None
    start = time.perf_counter()
    if to_embed:
        embedder = ImageEmbedder(**embedder_params, random_state=random_state, verbose=0 if quiet else 1)
        try:
            new_features, new_readable, unreadable = _embed_readable(embedder, [files[p] for p in to_embed])
        except BaseException as exc:
            done, completed = getattr(exc, "readable_done", ([], None))
            if done:  # else the earlier rows are kept where they are
                reused = [position for position, row in enumerate(earlier) if row is not None]
                rows = [earlier[position] for position in reused] + list(completed)
                exc.embedded = (reused + [to_embed[position] for position in done],
                                np.array(rows, dtype=np.float32))
            raise
        readable[to_embed] = new_readable
    embedding_seconds = time.perf_counter() - start
    try:
        features, n_reused = _assembled(files, readable, earlier, to_embed, new_features)
        if not readable.all():
            features = features[readable]
            _check_image_count(stage, clusterer, len(features), smooth)
        _check_features_not_all_zero(features, [file for file, kept in zip(files, readable) if kept])
        if keep is not None and to_embed:
            keep(np.flatnonzero(readable).tolist(), features)
        smoother = NeighborSmoother(device=embedder_params.get("device", "auto")) if smooth else None
        stage_features = features if smoother is None else smoother.fit_transform(features)
        stage.fit(stage_features)
    except BaseException as exc:
        if not hasattr(exc, "embedded") and features is not None and to_embed:
            exc.embedded = (np.flatnonzero(readable).tolist(), features)
        raise
    return _Clustered(features, stage, readable, unreadable, n_reused, embedding_seconds, stage_features, smoother)


def _embed_readable(embedder, files):
    """Fit ``embedder`` and embed ``files``, each unreadable one named in a warning.

    Unreadable files are found as they are embedded: a separate pass to check every
    file first would decode each one twice. Returns the features, a row for each
    file (of black pixels for the unreadable), a boolean mask of the readable, and
    why each of the others could not be read, by file.
    An exception leaves with ``readable_done``: the positions of the readable files
    embedded before it, and their features.
    """
    from .embedding.images import ImageList

    images = ImageList(files, skip_unreadable=True)
    try:
        features = embedder.fit_transform(images)
    except BaseException as exc:
        completed = getattr(exc, "completed_features", np.empty((0, 0), np.float32))
        done = [position for position in range(len(completed)) if position not in images.unreadable]
        exc.readable_done = (done, completed[done])
        raise
    unreadable = {files[position]: reason for position, reason in sorted(images.unreadable.items())}
    for path, reason in unreadable.items():
        warn(f"skipping unreadable image file {path}: {reason}")
    readable = np.ones(len(files), dtype=bool)
    readable[list(images.unreadable)] = False
    return features, readable, unreadable


def _print_skipped(left_out, unreadable):
    """List the files a run left out, and why, after its results: ``left_out`` by the
    search for images (in formats Pillow cannot read here, and the like),
    ``unreadable`` as they did not decode (each a dict of reasons by file); with what
    would make the formats readable."""
    from .embedding.image_files import IN_CLOUD_ADVICE, unreadable_photos_advice

    reasons = {**left_out, **unreadable}
    if reasons:
        print(f"skipped {len(reasons)} unreadable file(s):")
        for path in sorted(reasons):
            print(f"  {path}: {reasons[path]}")
    advice = [unreadable_photos_advice(left_out)]
    if any(path.endswith(".icloud") for path in left_out):  # no image file is named so
        advice.append(f"Of those in iCloud: {IN_CLOUD_ADVICE[:1].lower()}{IN_CLOUD_ADVICE[1:]}")
    if any(advice):
        print(" ".join(filter(None, advice)))


def _assembled(files, readable, earlier, to_embed, new_features):
    """The features of every file, the earlier ones and the new in file order, and
    how many were earlier ones."""
    if not readable.any():
        raise UserError(f"none of the {len(files)} image files could be read")
    n_reused = len(files) - len(to_embed)
    if n_reused:
        width = len(next(row for row in earlier if row is not None))
        features = np.empty((len(files), width), dtype=np.float32)
        for position, row in enumerate(earlier):
            if row is not None:
                features[position] = row
        if to_embed:
            features[to_embed] = new_features
    else:
        features = new_features
    return features, n_reused


def _check_image_count(stage, clusterer, n_images, smooth=False):
    """Fail, in the command's words, where ``clusterer`` (after a NeighborSmoother,
    with ``smooth``) cannot group ``n_images`` images."""
    from .clustering import NeighborSmoother
    from .clustering.feature_clusterer import linkage_memory_shortfall

    if smooth and n_images <= (n_neighbors := NeighborSmoother().n_neighbors):
        raise UserError(f"--smooth averages each image with its {n_neighbors} nearest others, so it needs at least "
                        f"{n_neighbors + 1} images; got {n_images}")
    if shortfall := linkage_memory_shortfall(clusterer, n_images):
        raise UserError(f"--clusterer {stage.clusterer} on {n_images:,} images needs about "
                        f"{shortfall[0] / 2 ** 30:.1f} GiB (the distance of every pair of images, twice), more "
                        f"than the {shortfall[1] / 2 ** 30:.1f} GiB of memory available; use --clusterer kmeans, "
                        "or cluster fewer images")
    stage._check_sample_count(clusterer, n_images)
    # This package's own clusterers check their few needs up front; SCAN's trial would take seconds.
    if n_images <= TRIAL_FIT_MAX_SAMPLES and not type(clusterer).__module__.startswith(__package__):
        _trial_fit(stage, n_images)


def _trial_fit(stage, n_images):
    """Fit a copy of ``stage`` on ``n_images`` random unit vectors; fail as it would."""
    from sklearn.base import clone

    rng = np.random.default_rng(0)
    stand_in = rng.standard_normal((n_images, 16)).astype(np.float32)
    stand_in /= np.linalg.norm(stand_in, axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the real fit will warn, if it has to
        try:
            clone(stage).set_params(verbose=0).fit(stand_in)
        except ValueError as exc:
            reason = re.sub(r" \(shape=\(.*?\)\)", "", str(exc)).strip().rstrip(".")  # the stand-in's
            raise UserError(
                f"--clusterer {stage.clusterer} cannot cluster {n_images} image(s): {reason}. "
                "Add images or choose another --clusterer."
            ) from exc


def _confidence(stage, features, labels):
    """Cluster probability when the clusterer gives one, else cosine similarity of
    each image to the centre of its cluster in ``labels`` (one of the stage's
    ``cluster_ids_``, as its ``labels_`` and ``predict`` give, or noise, -1)."""
    if hasattr(stage, "predict_proba"):
        # The probability of the cluster given, a column for each (the largest but for
        # a row that predict moved off a cluster the fit left empty).
        return stage.predict_proba(features)[np.arange(len(labels)), labels]
    if stage.cluster_ids_.size == 0:
        return np.zeros(len(features))
    norms = np.linalg.norm(stage.cluster_centers_, axis=1, keepdims=True)
    centres = stage.cluster_centers_ / np.maximum(norms, np.finfo(np.float32).tiny)
    rows = np.searchsorted(stage.cluster_ids_, labels)
    similarity = np.einsum("ij,ij->i", features, centres[np.clip(rows, 0, len(centres) - 1)])
    return np.where(labels >= 0, np.clip(similarity, 0.0, 1.0), 0.0)


def _cosine_similarity(rows, other_rows):
    """The cosine similarity of each row to the same row of ``other_rows``, at least 0."""
    from .clustering._training import normalize_rows

    return np.clip(np.einsum("ij,ij->i", normalize_rows(rows), normalize_rows(other_rows)), 0.0, 1.0)


def _check_features_not_all_zero(features, files, assigning=False):
    """Refuse a clustering whose every image has all-zero features, and warn of some
    (and of any that ``assign`` embeds, which may be one image): no clusterer tells
    such images apart (ImageEmbedder's own warning, which counts the images of one
    call, is silenced for this one, which names the files)."""
    from .embedding.image_files import shown_paths

    zero_rows = ~features.any(axis=1)
    if not zero_rows.any():
        return
    counted_images = ("the one image" if len(files) == 1 else
                      f"{'every one' if zero_rows.all() else zero_rows.sum()} of the {len(files)} images")
    advice = ("the model's --image-size is fixed: cluster with a larger one to assign such images" if assigning
              else "use a larger --image-size")
    message = (f"the backbone gave features that are all zero, which no clusterer can tell apart, for "
               f"{counted_images} ({shown_paths([file for file, zero in zip(files, zero_rows) if zero])}): its "
               f"layers may leave nothing of images this small; {advice}")
    if zero_rows.all() and not assigning:
        error = UserError(message)
        error.embedded = ([], None)  # rows that are worth nothing are not kept for a next run
        raise error
    warn(message)


def _chance_accuracy(y, labels, draws=50):
    """The mean accuracy of random groups of the sizes of ``labels``: above one over
    the number of classes, as the best matching of groups to classes favours few
    images (0.144 for 100 per class of 10, 1.0 for one per class)."""
    from .metrics import cluster_accuracy

    rng = np.random.default_rng(0)
    return float(np.mean([cluster_accuracy(y, rng.permutation(labels)) for _ in range(draws)]))


def _metrics_line(y, labels):
    """Accuracy, NMI and ARI of ``labels`` against the classes ``y``; noise (-1) is
    scored as one more group, and also, for accuracy, as wrong."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from .metrics import cluster_accuracy

    line = (
        f"accuracy {cluster_accuracy(y, labels):.3f}  "
        f"NMI {normalized_mutual_info_score(y, labels):.3f}  "
        f"ARI {adjusted_rand_score(y, labels):.3f}"
    )
    clustered = np.asarray(labels) >= 0
    if clustered.all():
        return line
    # The noise group is matched to a class like any cluster, and scores for it.
    strict = (cluster_accuracy(np.asarray(y)[clustered], np.asarray(labels)[clustered]) * clustered.mean()
              if clustered.any() else 0.0)
    n_noise = int(np.sum(~clustered))
    noise = "the noise image" if n_noise == 1 else f"the {n_noise} noise images"
    return f"{line}  ({noise} scored as one more cluster; counted as wrong, accuracy {strict:.3f})"


def _check_output_files(out, path, save_embeddings, save_model, keeps_partial):
    """Refuse an --out whose files of the names a run writes are folders, read-only,
    or the user's own, or in which nothing can be written."""
    earlier_run = _holds_results_table(out)
    embeddings = ((EMBEDDINGS_FILE, EMBEDDINGS_RECORD) if save_embeddings else ()) + (
        (PARTIAL_FILE, PARTIAL_RECORD) if keeps_partial else ())
    for name in (RESULTS_FILE, MONTAGE_FILE) + embeddings + ((MODEL_FILE,) if save_model else ()):
        target = out / name
        if target.is_dir() or (target.exists() and not os.access(target, os.W_OK)):
            raise UserError(f"--out {path}: cannot write {name} there, as it is a folder or "
                            "read-only; move it, or choose another --out")
        if not target.exists():
            continue
        # A run writes its clusters.csv first, so a file of these names beside no
        # clusters.csv of ours is the user's own, which must not be overwritten; a
        # run stopped early leaves only records, and a model anywhere holds a tag,
        # which say whose they are. An array comes with its record (which is
        # checked in turn): without one, it is the user's.
        if name == MODEL_FILE:
            theirs = not is_our_model(target)
        elif name in _RECORD_OF_ARRAY:
            theirs = not (out / _RECORD_OF_ARRAY[name]).is_file()
        elif earlier_run:
            theirs = False
        elif name in (EMBEDDINGS_RECORD, PARTIAL_RECORD):
            theirs = not is_our_record(target)
        else:
            theirs = name in (RESULTS_FILE, MONTAGE_FILE)
        if theirs:
            article = "an" if name[0] in "aeiou" else "a"
            raise UserError(f"--out {path}: it holds {article} {name} that no skdeepclust run wrote, "
                            "which would be overwritten; move it, or choose another --out")
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(f"--out {path}: cannot write in this folder ({exc.strerror or exc}); "
                        "choose another --out") from None


@contextlib.contextmanager
def _output_folder(path, save_embeddings, save_model=False, folders=False, keeps_partial=False):
    """``path`` as a folder, made and checked now so that a bad one fails before the
    work, not after (``folders``: and OUT/by-cluster; ``keeps_partial``: and the
    names of the embeddings a run stopped early keeps, which ``cluster`` writes
    without --embeddings too); if the run fails, the folders it made go again while empty."""
    if not path:
        raise UserError("--out is empty; give a folder ('.' for the current folder)")
    out = Path(path)
    made_now = []  # deepest first
    missing = out.absolute()
    while not missing.exists() and missing != missing.parent:
        made_now.append(missing)
        missing = missing.parent
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {path} is a file, not a folder; give a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot make this folder ({exc.strerror or exc})") from None
    try:
        with only_run_writing_into(out):
            _check_output_files(out, path, save_embeddings, save_model, keeps_partial)
            if folders:
                check_cluster_folders(out)
            yield out
    except OutputFolderInUse:
        raise  # the folders are the other run's now
    except BaseException:
        for folder in made_now:
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
        raise


def _write_results(out, files, stage, features, embedding_record, model=None, labels=None,
                   model_withheld=None, folders=False, partial_identity=None, keep_earlier_embeddings=False,
                   stage_features=None):
    """Write the results into ``out``; returns the paths of the files written.

    ``embedding_record`` (settings and file stamps, as ``earlier_embeddings`` reads
    them) asks for the embeddings too, and ``model`` (see ``saved_model``) for the
    model; None removes an earlier run's, and ``model_withheld`` says why a model
    asked for is not written. ``labels`` are the images' clusters, by default
    ``stage.labels_``. ``folders`` asks for OUT/by-cluster, whose earlier run's
    links go otherwise. ``partial_identity``: that of the partial embeddings this run
    wrote before the clustering, which then become embeddings.npy.
    ``keep_earlier_embeddings``: leave an earlier run's embeddings.npy as it is.
    ``stage_features``: the rows ``stage`` takes, where they are not ``features``
    (--smooth), for the confidence of each image.
    """
    from .embedding.decoding import ImageFileError
    from .visualization import _MontageTooLarge, cluster_montage

    labels = stage.labels_ if labels is None else labels
    if stage_features is None or stage_features is features:
        confidence = _confidence(stage, features, labels)
    else:
        # A smoothed row is the mean of the image's neighbours, so it fits its cluster
        # whatever the image is: an image unlike those it was averaged with (noise, a
        # flat colour) would score 0.99. How far it agrees with them counts too.
        confidence = _confidence(stage, stage_features, labels) * _cosine_similarity(features, stage_features)
    earlier_run = _holds_results_table(out)
    # The table goes in under its own name once the embeddings, the largest file, are
    # written: a write of them that fails (a full disk) leaves the earlier run's table,
    # embeddings, model and montage as they were, each matching the others.
    table = being_written(out / RESULTS_FILE)
    try:
        # surrogateescape writes back the bytes of file names that are not valid UTF-8.
        with open(table, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            # QUOTE_MINIMAL quotes only the characters of the line terminator (on Python
            # 3.11), so a carriage return in a file name would end the row for a reader.
            quoting_writer = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_ALL)
            writer.writerow(RESULTS_HEADER)
            for file, cluster, score in zip(files, labels, confidence):
                (quoting_writer if "\r" in file else writer).writerow([file, int(cluster), f"{score:.4f}"])
        if embedding_record is not None:
            write_embeddings(out, features, embedding_record, kept_as=partial_identity)
        os.replace(table, out / RESULTS_FILE)
    except BaseException:
        table.unlink(missing_ok=True)
        raise
    written = [out / RESULTS_FILE] + ([out / EMBEDDINGS_FILE] if embedding_record is not None else [])
    # The earlier run's model and montage show the clusters of its table: they go now,
    # before a write of this run's that fails (or Ctrl-C) could leave them beside the new one.
    stale_model = earlier_run and is_our_model(out / MODEL_FILE)
    stale_montage = earlier_run and (out / MONTAGE_FILE).is_file()
    for name, stale in ((MODEL_FILE, stale_model), (MONTAGE_FILE, stale_montage)):
        if stale:
            (out / name).unlink()
    # Only an array with its record: one without is the user's own.
    record = out / EMBEDDINGS_RECORD
    if embedding_record is None and earlier_run and is_our_record(record) and not keep_earlier_embeddings:
        record.unlink()
        if (out / EMBEDDINGS_FILE).is_file():
            (out / EMBEDDINGS_FILE).unlink()
            warn(f"removed {out / EMBEDDINGS_FILE} of an earlier run: its rows would not match "
                 f"the new {RESULTS_FILE} (--embeddings writes them anew)")
    # The links before the model and montage: one of those that cannot be written
    # (or Ctrl-C) leaves no links of the earlier run's clusters either.
    if folders:
        if (root := write_cluster_folders(out, files, labels)) is not None:
            written.append(root)
    elif earlier_run:
        remove_earlier_cluster_folders(out)
    if model is not None:
        _write_model(out, model, stale_model)
        written.append(out / MODEL_FILE)
    elif model_withheld:
        removed = ", and the earlier run's removed" if stale_model else ""
        warn(f"{MODEL_FILE} not written{removed}: {model_withheld}")
    elif stale_model:
        warn(f"removed {out / MODEL_FILE} of an earlier run: its clusters are not those of the new "
             f"{RESULTS_FILE} (--save-model writes it anew)")
    try:
        cluster_montage(files, labels, scores=confidence).save(out / MONTAGE_FILE)
        written.append(out / MONTAGE_FILE)
    except (_MontageTooLarge, ImageFileError, OSError) as exc:
        # Only so many clusters make a picture too large to open, a file moved or damaged
        # since it was embedded cannot be shown, and a full disk may take no picture; the
        # results stand.
        removed = f", and the earlier run's {MONTAGE_FILE} removed" if stale_montage else ""
        (out / MONTAGE_FILE).unlink(missing_ok=True)  # a picture cut short
        if isinstance(exc, _MontageTooLarge):
            why = (f"a row for each of the {len(np.unique(labels)):,} clusters would make it larger than PIL "
                   "opens (PIL.Image.MAX_IMAGE_PIXELS)")
        elif isinstance(exc, ImageFileError):
            why = f"{exc.problem.rstrip('.')}, since it was embedded"
        else:
            why = f"cannot write it ({write_failure(exc)})"
        warn(f"{MONTAGE_FILE} not written: {why}{removed}; {RESULTS_FILE} holds every image's cluster")
    order = [out / name for name in (RESULTS_FILE, EMBEDDINGS_FILE, MODEL_FILE, MONTAGE_FILE, CLUSTER_FOLDERS)]
    return sorted(written, key=order.index)


def _write_model(out, model, replaces_earlier):
    """Write ``model`` as OUT/model.joblib (``replaces_earlier``: an earlier run's
    was there, and is gone)."""
    import joblib

    path, source = out / MODEL_FILE, being_written(out / MODEL_FILE)
    try:
        joblib.dump(model, source)
        os.replace(source, path)
    except BaseException as exc:
        source.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            removed = ", and the earlier run's model removed" if replaces_earlier else ""
            raise OSError(f"cannot write {path} ({write_failure(exc)}); {RESULTS_FILE} is written{removed}") from exc
        raise


def _pretrained_argument(value):
    if value == "hub":
        return True
    if value == "none":
        return False
    if not os.path.exists(value):  # a folder gets the library's advice on what it holds
        raise UserError(f"--pretrained {value}: no such file (give a checkpoint path, 'hub' or 'none')")
    return value


def _whole_number(value, low, high=None, accepted=None):
    """``value`` as an int in ``[low, high]``, else an argparse error saying what is ``accepted``."""
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        raise argparse.ArgumentTypeError(
            f"must be {accepted or f'a whole number of at least {low}'}, not {value!r}")
    return number


def _positive_int_argument(value):
    return _whole_number(value, 1)


def _count_argument(value):
    return _whole_number(value, 0)


def _seed_argument(value):
    return _whole_number(value, 0, 2**32 - 1, "a whole number in [0, 2**32 - 1]")


def _batch_size_argument(value):
    if value == "auto":
        return value
    return _whole_number(value, 1, accepted="a whole number of at least 1 or 'auto'")


def _pixel_scale_argument(value, positive=False):
    """One channel of --mean or --std: a number on the 0-1 scale of pixel values."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not ((0 < number if positive else 0 <= number) and number <= 1):
        scale = f"in {'(0' if positive else '[0'}, 1]"
        hint = "; for 0-255 units, divide by 255" if number > 1 else ""
        raise argparse.ArgumentTypeError(
            f"must be three numbers {scale}, one per channel (R G B) on the 0-1 scale of pixel values "
            f"(ImageNet's: --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225), not {value!r}{hint}")
    return number


def _crop_pct_argument(value):
    from .embedding.embedder import MIN_CROP_PCT  # imports torch: not for --help

    if value == "model":
        return value
    try:
        share = float(value)
    except ValueError:
        share = 0.0
    if not MIN_CROP_PCT <= share <= 1:
        raise argparse.ArgumentTypeError(
            f"must be a number in [{MIN_CROP_PCT}, 1] or 'model', not {value!r}")
    return share


def _check_cluster_count_option(clusterer, n_clusters):
    if clusterer in FINDS_ITS_CLUSTER_COUNT:
        if n_clusters is not None:
            raise UserError(f"--clusterer {clusterer} finds the number of clusters itself; drop --n-clusters")
    elif n_clusters is None:
        raise UserError(f"--clusterer {clusterer} needs --n-clusters, the number of groups to "
                        "find (--clusterer hdbscan and cuml_hdbscan find it themselves)")


def _check_class_folders(folder, files):
    """Fail now, before the embedding, unless ``--eval`` can label every readable file."""
    from .datasets import _class_folder, split_readable

    prefix = os.path.join(os.fspath(folder), "")
    loose = [path for path in files if _class_folder(path, folder, prefix) is None]
    # Files that do not decode are skipped, so only readable ones in PATH itself stop --eval.
    readable = [path for path, keep in zip(loose, split_readable(loose)[0]) if keep]
    if readable:
        more = f" and {len(readable) - 1} more" if len(readable) > 1 else ""
        raise UserError(f"--eval needs class folders, PATH/<class>/<file>, but some images lie in "
                        f"PATH itself: {readable[0]}{more}")


def _input_folder(path):
    """PATH as a folder of images, else the command's error."""
    if not path:  # an unset shell variable, which Path would read as the current folder
        raise UserError("PATH is empty; give the folder of images ('.' for the current folder)")
    from .embedding.image_files import ARCHIVE_SUFFIXES

    folder = Path(path)
    if folder.is_file() and folder.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise UserError(f"{folder} is an archive, not a folder; unpack it and give the folder "
                        "(skdeepclust.datasets.extract_image_archive unpacks it once and "
                        "returns the folder)")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    return folder


# The heads mine neighbours themselves: smoothed first, their features held less
# (TEMI 0.593 -> 0.504 on all 10,000 SimCLR features of CIFAR-10, benchmarks/smoothing.py).
HEADS_THAT_FIND_NEIGHBOURS = ("scan", "temi", "debiased")


def cluster_command(args):
    folder = _input_folder(args.path)
    _check_cluster_count_option(args.clusterer, args.n_clusters)
    if args.smooth and args.clusterer in HEADS_THAT_FIND_NEIGHBOURS:
        warn(f"--smooth is for kmeans, agglomerative and gmm: --clusterer {args.clusterer} finds each image's "
             "neighbours itself, and clustered smoothed features less well in skdeepclust's benchmarks")
    # Embeddings an earlier run wrote with --embeddings are kept up to date, as if it
    # were given again: removed, they would cost the next run every image again, an
    # hour of embedding lost to a flag left out.
    embeddings_implied = bool(not args.embeddings and args.out and _holds_our_embeddings(Path(args.out)))
    with _output_folder(args.out, args.embeddings or embeddings_implied, args.save_model, args.folders,
                        keeps_partial=True) as out:
        return _cluster_folder(args, folder, out, embeddings_implied)


def _refuse_the_out_of_a_cluster_run(path, command):
    """Refuse an --out holding what only ``cluster`` writes, and ``command`` would
    remove: a model or embeddings, which may have taken hours."""
    out = Path(path)
    kept = [name for name in (MODEL_FILE, EMBEDDINGS_FILE) if (out / name).exists()]
    if kept and _holds_results_table(out):
        raise UserError(f"--out {path} holds the output of a cluster run (its {RESULTS_FILE} and "
                        f"{listed(kept)}), which {command} would overwrite or remove; choose another --out")


def assign_command(args):
    folder = _input_folder(args.path)
    model_path, model = load_model(args.model, args.weights)
    if not args.out:
        raise UserError("--out is empty; give a folder ('.' for the current folder)")
    if Path(args.out).resolve() == model_path.resolve().parent:
        raise UserError(f"--out {args.out} holds the model's own run, whose {RESULTS_FILE} would be "
                        "overwritten; choose another --out")
    _refuse_the_out_of_a_cluster_run(args.out, "assign")
    with _output_folder(args.out, save_embeddings=False, folders=args.folders) as out:
        return _assign_folder(args, folder, out, model)


def _assign_folder(args, folder, out, model):
    from .embedding import ImageEmbedder

    files, left_out = _image_files(folder, out)
    start = time.perf_counter()
    stage, smoother = model["stage"], model["smoother"]
    embedder = ImageEmbedder(**model["embedder"], device=args.device, precision=args.precision,
                             batch_size=args.batch_size, num_workers=args.num_workers,
                             random_state=model["random_state"], verbose=0 if args.quiet else 1)
    features, readable, unreadable = _embed_readable(embedder, files)
    if not readable.any():
        raise UserError(f"none of the {len(files)} image files could be read")
    files, features = [path for path, keep in zip(files, readable) if keep], features[readable]
    _check_features_not_all_zero(features, files, assigning=True)
    # A model of a --smooth run smooths new images over the images it clustered.
    if smoother is not None:
        # The model's own copy, just loaded: the cluster run's device (a GPU) may be
        # missing here, and --device is this run's.
        smoother.set_params(device=args.device)
    stage_features = features if smoother is None else smoother.transform(features)
    labels = stage.predict(stage_features)
    written = _write_results(out, files, stage, features, None, labels=labels, folders=args.folders,
                             stage_features=stage_features)
    print(f"{counted(len(files), 'image')} assigned to the {counted(len(stage.cluster_ids_), 'cluster')} of "
          f"{args.model} ({time.perf_counter() - start:.1f} s); wrote {listed(written)}")
    _print_skipped(left_out, unreadable)
    return 0


def _cluster_folder(args, folder, out, embeddings_implied=False):
    """``cluster`` into ``out``; ``embeddings_implied``: ``out`` holds an earlier run's
    embeddings.npy, kept up to date as if --embeddings were given, but for other settings."""
    from .datasets import class_folder_labels

    files, left_out = _image_files(folder, out)
    if args.eval:
        _check_class_folders(folder, files)
    start = time.perf_counter()
    embedder_params = dict(
        backbone=args.backbone,
        pretrained=_pretrained_argument(args.pretrained),
        image_size=args.image_size,
        crop_pct=args.crop_pct,
        mean=args.mean,
        std=args.std,
        interpolation=args.interpolation,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        compile=args.compile,
    )
    settings = embedding_settings(embedder_params, args.random_state)
    # Stamped before the embedding: a file changed while it runs is embedded again next time.
    stamps = [file_stamp(path) for path in files]
    # Without --embeddings, those of a run stopped early only: the same command goes on from there.
    earlier_rows, changed_settings, earlier_computed_in = earlier_embeddings(
        out, settings, partial_only=not (args.embeddings or embeddings_implied))
    # Made with other settings, an earlier run's embeddings are left as they are by a
    # run not given --embeddings: a quick try of another --image-size must not cost the
    # slow run's rows.
    keeps_earlier_embeddings = embeddings_implied and bool(changed_settings)
    writes_embeddings = args.embeddings or (embeddings_implied and not changed_settings)
    earlier_features = [earlier_rows.get(stamp) if stamp else None for stamp in stamps]
    kept = []  # the identity of the partial embeddings written before the clustering

    def record_of(positions):
        reused_dtypes = [earlier_computed_in[stamps[position]] for position in positions
                         if earlier_features[position] is not None]
        return {"settings": settings_of_rows(settings, reused_dtypes, len(positions) - len(reused_dtypes)),
                "files": [stamps[position] for position in positions]}

    def worth_keeping():
        # Unasked too, where they took long to make: a clustering that runs for hours
        # (or is killed) would lose the hour of embedding before it.
        return (writes_embeddings or any(row is not None for row in earlier_features)
                or time.perf_counter() - start >= EMBEDDING_SECONDS_WORTH_KEEPING)

    def keep_before_clustering(positions, embedded):
        if not worth_keeping():
            return
        replacing = rows_of_other_files(out, stamps)
        try:
            kept.append(write_embeddings(out, embedded, record_of(positions), partial=True))
        except OSError as exc:  # the clustering may still succeed
            warn(f"could not keep the embeddings in {out / PARTIAL_FILE} before the clustering "
                 f"({exc.strerror or exc})")
            return
        warn_of_other_files_in_partial(out, replacing, "replaced")

    try:
        (features, stage, readable, unreadable, n_reused, embedding_seconds, stage_features,
         smoother) = _embed_and_cluster(
            files, embedder_params, args.clusterer, args.n_clusters, args.random_state, args.quiet,
            earlier_features, keep_before_clustering, args.smooth,
        )
    except BaseException as exc:
        positions, embedded = getattr(exc, "embedded", ([], None))
        if positions and worth_keeping():
            keep_partial_embeddings(out, embedded, record_of(positions), len(files),
                                    isinstance(exc, KeyboardInterrupt), kept_as=kept[0] if kept else None,
                                    replacing=rows_of_other_files(out, stamps))
        raise
    record = record_of(np.flatnonzero(readable)) if writes_embeddings else None
    # embeddings.npy holds the rows of one run's images: another folder clustered into
    # the same --out replaces those of the first, which must not go without a word.
    replaced_rows = rows_of_other_files(out, stamps, partial=False) if record is not None else 0
    files = [path for path, keep in zip(files, readable) if keep]
    model, model_withheld = None, None
    if args.save_model and stage.cluster_ids_.size == 0:
        model_withheld = ("the run found no clusters (every image is noise), so there are none to assign "
                          "images to; --clusterer kmeans with --n-clusters always makes some")
    elif args.save_model:
        model = saved_model(embedder_params, args.random_state, stage, out, smoother)
    written = _write_results(out, files, stage, features, record, model, model_withheld=model_withheld,
                             stage_features=stage_features,
                             folders=args.folders, partial_identity=kept[0] if kept else None,
                             keep_earlier_embeddings=keeps_earlier_embeddings)
    if replaced_rows:
        warn(f"replaced {out / EMBEDDINGS_FILE}, {replaced_rows:,} of whose rows were of images this run did not "
             "cluster; give each folder of images its own --out to keep the embeddings of both")
    # Once their rows are in embeddings.npy, or in this run's results.
    remove_partial_embeddings(out, stamps)
    n_noise = int(np.sum(stage.labels_ < 0))
    noise = f", {n_noise} left out as noise (cluster -1)" if n_noise else ""
    reuse = ""
    if n_reused:
        reuse = f"; {n_reused:,} embeddings of an earlier run reused"
    elif changed_settings:
        changed = [_setting_in_option_words(name, args) for name in changed_settings]
        reuse = (f"; the embeddings of an earlier run in {out} were not reused, as they were made "
                 f"with another {listed(changed)}")
    print(
        f"{counted(len(files), 'image')} in {counted(len(stage.cluster_ids_), 'cluster')}{noise} "
        f"({time.perf_counter() - start:.1f} s{reuse}); wrote {listed(written)}"
    )
    if args.eval:
        y = class_folder_labels(folder, files)[0]
        print(f"{_metrics_line(y, stage.labels_)}  (chance accuracy {_chance_accuracy(y, stage.labels_):.3f})")
    if writes_embeddings and not args.embeddings:
        print(f"({out / EMBEDDINGS_FILE} kept up to date, as an earlier run wrote it with --embeddings; "
              "remove it to stop)")
    elif keeps_earlier_embeddings:
        print(f"({out / EMBEDDINGS_FILE} left as it was, for a run with its settings: it does not hold this "
              "run's features, and --embeddings would replace it)")
    if not writes_embeddings and embedding_seconds >= EMBEDDING_SECONDS_WORTH_KEEPING:
        print(f"(the embedding took {embedding_seconds:.0f} s: with --embeddings a rerun into {out} "
              "embeds only new and changed files, so that another --n-clusters or --clusterer takes seconds)")
    if embedding_seconds >= EMBEDDING_SECONDS_WORTH_KEEPING and _float32_where_bfloat16_is_native(args):
        print("(this CPU computes in bfloat16 natively: with --precision bfloat16 the embedding ran 1.8 to "
              "2.3 times as fast on such a CPU, with the same k-means accuracy, in skdeepclust's benchmarks)")
    _print_skipped(left_out, unreadable)
    return 0


def _setting_in_option_words(name, args):
    """A setting of the embeddings record as the command's option, for the summary."""
    if name in ("skdeepclust", "timm"):
        return f"{name} version"
    if name == "decoding":
        return "way of decoding images (skdeepclust has changed it since)"
    option = f"--{name.replace('_', '-')}"
    # Weights files are known by their stamps: a copy written over them counts as new.
    if (name == "pretrained" and args.pretrained not in ("hub", "none")) or (
            name == "backbone" and args.backbone.startswith("local-dir:")):
        return f"{option} (a weights file written or touched since counts as another)"
    return option


def _float32_where_bfloat16_is_native(args):
    """Whether the run embedded in float32 on a CPU with bfloat16 instructions."""
    from ._device import cpu_computes_in_bfloat16, resolve_device

    return (args.precision == "auto" and resolve_device(args.device).type == "cpu"
            and cpu_computes_in_bfloat16())


def _find_shared(explicit):
    """The shared data folder: --shared, $SKDEEPCLUST_SHARED, or ``shared`` beside the repository."""
    if explicit:
        return Path(explicit)
    candidates = [os.environ.get("SKDEEPCLUST_SHARED")]
    candidates += [Path(__file__).resolve().parents[2] / "shared", Path.cwd().parent / "shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / CIFAR10_ARCHIVE).is_file():
            return Path(candidate)
    return None


def demo_command(args):
    if args.out:  # an empty one is refused by _output_folder
        _refuse_the_out_of_a_cluster_run(args.out, "demo")
    shared = _find_shared(args.shared)
    if shared is None or not (shared / CIFAR10_ARCHIVE).is_file():
        raise UserError(
            "the demo's photos (CIFAR-10 JPEGs, data/cifar10/cifar10-jpg.tar.gz) were not found; "
            "point --shared or SKDEEPCLUST_SHARED at the folder that holds them"
        )
    with _output_folder(args.out, save_embeddings=False) as out:
        return _demo(args, shared, out)


def _demo(args, shared, out):
    from .datasets import extract_image_archive, load_image_folder

    folder = extract_image_archive(shared / CIFAR10_ARCHIVE) / "test"
    files, y = load_image_folder(folder, max_per_class=args.per_class, random_state=0, return_X_y=True)
    if (shared / SIMCLR_FILE).is_file():
        embedder_params = dict(SIMCLR_RESNET18_CIFAR10, pretrained=shared / SIMCLR_FILE)
        described = "ResNet-18 trained by SimCLR on CIFAR-10 (no labels)"
    else:
        embedder_params = dict(backbone="efficientnet_lite0.offline", image_size=128)
        described = "EfficientNet-Lite0 trained on ImageNet (packaged weights)"
    embedder_params.update(device=args.device)
    n_clusters = None if args.clusterer in FINDS_ITS_CLUSTER_COUNT else 10
    groups = "groups, as many as it finds," if n_clusters is None else "10 groups"
    print(f"Clustering {len(files):,} CIFAR-10 test photos into {groups} with a {described}.")
    start = time.perf_counter()
    features, stage, readable, *_ = _embed_and_cluster(files, embedder_params, args.clusterer, n_clusters,
                                                            0, args.quiet)
    files, y = [path for path, keep in zip(files, readable) if keep], y[readable]
    seconds = time.perf_counter() - start
    written = _write_results(out, files, stage, features, None)
    print(f"{args.clusterer}: {_metrics_line(y, stage.labels_)}  (chance accuracy "
          f"{_chance_accuracy(y, stage.labels_):.3f}; {seconds:.1f} s)")
    shown = [f"{path} (one row of photos per cluster)" if path.name == MONTAGE_FILE else str(path)
             for path in reversed(written)]
    print(f"wrote {listed(shown)}")
    return 0


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse's parser, whose mistakes end in one line, as the command's others do,
    instead of after the whole usage (nine lines for ``cluster``). The subcommands'
    parsers are of this class too."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


QUIET_HELP = "no progress bars or clusterer log lines"
FOLDERS_HELP = (f"also write OUT/{CLUSTER_FOLDERS}/, a folder for each cluster holding a link to each of its "
                "images, to look through in a file browser ('cp -rL' copies them)")


def build_parser():
    from . import __version__
    from .clustering import available_clusterer_names

    parser = _OneLineErrorParser(
        prog="skdeepclust", description="Cluster images with a frozen pretrained backbone."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    cluster = commands.add_parser(
        "cluster",
        help="cluster a folder of images",
        description="Cluster the images under PATH (nested folders allowed) and write "
        "OUT/clusters.csv (file, cluster, confidence) and OUT/montage.png. Confidence is the "
        "cluster probability for clusterers that give one, else the cosine similarity of the "
        "image to its cluster's centre; with --smooth, that of the smoothed features, times the "
        "cosine similarity of the image to them. The files are named as found under PATH, so relative "
        "to the current folder when PATH is. Hidden files, OUT and, with a warning, folders "
        "under PATH that hold an earlier run's clusters.csv and montage.png are not clustered.",
    )
    cluster.add_argument("path", metavar="PATH", help="folder of images")
    cluster.add_argument("--n-clusters", type=_positive_int_argument, default=None,
                         help="number of clusters; required, except by hdbscan and cuml_hdbscan, "
                              "which find it")
    cluster.add_argument("--backbone", default="vit_small_patch16_224.dino",
                         help="timm model name, hf-hub:REPOSITORY, local-dir:FOLDER (a "
                         "downloaded copy of one), or efficientnet_lite0.offline (default: %(default)s)")
    cluster.add_argument("--pretrained", default="hub", metavar="PATH|hub|none",
                         help="weights: a local checkpoint, 'hub' for the model's own (timm's from the "
                         "Hugging Face hub, or those in a local-dir: folder), 'none' for random "
                         "(default: %(default)s)")
    cluster.add_argument("--image-size", type=_positive_int_argument, default=None,
                         help="backbone input size (default: the model's own)")
    cluster.add_argument("--crop-pct", type=_crop_pct_argument, default=1.0,
                         help="share of the resized image kept by the centre crop, or 'model' "
                         "for the model's own, as timm evaluates (default: %(default)s)")
    cluster.add_argument("--mean", type=_pixel_scale_argument, nargs=3, default=None, metavar=("R", "G", "B"),
                         help="normalisation mean the weights were trained with, on the 0-1 scale "
                         "(default: the model's own, from timm)")
    cluster.add_argument("--std", type=lambda value: _pixel_scale_argument(value, positive=True), nargs=3,
                         default=None, metavar=("R", "G", "B"),
                         help="normalisation std the weights were trained with (default: the model's own)")
    cluster.add_argument("--interpolation", default=None, choices=INTERPOLATIONS,
                         help="how images are resized to the input size (default: the model's own, from timm; "
                         "give the one the weights were trained with)")
    cluster.add_argument("--clusterer", default="kmeans", choices=available_clusterer_names(),
                         help="how the embeddings are grouped (default: %(default)s)")
    cluster.add_argument("--smooth", action="store_true",
                         help="before clustering, average each image's features with those of its 10 nearest "
                         "others, twice (NeighborSmoother); for kmeans, agglomerative or gmm, not the heads "
                         "scan, temi and debiased, which find neighbours themselves. It raised k-means accuracy "
                         "on 10,000 CIFAR-10 photos, but not on every sample of 1,000: check with --eval")
    cluster.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    cluster.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    cluster.add_argument("--batch-size", type=_batch_size_argument, default="auto",
                         help="images per forward pass, or 'auto' (default: %(default)s)")
    cluster.add_argument("--num-workers", type=_count_argument, default=None,
                         help="processes decoding images (default: 0 on the CPU, where the "
                         "backbone keeps the cores busy; on a GPU, one per core less one, at most 16)")
    cluster.add_argument("--compile", action="store_true",
                         help="compile the backbone with torch.compile (slow start, faster batches)")
    cluster.add_argument("--random-state", type=_seed_argument, default=0,
                         help="seed of the clusterer and of random weights (default: %(default)s)")
    cluster.add_argument("--out", default="skdeepclust-out", help="output folder (default: %(default)s)")
    cluster.add_argument("--embeddings", action="store_true",
                         help="also write OUT/embeddings.npy, which later runs into OUT keep up to date, "
                         "with this option or without (but for other settings), and reuse the rows of unchanged files "
                         "that an earlier run with the same backbone, weights and preprocessing wrote "
                         "there (a run stopped by Ctrl-C or an error keeps what it embedded for the next "
                         "run, with this option or, once it has run for a minute, without)")
    cluster.add_argument("--save-model", action="store_true",
                         help=f"also write OUT/{MODEL_FILE}, with which 'skdeepclust assign' puts new "
                         "images into these clusters")
    cluster.add_argument("--folders", action="store_true", help=FOLDERS_HELP)
    cluster.add_argument("--eval", action="store_true",
                         help="PATH/<class>/ folders are the true classes: print accuracy, NMI, ARI")
    cluster.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    cluster.set_defaults(run=cluster_command)

    assign = commands.add_parser(
        "assign", help="put new images into the clusters of an earlier run",
        description=f"Embed the images under PATH as the run that wrote MODEL did (its backbone, "
        f"weights and preprocessing) and put each into one of its clusters, as its clusterer "
        f"predicts (hdbscan, agglomerative and spectral: the nearest cluster centre); write "
        f"OUT/{RESULTS_FILE} and OUT/{MONTAGE_FILE} (with --folders, OUT/{CLUSTER_FOLDERS}/ too). "
        "MODEL is a pickle: load only models you made.",
    )
    assign.add_argument("path", metavar="PATH", help="folder of images")
    assign.add_argument("--model", required=True,
                        help=f"the {MODEL_FILE} that 'skdeepclust cluster --save-model' wrote, or its --out folder")
    assign.add_argument("--weights", default=None, metavar="PATH",
                        help="where the weights file (or local-dir: folder) the model was made with lies "
                        "now, if it was moved; checked to hold the same weights")
    assign.add_argument("--out", default="skdeepclust-assigned", help="output folder (default: %(default)s)")
    assign.add_argument("--folders", action="store_true", help=FOLDERS_HELP)
    assign.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    assign.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    assign.add_argument("--batch-size", type=_batch_size_argument, default="auto",
                        help="images per forward pass, or 'auto' (default: %(default)s)")
    assign.add_argument("--num-workers", type=_count_argument, default=None,
                        help="processes decoding images (default: as for cluster)")
    assign.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    assign.set_defaults(run=assign_command)

    demo = commands.add_parser(
        "demo", help="cluster real photos offline and show the result",
        description="Cluster CIFAR-10 test photos from the shared data folder, print accuracy, "
        "NMI and ARI, and write a montage of the clusters.",
    )
    demo.add_argument("--shared", default=None, help="folder holding data/cifar10/ (and models/)")
    demo.add_argument("--per-class", type=_positive_int_argument, default=200,
                      help="photos per class (default: %(default)s)")
    demo.add_argument("--clusterer", default="kmeans", choices=available_clusterer_names(),
                      help="how the embeddings are grouped (default: %(default)s)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    demo.add_argument("--out", default="skdeepclust-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    demo.set_defaults(run=demo_command)
    parser.subcommands = {"cluster": cluster, "assign": assign, "demo": demo}
    return parser


# torch's notice when --compile loads its C++ toolchain on a machine with a CUDA
# toolkit but no GPU, "No CUDA runtime is found, using CUDA_HOME=...", which --quiet
# leaves out: it says nothing the user can act on.
TORCH_TOOLCHAIN_LOGGER = "torch.utils.cpp_extension"


@contextlib.contextmanager
def _torch_notices_left_out(quiet):
    """With ``quiet``, torch's toolchain notices are left out while the command runs."""
    import logging

    logger = logging.getLogger(TORCH_TOOLCHAIN_LOGGER)
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _escaping_output():
    """stdout and stderr writing what their encoding cannot (such as a file name's
    bytes that are not UTF-8) as backslash escapes, as Python's own stderr does,
    instead of failing once the results are written."""
    streams = [(stream, stream.errors) for stream in (sys.stdout, sys.stderr)
               if isinstance(getattr(stream, "errors", None), str) and hasattr(stream, "reconfigure")]
    for stream, _ in streams:
        stream.reconfigure(errors="backslashreplace")
    try:
        yield
    finally:
        for stream, errors in streams:
            stream.reconfigure(errors=errors)


def main(argv=None):
    """Entry point of the ``skdeepclust`` command; returns the exit status."""
    parser = build_parser()
    args, unrecognized = parser.parse_known_args(argv)
    if unrecognized:  # argparse's own error names the top command's --help, not the subcommand's
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unrecognized)}")
    from .embedding import PretrainedWeightsUnavailable  # after --help, which needs no torch
    from .embedding.backbone import _model_source

    try:
        with warnings.catch_warnings(), _escaping_output(), _torch_notices_left_out(getattr(args, "quiet", False)):
            warnings.showwarning = _library_warning_printer(vars(args))
            # The command's own summary says so, "in 0 clusters, 6 left out as noise".
            warnings.filterwarnings("ignore", message=r"\w+ found no cluster: it marked all")
            # The command names the files whose features are all zero (_check_features_not_all_zero).
            warnings.filterwarnings("ignore", message=r"The backbone .* returned features that are all zero")
            return args.run(args)
    except PretrainedWeightsUnavailable as exc:
        if _model_source(exc.backbone) == "hf-hub":  # its architecture is on the hub too
            advice = ("pass --backbone local-dir:FOLDER with a downloaded copy of the "
                      "repository, or the model's name in timm's registry")
        else:
            advice = ("pass --pretrained /path/to/weights.safetensors, --pretrained none for "
                      "random weights, or --backbone efficientnet_lite0.offline")
        print(f"skdeepclust: error: cannot download {exc.backbone} (is this machine offline?); "
              f"{advice}", file=sys.stderr)
        return EXIT_USAGE
    except (UserError, ValueError, TypeError, OSError, ImportError) as exc:
        if os.environ.get("SKDEEPCLUST_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, UserError):  # those are in the command's words already
            message = _in_option_words(message, vars(args))
        print(f"skdeepclust: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as exc:
        if os.environ.get("SKDEEPCLUST_DEBUG"):
            raise
        print(f"skdeepclust: error: out of memory ({str(exc).strip() or 'MemoryError'}); a smaller "
              "--batch-size lowers what the embedding takes, --clusterer kmeans what the clustering takes",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("skdeepclust: interrupted", file=sys.stderr)
        return 130
