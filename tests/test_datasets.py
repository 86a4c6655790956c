import numpy as np
import pytest
from PIL import Image

from skdeepclust.datasets import extract_image_archive, load_image_folder


def test_class_folders_give_labels(image_folder):
    data = load_image_folder(image_folder)
    assert data.target_names == ["bright", "dark"]
    assert len(data.filenames) == 8
    np.testing.assert_array_equal(np.bincount(data.target), [4, 4])
    files, target = load_image_folder(image_folder, return_X_y=True)
    assert files == data.filenames and np.array_equal(target, data.target)


def test_nested_folders_keep_the_top_level_class(tmp_path):
    for name in ["cat/indoor/1.png", "cat/outdoor/2.png", "dog/3.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    assert load_image_folder(tmp_path).target.tolist() == [0, 0, 1]


def test_images_at_the_root_mean_no_labels(image_folder):
    Image.new("RGB", (4, 4)).save(image_folder / "loose.png")
    data = load_image_folder(image_folder)
    assert data.target is None and len(data.filenames) == 9


def test_max_per_class_is_seeded(image_folder):
    first = load_image_folder(image_folder, max_per_class=2, random_state=0)
    again = load_image_folder(image_folder, max_per_class=2, random_state=0)
    assert first.filenames == again.filenames
    np.testing.assert_array_equal(np.bincount(first.target), [2, 2])
    with pytest.raises(ValueError, match="max_per_class"):
        load_image_folder(image_folder, max_per_class=0)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="No image files"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archive_is_extracted_once(image_folder, tmp_path_factory, kind):
    import shutil

    archive_base = tmp_path_factory.mktemp("archives") / "pictures"
    archive = shutil.make_archive(str(archive_base), "gztar" if kind == "tar.gz" else "zip", image_folder)
    cache = tmp_path_factory.mktemp("cache")
    folder = extract_image_archive(archive, cache)
    assert folder == cache / "pictures"
    assert len(load_image_folder(folder).filenames) == 8
    (folder / "dark").rename(folder / "moved")  # a second call must not unpack again
    assert extract_image_archive(archive, cache) == folder
    assert not (folder / "dark").exists()


def test_archive_errors(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        extract_image_archive(tmp_path / "none.tar.gz")
    other = tmp_path / "data.rar"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .tar"):
        extract_image_archive(other)
