import numpy as np
import pytest

from skdeepclust.embedding import images as images_module
from skdeepclust.visualization import cluster_montage


def _colour_images():
    """Image i is filled with the value 10 * i, so a thumbnail tells which image it shows."""
    return np.stack([np.full((20, 30, 3), 10 * i, np.uint8) for i in range(12)])


def test_one_row_per_cluster_including_noise():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1, -1, 1])
    montage = cluster_montage(_colour_images(), labels, n_per_cluster=3, thumbnail_size=16)
    assert montage.size == (110 + 3 * 20, 4 + 4 * 20)


def test_width_fits_the_longest_row_not_n_per_cluster():
    montage = cluster_montage(_colour_images(), np.arange(12) % 4, n_per_cluster=1000, thumbnail_size=16)
    assert montage.size == (110 + 3 * 20, 4 + 4 * 20)


def test_long_string_labels_widen_the_label_column_instead_of_running_under_the_thumbnails():
    from PIL import Image, ImageDraw, ImageFont

    name = "n02085620-Chihuahua-and-its-friends"
    labels = np.array([name] * 6 + ["cat"] * 6)
    montage = np.asarray(cluster_montage(_colour_images(), labels, n_per_cluster=3, thumbnail_size=16))
    alone = Image.new("RGB", (1000, 30), (255, 255, 255))  # the caption drawn where nothing covers it
    ImageDraw.Draw(alone).text((4, 2), f"cluster {name}", fill=(0, 0, 0), font=ImageFont.load_default())
    text_end = np.flatnonzero((np.asarray(alone)[:, :, 0] < 200).any(axis=0)).max()
    first_tile = montage.shape[1] - 3 * 20
    assert text_end > 110
    assert text_end < first_tile - 4  # the whole name shows, clear of the first thumbnail
    assert montage[4 + 20 + 8, first_tile + 8, 0] in 10 * np.arange(6)  # row 2 (sorted): a Chihuahua


def test_captions_count_one_image_as_one(monkeypatch):
    from PIL import ImageDraw

    drawn, draw_text = [], ImageDraw.ImageDraw.text

    def recording(self, xy, text, *args, **kwargs):
        drawn.append(text)
        return draw_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", recording)
    cluster_montage(_colour_images()[:3], np.array([0, 1, 1]), thumbnail_size=16)
    assert "1 image" in drawn and "2 images" in drawn and "1 images" not in drawn


def test_scores_pick_the_most_confident_members():
    labels = np.zeros(12, dtype=int)
    scores = np.arange(12) / 12.0  # the last images are the most confident
    montage = np.asarray(cluster_montage(_colour_images(), labels, n_per_cluster=2, thumbnail_size=16, scores=scores))
    first_tile = montage[4 + 8, 110 + 8]  # centre of the first thumbnail
    assert first_tile[0] == 110  # image 11, filled with 110


def test_tensor_images_of_any_dtype_make_the_same_montage():
    import torch

    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1, 1])
    expected = np.asarray(cluster_montage(_colour_images(), labels, thumbnail_size=16))
    pixels = torch.from_numpy(_colour_images())
    for X in (pixels.permute(0, 3, 1, 2), pixels.to(torch.bfloat16) / 255):
        np.testing.assert_array_equal(np.asarray(cluster_montage(X, labels, thumbnail_size=16)), expected)


def test_only_shown_images_are_decoded(tmp_path, monkeypatch):
    from PIL import Image

    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (8, 8), (i, i, i)).save(paths[-1])
    decoded = []
    real_decode = images_module.decode_file
    monkeypatch.setattr(images_module, "decode_file", lambda p, *rest: decoded.append(p) or real_decode(p, *rest))
    cluster_montage(paths, [0, 0, 0, 1, 1, 1], n_per_cluster=1, thumbnail_size=8, scores=[1, 0, 0, 1, 0, 0])
    assert sorted(decoded) == [paths[0], paths[3]]


def test_large_photos_are_decoded_a_few_at_a_time_at_a_reduced_scale(tmp_path):
    # All shown images were decoded whole, 256 at a time, before any became a thumbnail:
    # 24 photos of 4000 x 3000 took 1.6 GB for a montage of 526 x 160 pixels.
    from conftest import peak_numpy_bytes
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = [str(tmp_path / f"{i}.jpg") for i in range(24)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(path)
    one_photo = 600 * 800 * 3
    peak, montage = peak_numpy_bytes(cluster_montage, paths, np.arange(24) % 3, thumbnail_size=48)
    assert montage.size == (526, 160)
    assert peak < 2 * one_photo


def test_numpy_integer_sizes_do_not_wrap():
    # np.uint8(48) wrapped in the size arithmetic, and PIL raised "images do not match".
    montage = cluster_montage(_colour_images(), np.zeros(12), thumbnail_size=np.uint8(48))
    assert montage.size == cluster_montage(_colour_images(), np.zeros(12)).size


def test_a_montage_larger_than_pil_opens_is_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import Image

    decoded = []
    monkeypatch.setattr(images_module, "decode_file", lambda *args: decoded.append(args))
    paths = [str(tmp_path / f"{i}.png") for i in range(12)]
    for path in paths:
        Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(ValueError, match=r"would be \d+ x \d+ pixels, more than PIL opens .* lower thumbnail_size"):
        cluster_montage(paths, np.arange(12) % 3, thumbnail_size=4800)
    assert decoded == []


@pytest.mark.parametrize(
    "labels, kwargs, match",
    [
        (np.r_[np.nan, np.zeros(11)], {}, "labels contains NaN, infinity, None or NA; leave those images out"),
        (np.array([0] * 6 + ["b"] * 6, dtype=object), {}, "labels mixes values of types that do not sort"),
        (np.ma.masked_array(np.zeros(12), mask=np.r_[True, np.zeros(11, bool)]), {},
         r"labels is a masked array with 1 masked values"),
        ([0, 1], {}, "12 images but 2 labels"),
        ([], {}, "non-empty"),
        (np.zeros(12), {"scores": [1.0]}, "scores has shape"),
        (np.zeros(12), {"n_per_cluster": 0}, "n_per_cluster"),
        (np.zeros(12), {"n_per_cluster": 2.5}, "n_per_cluster must be an integer"),
        (np.zeros(12), {"thumbnail_size": 48.0}, "thumbnail_size must be an integer"),
        (np.zeros(12), {"random_state": -1}, r"random_state must be None, an int in \[0, 2\*\*32 - 1\]"),
        (np.zeros(12), {"scores": ["a"] * 12}, "scores must be numbers, one per image"),
    ],
)
def test_bad_arguments(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cluster_montage(_colour_images(), labels, **kwargs)


def test_each_montage_row_shows_the_members_of_its_cluster():
    # Each image is one grey level, so a thumbnail's pixels name the image it shows.

    images = np.stack([np.full((20, 30, 3), 10 * i, np.uint8) for i in range(12)])  # image i is 10 * i
    labels = np.repeat([0, 1, 2], 4)
    for scores in (None, np.linspace(0, 1, 12)):
        montage = np.asarray(cluster_montage(images, labels, n_per_cluster=4, thumbnail_size=16, scores=scores))
        for row, cluster in enumerate([0, 1, 2]):
            shown = {int(montage[4 + row * 20 + 8, 110 + column * 20 + 8, 0]) // 10 for column in range(4)}
            assert shown == set(np.flatnonzero(labels == cluster).tolist())
