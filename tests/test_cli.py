import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CIFAR10_ARCHIVE, SHARED, interrupt_embedding_at
from PIL import Image

from skdeepclust.cli import main

TINY_ARGS = ["--backbone", "test_vit", "--pretrained", "none", "--image-size", "32", "--quiet"]


def _timm_uses_the_hub_client():
    import timm

    return timm.models._hub.has_hf_hub()


def _run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cluster_writes_csv_montage_and_embeddings(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    status, stdout, err = _run(
        capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
        "--eval", "--embeddings", *TINY_ARGS,
    )
    assert status == 0, err
    with open(out / "clusters.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and set(rows[0]) == {"file", "cluster", "confidence"}
    assert all(0.0 <= float(row["confidence"]) <= 1.0 for row in rows)
    assert np.load(out / "embeddings.npy").shape == (8, 64)
    with Image.open(out / "montage.png") as montage:
        assert montage.size[1] > 2 * 40
    assert "accuracy 1.000" in stdout


def test_too_many_clusters_for_a_montage_leave_the_results_and_warn(capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                               *TINY_ARGS)
    assert status == 0 and (out / "montage.png").is_file(), err
    assert stdout.rstrip().endswith(f"wrote {out / 'clusters.csv'} and {out / 'montage.png'}")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # below a montage of two rows, even twice over
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                               *TINY_ARGS)
    assert status == 0, err
    assert err.startswith("skdeepclust: warning: montage.png not written: a row for each of the 2 clusters")
    assert "and the earlier run's montage.png removed" in err  # it showed other clusters
    assert not (out / "montage.png").exists()
    assert stdout.rstrip().endswith(f"wrote {out / 'clusters.csv'}")
    with open(out / "clusters.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 8


def test_a_photo_over_pils_pixel_limit_is_clustered_when_its_reduced_decoding_is_not(
        capsys, image_folder, tmp_path, monkeypatch):
    # As a 200-megapixel phone photo is against PIL's limit of 179 million, decoded at 1/8.
    photo = Image.fromarray(np.full((1200, 1600, 3), 230, np.uint8))
    photo.save(image_folder / "bright" / "phone.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600_000)  # twice that is below its 1.92 million, four times above
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--eval",
                               "--out", str(tmp_path / "out"), *TINY_ARGS)
    assert status == 0 and err == "", err
    assert stdout.startswith("9 images") and "skipped" not in stdout


@pytest.mark.parametrize("change, why", [
    (lambda path: path.unlink(), "Image files not found: '{path}'"),
    (lambda path: path.write_bytes(b"damaged"), "Cannot read image file '{path}': cannot identify image file"),
])
def test_a_file_gone_before_the_montage_leaves_the_results_and_warns(capsys, image_folder, tmp_path, monkeypatch,
                                                                    change, why):
    from skdeepclust import cli

    out = tmp_path / "out"
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 0 and (out / "montage.png").is_file(), err
    confidence = cli._confidence

    def changing_a_file_first(*args):  # as a user tidying the folder during a long run
        change(image_folder / "dark" / "0.png")
        return confidence(*args)

    monkeypatch.setattr(cli, "_confidence", changing_a_file_first)
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                               *TINY_ARGS)
    assert status == 0, err
    why = why.format(path=image_folder / "dark" / "0.png")
    assert err == (f"skdeepclust: warning: montage.png not written: {why}, since it was embedded, and the "
                   "earlier run's montage.png removed; clusters.csv holds every image's cluster\n")
    assert not (out / "montage.png").exists() and stdout.rstrip().endswith(f"wrote {out / 'clusters.csv'}")
    with open(out / "clusters.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 8


def test_output_folder_inside_the_input_is_not_clustered_next_time(capsys, image_folder):
    out = image_folder / "results"
    for _ in range(2):
        status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                                   *TINY_ARGS)
        assert status == 0, err
        assert stdout.startswith("8 images")


def test_output_of_an_earlier_run_is_not_clustered(capsys, image_folder, tmp_path_factory):
    earlier = image_folder / "dark" / "out"
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(earlier),
                          *TINY_ARGS)
    assert status == 0, err
    out = tmp_path_factory.mktemp("elsewhere")
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                               "--eval", *TINY_ARGS)
    assert status == 0, err
    assert stdout.startswith("8 images")
    [warning] = err.strip().splitlines()
    assert warning.startswith(f"skdeepclust: warning: skipping {earlier}: it holds the output of an earlier")
    with open(out / "clusters.csv") as handle:
        assert not any("montage" in row["file"] for row in csv.DictReader(handle))


def test_the_montage_of_an_earlier_run_into_path_itself_is_not_clustered(capsys, image_folder, tmp_path):
    # It was, as a photo, and --eval refused it as an image outside the class folders.
    status, _, err = _run(capsys, "cluster", str(image_folder / "dark"), "--n-clusters", "2",
                          "--out", str(image_folder), *TINY_ARGS)
    assert status == 0 and (image_folder / "montage.png").is_file(), err
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--eval",
                               "--out", str(tmp_path / "o"), *TINY_ARGS)
    assert status == 0, err
    assert stdout.startswith("8 images") and "accuracy" in stdout
    assert err == (f"skdeepclust: warning: skipping {image_folder / 'montage.png'}: it is the montage of "
                   "an earlier skdeepclust run (beside its clusters.csv); rename it to cluster it\n")


def test_eval_names_an_image_that_lies_outside_the_class_folders(capsys, image_folder, tmp_path):
    Image.new("RGB", (32, 32)).save(image_folder / "loose.png")
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--eval",
                          "--out", str(tmp_path / "o"), *TINY_ARGS)
    assert status == 2
    assert err.rstrip().endswith(f"some images lie in PATH itself: {image_folder / 'loose.png'}")


def test_a_folder_with_a_montage_of_its_own_is_clustered(capsys, image_folder, tmp_path_factory):
    art = image_folder / "art"
    art.mkdir()
    Image.new("RGB", (32, 32), "white").save(art / "montage.png")
    (art / "clusters.csv").write_text("artist,style\n")  # not the table skdeepclust writes
    out = tmp_path_factory.mktemp("out")
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                               *TINY_ARGS)
    assert status == 0, err
    assert stdout.startswith("9 images") and err == ""


def test_a_folder_holding_only_earlier_output_is_a_mistake(capsys, tmp_path):
    earlier = tmp_path / "photos" / "results"
    earlier.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(earlier / "montage.png")
    (earlier / "clusters.csv").write_text("file,cluster,confidence\n")
    status, _, err = _run(capsys, "cluster", str(tmp_path / "photos"), "--n-clusters", "2",
                          "--out", str(tmp_path / "out"), *TINY_ARGS)
    assert status == 2
    assert err.splitlines() == [
        f"skdeepclust: warning: skipping {earlier}: it holds the output of an earlier skdeepclust run "
        "(clusters.csv, with montage.png or by-cluster/); move your images out of it to cluster them",
        f"skdeepclust: error: {tmp_path / 'photos'} holds no images outside the output folders of earlier "
        "skdeepclust runs",
    ]


def test_clustering_an_earlier_runs_output_folder_points_at_its_clusters_folders(capsys, image_folder, tmp_path):
    run = tmp_path / "run"
    assert _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(run), "--folders",
                *TINY_ARGS)[0] == 0
    status, _, err = _run(capsys, "cluster", str(run), "--n-clusters", "2", "--out", str(tmp_path / "again"),
                          *TINY_ARGS)
    assert status == 2
    assert err.splitlines()[-1] == (
        f"skdeepclust: error: {run} holds no images outside the output folders of earlier skdeepclust runs; to "
        f"split one of its clusters further, pass that cluster's folder, such as {run / 'by-cluster' / 'cluster-0'}, "
        "with another --out")
    assert _run(capsys, "cluster", str(run / "by-cluster" / "cluster-0"), "--n-clusters", "1", "--out",
                str(tmp_path / "again"), *TINY_ARGS)[0] == 0


def test_file_names_that_are_not_utf8_are_written_as_their_bytes(capsys, image_folder, tmp_path):
    import os

    name = os.fsencode(str(image_folder / "dark")) + b"/caf\xe9.png"
    try:
        # Pillow before 10.3 cannot tell the format from the extension of a bytes name.
        Image.new("RGB", (32, 32)).save(name, format="PNG")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    (image_folder / "dark" / "broken.png").write_bytes(b"not a png")
    os.rename(image_folder / "dark" / "broken.png", os.fsencode(str(image_folder / "dark")) + b"/broken\xff.png")
    out = tmp_path / "out"
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                               *TINY_ARGS)
    assert status == 0, err
    rows = (out / "clusters.csv").read_bytes().splitlines()
    assert len(rows) == 1 + 9 and any(row.startswith(name) for row in rows)
    # On stdout, whose UTF-8 takes no such bytes (as in a UTF-8 locale), they are escaped
    # as on stderr: printing the skipped file's name had failed, after the results.
    assert stdout.rstrip().endswith("broken\\udcff.png: cannot identify image file")
    assert "broken\\udcff.png: " in err


def test_a_carriage_return_in_a_file_name_stays_in_its_row(capsys, image_folder, tmp_path):
    # Python 3.11's csv quotes only the line terminator's characters: the name ended its row.
    Image.new("RGB", (32, 32)).save(image_folder / "dark" / "two\rlines.png")
    out = tmp_path / "out"
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 0, err
    with open(out / "clusters.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 9 and str(image_folder / "dark" / "two\rlines.png") in [row["file"] for row in rows]


@pytest.mark.parametrize("empty", ["path", "out"])
def test_an_empty_path_or_out_is_a_mistake_not_the_current_folder(capsys, image_folder, tmp_path, monkeypatch,
                                                                empty):
    # As from an unset shell variable: the current folder was clustered, or written into.
    monkeypatch.chdir(image_folder)
    argv = {"path": ["cluster", "", "--out", str(tmp_path / "o")],
            "out": ["cluster", str(image_folder), "--out", ""]}[empty]
    status, _, err = _run(capsys, *argv, "--n-clusters", "2", *TINY_ARGS)
    assert status == 2
    assert err == {"path": "skdeepclust: error: PATH is empty; give the folder of images ('.' for the "
                           "current folder)\n",
                   "out": "skdeepclust: error: --out is empty; give a folder ('.' for the current "
                          "folder)\n"}[empty]
    assert not (image_folder / "clusters.csv").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_unreadable_files_are_skipped_and_listed(capsys, image_folder, tmp_path, workers):
    (image_folder / "dark" / "broken.jpg").write_bytes(b"not a jpeg")
    status, stdout, err = _run(
        capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(tmp_path / "o"),
        "--num-workers", workers, "--batch-size", "3", *TINY_ARGS
    )
    assert status == 0
    [warning] = err.strip().splitlines()
    assert warning.startswith(f"skdeepclust: warning: skipping unreadable image file {image_folder / 'dark'}")
    assert "broken.jpg: cannot identify image file" in warning  # why, from the decoding workers too
    assert "skipped 1 unreadable file(s)" in stdout
    assert stdout.rstrip().endswith("broken.jpg: cannot identify image file")  # why, at the end too
    rows = (tmp_path / "o" / "clusters.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and not any("broken.jpg" in row for row in rows)


def test_files_left_out_before_the_embedding_are_listed_at_the_end_too(capsys, image_folder, tmp_path):
    # An iPhone roll without pillow-heif lost most of its photos in one early warning.
    from skdeepclust.embedding.image_files import readable_image_extensions

    if ".heic" in readable_image_extensions():
        pytest.skip("a HEIF opener is registered with Pillow here")
    (image_folder / "bright" / "IMG_0001.HEIC").write_bytes(b"not decoded here")
    (image_folder / "bright" / ".IMG_0002.JPG.icloud").write_bytes(b"a placeholder")
    (image_folder / "dark" / "broken.jpg").write_bytes(b"not a jpeg")
    (image_folder / "dark" / "gone.jpg").symlink_to(image_folder / "nowhere.jpg")
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2",
                               "--out", str(tmp_path / "o"), *TINY_ARGS)
    assert status == 0, err
    listed = stdout[stdout.index("skipped 4 unreadable file(s):\n"):].splitlines()[1:]
    assert listed[:4] == [f"  {image_folder / name}" for name in [
        "bright/.IMG_0002.JPG.icloud: in iCloud, not downloaded", "bright/IMG_0001.HEIC: Pillow cannot read .heic "
        "files here", "dark/broken.jpg: cannot identify image file",
        "dark/gone.jpg: leads to no file that can be read"]]
    assert listed[4].startswith("HEIC/HEIF files are read once pillow-heif is installed")
    assert listed[4].endswith("Of those in iCloud: download them (in the Finder, 'Download Now' on their "
                              "folder) and run again.") and len(listed) == 5


def test_eval_skips_an_unreadable_file_in_path_itself(capsys, image_folder, tmp_path):
    # The check for class folders counted it before it was found unreadable and skipped.
    (image_folder / "broken.jpg").write_bytes(b"not a jpeg")
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--eval",
                               "--out", str(tmp_path / "o"), *TINY_ARGS)
    assert status == 0, err
    assert "accuracy" in stdout and stdout.rstrip().endswith("broken.jpg: cannot identify image file")


def test_each_file_is_decoded_once(capsys, image_folder, tmp_path, monkeypatch):
    import collections

    from skdeepclust import visualization
    from skdeepclust.embedding import decoding

    (image_folder / "dark" / "broken.jpg").write_bytes(b"\xff\xd8\xffnot a jpeg")
    # The montage opens the few files it shows once more; it is not under test here.
    monkeypatch.setattr(visualization, "cluster_montage", lambda *args, **kwargs: Image.new("RGB", (1, 1)))
    opened = collections.Counter()
    open_image = decoding._open_image  # Image.open, or for a JPEG the JPEG plugin's own opener
    monkeypatch.setattr(decoding, "_open_image", lambda path, *args: opened.update([path]) or open_image(path, *args))
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(tmp_path / "o"),
                          "--num-workers", "0", *TINY_ARGS)
    assert status == 0, err
    assert len(opened) == 9 and set(opened.values()) == {1}, opened


def test_too_few_readable_images_for_the_clusters_asked_is_an_error(capsys, image_folder, tmp_path):
    for position in range(4):
        (image_folder / "dark" / f"{position}.png").write_bytes(b"damaged")
    for position in range(5, 8):
        (image_folder / "bright" / f"{position}.jpg").write_bytes(b"damaged")
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(tmp_path / "o"),
                          *TINY_ARGS)
    assert status == 2
    assert err.strip().splitlines()[-1].startswith("skdeepclust: error: ")
    assert "n_samples=1" in err or "1 image" in err, err


def test_soft_clusterer_confidence_is_a_probability(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    status, _, err = _run(
        capsys, "cluster", str(image_folder), "--n-clusters", "2", "--clusterer", "gmm", "--out", str(out), *TINY_ARGS
    )
    assert status == 0, err
    with open(out / "clusters.csv") as handle:
        confidences = [float(row["confidence"]) for row in csv.DictReader(handle)]
    assert min(confidences) >= 0.5  # the larger of two probabilities


def test_images_whose_features_are_all_zero_are_named_and_a_run_of_nothing_else_refused(capsys, image_folder, tmp_path,
                                                                                          monkeypatch):
    # EfficientNet-Lite0 at --image-size 4 gave zeros for every image: "8 images in 1
    # cluster", exit 0. ImageEmbedder's own warning counts the images of one call.
    from skdeepclust import cli

    embed_readable, zeroed = cli._embed_readable, []

    def zeroing(embedder, files):
        features, *rest = embed_readable(embedder, files)
        features[[position for position, path in enumerate(files) if any(part in path for part in zeroed)]] = 0
        return (features, *rest)

    monkeypatch.setattr(cli, "_embed_readable", zeroing)
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    zeroed.append("0.png")
    status, _, err = _run(capsys, *argv)
    assert status == 0
    assert err == ("skdeepclust: warning: the backbone gave features that are all zero, which no clusterer can tell "
                   f"apart, for 1 of the 8 images ('{image_folder / 'dark' / '0.png'}'): its layers may leave nothing "
                   "of images this small; use a larger --image-size\n")
    zeroed.append("")  # every file
    status, _, err = _run(capsys, *argv, "--image-size", "48")
    assert status == 2 and err.startswith("skdeepclust: error: the backbone gave features that are all zero, which "
                                          "no clusterer can tell apart, for every one of the 8 images (")
    assert not (out / "embeddings.partial.npy").exists()


def test_assign_warns_of_images_whose_features_are_all_zero_even_alone(capsys):
    # One such image assigned alone was refused, with it and a photo a warning (second review).
    from skdeepclust.cli import _check_features_not_all_zero

    _check_features_not_all_zero(np.zeros((1, 4), np.float32), ["blank.png"], assigning=True)
    assert capsys.readouterr().err == (
        "skdeepclust: warning: the backbone gave features that are all zero, which no clusterer can tell apart, "
        "for the one image ('blank.png'): its layers may leave nothing of images this small; the model's "
        "--image-size is fixed: cluster with a larger one to assign such images\n")


def test_confidence_is_a_number_for_images_whose_features_are_all_zero():
    # A cluster of all-zero features has a zero centre: 'nan' went into clusters.csv.
    import warnings

    from skdeepclust import FeatureClusterer
    from skdeepclust.cli import _confidence

    features = np.vstack([np.zeros((3, 4), np.float32), np.eye(4, dtype=np.float32)[[0, 0, 0]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stage = FeatureClusterer("kmeans", n_clusters=2, random_state=0).fit(features)
        confidence = _confidence(stage, features, stage.labels_)
    np.testing.assert_array_equal(confidence[:3], 0.0)
    assert np.isfinite(confidence).all() and (confidence[3:] > 0).all()


def _flat_folder(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    return tmp_path


def _empty_file(path):
    path.write_bytes(b"")
    return path


def _saved_for_hub(tmp_path):
    """A folder as timm saves a model for the Hugging Face Hub: config.json and weights."""
    import timm
    from safetensors.torch import save_file

    (tmp_path / "repository").mkdir()
    (tmp_path / "repository" / "config.json").write_text('{"architecture": "test_vit"}')
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(),
              tmp_path / "repository" / "model.safetensors")
    return tmp_path / "repository"


def _occupied_out(tmp_path):
    (tmp_path / "out" / "montage.png").mkdir(parents=True)
    return tmp_path / "out"


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda tmp: ["cluster", str(tmp / "missing")], "is not a folder"),
        (lambda tmp: ["cluster", str(_empty_file(tmp / "photos.zip")), "--n-clusters", "1"],
         "photos.zip is an archive, not a folder; unpack it and give the folder "
         "(skdeepclust.datasets.extract_image_archive unpacks it once"),
        (lambda tmp: ["cluster", str(tmp), "--n-clusters", "1"], "No image files"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), *TINY_ARGS], "--clusterer kmeans needs --n-clusters"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--clusterer", "hdbscan", "--n-clusters", "2", *TINY_ARGS],
         "--clusterer hdbscan finds the number of clusters itself; drop --n-clusters"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--clusterer", "hdbscan", *TINY_ARGS],
         "--clusterer hdbscan cannot cluster 1 image(s): "),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--clusterer", "gmm", "--n-clusters", "1", *TINY_ARGS],
         "--clusterer gmm cannot cluster 1 image(s)"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--backbone", "vit_nonexistent", "--n-clusters", "1"],
         "Unknown backbone"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--backbone", "test_vit", "--n-clusters", "1"],
         "--pretrained /path/to"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--pretrained", str(tmp / "w.pth"), "--n-clusters", "1"],
         "no such file"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--pretrained", str(_saved_for_hub(tmp)),
                      "--n-clusters", "1", "--backbone", "test_vit"],
         "is a folder, not a checkpoint file. Pass the checkpoint in it, e.g. --pretrained="),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--pretrained", str(_saved_for_hub(tmp)),
                      "--n-clusters", "1", "--backbone", "test_vit"], "as --backbone='local-dir:"),
        pytest.param(
            lambda tmp: ["cluster", str(_flat_folder(tmp)), "--n-clusters", "1", "--backbone",
                         "hf-hub:timm/vit_small_patch14_dinov2.lvd142m"],
            "cannot download hf-hub:timm/vit_small_patch14_dinov2.lvd142m (is this machine offline?); "
            "pass --backbone local-dir:FOLDER",
            marks=pytest.mark.skipif(not _timm_uses_the_hub_client(),
                                     reason="this timm cannot use this huggingface_hub")),
        pytest.param(
            lambda tmp: ["cluster", str(_flat_folder(tmp)), "--n-clusters", "1", "--backbone",
                         "HF_HUB:timm/vit_small_patch14_dinov2.lvd142m"],
            "(is this machine offline?); pass --backbone local-dir:FOLDER",
            marks=pytest.mark.skipif(not _timm_uses_the_hub_client(),
                                     reason="this timm cannot use this huggingface_hub")),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--eval", "--n-clusters", "1", *TINY_ARGS],
         "--eval needs class folders"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--n-clusters", "3", *TINY_ARGS], "fewer than --n-clusters=3"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--device", "cuda:7", "--n-clusters", "1", *TINY_ARGS],
         "--device='cuda:7' but"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--image-size", "7", "--n-clusters", "1",
                      "--backbone", "test_vit", "--pretrained", "none"], "e.g. --image-size=16"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--clusterer", "scan", "--n-clusters", "1", *TINY_ARGS],
         "1 image is too few for --n-clusters=1"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--n-clusters", "3", "--clusterer", "gmm", *TINY_ARGS],
         "1 image is fewer than --n-clusters=3; give more images or ask for fewer clusters"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--n-clusters", "1", "--clusterer", "spectral",
                      *TINY_ARGS], "than eigenvectors (--n-clusters); got 1 image. Give more images or ask for fewer"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--out", str(_flat_folder(tmp) / "a.png"),
                      "--n-clusters", "1", *TINY_ARGS], "is a file, not a folder; give a folder for the results"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--out", str(_flat_folder(tmp) / "a.png" / "sub"),
                      "--n-clusters", "1", *TINY_ARGS], "cannot make this folder"),
        (lambda tmp: ["cluster", str(_flat_folder(tmp)), "--n-clusters", "1", "--out", str(_occupied_out(tmp)),
                      *TINY_ARGS], "cannot write montage.png there, as it is a folder"),
    ],
)
def test_user_mistakes_are_one_line(capsys, tmp_path, monkeypatch, make_argv, message):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.chdir(tmp_path)  # where the default --out is made
    status, _, err = _run(capsys, *make_argv(tmp_path), "--quiet")
    assert status == 2
    assert message in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skdeepclust: error:"), err
    # The output folder that a failed run made is gone again.
    assert not (tmp_path / "skdeepclust-out").exists()


def test_weights_that_do_not_fit_keep_the_mismatch_and_the_hint_on_one_line(capsys, tmp_path):
    import timm
    import torch

    weights = timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict()
    # Transposed: as many numbers, so torch's strict load finds them, and names each
    # wrong tensor on a line of its own.
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight"):
        weights[name] = weights[name].T.contiguous()
    torch.save(weights, tmp_path / "weights.pth")
    status, _, err = _run(
        capsys, "cluster", str(_flat_folder(tmp_path)), "--backbone", "test_vit", "--pretrained",
        str(tmp_path / "weights.pth"), "--image-size", "32", "--n-clusters", "1", "--quiet",
    )
    assert status == 2
    assert len(err.strip().splitlines()) == 1
    assert "size mismatch for blocks.0.attn.qkv.weight" in err
    assert "size mismatch for blocks.0.mlp.fc1.weight" in err
    assert "Check that the backbone architecture matches the checkpoint" in err


def test_version(capsys):
    from skdeepclust import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"skdeepclust {__version__}\n"


def test_python_dash_m_entry_point(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "skdeepclust", "cluster", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"skdeepclust: error: {tmp_path / 'nope'} is not a folder"


@pytest.mark.slow
@pytest.mark.parametrize("clusterer", ["kmeans", "hdbscan"])  # hdbscan takes no number of clusters
def test_demo_runs_offline_on_the_shared_photos(capsys, tmp_path, clusterer):
    if not CIFAR10_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR10_ARCHIVE} (../shared is absent)")
    status, stdout, err = _run(
        capsys, "demo", "--shared", str(SHARED), "--per-class", "10", "--out", str(tmp_path), "--quiet",
        "--clusterer", clusterer,
    )
    assert status == 0, err
    assert "accuracy" in stdout and "NMI" in stdout
    assert (tmp_path / "montage.png").is_file() and (tmp_path / "clusters.csv").is_file()


def test_demo_per_class_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--per-class", "0"])
    assert exit_info.value.code == 2
    assert "--per-class: must be a whole number of at least 1" in capsys.readouterr().err


def test_demo_without_its_photos_says_where_to_point(capsys, tmp_path):
    status, _, err = _run(capsys, "demo", "--shared", str(tmp_path), "--quiet")
    assert status == 2 and "SKDEEPCLUST_SHARED" in err


@pytest.mark.parametrize("command", ["assign", "demo"])
def test_assign_and_demo_refuse_the_out_of_a_cluster_run_with_embeddings(capsys, image_folder, tmp_path,
                                                                         command):
    # They would remove its embeddings.npy, which may have taken hours, and demo would
    # then have advised an --embeddings it does not have.
    model_run, out = tmp_path / "model_run", tmp_path / "out"
    for folder, option in ((model_run, "--save-model"), (out, "--embeddings")):
        argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(folder), option, *TINY_ARGS]
        assert _run(capsys, *argv)[0] == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    more = ["assign", str(image_folder), "--model", str(model_run)] if command == "assign" else ["demo"]
    status, _, err = _run(capsys, *more, "--out", str(out), "--quiet")
    assert status == 2
    assert err.strip() == (f"skdeepclust: error: --out {out} holds the output of a cluster run (its clusters.csv "
                           f"and embeddings.npy), which {command} would overwrite or remove; choose another --out")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_leaves_out_torchs_toolchain_notice(capsys, image_folder, tmp_path, monkeypatch, caplog, quiet):
    # torch logs it when --compile loads its C++ toolchain on a machine with a CUDA toolkit but no GPU.
    import logging

    import torch

    def compile_noting(model, **options):
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/x'")
        return model

    monkeypatch.setattr(torch, "compile", compile_noting)
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(tmp_path / "o"), "--compile",
            *[arg for arg in TINY_ARGS if quiet or arg != "--quiet"]]
    # On the logger itself: torch's logging set up by an earlier test may stop it propagating.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever torch's logging set
    logger.addHandler(caplog.handler)
    try:
        assert _run(capsys, *argv)[0] == 0
        assert logger.level == logging.WARNING  # as it was before the command
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
    assert ("No CUDA runtime is found" in caplog.text) != quiet


def test_speed_flags_reach_the_embedder(capsys, image_folder, tmp_path, monkeypatch):
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **options: compiled.append(options) or model)
    status, _, err = _run(
        capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(tmp_path / "o"),
        "--batch-size", "3", "--num-workers", "2", "--compile", *TINY_ARGS,
    )
    assert status == 0, err
    assert compiled == [{}]


@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", "big", "must be a whole number of at least 1 or 'auto', not 'big'"),
    ("--batch-size", "0", "must be a whole number of at least 1 or 'auto', not '0'"),
    ("--num-workers", "-1", "must be a whole number of at least 0, not '-1'"),
    ("--image-size", "0", "must be a whole number of at least 1, not '0'"),
    ("--random-state", "4294967296", "must be a whole number in [0, 2**32 - 1], not '4294967296'"),
    ("--n-clusters", "0", "must be a whole number of at least 1, not '0'"),
    ("--n-clusters", "2.5", "must be a whole number of at least 1, not '2.5'"),  # "invalid int value"
])
def test_option_values_are_checked_as_they_are_read(capsys, image_folder, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", str(image_folder), option, value])
    assert exit_info.value.code == 2
    # One line, as the command's other mistakes: not after the nine lines of the usage.
    assert capsys.readouterr().err == (f"skdeepclust cluster: error: argument {option}: {message} "
                                       "(see skdeepclust cluster --help)\n")


@pytest.mark.parametrize("argv", [["cluster", "photos", "more-photos", "--n-clusters", "2"],
                                  ["assign", "new", "--model", "run", "--backbone", "test_vit"],
                                  ["demo", "--bogus"]])
def test_arguments_a_subcommand_does_not_take_point_at_its_own_help(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(f"(see skdeepclust {argv[0]} --help)\n")


@pytest.mark.parametrize("value", ["1.5", "0.1", "most"])
def test_crop_pct_must_be_a_share_or_model(capsys, image_folder, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", str(image_folder), "--crop-pct", value])
    assert exit_info.value.code == 2
    assert f"must be a number in [0.25, 1] or 'model', not {value!r}" in capsys.readouterr().err


def test_crop_pct_reaches_the_embedder(capsys, image_folder, tmp_path, monkeypatch):
    from skdeepclust import ImageEmbedder

    seen = []
    fit = ImageEmbedder.fit
    monkeypatch.setattr(ImageEmbedder, "fit",
                        lambda self, X, y=None: seen.append(self.crop_pct) or fit(self, X))
    for value, expected in (("model", "model"), ("0.5", 0.5)):
        status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2",
                              "--out", str(tmp_path / value), "--crop-pct", value, *TINY_ARGS)
        assert status == 0, err
    assert seen == ["model", 0.5]


def test_files_the_embedder_cannot_decode_are_skipped_too(capsys, image_folder, tmp_path):
    # 32-bit integer pixels beyond 255 have no implied range, unlike 16-bit ones.
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(image_folder / "dark" / "wide.tif")
    status, stdout, err = _run(
        capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(tmp_path / "o"), *TINY_ARGS
    )
    assert status == 0, err
    [warning] = err.strip().splitlines()
    assert "wide.tif: " in warning and "integer images must lie in [0, 255]" in warning
    assert warning.count("wide.tif") == 1
    assert "skipped 1 unreadable file(s)" in stdout


def test_a_rerun_without_embeddings_keeps_the_earlier_ones_up_to_date(capsys, image_folder, tmp_path, monkeypatch):
    # They were removed, after every image was embedded again: the flag left out cost it all.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    assert _run(capsys, *argv, "--embeddings")[0] == 0
    (image_folder / "dark" / "0.png").unlink()
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0 and err == ""
    assert counts == [] and "7 embeddings of an earlier run reused" in stdout
    assert (f"({out / 'embeddings.npy'} kept up to date, as an earlier run wrote it with --embeddings; "
            "remove it to stop)") in stdout
    assert len(np.load(out / "embeddings.npy")) == 7 == len(json.loads((out / "embeddings.json").read_text())["files"])
    # Lines end in "\n" alone, as pandas and the shell tools of the platform write them.
    assert b"\r" not in (out / "clusters.csv").read_bytes()
    (out / "embeddings.npy").unlink()
    assert _run(capsys, *argv)[0] == 0
    assert not (out / "embeddings.npy").exists() and not (out / "embeddings.json").exists()


def test_a_rerun_of_other_settings_without_embeddings_leaves_the_earlier_ones(capsys, image_folder, tmp_path,
                                                                              monkeypatch):
    # A quick try of another --image-size replaced the slow run's rows with its own (review).
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    assert _run(capsys, *argv, "--embeddings")[0] == 0
    before = (out / "embeddings.npy").read_bytes(), (out / "embeddings.json").read_bytes()
    status, stdout, err = _run(capsys, *argv, "--image-size", "48")
    assert status == 0 and err == ""
    assert (f"({out / 'embeddings.npy'} left as it was, for a run with its settings: it does not hold this run's "
            "features, and --embeddings would replace it)") in stdout
    assert ((out / "embeddings.npy").read_bytes(), (out / "embeddings.json").read_bytes()) == before
    counts = _embedded_counts(monkeypatch)
    assert _run(capsys, *argv)[0] == 0 and counts == []


def test_another_folder_clustered_into_the_same_out_says_whose_embeddings_it_replaced(capsys, image_folder,
                                                                                      tmp_path):
    out = tmp_path / "out"
    options = ["--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    assert _run(capsys, "cluster", str(image_folder / "dark"), *options, "--embeddings")[0] == 0
    status, _, err = _run(capsys, "cluster", str(image_folder / "bright"), *options)
    assert status == 0
    assert err == (f"skdeepclust: warning: replaced {out / 'embeddings.npy'}, 4 of whose rows were of images this "
                   "run did not cluster; give each folder of images its own --out to keep the embeddings of both\n")
    assert _run(capsys, "cluster", str(image_folder / "bright"), *options)[2] == ""
    # The same images through a link to their folder are no other images (second review).
    (tmp_path / "linked").symlink_to(image_folder / "bright", target_is_directory=True)
    status, _, err = _run(capsys, "cluster", str(tmp_path / "linked"), *options)
    assert status == 0 and err == ""


def test_a_rerun_keeps_the_embeddings_of_a_run_too_large_for_a_montage_up_to_date(capsys, image_folder, tmp_path,
                                                                                monkeypatch):
    # That run wrote no montage, and was not taken for a run of ours.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    with monkeypatch.context() as patched:
        patched.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
        assert _run(capsys, *argv, "--embeddings")[0] == 0
    assert not (out / "montage.png").exists() and (out / "embeddings.npy").exists()
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0 and err == "" and counts == []
    assert "kept up to date" in stdout and (out / "embeddings.npy").exists() and (out / "montage.png").exists()


@pytest.mark.parametrize("name", ["montage.png", "clusters.csv"])
def test_an_out_folder_holding_a_file_of_the_users_by_an_output_name_is_refused(capsys, image_folder, tmp_path,
                                                                                name):
    # The user's own photo montage.png, or table clusters.csv, was overwritten.
    out = tmp_path / "project"
    out.mkdir()
    (out / name).write_bytes(b"the user's own")
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 2
    assert err == (f"skdeepclust: error: --out {out}: it holds a {name} that no skdeepclust run wrote, which "
                   "would be overwritten; move it, or choose another --out\n")
    assert (out / name).read_bytes() == b"the user's own"


def test_embeddings_that_no_run_wrote_are_kept(capsys, image_folder, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    np.save(out / "embeddings.npy", np.ones(3))  # the user's own
    (out / "embeddings.json").write_text("{}")
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 0 and err == ""
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), np.ones(3))
    assert (out / "embeddings.json").read_text() == "{}"


def test_a_failed_run_removes_the_output_folders_it_made_and_no_other(capsys, tmp_path):
    (tmp_path / "kept").mkdir()
    argv = ["cluster", str(_flat_folder(tmp_path)), "--n-clusters", "3", *TINY_ARGS]  # 3 > 1 image
    assert _run(capsys, *argv, "--out", str(tmp_path / "new" / "deeper" / "out"))[0] == 2
    assert not (tmp_path / "new").exists()
    assert _run(capsys, *argv, "--out", str(tmp_path / "kept"))[0] == 2
    assert (tmp_path / "kept").is_dir()


def test_library_warnings_are_one_line_in_the_commands_words(capsys, tmp_path):
    for position in range(4):  # four copies of one image: one distinct cluster
        Image.new("RGB", (32, 32), "gray").save(tmp_path / f"{position}.png")
    status, _, err = _run(capsys, "cluster", str(tmp_path), "--n-clusters", "2", "--clusterer",
                          "torch_kmeans", "--out", str(tmp_path / "o"), *TINY_ARGS)
    assert status == 0
    [warning] = err.strip().splitlines()
    assert warning.startswith("skdeepclust: warning: Only 1 distinct clusters were found, fewer than "
                              "--n-clusters=2")


def test_option_words_leave_paths_and_other_commands_options_alone():
    from skdeepclust.cli import build_parser, _in_option_words

    cluster_options = vars(build_parser().parse_args(["cluster", "photos"]))
    assert _in_option_words(
        "Cannot read image file '/data/batch_size/a.jpg': batch_size must be positive; "
        "device='cuda' but no CUDA device. The 'random_state' parameter; ck/random_state/w.pt "
        "holds a list; the model's image_size isn't", cluster_options) == (
        "Cannot read image file '/data/batch_size/a.jpg': --batch-size must be positive; "
        "--device='cuda' but no CUDA device. The '--random-state' parameter; ck/random_state/w.pt "
        "holds a list; the model's --image-size isn't")
    demo_options = vars(build_parser().parse_args(["demo"]))  # which has no --n-clusters
    assert _in_option_words("or else n_clusters; device='x'", demo_options) == "or else n_clusters; --device='x'"
    advice = "ask for fewer clusters or use TorchKMeans."
    assert _in_option_words(advice, cluster_options) == (
        "ask for fewer clusters or use --clusterer torch_kmeans.")
    path = "No image files found under '/data/TorchKMeans' or /x/TorchKMeans.png"
    assert _in_option_words(path, cluster_options) == path
    assert _in_option_words(advice, {"n_clusters": 3}) == advice  # a command without --clusterer
    assert _in_option_words("n_samples=200 is fewer than n_clusters=500; pass more samples or ask for fewer "
                            "clusters.", cluster_options) == (
        "200 images are fewer than --n-clusters=500; give more images or ask for fewer clusters.")


def test_library_warnings_of_kept_clusters_read_in_the_commands_words():
    import warnings

    from sklearn.cluster import MiniBatchKMeans

    from skdeepclust.cli import _in_option_words, build_parser
    from skdeepclust.clustering import SCANClusterer
    from skdeepclust.clustering._training import warn_if_clusters_pruned
    from skdeepclust.clustering.feature_clusterer import _warn_of_empty_clusters

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warn_if_clusters_pruned(SCANClusterer(n_clusters=3), 1)
        _warn_of_empty_clusters(MiniBatchKMeans(n_clusters=3), np.array([0, 2]))
    options = vars(build_parser().parse_args(["cluster", "photos"]))
    pruned, gaps = (_in_option_words(str(warning.message), options) for warning in record)
    assert "which were pruned. If you need exactly --n-clusters groups" in pruned and "n_clusters_" not in pruned
    assert "no sample fell in the other 1, and the clusters keep their numbers, with gaps. If" in gaps
    assert _in_option_words("Possibly due to duplicate points in X.", options) == "Possibly due to duplicate images."


def test_an_installed_heif_plugin_is_registered_for_phone_photos(capsys, image_folder, tmp_path, monkeypatch,
                                                                   register_stand_in_heif):
    # In Python the user registers pillow-heif's opener; on the command line nobody can.
    import sys
    import types

    registered = []

    def register_heif_opener():
        registered.append(True)
        register_stand_in_heif()

    monkeypatch.setitem(sys.modules, "pillow_heif", types.SimpleNamespace(register_heif_opener=register_heif_opener))
    Image.new("RGB", (8, 8), "blue").save(image_folder / "dark" / "phone.heic", format="PNG")
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out",
                          str(tmp_path / "o"), *TINY_ARGS)
    assert status == 0 and registered, err
    with open(tmp_path / "o" / "clusters.csv", newline="") as handle:
        assert str(image_folder / "dark" / "phone.heic") in [row["file"] for row in csv.DictReader(handle)]


def test_cli_confidence_is_the_similarity_to_the_images_own_cluster_centre(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    status = main(["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
                   "--backbone", "test_vit", "--pretrained", "none", "--image-size", "32", "--quiet"])
    assert status == 0, capsys.readouterr().err
    with open(out / "clusters.csv") as handle:
        rows = list(csv.DictReader(handle))
    features = np.load(out / "embeddings.npy")
    labels = np.array([int(row["cluster"]) for row in rows])
    for row, feature, label in zip(rows, features, labels):
        centre = features[labels == label].mean(axis=0)
        expected = np.clip(feature @ centre / np.linalg.norm(centre), 0.0, 1.0)
        assert float(row["confidence"]) == pytest.approx(expected, abs=1e-4)


def test_confidence_finds_the_centre_of_clusters_numbered_with_gaps():
    # MiniBatchKMeans and GaussianMixture may leave labels with gaps.
    from sklearn.base import BaseEstimator, ClusterMixin

    from skdeepclust.cli import _confidence
    from skdeepclust.clustering import FeatureClusterer

    class FixedLabels(ClusterMixin, BaseEstimator):
        def fit(self, X, y=None):
            self.labels_ = np.array([0, 0, 2, 2, 5, 5])
            return self

    X = np.array([[1, 0, 0], [0.96, 0.28, 0], [0, 1, 0], [0, 0.96, 0.28], [0, 0, 1], [0.28, 0, 0.96]],
                 np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    stage = FeatureClusterer(FixedLabels()).fit(X)
    assert np.all(_confidence(stage, X, stage.labels_) > 0.95)


def test_a_broken_heif_plugin_is_named_and_the_run_goes_on(capsys, image_folder, tmp_path, monkeypatch):
    import sys
    import types

    def register_heif_opener():
        raise OSError("libheif.so.1: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "pillow_heif", types.SimpleNamespace(register_heif_opener=register_heif_opener))
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out",
                          str(tmp_path / "o"), *TINY_ARGS)
    assert status == 0
    assert err == ("skdeepclust: warning: the installed pillow_heif could not be loaded (OSError: "
                   "libheif.so.1: cannot open shared object file); its formats are skipped\n")


def _folder_of(root, images):
    root.mkdir()
    for position, image in enumerate(images):
        Image.fromarray(image).save(root / f"{position:02d}.png")
    return root


def test_cli_eval_prints_each_metric_under_its_own_name(capsys, tmp_path):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from conftest import two_tone_images
    from skdeepclust.metrics import cluster_accuracy

    X, y = two_tone_images(n_per_group=8)
    for position, (image, label) in enumerate(zip(X, y)):
        folder = tmp_path / "data" / ("dark" if label == 0 else "bright")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{position:02d}.png")
    # Three clusters of two classes: accuracy, NMI and ARI all differ.
    status, stdout, err = _run(capsys, "cluster", str(tmp_path / "data"), "--n-clusters", "3",
                               "--out", str(tmp_path / "out"), "--eval", *TINY_ARGS)
    assert status == 0, err
    with open(tmp_path / "out" / "clusters.csv") as handle:
        rows = list(csv.DictReader(handle))
    labels = [int(row["cluster"]) for row in rows]
    truth = [0 if "dark" in Path(row["file"]).parts else 1 for row in rows]
    expected = (f"accuracy {cluster_accuracy(truth, labels):.3f}  "
                f"NMI {normalized_mutual_info_score(truth, labels):.3f}  "
                f"ARI {adjusted_rand_score(truth, labels):.3f}")
    assert len({expected.split()[i] for i in (1, 3, 5)}) == 3, expected  # the test needs them to differ
    assert expected in stdout
    assert f"{expected}  (chance accuracy " in stdout


def test_cli_summary_counts_clusters_without_the_noise(capsys, tmp_path):
    from conftest import two_tone_images

    rng = np.random.default_rng(1)
    plain = [np.tile(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), (32, 32, 1)) for _ in range(3)]
    folder = _folder_of(tmp_path / "data", list(two_tone_images(n_per_group=10)[0]) + plain)
    status, stdout, err = _run(capsys, "cluster", str(folder), "--clusterer", "hdbscan",
                               "--out", str(tmp_path / "out"), *TINY_ARGS)
    assert status == 0, err
    with open(tmp_path / "out" / "clusters.csv") as handle:
        labels = [int(row["cluster"]) for row in csv.DictReader(handle)]
    n_noise, n_clusters = labels.count(-1), len(set(labels) - {-1})
    assert n_noise > 0  # the test needs noise
    assert f"23 images in {n_clusters} clusters, {n_noise} left out as noise (cluster -1)" in stdout


def test_cli_options_reach_the_embedder(capsys, tmp_path, monkeypatch):
    from conftest import two_tone_images
    from skdeepclust import ImageEmbedder

    seen = []
    fit = ImageEmbedder.fit
    monkeypatch.setattr(ImageEmbedder, "fit", lambda self, X, y=None: seen.append(
        (self.batch_size, self.num_workers, self.random_state)) or fit(self, X))
    folder = _folder_of(tmp_path / "data", two_tone_images(n_per_group=4)[0])
    status, _, err = _run(capsys, "cluster", str(folder), "--n-clusters", "2", "--out", str(tmp_path / "out"),
                          "--batch-size", "3", "--num-workers", "0", "--random-state", "7", *TINY_ARGS)
    assert status == 0, err
    assert seen == [(3, 0, 7)]


def test_cli_random_state_reaches_the_clusterer(capsys, tmp_path, monkeypatch):
    from conftest import two_tone_images
    from skdeepclust import FeatureClusterer

    seen = []
    fit = FeatureClusterer.fit
    monkeypatch.setattr(FeatureClusterer, "fit", lambda self, X, y=None, sample_weight=None: seen.append(
        self.random_state) or fit(self, X, y, sample_weight))
    folder = _folder_of(tmp_path / "data", two_tone_images(n_per_group=4)[0])
    status, _, err = _run(capsys, "cluster", str(folder), "--n-clusters", "2", "--out", str(tmp_path / "out"),
                          "--random-state", "7", *TINY_ARGS)
    assert status == 0, err
    assert seen and set(seen) == {7}


def test_cli_confidence_of_a_soft_clusterer_is_its_largest_probability(capsys, tmp_path):
    from conftest import two_tone_images
    from skdeepclust import FeatureClusterer

    folder = _folder_of(tmp_path / "data", two_tone_images(n_per_group=8)[0])
    out = tmp_path / "out"
    status, _, err = _run(capsys, "cluster", str(folder), "--n-clusters", "3", "--clusterer", "scan",
                          "--embeddings", "--out", str(out), *TINY_ARGS)
    assert status == 0, err
    with open(out / "clusters.csv") as handle:
        confidence = [float(row["confidence"]) for row in csv.DictReader(handle)]
    features = np.load(out / "embeddings.npy")
    expected = FeatureClusterer("scan", n_clusters=3, random_state=0).fit(features).predict_proba(features)
    assert max(expected.max(axis=1)) < 0.999  # the test needs probabilities short of 1
    np.testing.assert_allclose(confidence, expected.max(axis=1), atol=1e-4)


def test_confidence_of_a_row_moved_off_an_empty_component_is_that_of_its_own_cluster():
    # A GaussianMixture fitted on copies of two photos leaves a component empty, and
    # predict moves rows off it: their largest probability was that of no cluster of the run.
    import warnings

    from skdeepclust import FeatureClusterer
    from skdeepclust.cli import _confidence

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 8))[[0, 0, 0, 0, 0, 0, 1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stage = FeatureClusterer("gmm", n_clusters=3, random_state=0).fit(X)
    new = rng.normal(size=(200, 8))
    labels, proba = stage.predict(new), stage.predict_proba(new)
    assert (proba.argmax(axis=1) != labels).any()  # rows that predict moved
    np.testing.assert_array_equal(_confidence(stage, new, labels), proba[np.arange(200), labels])


def _embedded_counts(monkeypatch):
    """Patch ImageEmbedder.fit_transform to note how many images each call embeds."""
    from skdeepclust import ImageEmbedder

    counts = []
    fit_transform = ImageEmbedder.fit_transform

    def counting(self, X, y=None):
        counts.append(len(X))
        return fit_transform(self, X, y)

    monkeypatch.setattr(ImageEmbedder, "fit_transform", counting)
    return counts


def test_a_rerun_with_embeddings_embeds_only_new_and_changed_files(capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    assert (out / "embeddings.json").is_file()
    changed = image_folder / "dark" / "0.png"
    Image.new("RGB", (30, 30), (200, 10, 10)).save(changed)
    os.utime(changed, ns=(1, 1))  # another modification time on any file system
    Image.new("RGB", (30, 30), (10, 200, 10)).save(image_folder / "bright" / "new.jpg")
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [2]
    assert "; 7 embeddings of an earlier run reused); wrote" in stdout
    # The rows are those a run from scratch gives, in the order of clusters.csv.
    fresh = tmp_path / "fresh"
    assert _run(capsys, *argv[:5], str(fresh), *argv[6:])[0] == 0
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), np.load(fresh / "embeddings.npy"), atol=1e-5)
    with open(out / "clusters.csv") as rerun, open(fresh / "clusters.csv") as from_scratch:
        rerun_rows, fresh_rows = list(csv.DictReader(rerun)), list(csv.DictReader(from_scratch))
    assert [(row["file"], row["cluster"]) for row in rerun_rows] == [
        (row["file"], row["cluster"]) for row in fresh_rows]


def test_a_rerun_that_reuses_every_row_loads_no_backbone(capsys, image_folder, tmp_path, monkeypatch):
    from skdeepclust import ImageEmbedder

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    table, features = (out / "clusters.csv").read_text(), np.load(out / "embeddings.npy")

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded again")

    monkeypatch.setattr(ImageEmbedder, "fit_transform", no_embedding)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0 and err == ""
    assert "8 embeddings of an earlier run reused" in stdout
    assert (out / "clusters.csv").read_text() == table
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), features)


@pytest.mark.parametrize("option, value", [
    ("--image-size", "48"),
    ("--crop-pct", "0.5"),
    ("--random-state", "1"),  # random weights come from the seed
    ("--backbone", "test_vit2"),
    ("--precision", "bfloat16"),  # one given outright; "auto" is the device's, see below
])
def test_a_rerun_with_other_embedding_settings_embeds_every_file(capsys, image_folder, tmp_path, monkeypatch,
                                                                 option, value):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv, option, value)
    assert status == 0, err
    assert counts == [8]
    assert (f"the embeddings of an earlier run in {out} were not reused, as they were made with "
            f"another {option})") in stdout


def test_embeddings_of_the_precision_auto_are_reused_whatever_the_device_made_them(
        capsys, image_folder, tmp_path, monkeypatch):
    # Embeddings made on a GPU (bfloat16) are worth reusing on a CPU; so are those of
    # records written before the precision was kept.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    record = json.loads((out / "embeddings.json").read_text())
    assert record["settings"]["precision"] is None
    del record["settings"]["precision"]
    (out / "embeddings.json").write_text(json.dumps(record))
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv, "--device", "cpu")
    assert status == 0, err
    assert counts == [] and "were not reused" not in stdout


@pytest.mark.parametrize("first, then", [(None, "float32"), ("float32", None)])
def test_a_precision_given_outright_reuses_the_rows_of_a_run_that_computed_in_it(
        capsys, image_folder, tmp_path, monkeypatch, first, then):
    # auto on a CPU computes in float32: that run's rows are the ones float32 would give.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS,
            "--device", "cpu"]
    assert _run(capsys, *argv, *(["--precision", first] if first else []))[0] == 0
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv, *(["--precision", then] if then else []))
    assert status == 0, err
    assert counts == [] and "were not reused" not in stdout
    assert json.loads((out / "embeddings.json").read_text())["settings"]["precision"] == then
    # bfloat16 computes otherwise, whichever way the earlier run was given its precision.
    status, stdout, err = _run(capsys, *argv, "--precision", "bfloat16")
    assert status == 0, err
    assert counts == [8] and "made with another --precision)" in stdout


def _as_a_gpu_run_recorded(out, precision=None):
    """Make out's embeddings record say what a GPU run's says: rows computed in bfloat16."""
    record = json.loads((out / "embeddings.json").read_text())
    record["settings"].update(computed_in="bfloat16", precision=precision)
    (out / "embeddings.json").write_text(json.dumps(record))


def _recorded_dtype(out):
    return json.loads((out / "embeddings.json").read_text())["settings"]["computed_in"]


def test_reused_rows_keep_the_dtype_they_were_computed_in(capsys, image_folder, tmp_path, monkeypatch):
    # precision "auto" computes in bfloat16 on a GPU and float32 on a CPU; the CPU run
    # that reuses the GPU's rows must not record them as float32 ones.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS,
            "--device", "cpu"]
    assert _run(capsys, *argv)[0] == 0
    _as_a_gpu_run_recorded(out)
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [] and "were not reused" not in stdout
    assert _recorded_dtype(out) == "bfloat16"
    # A precision given outright finds them as they are: bfloat16 reuses them ...
    assert _run(capsys, *argv, "--precision", "bfloat16")[0] == 0
    assert counts == [] and _recorded_dtype(out) == "bfloat16"
    # ... and float32 does not.
    status, stdout, err = _run(capsys, *argv, "--precision", "float32")
    assert status == 0, err
    assert counts == [8] and "made with another --precision)" in stdout


def test_rows_of_two_dtypes_in_one_record_are_reused_by_precision_auto_alone(
        capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS,
            "--device", "cpu"]
    assert _run(capsys, *argv)[0] == 0
    _as_a_gpu_run_recorded(out)
    (image_folder / "dark" / "0.png").unlink()
    Image.new("RGB", (16, 16), (90, 20, 200)).save(image_folder / "dark" / "new.png")
    counts = _embedded_counts(monkeypatch)
    assert _run(capsys, *argv)[0] == 0  # 7 rows reused, 1 embedded in float32
    assert counts == [1] and _recorded_dtype(out) is None
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("embeddings.json", "embeddings.npy"):
        shutil.copy2(out / name, mixed / name)  # with its time, which the record keeps
    assert _run(capsys, *argv)[0] == 0
    assert counts == [1] and _recorded_dtype(out) is None
    for precision in ("bfloat16", "float32"):
        for name in ("embeddings.json", "embeddings.npy"):  # each precision meets the mixed record
            shutil.copy2(mixed / name, out / name)
        status, stdout, err = _run(capsys, *argv, "--precision", precision)
        assert status == 0, err
        assert "made with another --precision)" in stdout
    assert counts == [1, 8, 8]


def test_rows_reused_under_a_precision_given_outright_are_recorded_in_it(
        capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS,
            "--device", "cpu"]
    assert _run(capsys, *argv, "--precision", "float32")[0] == 0
    record = json.loads((out / "embeddings.json").read_text())
    del record["settings"]["computed_in"]  # as a record of a version that kept the precision alone
    (out / "embeddings.json").write_text(json.dumps(record))
    counts = _embedded_counts(monkeypatch)
    assert _run(capsys, *argv, "--precision", "float32")[0] == 0
    assert counts == [] and _recorded_dtype(out) == "float32"
    assert _run(capsys, *argv)[0] == 0  # auto on a CPU computes in float32 too
    assert counts == []


def test_the_dtype_recorded_is_that_of_the_rows_reused_not_of_every_earlier_record(
        capsys, image_folder, tmp_path, monkeypatch):
    # A GPU run's rows of files changed since, beside float32 rows of a run stopped early.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
            "--batch-size", "2", *TINY_ARGS, "--device", "cpu"]
    assert _run(capsys, *argv)[0] == 0
    _as_a_gpu_run_recorded(out)
    for path in [*image_folder.glob("dark/*"), *image_folder.glob("bright/*")]:
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10 ** 9))
    with monkeypatch.context() as patched:
        interrupt_embedding_at(patched, 3)
        assert _run(capsys, *argv)[0] == 130
    counts = _embedded_counts(monkeypatch)
    assert _run(capsys, *argv)[0] == 0
    assert counts == [4] and _recorded_dtype(out) == "float32"  # 4 rows of the stopped run, 4 new
    assert _run(capsys, *argv, "--precision", "float32")[0] == 0
    assert counts == [4]


def test_embeddings_decoded_by_an_earlier_revision_are_not_reused(capsys, image_folder, tmp_path, monkeypatch):
    # The package's version stays between releases while its decoding changes.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    record = json.loads((out / "embeddings.json").read_text())
    del record["settings"]["decoding"]  # as a record written before the revision was kept
    (out / "embeddings.json").write_text(json.dumps(record))
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [8]
    assert ("were not reused, as they were made with another way of decoding images (skdeepclust has "
            "changed it since))") in stdout


def test_weights_written_anew_stop_the_reuse_and_the_summary_says_so(capsys, image_folder, tmp_path, monkeypatch):
    # It said "another --pretrained" of a file copied over by the same bytes.
    import shutil

    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "weights.safetensors"
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(weights))
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
            *TINY_ARGS[:2], "--pretrained", str(weights), *TINY_ARGS[4:]]
    assert _run(capsys, *argv)[0] == 0
    shutil.copy(weights, tmp_path / "copy.safetensors")
    os.replace(tmp_path / "copy.safetensors", weights)
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [8]
    assert ("were not reused, as they were made with another --pretrained (a weights file written or "
            "touched since counts as another))") in stdout


def test_the_device_and_batch_size_do_not_stop_the_reuse(capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    counts = _embedded_counts(monkeypatch)
    # A --precision given outright does (test_a_rerun_with_other_embedding_settings_embeds_every_file).
    assert _run(capsys, *argv, "--batch-size", "3", "--num-workers", "0", "--device", "cpu")[0] == 0
    assert counts == []


def test_precision_sets_the_backbones_compute_dtype_and_features_stay_float32(capsys, image_folder, tmp_path):
    from skdeepclust.cli import PRECISIONS
    from skdeepclust.embedding.embedder import PRECISIONS as LIBRARY_PRECISIONS

    assert PRECISIONS == LIBRARY_PRECISIONS
    features = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                              "--embeddings", "--precision", precision, *TINY_ARGS)
        assert status == 0, err
        features[precision] = np.load(out / "embeddings.npy")
    assert features["bfloat16"].dtype == np.float32
    assert not np.array_equal(features["float32"], features["bfloat16"])  # computed in bfloat16
    np.testing.assert_allclose(features["bfloat16"], features["float32"], atol=0.05)
    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "run"), "--out",
                          str(tmp_path / "assigned"), "--precision", "bfloat16", "--quiet")
    assert status == 0, err
    # The library's advice after a float16 overflow, in the command's words.
    import torch

    from skdeepclust.cli import build_parser, _in_option_words
    from skdeepclust.embedding.embedder import _check_finite

    with pytest.raises(ValueError) as overflow:
        _check_finite(np.full((1, 2), np.inf, np.float32), "test_vit", torch.float16)
    assert _in_option_words(str(overflow.value), vars(build_parser().parse_args(["cluster", "photos"]))).endswith(
        "float16 overflowed in the backbone: use --precision bfloat16 or --precision float32.")


def test_new_weights_under_the_same_name_are_not_taken_for_the_old(tmp_path):
    from skdeepclust._run_files import embedding_settings

    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"old")
    params = dict(backbone="test_vit", pretrained=str(weights), image_size=None, crop_pct=1.0)
    before = embedding_settings(params, 0)
    weights.write_bytes(b"newer")
    assert embedding_settings(params, 0) != before
    # A downloaded repository read through local-dir: too.
    repository = tmp_path / "repository"
    repository.mkdir()
    (repository / "model.safetensors").write_bytes(b"old")
    params = dict(params, backbone=f"local-dir:{repository}", pretrained=True)
    before = embedding_settings(params, 0)
    (repository / "model.safetensors").write_bytes(b"newer")
    assert embedding_settings(params, 0) != before
    # Notes, hidden files and the hub's cache beside them are not the model.
    before = embedding_settings(params, 0)
    (repository / "README.md").write_text("notes")
    (repository / ".DS_Store").write_bytes(b"finder")
    (repository / ".cache" / "huggingface").mkdir(parents=True)
    (repository / ".cache" / "huggingface" / "model.safetensors.metadata").write_text("etag")
    assert embedding_settings(params, 0) == before
    (repository / "config.json").write_text("{}")
    assert embedding_settings(params, 0) != before
    # Random weights are drawn from the seed; loaded ones are not.
    assert embedding_settings(params, 1) == embedding_settings(params, 0)
    random_weights = dict(params, backbone="test_vit", pretrained=False)
    assert embedding_settings(random_weights, 1) != embedding_settings(random_weights, 0)


@pytest.mark.parametrize("spoil, reason", [
    (lambda out: (out / "embeddings.json").write_text("{not json"), "its record"),
    (lambda out: np.save(out / "embeddings.npy", np.ones((3, 64), dtype=np.float32)), "was changed after"),
    (lambda out: np.save(out / "embeddings.npy", np.ones((8, 64))), "was changed after"),
])
def test_spoilt_embeddings_are_embedded_anew_with_a_warning(capsys, image_folder, tmp_path, monkeypatch,
                                                           spoil, reason):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    spoil(out)
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0
    assert counts == [8]
    assert err.startswith(f"skdeepclust: warning: cannot reuse {out / 'embeddings.npy'}: ") and reason in err
    assert err.endswith("every image is embedded anew\n")
    assert np.load(out / "embeddings.npy").shape == (8, 64)
    assert "reused" not in stdout


def test_unreadable_files_are_tried_again_and_not_recorded(capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    (image_folder / "dark" / "broken.png").write_bytes(b"not a png")
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    recorded = [Path(stamp[0]).name for stamp in json.loads((out / "embeddings.json").read_text())["files"]]
    assert len(recorded) == 8 and "broken.png" not in recorded
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0 and counts == [1]
    assert "broken.png" in err and "8 embeddings of an earlier run reused" in stdout


def test_ctrl_c_while_embedding_keeps_what_was_embedded_for_the_next_run(capsys, image_folder, tmp_path,
                                                                         monkeypatch):
    (image_folder / "bright" / "0broken.jpg").write_bytes(b"not a jpeg")  # the first file
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
            "--batch-size", "2", *TINY_ARGS]
    with monkeypatch.context() as patched:
        interrupt_embedding_at(patched, 3)
        status, stdout, err = _run(capsys, *argv)
    assert status == 130 and stdout == ""
    assert (f"skdeepclust: kept the embeddings of 3 of the 9 images in {out / 'embeddings.partial.npy'}; "
            "the same command goes on from there\nskdeepclust: interrupted\n") in err
    assert not (out / "clusters.csv").exists()
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [6]  # the broken file is tried again
    assert "3 embeddings of an earlier run reused" in stdout and "0broken.jpg" in err
    fresh = tmp_path / "fresh"
    assert _run(capsys, *argv[:5], str(fresh), *argv[6:])[0] == 0
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), np.load(fresh / "embeddings.npy"), atol=1e-5)


def _interrupt_clustering_of_the_images(patcher):
    """Make FeatureClusterer.fit raise KeyboardInterrupt on the images' features (64 of
    them), not in the trial fit on 16 stand-in features before the embedding."""
    from skdeepclust import FeatureClusterer

    fit = FeatureClusterer.fit

    def interrupted_on_the_images(self, X, y=None, sample_weight=None):
        if X.shape[1] == 64:
            raise KeyboardInterrupt
        return fit(self, X, y, sample_weight=sample_weight)

    patcher.setattr(FeatureClusterer, "fit", interrupted_on_the_images)


def test_ctrl_c_while_clustering_keeps_every_embedding(capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]

    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        status, _, err = _run(capsys, *argv)
    assert status == 130 and "kept the embeddings of all 8 images" in err
    counts = _embedded_counts(monkeypatch)
    assert _run(capsys, *argv)[0] == 0
    assert counts == []


def test_ctrl_c_without_embeddings_writes_nothing(capsys, image_folder, tmp_path, monkeypatch):
    interrupt_embedding_at(monkeypatch, 1)
    out = tmp_path / "out"
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 130 and err == "skdeepclust: interrupted\n"
    assert not out.exists()  # made by this run, and left empty


@pytest.mark.parametrize("stopped_while", ["embedding", "clustering"])
def test_ctrl_c_without_embeddings_after_a_long_embedding_keeps_it(capsys, image_folder, tmp_path, monkeypatch,
                                                                   stopped_while):
    # A clustering that ran for hours, stopped, lost the hour of embedding before it.
    from skdeepclust import cli

    monkeypatch.setattr(cli, "EMBEDDING_SECONDS_WORTH_KEEPING", 0.0)
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--batch-size", "2", *TINY_ARGS]
    with monkeypatch.context() as patched:
        if stopped_while == "embedding":
            interrupt_embedding_at(patched, 3)
        else:
            _interrupt_clustering_of_the_images(patched)
        status, _, err = _run(capsys, *argv)
    kept = "4 of the 8" if stopped_while == "embedding" else "all 8"
    assert status == 130
    assert err == (f"skdeepclust: kept the embeddings of {kept} images in {out / 'embeddings.partial.npy'}; the "
                   "same command goes on from there\nskdeepclust: interrupted\n")
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == ([4] if stopped_while == "embedding" else [])
    assert sorted(path.name for path in out.iterdir()) == ["clusters.csv", "montage.png"]


def test_a_long_run_without_embeddings_keeps_them_while_it_clusters_only(capsys, image_folder, tmp_path, monkeypatch):
    # Against the out-of-memory killer, and Ctrl-C, which compiled clustering code does not heed.
    from skdeepclust import FeatureClusterer, cli

    monkeypatch.setattr(cli, "EMBEDDING_SECONDS_WORTH_KEEPING", 0.0)
    out, fit, kept_while_clustering = tmp_path / "out", FeatureClusterer.fit, []

    def looking_for_the_embeddings(self, X, *args, **kwargs):
        if X.shape[1] == 64:  # the images' features, not the trial fit's stand-ins
            kept_while_clustering.append(len(np.load(out / "embeddings.partial.npy")))
        return fit(self, X, *args, **kwargs)

    monkeypatch.setattr(FeatureClusterer, "fit", looking_for_the_embeddings)
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 0 and err == ""
    assert kept_while_clustering == [8]
    assert sorted(path.name for path in out.iterdir()) == ["clusters.csv", "montage.png"]


def test_swapped_files_of_the_same_size_and_mtime_are_embedded_again(capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    first, second = image_folder / "dark" / "a.bmp", image_folder / "dark" / "b.bmp"
    Image.new("RGB", (30, 30), (200, 10, 10)).save(first)
    Image.new("RGB", (30, 30), (10, 10, 200)).save(second)  # BMP: the same size
    for path in (first, second):
        os.utime(path, ns=(1, 1))  # as tar leaves them
    assert _run(capsys, *argv)[0] == 0
    swap = first.with_name("swap")
    first.rename(swap), second.rename(first), swap.rename(second)
    counts = _embedded_counts(monkeypatch)
    assert _run(capsys, *argv)[0] == 0
    assert counts == [2]


def test_ctrl_c_leaves_embeddings_npy_matching_clusters_csv(capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
            "--batch-size", "1", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    table, features = (out / "clusters.csv").read_text(), np.load(out / "embeddings.npy")
    for name in ("new0.jpg", "new1.jpg"):
        Image.new("RGB", (30, 30), (10, 200, 10)).save(image_folder / "bright" / name)
    with monkeypatch.context() as patched:
        interrupt_embedding_at(patched, 2)
        status, _, err = _run(capsys, *argv)
        assert status == 130, err
    assert (out / "clusters.csv").read_text() == table
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), features)


def test_an_error_after_the_embedding_keeps_the_embeddings_for_the_next_run(capsys, image_folder, tmp_path,
                                                                          monkeypatch):
    for name in ("broken0.png", "broken1.png"):
        (image_folder / "dark" / name).write_bytes(b"not a png")
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--out", str(out), "--embeddings", *TINY_ARGS]
    status, _, err = _run(capsys, *argv, "--n-clusters", "9")  # 10 files, but 8 images
    assert status == 2
    assert (f"skdeepclust: kept the embeddings of 8 of the 10 images in {out / 'embeddings.partial.npy'}; "
            "a rerun into this --out goes on from there\n") in err
    assert "--n-clusters=9" in err.splitlines()[-1]
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv, "--n-clusters", "2")
    assert status == 0, err
    assert counts == [2]  # the unreadable files, tried again
    assert "8 embeddings of an earlier run reused" in stdout
    assert sorted(path.name for path in out.iterdir()) == [
        "clusters.csv", "embeddings.json", "embeddings.npy", "montage.png"]


def test_a_run_without_embeddings_goes_on_from_a_run_stopped_early_and_removes_its_rows(capsys, image_folder,
                                                                                      tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        assert _run(capsys, *argv, "--embeddings")[0] == 130
    assert (out / "embeddings.partial.npy").is_file()
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0 and err == ""
    assert counts == [] and "8 embeddings of an earlier run reused" in stdout
    assert sorted(path.name for path in out.iterdir()) == ["clusters.csv", "montage.png"]
    # Those of other settings are not reused, and the summary says why.
    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        assert _run(capsys, *argv, "--embeddings")[0] == 130
    counts.clear()
    status, stdout, err = _run(capsys, *argv, "--image-size", "16")
    assert status == 0 and err == "" and counts == [8]
    assert "were not reused, as they were made with another --image-size" in stdout
    assert sorted(path.name for path in out.iterdir()) == ["clusters.csv", "montage.png"]


def test_an_embeddings_json_that_no_run_wrote_is_not_overwritten(capsys, image_folder, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "embeddings.json").write_text('{"the": "user\'s own"}')
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                          "--embeddings", *TINY_ARGS)
    assert status == 2
    assert err == (f"skdeepclust: error: --out {out}: it holds an embeddings.json that no skdeepclust run wrote, "
                   "which would be overwritten; move it, or choose another --out\n")
    assert (out / "embeddings.json").read_text() == '{"the": "user\'s own"}'


def test_an_array_edited_after_its_record_is_not_reused(capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    np.save(out / "embeddings.npy", 10 * np.load(out / "embeddings.npy"))  # the same shape and dtype
    counts = _embedded_counts(monkeypatch)
    status, _, err = _run(capsys, *argv)
    assert status == 0 and counts == [8]
    assert "embeddings.npy was changed after the record was written" in err
    np.testing.assert_allclose(np.linalg.norm(np.load(out / "embeddings.npy"), axis=1), 1.0, atol=1e-5)


def test_a_long_embedding_without_embeddings_points_to_the_option(capsys, image_folder, tmp_path, monkeypatch):
    import skdeepclust._device
    import skdeepclust.cli

    monkeypatch.setattr(skdeepclust._device, "cpu_computes_in_bfloat16", lambda: False)  # no second hint
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    status, stdout, _ = _run(capsys, *argv)
    assert status == 0 and "--embeddings" not in stdout  # a quick one does not
    monkeypatch.setattr(skdeepclust.cli, "EMBEDDING_SECONDS_WORTH_KEEPING", 0.0)
    status, stdout, _ = _run(capsys, *argv)
    assert status == 0
    assert stdout.splitlines()[-1].startswith("(the embedding took ")
    assert stdout.splitlines()[-1].endswith(
        f" s: with --embeddings a rerun into {out} embeds only new and changed files, so that another "
        "--n-clusters or --clusterer takes seconds)")
    status, stdout, _ = _run(capsys, *argv, "--embeddings")
    assert status == 0 and "(the embedding took" not in stdout


@pytest.mark.parametrize("native, precision, hinted", [(True, None, True), (False, None, False),
                                                      (True, "float32", False), (True, "bfloat16", False)])
def test_a_long_float32_embedding_on_a_bfloat16_cpu_points_to_the_precision(capsys, image_folder, tmp_path,
                                                                            monkeypatch, native, precision,
                                                                            hinted):
    import skdeepclust._device
    import skdeepclust.cli

    monkeypatch.setattr(skdeepclust._device, "cpu_computes_in_bfloat16", lambda: native)
    monkeypatch.setattr(skdeepclust.cli, "EMBEDDING_SECONDS_WORTH_KEEPING", 0.0)
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(tmp_path / "out"), "--device", "cpu",
            "--embeddings", *TINY_ARGS, *(["--precision", precision] if precision else [])]
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    hint = ("(this CPU computes in bfloat16 natively: with --precision bfloat16 the embedding ran 1.8 to 2.3 "
            "times as fast on such a CPU, with the same k-means accuracy, in skdeepclust's benchmarks)")
    assert (stdout.splitlines()[-1] == hint) is hinted


def test_the_bfloat16_probe_of_the_cpu_answers_a_bool():
    from skdeepclust._device import cpu_computes_in_bfloat16

    assert isinstance(cpu_computes_in_bfloat16(), bool)


def test_embeddings_that_cannot_be_kept_leave_the_error_that_stopped_the_run(capsys, image_folder, tmp_path,
                                                                           monkeypatch):
    import errno

    import skdeepclust._run_files

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(skdeepclust._run_files, "write_embeddings", disk_full)
    (image_folder / "dark" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "9", "--out", str(out),
                          "--embeddings", *TINY_ARGS)
    assert status == 2
    lines = err.splitlines()
    assert lines[-2] == (f"skdeepclust: warning: could not keep the embeddings made so far in "
                         f"{out / 'embeddings.partial.npy'} (No space left on device)")
    assert lines[-1].startswith("skdeepclust: error: ") and "--n-clusters=9" in lines[-1]


def test_embeddings_that_cannot_be_written_leave_the_earlier_run_whole(capsys, image_folder, tmp_path, monkeypatch):
    # clusters.csv was replaced first: its rows no longer matched those of the earlier
    # run's embeddings.npy, nor its clusters those of its model and montage.
    import errno

    from skdeepclust import _run_files

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--out", str(out), "--embeddings", "--save-model", *TINY_ARGS]
    assert _run(capsys, *argv, "--n-clusters", "2")[0] == 0
    earlier = {name: (out / name).read_bytes() for name in ("clusters.csv", "embeddings.npy", "model.joblib",
                                                            "montage.png")}
    (image_folder / "dark" / "0.png").unlink()  # the rows are written anew, in another order
    save = np.save

    def disk_full(path, array):
        if os.path.basename(path) == "embeddings.writing.npy":
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(path, array)

    monkeypatch.setattr(_run_files.np, "save", disk_full)
    status, _, err = _run(capsys, *argv, "--n-clusters", "3")
    assert status == 2 and f"cannot write {out / 'embeddings.npy'} (No space left on device" in err
    assert {name: (out / name).read_bytes() for name in earlier} == earlier
    assert sorted(path.name for path in out.iterdir()) == sorted([*earlier, "embeddings.json"])


def test_a_model_that_cannot_be_written_takes_the_earlier_runs_with_it(capsys, image_folder, tmp_path,
                                                                       monkeypatch):
    # Its clusters are not those of the new clusters.csv; a half-written one was refused
    # by the next run as a model.joblib no skdeepclust run wrote.
    import errno

    import joblib

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--out", str(out), "--save-model", *TINY_ARGS]
    assert _run(capsys, *argv, "--n-clusters", "2")[0] == 0
    earlier_montage, dump = (out / "montage.png").read_bytes(), joblib.dump

    def disk_full_midway(value, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(joblib, "dump", disk_full_midway)
    status, _, err = _run(capsys, *argv, "--n-clusters", "3")
    assert status == 2
    assert err.strip() == (f"skdeepclust: error: cannot write {out / 'model.joblib'} (No space left on device; "
                           "a full disk?); clusters.csv is written, and the earlier run's model removed")
    assert sorted(path.name for path in out.iterdir()) == ["clusters.csv"]  # the montage went too
    monkeypatch.setattr(joblib, "dump", dump)
    assert _run(capsys, *argv, "--n-clusters", "3")[0] == 0
    assert (out / "montage.png").read_bytes() != earlier_montage


@pytest.mark.parametrize("save_model", [True, False])
def test_a_montage_that_cannot_be_written_leaves_no_model_of_the_earlier_run(capsys, image_folder, tmp_path,
                                                                            monkeypatch, save_model):
    # Its clusters were not those of the new clusters.csv, and assign would have used them;
    # nor does it leave the earlier run's folders of links.
    import errno

    import joblib
    from PIL import Image

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--out", str(out), *TINY_ARGS]
    assert _run(capsys, *argv, "--n-clusters", "2", "--save-model", "--folders")[0] == 0

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    status, _, err = _run(capsys, *argv, "--n-clusters", "3", *(["--save-model"] if save_model else []))
    assert status == 0, err  # the results stand, as where the montage would be too large
    assert ("skdeepclust: warning: montage.png not written: cannot write it (No space left on device; a full disk?), "
            "and the "
            "earlier run's montage.png removed; clusters.csv holds every image's cluster") in err
    if save_model:
        assert sorted(path.name for path in out.iterdir()) == ["clusters.csv", "model.joblib"]
        assert joblib.load(out / "model.joblib")["stage"].cluster_ids_.tolist() == [0, 1, 2]
    else:
        assert sorted(path.name for path in out.iterdir()) == ["clusters.csv"]


def _cluster_and_save_model(capsys, folder, out, *options):
    status, stdout, err = _run(capsys, "cluster", str(folder), "--out", str(out), "--save-model", *TINY_ARGS,
                               *options)
    assert status == 0, err
    return stdout


@pytest.mark.parametrize("options", [("--n-clusters", "2"), ("--clusterer", "hdbscan"),
                                     ("--n-clusters", "2", "--clusterer", "scan"), ("--n-clusters", "2", "--smooth")])
def test_assign_puts_images_into_the_clusters_of_a_saved_run(capsys, tmp_path, options):
    from conftest import two_tone_images

    folder = _folder_of(tmp_path / "data", two_tone_images(n_per_group=8)[0])
    stdout = _cluster_and_save_model(capsys, folder, tmp_path / "run", *options)
    assert f"{tmp_path / 'run' / 'model.joblib'}" in stdout
    status, stdout, err = _run(capsys, "assign", str(folder), "--model", str(tmp_path / "run"),
                               "--out", str(tmp_path / "assigned"), "--quiet")
    assert status == 0, err
    assert stdout.startswith("16 images assigned to the ")
    with open(tmp_path / "run" / "clusters.csv") as run, open(tmp_path / "assigned" / "clusters.csv") as assigned:
        run_rows, assigned_rows = list(csv.DictReader(run)), list(csv.DictReader(assigned))
    # The run's own images go back to their clusters (noise, for hdbscan, to the nearest one).
    assert [row["file"] for row in assigned_rows] == [row["file"] for row in run_rows]
    for run_row, assigned_row in zip(run_rows, assigned_rows):
        if run_row["cluster"] != "-1":
            assert assigned_row["cluster"] == run_row["cluster"]
            assert float(assigned_row["confidence"]) == pytest.approx(float(run_row["confidence"]), abs=2e-4)
        assert int(assigned_row["cluster"]) >= 0
    assert (tmp_path / "assigned" / "montage.png").is_file()


def test_smooth_clusters_the_smoothed_features_and_keeps_the_smoother_for_assign(capsys, tmp_path):
    import joblib
    from conftest import two_tone_images

    from skdeepclust.clustering import NeighborSmoother

    folder = _folder_of(tmp_path / "data", two_tone_images(n_per_group=8)[0])
    _cluster_and_save_model(capsys, folder, tmp_path / "run", "--n-clusters", "2", "--smooth", "--embeddings")
    model = joblib.load(tmp_path / "run" / "model.joblib")
    smoother, stage = model["smoother"], model["stage"]
    assert isinstance(smoother, NeighborSmoother) and smoother.get_params()["n_neighbors"] == 10
    # embeddings.npy keeps the features as the backbone gave them; the clusters are of the smoothed ones.
    embeddings = np.load(tmp_path / "run" / "embeddings.npy")
    np.testing.assert_allclose(smoother.fit_features_, embeddings, atol=1e-6)
    smoothed = smoother.transform(embeddings)
    for cluster, centre in zip(stage.cluster_ids_, stage.cluster_centers_):
        np.testing.assert_allclose(centre, smoothed[stage.labels_ == cluster].mean(axis=0), atol=1e-5)
    assert model["format_version"] == 3
    # The confidence is the smoothed row's similarity to its cluster's centre times the
    # image's to its smoothed row: an image unlike its neighbours would score high otherwise.
    with open(tmp_path / "run" / "clusters.csv") as table:
        confidence = [float(row["confidence"]) for row in csv.DictReader(table)]
    centres = stage.cluster_centers_ / np.linalg.norm(stage.cluster_centers_, axis=1, keepdims=True)
    to_centre = np.einsum("ij,ij->i", smoothed, centres[np.searchsorted(stage.cluster_ids_, stage.labels_)])
    to_smoothed = np.einsum("ij,ij->i", embeddings, smoothed) / np.linalg.norm(embeddings, axis=1)
    np.testing.assert_allclose(confidence, np.clip(to_centre, 0, 1) * np.clip(to_smoothed, 0, 1), atol=2e-4)
    assert max(confidence) < 0.999
    # The smoother runs on assign's --device, not on the cluster run's (a GPU, say).
    model["smoother"].set_params(device="cuda")
    joblib.dump(model, tmp_path / "run" / "model.joblib")
    status, _, err = _run(capsys, "assign", str(folder), "--model", str(tmp_path / "run"),
                          "--out", str(tmp_path / "assigned"), "--device", "cpu", "--quiet")
    assert status == 0, err


def test_smooth_with_a_head_that_finds_neighbours_itself_warns(capsys, tmp_path):
    from conftest import two_tone_images

    folder = _folder_of(tmp_path / "data", two_tone_images(n_per_group=8)[0])
    status, _, err = _run(capsys, "cluster", str(folder), "--n-clusters", "2", "--clusterer", "temi", "--smooth",
                          "--out", str(tmp_path / "o"), *TINY_ARGS)
    assert status == 0, err
    assert ("skdeepclust: warning: --smooth is for kmeans, agglomerative and gmm: --clusterer temi finds each "
            "image's neighbours itself") in err


def test_smooth_refuses_too_few_images_before_the_embedding(capsys, image_folder, tmp_path, monkeypatch):
    counts = _embedded_counts(monkeypatch)
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(tmp_path / "o"),
                          "--smooth", *TINY_ARGS)
    assert status == 2 and counts == []
    assert err.strip() == ("skdeepclust: error: --smooth averages each image with its 10 nearest others, so it "
                           "needs at least 11 images; got 8")


def test_assign_gives_new_images_the_clusters_the_saved_clusterer_predicts(capsys, image_folder, tmp_path):
    import joblib

    from skdeepclust import ImageEmbedder

    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    new = tmp_path / "new"
    new.mkdir()
    for index, colour in enumerate([(250, 250, 250), (5, 5, 5), (120, 200, 30)]):
        Image.new("RGB", (40, 30), colour).save(new / f"{index}.png")
    status, _, err = _run(capsys, "assign", str(new), "--model", str(tmp_path / "run" / "model.joblib"),
                          "--out", str(tmp_path / "assigned"), "--quiet")
    assert status == 0, err
    model = joblib.load(tmp_path / "run" / "model.joblib")
    features = ImageEmbedder(**model["embedder"], random_state=0).fit_transform(sorted(map(str, new.iterdir())))
    with open(tmp_path / "assigned" / "clusters.csv") as handle:
        assert [int(row["cluster"]) for row in csv.DictReader(handle)] == list(model["stage"].predict(features))


@pytest.mark.parametrize("model, message", [
    ("nowhere", "no such file; give the model.joblib that 'skdeepclust cluster --save-model' wrote, or its "
                "--out folder"),
    ("", "no such file"),  # a folder without one
    ("junk.joblib", "not a model that 'skdeepclust cluster --save-model' wrote"),
])
def test_assign_refuses_what_is_not_a_saved_model(capsys, image_folder, tmp_path, model, message):
    (tmp_path / "junk.joblib").write_bytes(b"junk")
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / model), "--out",
                          str(tmp_path / "assigned"))
    assert status == 2 and err.startswith("skdeepclust: error: --model ") and message in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "assigned").exists()


def test_assign_names_weights_that_are_gone_or_replaced(capsys, image_folder, tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "weights.safetensors"
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(weights))
    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2",
                            "--pretrained", str(weights))
    weights.unlink()

    def assign():
        return _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "run"),
                    "--out", str(tmp_path / "assigned"))

    status, _, err = assign()
    assert status == 2
    assert err == (f"skdeepclust: error: --model {tmp_path / 'run' / 'model.joblib'}: its weights {weights} "
                   "are gone; the model names the weights it was made with rather than holding them, so put "
                   "them back there (or beside the model), or give their new place with --weights\n")
    # Other weights put under that name would embed the images otherwise.
    torch.manual_seed(1)
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(weights))
    status, _, err = assign()
    assert status == 2
    assert err == (f"skdeepclust: error: --model {tmp_path / 'run' / 'model.joblib'}: {weights} hold other "
                   "weights than those the model was made with; put the model's own back there, or give "
                   "their new place with --weights\n")


def test_assign_takes_moved_weights_from_the_weights_option(capsys, image_folder, tmp_path_factory):
    import shutil

    import timm
    import torch

    tmp_path = tmp_path_factory.mktemp("weights")  # not inside image_folder
    torch.manual_seed(0)
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), tmp_path / "weights.pth")
    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2",
                            "--pretrained", str(tmp_path / "weights.pth"))
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "renamed.pth"
    shutil.move(tmp_path / "weights.pth", moved)

    def assign(*options):
        return _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "run"),
                    "--out", str(tmp_path / "assigned"), "--quiet", *options)

    status, _, err = assign("--weights", str(moved))
    assert status == 0, err
    with open(tmp_path / "run" / "clusters.csv") as run, open(tmp_path / "assigned" / "clusters.csv") as new:
        assert [row["cluster"] for row in csv.DictReader(new)] == [row["cluster"] for row in csv.DictReader(run)]
    assert assign("--weights", str(tmp_path / "elsewhere"))[2] == (
        f"skdeepclust: error: --weights {tmp_path / 'elsewhere'}: the model needs the weights file it was "
        "made with, not a folder\n")
    assert assign("--weights", str(tmp_path / "missing.pth"))[2] == (
        f"skdeepclust: error: --weights {tmp_path / 'missing.pth'}: no such file or folder\n")
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), other)
    status, _, err = assign("--weights", str(other))
    assert status == 2
    assert err == (f"skdeepclust: error: --weights {other}: other weights than those the model "
                   f"{tmp_path / 'run' / 'model.joblib'} was made with\n")
    # Random weights are recreated from the seed the model keeps: there is no file to give.
    _cluster_and_save_model(capsys, image_folder, tmp_path / "random", "--n-clusters", "2")
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "random"),
                          "--out", str(tmp_path / "assigned"), "--weights", str(moved))
    assert status == 2
    assert err == (f"skdeepclust: error: --weights {moved}: the model was made with random weights, not "
                   "with a weights file or local-dir: folder; leave --weights out\n")


@pytest.mark.parametrize("backbone, made_with", [
    ("efficientnet_lite0.offline", "the weights packaged with skdeepclust"),
    ("vit_small_patch16_224.dino", "timm's own weights from the hub"),
])
def test_weights_given_for_a_model_made_without_a_file_name_what_it_was_made_with(backbone, made_with):
    from skdeepclust._cli_messages import UserError
    from skdeepclust._run_files import _put_weights_at

    with pytest.raises(UserError, match=f"the model was made with {made_with}, not with a weights file"):
        _put_weights_at({"embedder": {"backbone": backbone, "pretrained": True}}, "w.safetensors")


def test_assign_does_not_write_over_the_models_own_run(capsys, image_folder, tmp_path):
    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    table = (tmp_path / "run" / "clusters.csv").read_text()
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "run"),
                          "--out", str(tmp_path / "run"))
    assert status == 2 and "holds the model's own run" in err
    assert (tmp_path / "run" / "clusters.csv").read_text() == table


def test_a_rerun_without_save_model_removes_the_earlier_model(capsys, image_folder, tmp_path):
    out = tmp_path / "run"
    _cluster_and_save_model(capsys, image_folder, out, "--n-clusters", "2")
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "3", "--out", str(out), *TINY_ARGS)
    assert status == 0
    assert not (out / "model.joblib").exists()  # its clusters are not those of the new table
    assert err == (f"skdeepclust: warning: removed {out / 'model.joblib'} of an earlier run: its clusters are "
                   "not those of the new clusters.csv (--save-model writes it anew)\n")


def test_save_model_does_not_write_over_a_users_own_model(capsys, image_folder, tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "model.joblib").write_bytes(b"the user's own")
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                          "--save-model", *TINY_ARGS)
    assert status == 2 and "it holds a model.joblib that no skdeepclust run wrote" in err
    assert (out / "model.joblib").read_bytes() == b"the user's own"


def test_assign_finds_weights_given_by_relative_paths_from_another_folder(capsys, image_folder,
                                                                          tmp_path_factory, monkeypatch):
    import timm
    import torch

    if not hasattr(timm.models, "save_for_hf"):
        pytest.skip(f"timm {timm.__version__} reads no 'local-dir:' names")
    tmp_path = tmp_path_factory.mktemp("elsewhere")  # not inside image_folder
    work = tmp_path / "work"
    work.mkdir()
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=0).eval()
    timm.models.save_for_hf(model, work / "repository")
    torch.save(model.state_dict(), work / "weights.pth")
    monkeypatch.chdir(work)
    for backbone, pretrained in [("local-dir:repository", "hub"), ("test_vit", "weights.pth")]:
        status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", "run",
                              "--save-model", "--backbone", backbone, "--pretrained", pretrained,
                              "--image-size", "32", "--quiet")
        assert status == 0, err
        monkeypatch.chdir(tmp_path)
        status, _, err = _run(capsys, "assign", str(image_folder), "--model", "work/run", "--out", "assigned",
                              "--quiet")
        assert status == 0, err
        with open(work / "run" / "clusters.csv") as run, open("assigned/clusters.csv") as assigned:
            assert [row["cluster"] for row in csv.DictReader(assigned)] == [
                row["cluster"] for row in csv.DictReader(run)]
        if backbone.startswith("local-dir:"):  # a moved folder is given as a folder
            (work / "repository").rename(work / "moved")
            (work / "moved" / ".DS_Store").write_bytes(b"finder")  # not part of the model
            (work / "moved" / "NOTES.txt").write_text("where these weights came from")
            assert _run(capsys, "assign", str(image_folder), "--model", "work/run", "--out", "assigned",
                        "--quiet")[0] == 2
            for weights in ("work/moved", "local-dir:work/moved"):
                status, _, err = _run(capsys, "assign", str(image_folder), "--model", "work/run", "--out",
                                      "assigned", "--weights", weights, "--quiet")
                assert status == 0, err
            status, _, err = _run(capsys, "assign", str(image_folder), "--model", "work/run", "--out",
                                  "assigned", "--weights", "work/weights.pth", "--quiet")
            assert err.endswith("the model needs the local-dir: folder it was made with, not a file\n")
        monkeypatch.chdir(work)


def test_assign_does_not_write_over_another_cluster_run(capsys, image_folder, tmp_path):
    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    _cluster_and_save_model(capsys, image_folder, tmp_path / "other", "--n-clusters", "3")
    (tmp_path / "link").symlink_to(tmp_path / "run")
    for out, model in [("other", "run"), ("run", "link")]:  # another run's folder; its own, by a link
        before = sorted(path.name for path in (tmp_path / out).iterdir())
        status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / model),
                              "--out", str(tmp_path / out))
        assert status == 2 and len(err.splitlines()) == 1, err
        assert sorted(path.name for path in (tmp_path / out).iterdir()) == before


def test_a_users_own_model_joblib_beside_a_run_is_neither_removed_nor_overwritten(capsys, image_folder, tmp_path):
    import joblib

    out = tmp_path / "run"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    joblib.dump({"my": "pipeline, trained for hours"}, out / "model.joblib")
    assert _run(capsys, *argv)[0] == 0
    status, _, err = _run(capsys, *argv, "--save-model")
    assert status == 2 and "it holds a model.joblib that no skdeepclust run wrote" in err
    assert joblib.load(out / "model.joblib") == {"my": "pipeline, trained for hours"}


@pytest.mark.parametrize("name", ["embeddings.npy", "embeddings.partial.npy"])
def test_a_users_own_embeddings_array_is_neither_removed_nor_overwritten(capsys, image_folder, tmp_path, name):
    out = tmp_path / "run"
    out.mkdir()
    mine = np.arange(10.0)
    np.save(out / name, mine)
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    status, _, err = _run(capsys, *argv, "--embeddings")
    assert status == 2
    assert err == (f"skdeepclust: error: --out {out}: it holds an {name} that no skdeepclust run wrote, which "
                   "would be overwritten; move it, or choose another --out\n")
    if name == "embeddings.partial.npy":  # a run without --embeddings keeps its embeddings there too
        assert _run(capsys, *argv)[0] == 2
        np.testing.assert_array_equal(np.load(out / name), mine)
        return
    for _ in range(2):  # beside no run, then beside the run's own clusters.csv
        status, _, err = _run(capsys, *argv)
        assert status == 0 and name not in err, err
        np.testing.assert_array_equal(np.load(out / name), mine)
    assert _run(capsys, *argv, "--embeddings")[0] == 2


@pytest.mark.parametrize("spoil, message", [
    (lambda model: model.pop("stage"), "in a form that skdeepclust "),
    (lambda model: model["embedder"].update(colour_space="lab"), "does not read"),
    (lambda model: model.update(format_version=4), "does not read"),
    (lambda model: model.pop("smoother"), "does not read"),
    (lambda model: model["stage"].__dict__.pop("cluster_ids_"), "does not read"),
])
def test_assign_refuses_a_model_in_another_form_in_one_line(capsys, image_folder, tmp_path, spoil, message):
    import joblib

    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    model = joblib.load(tmp_path / "run" / "model.joblib")
    spoil(model)
    joblib.dump(model, tmp_path / "run" / "model.joblib")
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "run"),
                          "--out", str(tmp_path / "assigned"))
    assert status == 2 and len(err.splitlines()) == 1 and message in err, err


def test_preprocessing_options_reach_the_embedding_its_record_and_the_saved_model(capsys, image_folder, tmp_path,
                                                                                  monkeypatch):
    import joblib

    from skdeepclust.cli import INTERPOLATIONS
    from skdeepclust.embedding.embedder import INTERPOLATIONS as LIBRARY_INTERPOLATIONS

    assert INTERPOLATIONS == LIBRARY_INTERPOLATIONS
    preprocessing = ["--mean", "0.4", "0.5", "0.6", "--std", "0.2", "0.25", "0.3", "--interpolation", "nearest"]
    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2", "--embeddings",
                            *preprocessing)
    model = joblib.load(tmp_path / "run" / "model.joblib")
    assert model["embedder"]["mean"] == [0.4, 0.5, 0.6] and model["embedder"]["std"] == [0.2, 0.25, 0.3]
    assert model["embedder"]["interpolation"] == "nearest"
    plain = tmp_path / "plain"
    _cluster_and_save_model(capsys, image_folder, plain, "--n-clusters", "2", "--embeddings")
    assert not np.allclose(np.load(plain / "embeddings.npy"), np.load(tmp_path / "run" / "embeddings.npy"))
    # assign embeds as the run did: the same rows give the same clusters.
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "run"), "--out",
                          str(tmp_path / "assigned"), "--quiet")
    assert status == 0, err
    with open(tmp_path / "run" / "clusters.csv") as run, open(tmp_path / "assigned" / "clusters.csv") as new:
        assert [row["cluster"] for row in csv.DictReader(new)] == [row["cluster"] for row in csv.DictReader(run)]
    # Each setting stops the reuse of embeddings made without it; repeated, all are reused.
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(plain), "--embeddings", *TINY_ARGS]
    counts = _embedded_counts(monkeypatch)
    for option, values in [("--mean", preprocessing[1:4]), ("--std", preprocessing[5:8]),
                           ("--interpolation", ["nearest"])]:
        status, stdout, err = _run(capsys, *argv, option, *values)
        assert status == 0, err
        assert f"were not reused, as they were made with another {option})" in stdout
        assert _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(plain),
                    "--embeddings", *TINY_ARGS)[0] == 0  # back to the model's own: embedded again
    assert counts == [8] * 6
    assert _run(capsys, *argv)[0] == 0
    assert counts == [8] * 6
    # A record written before these settings existed stands for the model's own.
    record = json.loads((plain / "embeddings.json").read_text())
    for name in ("mean", "std", "interpolation"):
        del record["settings"][name]
    (plain / "embeddings.json").write_text(json.dumps(record))
    assert _run(capsys, *argv)[0] == 0
    assert counts == [8] * 6


@pytest.mark.parametrize("option, value, message", [
    ("--mean", "123", "--mean: must be three numbers in [0, 1], one per channel (R G B) on the 0-1 scale of "
     "pixel values (ImageNet's: --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225), not '123'; for 0-255 "
     "units, divide by 255"),
    ("--std", "0", "--std: must be three numbers in (0, 1]"),
    ("--mean", "red", "--mean: must be three numbers in [0, 1]"),
])
def test_preprocessing_options_out_of_range_are_refused_in_one_line(capsys, tmp_path, option, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", str(tmp_path), "--n-clusters", "2", option, value, "0.5", "0.5"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_a_model_saved_before_the_preprocessing_options_still_assigns(capsys, image_folder, tmp_path):
    import joblib

    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    model = joblib.load(tmp_path / "run" / "model.joblib")
    for name in ("mean", "std", "interpolation"):
        del model["embedder"][name]
    joblib.dump(dict(model, format_version=1), tmp_path / "run" / "model.joblib")
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "run"), "--out",
                          str(tmp_path / "assigned"), "--quiet")
    assert status == 0, err
    with open(tmp_path / "run" / "clusters.csv") as run, open(tmp_path / "assigned" / "clusters.csv") as new:
        assert [row["cluster"] for row in csv.DictReader(new)] == [row["cluster"] for row in csv.DictReader(run)]


def test_assign_warns_of_a_model_made_by_other_versions(capsys, image_folder, tmp_path):
    import joblib
    import timm

    from skdeepclust.embedding.decoding import DECODING_REVISION

    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    model = joblib.load(tmp_path / "run" / "model.joblib")
    model["timm"] = "0.9.0"
    del model["decoding"]  # as a model saved before the revision was kept
    joblib.dump(model, tmp_path / "run" / "model.joblib")
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "run"),
                          "--out", str(tmp_path / "assigned"), "--quiet")
    assert status == 0
    assert (f"skdeepclust: warning: --model {tmp_path / 'run' / 'model.joblib'} was made with timm 0.9.0, this "
            f"is {timm.__version__}: the images may be embedded a little otherwise than that run's") in err.splitlines()
    assert (f"skdeepclust: warning: --model {tmp_path / 'run' / 'model.joblib'} was made with image decoding "
            f"revision 1, this is {DECODING_REVISION}: the images may be embedded a little otherwise than that "
            "run's") in err.splitlines()


def test_assign_refuses_a_model_whose_run_found_no_clusters(capsys, image_folder, tmp_path):
    import joblib

    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    model = joblib.load(tmp_path / "run" / "model.joblib")
    model["stage"].cluster_ids_ = np.array([], dtype=int)  # as an hdbscan run that found only noise
    joblib.dump(model, tmp_path / "run" / "model.joblib")
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "run"),
                          "--out", str(tmp_path / "assigned"))
    assert status == 2 and "its run found no clusters" in err


def test_a_run_that_found_no_clusters_saves_no_model(capsys, tmp_path):
    # It saved one, which assign then refused.
    rng = np.random.default_rng(1)
    plain = [np.tile(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), (32, 32, 1)) for _ in range(6)]
    folder, out = _folder_of(tmp_path / "data", plain), tmp_path / "out"
    _cluster_and_save_model(capsys, folder, out, "--n-clusters", "2")
    status, stdout, err = _run(capsys, "cluster", str(folder), "--clusterer", "hdbscan", "--out", str(out),
                               "--save-model", *TINY_ARGS)
    assert status == 0 and "6 images in 0 clusters, 6 left out as noise" in stdout, err  # as the test needs
    assert err == ("skdeepclust: warning: model.joblib not written, and the earlier run's removed: the run "
                   "found no clusters (every image is noise), so there are none to assign images to; "
                   "--clusterer kmeans with --n-clusters always makes some\n")
    assert not (out / "model.joblib").exists() and (out / "clusters.csv").is_file()


def test_an_image_nearest_a_cluster_left_empty_goes_to_a_cluster_of_the_run():
    from skdeepclust import FeatureClusterer
    from skdeepclust.cli import _confidence

    # Duplicates leave k-means with an empty cluster, whose centre it still predicted with
    # (here moved apart by hand), a cluster that the run's clusters.csv does not have.
    X = np.repeat(np.eye(3, 8, dtype=np.float32), 4, axis=0)
    with pytest.warns(Warning):
        stage = FeatureClusterer(n_clusters=4, random_state=0).fit(X)
    assert stage.cluster_ids_.tolist() == [0, 1, 2]
    stage.clusterer_.cluster_centers_[3] = 2.0 * np.eye(8, dtype=np.float32)[5]
    new = np.eye(8, dtype=np.float32)[5:6] + 0.3 * np.eye(8, dtype=np.float32)[[0]]
    new /= np.linalg.norm(new)
    label = stage.predict(new)
    assert label.tolist() == [stage.labels_[0]]  # the cluster of the rows (1, 0, ...)
    assert _confidence(stage, new, label)[0] == pytest.approx(float(new[0, 0]), abs=1e-6)


def test_assign_finds_the_weights_of_a_project_moved_as_a_whole(capsys, image_folder, tmp_path_factory):
    import shutil

    import timm
    import torch

    project = tmp_path_factory.mktemp("project")  # not inside image_folder
    torch.manual_seed(0)
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), project / "weights.pth")
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out",
                          str(project / "results" / "run"), "--save-model", "--backbone", "test_vit",
                          "--pretrained", str(project / "weights.pth"), "--image-size", "32", "--quiet")
    assert status == 0, err
    moved = project.parent / "moved"
    shutil.move(project, moved)
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(moved / "results" / "run"),
                          "--out", str(moved / "assigned"), "--quiet")
    assert status == 0, err
    with open(moved / "results" / "run" / "clusters.csv") as run, open(moved / "assigned" / "clusters.csv") as new:
        assert [row["cluster"] for row in csv.DictReader(new)] == [row["cluster"] for row in csv.DictReader(run)]
    # A model sent on with its weights beside it; other weights by that name are not taken.
    sent = moved.parent / "sent"
    sent.mkdir()
    shutil.copy(moved / "results" / "run" / "model.joblib", sent)
    torch.manual_seed(1)
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), sent / "weights.pth")
    shutil.rmtree(moved)
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(sent), "--out",
                          str(sent / "assigned"), "--quiet")
    assert status == 2 and "its weights" in err and "are gone" in err
    shutil.move(moved.parent / "sent" / "weights.pth", moved.parent / "other.pth")
    torch.manual_seed(0)
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), sent / "weights.pth")
    status, _, err = _run(capsys, "assign", str(image_folder), "--model", str(sent), "--out",
                          str(sent / "assigned"), "--quiet")
    assert status == 0, err


def test_eval_says_how_noise_was_scored():
    from skdeepclust.cli import _metrics_line

    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    # The noise (6 images, 4 of class 2) is matched to class 2 as a cluster would be.
    labels = np.array([-1, 0, 0, 1, 1, -1, -1, -1, -1, -1])
    assert _metrics_line(y, labels).startswith("accuracy 0.800  NMI ")
    assert _metrics_line(y, labels).endswith(
        "  (the 6 noise images scored as one more cluster; counted as wrong, accuracy 0.400)")
    assert _metrics_line(y, np.full(10, -1)).endswith("counted as wrong, accuracy 0.000)")
    assert _metrics_line(y, y) == "accuracy 1.000  NMI 1.000  ARI 1.000"
    assert "(the noise image scored as one more cluster;" in _metrics_line(y, np.r_[-1, y[1:]])


@pytest.mark.parametrize("command", ["cluster", "assign"])
def test_an_out_that_is_the_folder_of_images_itself_is_refused_in_one_line(capsys, image_folder, tmp_path, command):
    if command == "assign":
        _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    options = ["--n-clusters", "2", *TINY_ARGS] if command == "cluster" else ["--model", str(tmp_path / "run")]
    before = sorted(path.name for path in image_folder.rglob("*"))
    status, _, err = _run(capsys, command, str(image_folder), "--out", str(image_folder), *options)
    assert status == 2
    assert err == (f"skdeepclust: error: --out {image_folder} is the folder of images itself; give another "
                   f"--out (a folder inside it will do, such as {image_folder / 'skdeepclust-out'}, and is not "
                   "clustered)\n")
    assert sorted(path.name for path in image_folder.rglob("*")) == before


def _cluster_links(out):
    """{link path relative to OUT/by-cluster: the real path of its image}."""
    root = out / "by-cluster"
    return {str(path.relative_to(root)): os.path.realpath(path) for path in root.rglob("*") if path.is_symlink()}


def _clusters_table(out):
    with open(out / "clusters.csv", newline="") as handle:
        return [(row["file"], int(row["cluster"])) for row in csv.DictReader(handle)]


def test_folders_hold_a_link_to_each_image_in_the_folder_of_its_cluster(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                               "--folders", *TINY_ARGS)
    assert status == 0, err
    assert f"and {out / 'by-cluster'}" in stdout
    expected = {f"cluster-{cluster}/{os.path.basename(file)}": os.path.realpath(file)
                for file, cluster in _clusters_table(out)}
    assert _cluster_links(out) == expected and len(expected) == 8
    # A rerun with other clusters leaves no link of the earlier ones.
    assert _run(capsys, "cluster", str(image_folder), "--n-clusters", "3", "--out", str(out), "--folders",
                *TINY_ARGS)[0] == 0
    assert _cluster_links(out) == {f"cluster-{cluster}/{os.path.basename(file)}": os.path.realpath(file)
                                   for file, cluster in _clusters_table(out)}
    # A rerun without --folders removes them, as they no longer match clusters.csv.
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 0
    assert (f"skdeepclust: warning: removed {out / 'by-cluster'} of an earlier run: its folders are not the new "
            "clusters (--folders writes them anew)") in err.splitlines()
    assert not (out / "by-cluster").exists()
    assert sorted(path.name for path in image_folder.rglob("*.*") if "out" not in path.parts) == [
        f"{position}.{'png' if position < 4 else 'jpg'}" for position in range(8)]  # images untouched


def test_cluster_folders_number_clashing_names_and_keep_noise_apart(tmp_path):
    from skdeepclust._cluster_folders import write_cluster_folders

    files = [str(tmp_path / folder / "x.png") for folder in "abcd"] + [str(tmp_path / name) for name in (
        "e.png", "X.PNG")]
    labels = np.array([10, 10, -1, 10, 2, 10])
    assert write_cluster_folders(tmp_path / "out", files, labels) == tmp_path / "out" / "by-cluster"
    assert _cluster_links(tmp_path / "out") == {
        "cluster-10/x.png": files[0], "cluster-10/x-2.png": files[1], "noise/x.png": files[2],
        "cluster-10/x-3.png": files[3], "cluster-02/e.png": files[4],
        "cluster-10/X-4.PNG": files[5]}  # one name to a file system that ignores case


def test_folders_sorted_by_hand_are_refused_before_the_embedding(capsys, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--folders", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    kept = out / "by-cluster" / "cluster-0" / "mine.png"
    kept.write_bytes(b"a copy put there by hand")
    counts = _embedded_counts(monkeypatch)
    status, _, err = _run(capsys, *argv)
    assert status == 2 and counts == []
    assert err == (f"skdeepclust: error: --out {out}: {out / 'by-cluster'} holds {kept}, which is not a link "
                   "that a run made (files sorted by hand?); move the folder, or choose another --out\n")
    # Without --folders, the folder is the user's: left as it is, without a word.
    status, _, err = _run(capsys, *argv[:-len(TINY_ARGS) - 1], *TINY_ARGS)
    assert status == 0 and err == ""
    assert kept.read_bytes() == b"a copy put there by hand"


def test_folders_where_links_cannot_be_made_are_refused_before_the_embedding(capsys, image_folder, tmp_path,
                                                                              monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    counts = _embedded_counts(monkeypatch)
    monkeypatch.setattr(os, "symlink", no_links)
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out",
                          str(tmp_path / "out"), "--folders", *TINY_ARGS)
    assert status == 2 and counts == []
    assert err == (f"skdeepclust: error: --out {tmp_path / 'out'}: cannot make links there (Operation not "
                   "permitted); --folders needs a file system that takes symbolic links (on Windows, "
                   "Developer Mode)\n")


def test_assign_writes_folders_of_links_too(capsys, image_folder, tmp_path):
    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    out = tmp_path / "assigned"
    status, stdout, err = _run(capsys, "assign", str(image_folder), "--model", str(tmp_path / "run"),
                               "--out", str(out), "--folders", "--quiet")
    assert status == 0, err
    assert _cluster_links(out) == {f"cluster-{cluster}/{os.path.basename(file)}": os.path.realpath(file)
                                   for file, cluster in _clusters_table(out)}
    assert not (tmp_path / "run" / "by-cluster").exists()


def test_a_saved_model_predicts_in_python_as_the_user_guide_shows(capsys, image_folder, tmp_path):
    import joblib

    from skdeepclust import ImageEmbedder

    _cluster_and_save_model(capsys, image_folder, tmp_path / "run", "--n-clusters", "2")
    model = joblib.load(tmp_path / "run" / "model.joblib")
    embedder = ImageEmbedder(**model["embedder"], random_state=model["random_state"])
    files, clusters = zip(*_clusters_table(tmp_path / "run"))
    np.testing.assert_array_equal(model["stage"].predict(embedder.fit_transform(list(files))), clusters)


def test_a_clusterer_that_would_run_out_of_memory_is_refused_before_the_embedding(capsys, image_folder, tmp_path,
                                                                                 monkeypatch):
    from skdeepclust.clustering import feature_clusterer

    counts = _embedded_counts(monkeypatch)
    monkeypatch.setattr(feature_clusterer, "available_memory", lambda: 448)
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--clusterer", "agglomerative",
                          "--out", str(tmp_path / "out"), *TINY_ARGS)
    assert (status, counts) == (0, [8])  # 8 images need 448 bytes
    monkeypatch.setattr(feature_clusterer, "available_memory", lambda: 447)
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--clusterer", "agglomerative",
                          "--out", str(tmp_path / "out"), *TINY_ARGS)
    assert (status, counts) == (2, [8])
    assert err == ("skdeepclust: error: --clusterer agglomerative on 8 images needs about 0.0 GiB (the distance of "
                   "every pair of images, twice), more than the 0.0 GiB of memory available; use --clusterer "
                   "kmeans, or cluster fewer images\n")


def test_the_embeddings_are_on_disk_before_a_clustering_the_process_may_not_survive(capsys, image_folder, tmp_path,
                                                                                      monkeypatch):
    # The kernel's out-of-memory killer gives no chance to keep them once the clustering has begun.
    import skdeepclust.cli
    from skdeepclust import FeatureClusterer

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]

    fit = FeatureClusterer.fit

    def killed(self, X, *args, **kwargs):
        if X.shape[1] == 16:  # the trial fit on stand-in features, before the embedding
            return fit(self, X, *args, **kwargs)
        np.testing.assert_array_equal(np.load(out / "embeddings.partial.npy"), X)
        raise KeyboardInterrupt  # as the kill, after which nothing more is written

    with monkeypatch.context() as patched:
        patched.setattr(FeatureClusterer, "fit", killed)
        patched.setattr(skdeepclust.cli, "keep_partial_embeddings", lambda *args, **kwargs: None)
        status, _, err = _run(capsys, *argv)
        assert status == 130, err
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [] and "8 embeddings of an earlier run reused" in stdout
    assert not (out / "embeddings.partial.npy").exists() and (out / "embeddings.npy").is_file()


def test_a_disk_that_fills_while_the_embeddings_are_written_leaves_no_rows_cut_short(capsys, image_folder, tmp_path,
                                                                                       monkeypatch):
    # numpy said only "2560000 requested and 2058208 written", and the rows cut short,
    # without their record, were refused by the next run as the user's own array.
    import skdeepclust._run_files

    save = np.save

    def disk_full(path, array):
        if os.path.basename(path) != "embeddings.writing.npy":
            return save(path, array)
        with open(path, "wb") as handle:
            handle.write(b"\x93NUMPY cut short")
        raise OSError("2560000 requested and 2058208 written")

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv, "--n-clusters", "2")[0] == 0
    (image_folder / "dark" / "0.png").unlink()
    with monkeypatch.context() as patched:  # the other rows reused: embeddings.npy is written anew
        patched.setattr(skdeepclust._run_files.np, "save", disk_full)
        status, _, err = _run(capsys, *argv, "--n-clusters", "3")
    assert status == 2
    assert err.splitlines()[-1] == (f"skdeepclust: error: cannot write {out / 'embeddings.npy'} (2560000 requested "
                                    "and 2058208 written; a full disk?); free some space, or choose another --out")
    # The earlier rows stay whole with their record (they were written over in place, and
    # then deleted), and the next run reuses them.
    assert sorted(path.name for path in out.iterdir()) == [
        "clusters.csv", "embeddings.json", "embeddings.npy", "montage.png"]
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv, "--n-clusters", "3")
    assert status == 0, err
    assert counts == [] and "7 embeddings of an earlier run reused" in stdout


def test_the_kept_embeddings_of_other_images_are_removed_with_a_warning_and_assign_leaves_them(
        capsys, image_folder, tmp_path, monkeypatch):
    # A finished run on other images into the same --out removed them without a word,
    # and so did assign, which keeps none.
    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        assert _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
                    "--save-model", *TINY_ARGS)[0] == 130
    other = _folder_of(tmp_path / "other", [np.full((24, 24, 3), value, np.uint8) for value in (0, 90, 180, 255)])
    assert _run(capsys, "cluster", str(other), "--n-clusters", "2", "--out", str(tmp_path / "run"),
                "--save-model", *TINY_ARGS)[0] == 0
    status, _, err = _run(capsys, "assign", str(other), "--model", str(tmp_path / "run"), "--out", str(out),
                          "--quiet")
    assert status == 0 and (out / "embeddings.partial.npy").is_file(), err
    status, _, err = _run(capsys, "cluster", str(other), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 0
    assert err == (f"skdeepclust: warning: removed {out / 'embeddings.partial.npy'}, the embeddings of a run stopped "
                   "early, 8 of them of images this run did not cluster\n")


@pytest.mark.parametrize("second_run_stopped", [False, True])
def test_the_kept_embeddings_of_other_images_are_replaced_with_a_warning(capsys, image_folder, tmp_path, monkeypatch,
                                                                        second_run_stopped):
    # A run with --embeddings keeps its own rows before the clustering (and when it is
    # stopped): they went over those of the other images without a word.
    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        assert _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
                    *TINY_ARGS)[0] == 130
    other = _folder_of(tmp_path / "other", [np.full((24, 24, 3), value, np.uint8) for value in (0, 90, 180, 255)])
    with monkeypatch.context() as patched:
        if second_run_stopped:
            _interrupt_clustering_of_the_images(patched)
        status, _, err = _run(capsys, "cluster", str(other), "--n-clusters", "2", "--out", str(out), "--embeddings",
                              *TINY_ARGS)
    assert status == (130 if second_run_stopped else 0)
    assert err.startswith(f"skdeepclust: warning: replaced {out / 'embeddings.partial.npy'}, the embeddings of a run "
                          "stopped early, 8 of them of images this run did not cluster\n")
    assert err.count("8 of them") == 1


def test_kept_embeddings_of_other_images_that_could_not_be_replaced_are_not_said_to_be(capsys, image_folder,
                                                                                      tmp_path, monkeypatch):
    import errno

    from skdeepclust import _run_files

    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        assert _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
                    *TINY_ARGS)[0] == 130
    other = _folder_of(tmp_path / "other", [np.full((24, 24, 3), value, np.uint8) for value in (0, 90, 180, 255)])
    save = np.save

    def disk_full_for_the_partial(path, array):
        if os.path.basename(path) == "embeddings.partial.writing.npy":
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(path, array)

    monkeypatch.setattr(_run_files.np, "save", disk_full_for_the_partial)
    status, _, err = _run(capsys, "cluster", str(other), "--n-clusters", "2", "--out", str(out), "--embeddings",
                          *TINY_ARGS)
    assert status == 0 and "replaced" not in err
    assert err.splitlines()[-1] == (f"skdeepclust: warning: removed {out / 'embeddings.partial.npy'}, the embeddings "
                                    "of a run stopped early, 8 of them of images this run did not cluster")


def test_embeddings_kept_before_a_clustering_that_fails_are_not_written_twice(capsys, image_folder, tmp_path,
                                                                              monkeypatch):
    # A second copy of what may be gigabytes; where it did not fit, the command said it
    # could not keep the rows it had kept.
    from skdeepclust import _run_files

    out = tmp_path / "out"
    save, writes = np.save, []

    def counted_save(path, array):
        writes.append(os.path.basename(path))
        return save(path, array)

    monkeypatch.setattr(_run_files.np, "save", counted_save)
    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                              "--embeddings", *TINY_ARGS)
    assert status == 130 and writes == ["embeddings.partial.writing.npy"]
    assert "kept the embeddings of all 8 images" in err and "could not" not in err
    status, stdout, _ = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                             "--embeddings", *TINY_ARGS)
    assert status == 0 and "8 embeddings of an earlier run reused" in stdout


def test_kept_embeddings_that_cannot_be_written_again_stay_as_they_were(capsys, image_folder, tmp_path,
                                                                         monkeypatch):
    # They were written over in place: a full disk, then a kill while clustering, left none.
    import skdeepclust._run_files

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
            "--batch-size", "2", *TINY_ARGS]
    with monkeypatch.context() as patched:
        interrupt_embedding_at(patched, 3)
        assert _run(capsys, *argv)[0] == 130  # 4 rows kept
    save = np.save

    def disk_full(path, array):
        if os.path.basename(path) == "embeddings.partial.writing.npy":
            raise OSError(28, "No space left on device")
        return save(path, array)

    with monkeypatch.context() as patched:
        patched.setattr(skdeepclust._run_files.np, "save", disk_full)
        _interrupt_clustering_of_the_images(patched)  # stands for the kill: nothing is kept after it
        patched.setattr(skdeepclust.cli, "keep_partial_embeddings", lambda *args, **kwargs: None)
        status, _, err = _run(capsys, *argv)
    assert status == 130 and "could not keep the embeddings" in err
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [4] and "4 embeddings of an earlier run reused" in stdout


def test_ctrl_c_while_the_record_is_written_keeps_the_embeddings_for_the_next_run(capsys, image_folder, tmp_path,
                                                                                   monkeypatch):
    dump = json.dump

    def interrupted(record, handle, **kwargs):
        if os.path.basename(handle.name) == "embeddings.writing.json":
            raise KeyboardInterrupt
        return dump(record, handle, **kwargs)

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--out", str(out), "--embeddings", "--n-clusters", "2", *TINY_ARGS]
    with monkeypatch.context() as patched:
        patched.setattr(json, "dump", interrupted)
        status, _, err = _run(capsys, *argv)
    assert status == 130
    assert err == (f"skdeepclust: kept the embeddings in {out / 'embeddings.partial.npy'}; a rerun into this --out "
                   "goes on from there\nskdeepclust: interrupted\n")
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [] and "8 embeddings of an earlier run reused" in stdout


def test_embeddings_that_cannot_be_renamed_into_place_leave_the_earlier_ones_usable(capsys, image_folder, tmp_path,
                                                                                      monkeypatch):
    # The earlier record went before the rename: failing (a notebook holding the array
    # open, on Windows), it left the earlier rows without it, which then stopped every
    # run as the user's own array; and a permission error was asked about a full disk.
    import errno

    import skdeepclust._run_files

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    Image.new("RGB", (30, 30), (10, 200, 10)).save(image_folder / "bright" / "new.jpg")
    replace = os.replace

    def held_open(source, target):
        if os.path.basename(target) == "embeddings.npy":
            raise PermissionError(errno.EACCES, "Permission denied")
        return replace(source, target)

    with monkeypatch.context() as patched:
        patched.setattr(skdeepclust._run_files.os, "replace", held_open)
        status, _, err = _run(capsys, *argv)
    assert status == 2
    assert err.splitlines()[-1].endswith("(Permission denied); the embeddings stay in "
                                         f"{out / 'embeddings.partial.npy'}, for the next run; choose another --out")
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [] and "9 embeddings of an earlier run reused" in stdout


def test_while_the_new_record_is_written_the_earlier_embeddings_are_whole(capsys, image_folder, tmp_path,
                                                                          monkeypatch):
    # The record was written in place after the rows were renamed: a kill while it was
    # written (a long one, for a million files) left the rows without it, and every
    # image was embedded again.
    from skdeepclust._run_files import earlier_embeddings

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    settings = json.loads((out / "embeddings.json").read_text())["settings"]
    (image_folder / "dark" / "0.png").unlink()
    dump, whole = json.dump, []

    def as_a_kill_would_find_them(record, handle, **kwargs):
        if os.path.basename(handle.name) == "embeddings.writing.json":
            whole.append(len(earlier_embeddings(out, settings)[0]))
        return dump(record, handle, **kwargs)

    monkeypatch.setattr(json, "dump", as_a_kill_would_find_them)
    assert _run(capsys, *argv)[0] == 0
    assert whole == [8] and sorted(path.name for path in out.iterdir()) == [
        "clusters.csv", "embeddings.json", "embeddings.npy", "montage.png"]


def test_what_a_kill_left_is_removed_and_changed_files_are_not_called_others(capsys, image_folder, tmp_path,
                                                                            monkeypatch):
    # A write cut short by a kill stayed, gigabytes maybe; and after a chmod (which
    # changes a file's ctime) the finished run warned of the very images it clustered.
    from skdeepclust import cli

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    with monkeypatch.context() as patched:  # a long run, stopped; the next is not long
        patched.setattr(cli, "EMBEDDING_SECONDS_WORTH_KEEPING", 0.0)
        _interrupt_clustering_of_the_images(patched)
        assert _run(capsys, *argv)[0] == 130
    (out / "embeddings.partial.writing.npy").write_bytes(b"\x93NUMPY cut short by a kill")
    for image in image_folder.rglob("*.*"):
        os.chmod(image, 0o644)
    status, _, err = _run(capsys, *argv)
    assert status == 0 and err == ""
    assert sorted(path.name for path in out.iterdir()) == ["clusters.csv", "montage.png"]


def test_a_rerun_that_reuses_every_row_in_order_does_not_write_them_again(capsys, image_folder, tmp_path,
                                                                          monkeypatch):
    # Rewriting them took time (gigabytes, for a million images) and, on a full disk, every row.
    import skdeepclust._run_files

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv, "--n-clusters", "2")[0] == 0
    written = {name: os.stat(out / name).st_mtime_ns for name in ("embeddings.npy", "embeddings.json")}
    saves = []
    monkeypatch.setattr(skdeepclust._run_files.np, "save", lambda *args: saves.append(args))
    status, stdout, err = _run(capsys, *argv, "--n-clusters", "3")
    assert status == 0 and "8 embeddings of an earlier run reused" in stdout and "embeddings.npy" in stdout
    assert saves == [] and {name: os.stat(out / name).st_mtime_ns for name in written} == written


def test_a_record_that_cannot_be_written_keeps_the_embeddings_for_the_next_run(capsys, image_folder, tmp_path,
                                                                                 monkeypatch):
    # The rows written before the clustering were renamed to embeddings.npy, then
    # deleted with it when its record could not be written: every image embedded again.
    import errno

    dump = json.dump

    def disk_full(record, handle, **kwargs):
        if os.path.basename(handle.name) == "embeddings.writing.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return dump(record, handle, **kwargs)

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--out", str(out), "--embeddings", "--n-clusters", "2", *TINY_ARGS]
    with monkeypatch.context() as patched:
        patched.setattr(json, "dump", disk_full)
        status, _, err = _run(capsys, *argv)
    assert status == 2
    assert err.splitlines()[-1] == (f"skdeepclust: error: cannot write {out / 'embeddings.npy'} (No space left on "
                                    f"device; a full disk?); the embeddings stay in {out / 'embeddings.partial.npy'}, "
                                    "for the next run; free some space, or choose another --out")
    assert (out / "embeddings.partial.npy").is_file() and not (out / "embeddings.npy").exists()
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert "8 embeddings of an earlier run reused" in stdout
    assert not (out / "embeddings.partial.npy").exists() and (out / "embeddings.npy").is_file()


def test_running_out_of_memory_ends_in_one_line(capsys, image_folder, tmp_path, monkeypatch):
    from skdeepclust import FeatureClusterer

    fit = FeatureClusterer.fit

    def out_of_memory(self, X, *args, **kwargs):
        if X.shape[1] == 16:  # the trial fit on stand-in features, before the embedding
            return fit(self, X, *args, **kwargs)
        raise MemoryError("Unable to allocate 13.4 GiB for an array with shape (1799970000,) and data type float64")

    monkeypatch.setattr(FeatureClusterer, "fit", out_of_memory)
    out = tmp_path / "out"
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                          "--embeddings", *TINY_ARGS)
    assert status == 1
    assert err.splitlines() == [
        f"skdeepclust: kept the embeddings of all 8 images in {out / 'embeddings.partial.npy'}; a rerun into "
        "this --out goes on from there",
        "skdeepclust: error: out of memory (Unable to allocate 13.4 GiB for an array with shape (1799970000,) and "
        "data type float64); a smaller --batch-size lowers what the embedding takes, --clusterer kmeans what the "
        "clustering takes"]


def test_chance_accuracy_is_that_of_random_groups_of_the_same_sizes():
    # The demo said 0.100 for CIFAR-10's ten classes whatever the number of photos; the
    # best matching of groups to classes lifts it for few (1.0 with one photo per class).
    from skdeepclust.cli import _chance_accuracy

    y = np.repeat(np.arange(10), 100)
    assert _chance_accuracy(y[::100], y[::100]) == 1.0
    assert 0.13 < _chance_accuracy(y, y) < 0.16
    assert _chance_accuracy(y, np.zeros_like(y)) == pytest.approx(0.1)  # one group: one class matched


def test_a_cluster_folder_of_links_is_not_clustered_into_the_run_that_replaces_it(capsys, image_folder, tmp_path,
                                                                                  monkeypatch):
    # The rerun removed its own input, and its clusters.csv named links that were gone.
    out = tmp_path / "out"
    assert _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--folders",
                *TINY_ARGS)[0] == 0
    before = _cluster_links(out)
    counts = _embedded_counts(monkeypatch)
    for folders in (["--folders"], []):
        status, _, err = _run(capsys, "cluster", str(out / "by-cluster" / "cluster-0"), "--n-clusters", "2",
                              "--out", str(out), *folders, *TINY_ARGS)
        assert status == 2 and counts == []
        assert err == (f"skdeepclust: error: {out / 'by-cluster' / 'cluster-0'} is in {out / 'by-cluster'}, the "
                       f"links of the run in --out {out}, which this run would replace; give another --out\n")
    assert _cluster_links(out) == before
    # Into another --out, the links lead to the images themselves.
    assert _run(capsys, "cluster", str(out / "by-cluster" / "cluster-0"), "--n-clusters", "1", "--out",
                str(tmp_path / "again"), "--folders", *TINY_ARGS)[0] == 0
    assert set(_cluster_links(tmp_path / "again").values()) == {
        target for link, target in before.items() if link.startswith("cluster-0/")}
    assert all(not os.path.islink(target) for target in _cluster_links(tmp_path / "again").values())


def test_the_links_of_an_earlier_run_without_a_montage_are_not_taken_for_images(capsys, image_folder, tmp_path):
    # The search follows links to files; the run's folder was known by its montage only.
    earlier = image_folder / "results"
    assert _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(earlier), "--folders",
                *TINY_ARGS)[0] == 0
    (earlier / "montage.png").unlink()  # as when there were too many clusters to show
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out",
                               str(tmp_path / "out"), *TINY_ARGS)
    assert status == 0, err
    assert (f"skdeepclust: warning: skipping {earlier}: it holds the output of an earlier skdeepclust run "
            "(clusters.csv, with montage.png or by-cluster/); move your images out of it to cluster them"
            ) in err.splitlines()
    assert stdout.startswith("8 images")


def test_the_embeddings_kept_before_the_clustering_become_embeddings_npy_without_a_second_write(
        capsys, image_folder, tmp_path, monkeypatch):
    # Written twice, they needed twice their space on the disk, and a nearly full one failed every run.
    import skdeepclust._run_files

    saved, save = [], np.save
    monkeypatch.setattr(skdeepclust._run_files.np, "save",
                        lambda path, array: saved.append(os.path.basename(path)) or save(path, array))
    out = tmp_path / "out"
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                          "--embeddings", *TINY_ARGS)
    assert status == 0, err
    assert saved == ["embeddings.partial.writing.npy"]
    assert sorted(path.name for path in out.iterdir()) == ["clusters.csv", "embeddings.json", "embeddings.npy",
                                                           "montage.png"]
    rows = np.load(out / "embeddings.npy")
    assert rows.shape[0] == 8 and json.loads((out / "embeddings.json").read_text())["array"] == [
        os.stat(out / "embeddings.npy").st_size, os.stat(out / "embeddings.npy").st_mtime_ns]


def test_embeddings_kept_before_the_clustering_and_changed_since_are_not_taken_for_this_runs(
        capsys, image_folder, tmp_path, monkeypatch):
    # Another run into the same --out may write them over while this one clusters: its
    # rows were renamed to embeddings.npy under this run's record.
    from skdeepclust import FeatureClusterer

    out, fit = tmp_path / "out", FeatureClusterer.fit

    def while_another_run_writes(self, X, *args, **kwargs):
        if X.shape[1] == 64:  # the images' features, not the trial fit's stand-ins
            np.save(out / "embeddings.partial.npy", np.zeros((9, 64), np.float32))
        return fit(self, X, *args, **kwargs)

    monkeypatch.setattr(FeatureClusterer, "fit", while_another_run_writes)
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                          "--embeddings", *TINY_ARGS)
    assert status == 0, err
    rows = np.load(out / "embeddings.npy")
    assert rows.shape == (8, 64) and np.allclose(np.linalg.norm(rows, axis=1), 1.0)


def test_a_link_that_cannot_be_made_leaves_out_that_image_only(tmp_path, monkeypatch, capsys):
    from skdeepclust import _cluster_folders

    files = [str(tmp_path / name) for name in ("a.png", "b.png", "c.png")]
    symlink = os.symlink

    def name_too_long(target, link):
        if os.path.basename(link) == "b.png":
            raise OSError(36, "File name too long", target, None, link)
        symlink(target, link)

    monkeypatch.setattr(_cluster_folders.os, "symlink", name_too_long)
    root = _cluster_folders.write_cluster_folders(tmp_path / "out", files, np.array([0, 0, 1]))
    assert _cluster_links(tmp_path / "out") == {"cluster-0/a.png": files[0], "cluster-1/c.png": files[2]}
    assert root == tmp_path / "out" / "by-cluster"
    assert capsys.readouterr().err == (f"skdeepclust: warning: {root}: no link made for 1 image(s): "
                                       f"{root / 'cluster-0' / 'b.png'}: File name too long; clusters.csv holds "
                                       "every image's cluster\n")


def test_a_link_to_an_image_found_already_is_clustered_once(capsys, image_folder, tmp_path):
    (image_folder / "favourites").mkdir()
    (image_folder / "favourites" / "best.png").symlink_to(image_folder / "dark" / "0.png")
    status, stdout, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out",
                               str(tmp_path / "out"), *TINY_ARGS)
    assert status == 0
    assert err == (f"skdeepclust: warning: Skipped 1 link(s) to image files found already, so that each image is "
                   f"taken once: '{image_folder / 'favourites' / 'best.png'}'.\n")
    assert stdout.startswith("8 images") and len(_clusters_table(tmp_path / "out")) == 8


@pytest.mark.skipif(os.name == "nt", reason="Windows has no folder locks; runs into one --out are not kept apart")
def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(capsys, image_folder, tmp_path,
                                                                        monkeypatch):
    # The second would reuse or remove the embeddings the first is writing.
    from skdeepclust import cli

    out = tmp_path / "out"
    embed = cli._embed_readable
    refusals = []

    def embed_while_another_run_starts(embedder, files):
        for extra in ([], ["--embeddings", "--folders"]):
            refusals.append(_run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out),
                                 *extra, *TINY_ARGS))
        return embed(embedder, files)

    monkeypatch.setattr(cli, "_embed_readable", embed_while_another_run_starts)
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 0, err
    for second_status, _, second_err in refusals:
        assert second_status == 2
        assert "another skdeepclust run is writing there now" in second_err
    monkeypatch.setattr(cli, "_embed_readable", embed)
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 0, err  # the first run's lock went with it


def test_an_image_rewritten_in_place_with_its_old_mtime_set_back_is_embedded_again(capsys, image_folder, tmp_path,
                                                                                   monkeypatch):
    # The same path, size, mtime and inode: only the ctime tells the new picture from the old.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    image = image_folder / "dark" / "a.bmp"
    Image.new("RGB", (30, 30), (200, 10, 10)).save(image)
    assert _run(capsys, *argv)[0] == 0
    before = os.stat(image)
    import io

    blue = io.BytesIO()
    Image.new("RGB", (30, 30), (10, 10, 200)).save(blue, "BMP")  # a BMP of the same size
    with open(image, "r+b") as handle:  # in place: the same inode
        handle.write(blue.getvalue())
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p or tar set it
    after = os.stat(image)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [1] and "8 embeddings of an earlier run reused" in stdout


def test_kept_embeddings_of_images_of_the_same_names_in_another_folder_are_other_images(capsys, image_folder,
                                                                                        tmp_path_factory,
                                                                                        monkeypatch):
    # Cameras name their photos alike (IMG_0001.JPG): the rows removed are counted by path, not by name.
    import shutil

    out = image_folder / "out"
    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        assert _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
                    *TINY_ARGS)[0] == 130
    copy = tmp_path_factory.mktemp("copy")
    for name in ("dark", "bright"):
        shutil.copytree(image_folder / name, copy / name)
    status, _, err = _run(capsys, "cluster", str(copy), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 0
    assert err == (f"skdeepclust: warning: removed {out / 'embeddings.partial.npy'}, the embeddings of a run stopped "
                   "early, 8 of them of images this run did not cluster\n")


def test_a_record_whose_embeddings_npy_was_removed_is_no_reason_for_a_warning(capsys, image_folder, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    (out / "embeddings.npy").unlink()  # the user's to remove
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0 and err == "" and counts == [8]
    assert np.load(out / "embeddings.npy").shape == (8, 64)


def _rewrite_record(out, change, name="embeddings.json"):
    record = json.loads((out / name).read_text())
    change(record)
    (out / name).write_text(json.dumps(record))


@pytest.mark.parametrize("change, reason", [
    (lambda record: record.update(files=[[stamp[0], stamp[1:]] for stamp in record["files"]]),
     "a file stamp is not a path and numbers"),
    (lambda record: record.update(settings="skdeepclust 0.0"), "its record"),
    (lambda record: record.update(files=8), "its record"),
])
def test_a_record_of_another_form_is_embedded_anew_with_a_warning(capsys, image_folder, tmp_path, monkeypatch,
                                                                  change, reason):
    # As a hand edit or another version may leave it, with the array untouched.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    _rewrite_record(out, change)
    counts = _embedded_counts(monkeypatch)
    status, _, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [8]
    assert err.startswith(f"skdeepclust: warning: cannot reuse {out / 'embeddings.npy'}: ") and reason in err


def test_a_record_without_its_list_of_files_ends_in_the_commands_words(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    _rewrite_record(out, lambda record: record.pop("files"))
    status, _, err = _run(capsys, *argv)  # reused or refused, but no traceback
    assert status in (0, 2)
    assert all(line.startswith("skdeepclust: ") for line in err.splitlines()), err


@pytest.mark.parametrize("array", [np.ones((3, 64), np.float32), np.ones((8, 64)), np.ones(8, np.float32)],
                         ids=["fewer rows", "float64", "one dimension"])
def test_an_array_that_does_not_hold_the_rows_its_record_lists_is_not_reused(capsys, image_folder, tmp_path,
                                                                            monkeypatch, array):
    # The record's stamp of the array edited to match, by hand or by another program.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    np.save(out / "embeddings.npy", array)
    stamp = [os.stat(out / "embeddings.npy").st_size, os.stat(out / "embeddings.npy").st_mtime_ns]
    _rewrite_record(out, lambda record: record.update(array=stamp))
    counts = _embedded_counts(monkeypatch)
    status, _, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [8]
    assert "does not hold the 8 float32 rows that" in err and err.endswith("every image is embedded anew\n")
    assert np.load(out / "embeddings.npy").shape == (8, 64)


def test_other_weights_after_random_ones_do_not_name_the_seed(capsys, image_folder, tmp_path):
    # The seed is recorded for random weights only: it is no other setting of loaded weights.
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "weights.safetensors"
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(weights))
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    status, stdout, err = _run(capsys, *argv[:-len(TINY_ARGS)], *TINY_ARGS[:2], "--pretrained", str(weights),
                               *TINY_ARGS[4:])
    assert status == 0, err
    assert "were not reused, as they were made with another --pretrained" in stdout
    assert "--random-state" not in stdout


def test_a_record_with_a_setting_this_version_does_not_know_says_why_it_was_not_reused(capsys, image_folder,
                                                                                       tmp_path, monkeypatch):
    # Written by a build of the same version with one more setting (as the decoding revision was added).
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    _rewrite_record(out, lambda record: record["settings"].update(colour_space="lab"))
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0 and err == "" and counts == [8]
    assert f"the embeddings of an earlier run in {out} were not reused, as they were made with another " in stdout


def _failing_replace(monkeypatch, name):
    """Make os.replace onto ``name`` in _run_files fail, as a file held open on Windows does."""
    import errno

    import skdeepclust._run_files

    replace = os.replace

    def held_open(source, target):
        if os.path.basename(target) == name:
            raise PermissionError(errno.EACCES, "Permission denied")
        return replace(source, target)

    monkeypatch.setattr(skdeepclust._run_files.os, "replace", held_open)


def _whole_pairs(out):
    """Whether each array of embeddings in ``out`` lies beside the record that lists it, and nothing is left
    half-written."""
    for array, record in (("embeddings.npy", "embeddings.json"), ("embeddings.partial.npy",
                                                                 "embeddings.partial.json")):
        if (out / array).exists():
            status = os.stat(out / array)
            if json.loads((out / record).read_text())["array"] != [status.st_size, status.st_mtime_ns]:
                return False
    return not any(".writing." in path.name for path in out.iterdir())


def test_earlier_embeddings_stay_with_their_record_when_the_new_ones_cannot_be_renamed(capsys, image_folder,
                                                                                      tmp_path, monkeypatch):
    # All rows reused in another order: written anew, with no partial copy to fall back on.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv, "--n-clusters", "2")[0] == 0
    (image_folder / "dark" / "0.png").unlink()
    with monkeypatch.context() as patched:
        _failing_replace(patched, "embeddings.npy")
        status, _, err = _run(capsys, *argv, "--n-clusters", "3")
    assert status == 2 and err.splitlines()[-1].endswith("(Permission denied); choose another --out")
    assert _whole_pairs(out) and len(json.loads((out / "embeddings.json").read_text())["files"]) == 8
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv, "--n-clusters", "3")
    assert status == 0 and err == "" and counts == []
    assert "7 embeddings of an earlier run reused" in stdout


@pytest.mark.parametrize("kept_before_the_clustering", [True, False])
def test_embeddings_whose_record_cannot_be_renamed_leave_no_array_beside_another_record(
        capsys, image_folder, tmp_path, monkeypatch, kept_before_the_clustering):
    # The rows kept before the clustering go back to embeddings.partial.npy beside their record;
    # rows written anew go, rather than stay beside the earlier record that does not list them.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--out", str(out), "--embeddings", *TINY_ARGS]
    if not kept_before_the_clustering:  # all rows reused in another order: no partial copy is written
        assert _run(capsys, *argv, "--n-clusters", "2")[0] == 0
        (image_folder / "dark" / "0.png").unlink()
    with monkeypatch.context() as patched:
        _failing_replace(patched, "embeddings.json")
        status, _, err = _run(capsys, *argv, "--n-clusters", "3")
    assert status == 2 and "(Permission denied" in err and err.splitlines()[-1].endswith("choose another --out")
    assert _whole_pairs(out)
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv, "--n-clusters", "3")
    assert status == 0 and err == ""
    if kept_before_the_clustering:
        assert counts == [] and "8 embeddings of an earlier run reused" in stdout
    else:
        assert counts == [7]


def test_an_edited_array_is_written_anew_when_no_copy_could_be_kept_before_the_clustering(capsys, image_folder,
                                                                                          tmp_path, monkeypatch):
    # Its record still lists the files in order: only the array's stamp says its rows are not the new ones.
    import errno

    import skdeepclust._run_files

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    np.save(out / "embeddings.npy", 10 * np.load(out / "embeddings.npy"))
    save = np.save

    def disk_full(path, array):
        if os.path.basename(path) == "embeddings.partial.writing.npy":
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(path, array)

    monkeypatch.setattr(skdeepclust._run_files.np, "save", disk_full)
    status, _, err = _run(capsys, *argv)
    assert status == 0 and "could not keep the embeddings" in err
    np.testing.assert_allclose(np.linalg.norm(np.load(out / "embeddings.npy"), axis=1), 1.0, atol=1e-5)


def test_what_a_kill_left_of_embeddings_npy_is_removed_too(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    (out / "embeddings.writing.npy").write_bytes(b"\x93NUMPY cut short by a kill")
    (out / "embeddings.writing.json").write_text('{"settings": {}, "fi')
    status, _, err = _run(capsys, *argv)
    assert status == 0 and err == ""
    assert sorted(path.name for path in out.iterdir()) == [
        "clusters.csv", "embeddings.json", "embeddings.npy", "montage.png"]


def test_a_users_own_partial_array_and_json_beside_a_run_are_not_removed(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    mine = np.arange(10.0)
    np.save(out / "embeddings.partial.npy", mine)
    (out / "embeddings.partial.json").write_text('{"my": "notes"}')  # not a record of a run
    assert _run(capsys, *argv)[0] in (0, 2)  # taken as the user's, or refused
    np.testing.assert_array_equal(np.load(out / "embeddings.partial.npy"), mine)
    assert (out / "embeddings.partial.json").read_text() == '{"my": "notes"}'


def test_kept_embeddings_with_a_spoilt_record_are_removed_by_a_finished_run(capsys, image_folder, tmp_path,
                                                                           monkeypatch):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        assert _run(capsys, *argv, "--embeddings")[0] == 130
    _rewrite_record(out, lambda record: record.update(files=list(range(8))), "embeddings.partial.json")
    status, _, err = _run(capsys, *argv)
    assert status == 0 and "cannot reuse" in err
    assert sorted(path.name for path in out.iterdir()) == ["clusters.csv", "montage.png"]


def test_a_users_own_embeddings_and_json_beside_a_run_are_not_removed_by_a_rerun(capsys, image_folder, tmp_path):
    # Only a record of a run says the array beside it is the run's, to be removed as stale.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    mine = np.arange(10.0)
    np.save(out / "embeddings.npy", mine)
    (out / "embeddings.json").write_text('{"model": "my own"}')
    status, _, err = _run(capsys, *argv)
    assert status == 0 and err == ""
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), mine)
    assert (out / "embeddings.json").read_text() == '{"model": "my own"}'


def test_embeddings_with_a_record_beside_no_run_are_left_alone_by_a_run_without_embeddings(capsys, image_folder,
                                                                                            tmp_path,
                                                                                            tmp_path_factory):
    # Copied in from another run's folder, say: beside no clusters.csv of ours, files are the user's.
    import shutil

    out, elsewhere = tmp_path / "out", tmp_path_factory.mktemp("elsewhere")
    argv = ["cluster", str(image_folder), "--n-clusters", "2", *TINY_ARGS]
    assert _run(capsys, *argv, "--out", str(elsewhere), "--embeddings")[0] == 0
    out.mkdir()
    for name in ("embeddings.npy", "embeddings.json"):
        shutil.copy2(elsewhere / name, out / name)
    status, _, err = _run(capsys, *argv, "--out", str(out))
    assert status == 0 and err == ""
    assert sorted(path.name for path in out.iterdir()) == [
        "clusters.csv", "embeddings.json", "embeddings.npy", "montage.png"]


def test_a_users_own_by_cluster_folder_of_links_beside_no_run_is_left_alone(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    (out / "by-cluster" / "favourites").mkdir(parents=True)
    (out / "by-cluster" / "favourites" / "best.png").symlink_to(image_folder / "dark" / "0.png")
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 0 and err == ""
    assert (out / "by-cluster" / "favourites" / "best.png").is_symlink()


def test_a_quick_run_that_goes_on_from_kept_embeddings_keeps_them_again_when_stopped(capsys, image_folder, tmp_path,
                                                                                    monkeypatch):
    # The run that kept them was long; this one is quick, but what it reused took as long to make.
    from skdeepclust import cli

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--batch-size", "2", *TINY_ARGS]
    with monkeypatch.context() as patched:
        patched.setattr(cli, "EMBEDDING_SECONDS_WORTH_KEEPING", 0.0)
        interrupt_embedding_at(patched, 3)
        assert _run(capsys, *argv)[0] == 130  # 4 of the 8 kept
    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        status, _, err = _run(capsys, *argv)
    assert status == 130
    assert err.startswith(f"skdeepclust: kept the embeddings of all 8 images in {out / 'embeddings.partial.npy'}")
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0 and err == "" and counts == []
    assert "8 embeddings of an earlier run reused" in stdout


def test_a_quick_run_without_embeddings_stopped_while_clustering_writes_nothing(capsys, image_folder, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "out"
    _interrupt_clustering_of_the_images(monkeypatch)
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS)
    assert status == 130 and err == "skdeepclust: interrupted\n"
    assert not out.exists()  # made by this run, and left empty


def test_ctrl_c_while_embedding_new_files_keeps_each_reused_and_new_row_with_its_file(capsys, image_folder,
                                                                                       tmp_path, monkeypatch):
    # The rows kept are the reused ones and then the new: their files must be listed in that order too.
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings",
            "--batch-size", "1", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    Image.new("RGB", (30, 30), (10, 200, 10)).save(image_folder / "bright" / "0new.jpg")  # before the others
    Image.new("RGB", (30, 30), (200, 10, 200)).save(image_folder / "dark" / "new.png")
    with monkeypatch.context() as patched:
        interrupt_embedding_at(patched, 2)
        status, _, err = _run(capsys, *argv)
    assert status == 130 and "kept the embeddings of 9 of the 10 images" in err
    (out / "embeddings.npy").unlink()  # only the kept rows are left to reuse
    (out / "embeddings.json").unlink()
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0, err
    assert counts == [1] and "9 embeddings of an earlier run reused" in stdout
    fresh = tmp_path / "fresh"
    assert _run(capsys, *argv[:5], str(fresh), *argv[6:])[0] == 0
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), np.load(fresh / "embeddings.npy"), atol=1e-5)


def test_an_unreadable_file_before_the_others_shifts_no_kept_row_onto_another_file(capsys, image_folder, tmp_path,
                                                                                  monkeypatch):
    # Stopped after the embedding: the kept rows are those of the readable files, by their positions.
    (image_folder / "bright" / "0broken.jpg").write_bytes(b"not a jpeg")  # the first file
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    with monkeypatch.context() as patched:
        _interrupt_clustering_of_the_images(patched)
        status, _, err = _run(capsys, *argv)
    assert status == 130 and "kept the embeddings of 8 of the 9 images" in err
    counts = _embedded_counts(monkeypatch)
    status, stdout, err = _run(capsys, *argv)
    assert status == 0 and "0broken.jpg" in err
    assert counts == [1] and "8 embeddings of an earlier run reused" in stdout
    fresh = tmp_path / "fresh"
    assert _run(capsys, *argv[:5], str(fresh), *argv[6:])[0] == 0
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), np.load(fresh / "embeddings.npy"), atol=1e-5)


def test_a_by_cluster_that_is_a_link_to_a_users_folder_is_refused_before_the_embedding(capsys, image_folder,
                                                                                         tmp_path, monkeypatch):
    mine = tmp_path / "sorted by hand"
    mine.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "by-cluster").symlink_to(mine)
    counts = _embedded_counts(monkeypatch)
    status, _, err = _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--folders",
                          *TINY_ARGS)
    assert status == 2 and counts == []
    assert err == (f"skdeepclust: error: --out {out}: {out / 'by-cluster'} is not a folder of links that a run "
                   "made; move it, or choose another --out\n")
    assert list(mine.iterdir()) == []


def test_the_links_of_a_run_on_links_lead_to_the_images_themselves(capsys, image_folder, tmp_path):
    # Links to the earlier run's links would go dead once that run's by-cluster is replaced.
    out, again = tmp_path / "out", tmp_path / "again"
    assert _run(capsys, "cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--folders",
                *TINY_ARGS)[0] == 0
    assert _run(capsys, "cluster", str(out / "by-cluster" / "cluster-0"), "--n-clusters", "1", "--out", str(again),
                "--folders", *TINY_ARGS)[0] == 0
    links = [path for path in (again / "by-cluster").rglob("*") if path.is_symlink()]
    images = Path(os.path.realpath(image_folder))
    assert links and all(Path(os.readlink(link)).parent.parent == images for link in links)
    assert sorted(path.name for path in again.iterdir()) == ["by-cluster", "clusters.csv", "montage.png"]


def test_a_by_cluster_that_is_a_link_beside_a_run_is_not_emptied(capsys, image_folder, tmp_path):
    out, mine = tmp_path / "out", tmp_path / "my links"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    mine.mkdir()
    (mine / "best.png").symlink_to(image_folder / "dark" / "0.png")
    (out / "by-cluster").symlink_to(mine)
    assert _run(capsys, *argv)[0] == 0
    assert (mine / "best.png").is_symlink() and (out / "by-cluster").is_symlink()


def test_a_link_to_a_folder_in_an_earlier_runs_by_cluster_does_not_stop_the_new_one(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--folders", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    (out / "by-cluster" / "cluster-0" / "dark").symlink_to(image_folder / "dark")
    status, _, err = _run(capsys, *argv)
    assert status == 0 and err == ""
    assert _cluster_links(out) == {f"cluster-{cluster}/{os.path.basename(file)}": os.path.realpath(file)
                                   for file, cluster in _clusters_table(out)}
    assert (image_folder / "dark" / "0.png").is_file()


def test_cluster_folders_that_cannot_be_made_are_a_warning(tmp_path, capsys):
    from skdeepclust._cluster_folders import write_cluster_folders

    (tmp_path / "file").write_bytes(b"not a folder")
    assert write_cluster_folders(tmp_path / "file", [str(tmp_path / "a.png")], np.array([0])) is None
    err = capsys.readouterr().err
    assert err.startswith(f"skdeepclust: warning: {tmp_path / 'file' / 'by-cluster'} not written: ")
    assert err.endswith("; clusters.csv holds every image's cluster\n")


def test_a_record_that_is_not_an_object_ends_in_the_commands_words(capsys, image_folder, tmp_path, monkeypatch):
    # No copy kept before the clustering: the record is read again before embeddings.npy is written.
    import errno

    import skdeepclust._run_files

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--embeddings", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    (out / "embeddings.json").write_text("[]")
    save = np.save

    def disk_full(path, array):
        if os.path.basename(path) == "embeddings.partial.writing.npy":
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(path, array)

    monkeypatch.setattr(skdeepclust._run_files.np, "save", disk_full)
    status, _, err = _run(capsys, *argv)  # written anew or refused, but no traceback
    assert status in (0, 2)
    assert all(line.startswith("skdeepclust: ") for line in err.splitlines()), err


def test_a_folder_in_by_cluster_that_cannot_be_listed_is_refused_before_the_embedding(capsys, image_folder, tmp_path,
                                                                                      monkeypatch):
    # What it holds may be the user's; os.walk passes over it but for its onerror (a chmod that root ignores).
    from skdeepclust import _cluster_folders

    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), "--folders", *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    private = out / "by-cluster" / "private"
    walk = os.walk

    def private_unlisted(top, *args, **kwargs):
        if Path(top) == out / "by-cluster" and kwargs.get("onerror"):
            kwargs["onerror"](PermissionError(13, "Permission denied", str(private)))
        return walk(top, *args, **kwargs)

    monkeypatch.setattr(_cluster_folders.os, "walk", private_unlisted)
    counts = _embedded_counts(monkeypatch)
    status, _, err = _run(capsys, *argv)
    assert status == 2 and counts == []
    assert err == (f"skdeepclust: error: --out {out}: {out / 'by-cluster'} holds {private}, which is not a link that "
                   "a run made (files sorted by hand?); move the folder, or choose another --out\n")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork, and no folder locks, on Windows")
def test_the_lock_on_out_goes_with_the_run_and_not_with_the_processes_it_forked(tmp_path):
    # DataLoader workers are forked: a lock they shared (flock) refused the rerun after
    # a kill until they noticed and exited.
    import signal
    import subprocess
    import sys

    from skdeepclust._run_files import LOCK_FILE, OutputFolderInUse, only_run_writing_into

    run = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time
from skdeepclust._run_files import only_run_writing_into
with only_run_writing_into({str(tmp_path)!r}):
    worker = os.fork()
    if worker == 0:
        time.sleep(60)
        os._exit(0)
    print(worker, flush=True)
    sys.stdin.readline()
    os._exit(0)  # as a kill would end it, without a word
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    worker = int(run.stdout.readline())
    try:
        with pytest.raises(OutputFolderInUse, match="another skdeepclust run is writing there now"):
            with only_run_writing_into(tmp_path):
                pass
        run.stdin.close()  # the worker holds stdout open: communicate() would wait for it
        run.wait(timeout=60)
        assert (tmp_path / LOCK_FILE).exists()  # left by the kill, and not held
        with only_run_writing_into(tmp_path):
            pass
        assert not (tmp_path / LOCK_FILE).exists()
    finally:
        os.kill(worker, signal.SIGKILL)
        run.kill()


def test_a_model_half_written_by_a_killed_run_is_removed_by_the_next(capsys, image_folder, tmp_path):
    out = tmp_path / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    (out / "model.writing.joblib").write_bytes(b"half a model")  # as a kill during joblib.dump leaves it
    assert _run(capsys, *argv)[0] == 0
    assert sorted(path.name for path in out.iterdir()) == ["clusters.csv", "montage.png"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no folder locks on Windows")
def test_a_file_system_without_locks_gets_no_lock_file_left_in_out(capsys, image_folder, tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    out = tmp_path / "new" / "out"
    argv = ["cluster", str(image_folder), "--n-clusters", "2", "--out", str(out), *TINY_ARGS]
    assert _run(capsys, *argv)[0] == 0
    assert sorted(path.name for path in out.iterdir()) == ["clusters.csv", "montage.png"]
    status, _, _ = _run(capsys, *argv[:-len(TINY_ARGS)], "--out", str(tmp_path / "other" / "out"), "--backbone",
                        "no_such_model", "--pretrained", "none", "--quiet")
    assert status == 2 and not (tmp_path / "other").exists()  # the folders it made go again
