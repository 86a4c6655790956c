import os
import shutil

import pytest
from PIL import Image

from skdeepclust.embedding.image_files import find_image_files, readable_image_extensions
from skdeepclust.embedding.images import as_images


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No image files"):
        as_images(str(tmp_path))


def test_links_to_one_folder_keep_the_first_by_name(tmp_path):
    real = tmp_path / "photos" / "cats"
    real.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(real / "1.png")
    root = tmp_path / "root"
    root.mkdir()
    for name in ("kitties", "cats", "felines"):
        (root / name).symlink_to(real, target_is_directory=True)
    with pytest.warns(UserWarning, match=r"^Skipped 2 link\(s\) to folders found already, so that each image is "
                                         r"taken once, under its folder's own path or the shallowest link to it: "
                                         r"'.*/felines', '.*/kitties'\.$"):
        assert find_image_files(root) == [str(root / "cats" / "1.png")]


def test_a_link_to_a_folder_of_the_tree_leaves_its_images_under_that_folder(tmp_path):
    # photos/cat/frogs -> ../frog sorts first: the frogs were found as photos/cat/frogs/*,
    # photos/frog/ skipped without a word, and load_image_folder gave them the class cat.
    for name in ("cat/1.png", "frog/2.png", "frog/deeper/3.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "cat" / "frogs").symlink_to(tmp_path / "frog", target_is_directory=True)
    (tmp_path / "cat" / "deep-frogs").symlink_to(tmp_path / "frog" / "deeper", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"Skipped 2 link\(s\) to folders found already, .*: "
                                         r"'.*cat/deep-frogs', '.*cat/frogs'\.$"):
        found = find_image_files(tmp_path)
    assert found == [str(tmp_path / name) for name in ("cat/1.png", "frog/2.png", "frog/deeper/3.png")]
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (4, 4)).save(elsewhere / "4.png")
    (tmp_path / "cat" / "more").symlink_to(elsewhere, target_is_directory=True)  # outside: followed
    with pytest.warns(UserWarning, match="Skipped 2 link"):
        assert str(tmp_path / "cat" / "more" / "4.png") in find_image_files(tmp_path)


def test_of_links_to_one_folder_the_shallowest_is_walked(tmp_path):
    # A class folder that is itself a link, subset/frog -> store/frog, lost its images
    # to subset/cat/frogs -> store/frog, walked first by name (review).
    store, subset = tmp_path / "store", tmp_path / "subset"
    for name in ("frog/2.png", "frog/3.png"):
        (store / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(store / name)
    (subset / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(subset / "cat" / "1.png")
    (subset / "frog").symlink_to(store / "frog", target_is_directory=True)
    (subset / "cat" / "frogs").symlink_to(store / "frog", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"Skipped 1 link\(s\) to folders found already, .*: '.*cat/frogs'\.$"):
        assert find_image_files(subset) == [str(subset / name) for name in ("cat/1.png", "frog/2.png", "frog/3.png")]
    # The shallowest path, not the first link: animals/frog, through a link to the
    # whole store, came before the link frog, as deep as animals (second review).
    (subset / "cat" / "frogs").unlink()
    (subset / "animals").symlink_to(store, target_is_directory=True)
    with pytest.warns(UserWarning, match=r"Skipped 1 link\(s\) to folders found already, .*: '.*animals/frog'\.$"):
        assert find_image_files(subset) == [str(subset / name) for name in ("cat/1.png", "frog/2.png", "frog/3.png")]


def test_folders_that_cannot_be_listed_and_links_to_nothing_are_named(tmp_path, monkeypatch):
    for folder in ("open", "locked"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "1.png")
    (tmp_path / "open" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    scandir = os.scandir

    def refusing(path):  # as for a folder without read permission, which root could still read
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.warns(UserWarning) as record:
        assert find_image_files(tmp_path) == [str(tmp_path / "open" / "1.png")]
    assert [str(warning.message) for warning in record] == [
        f"Skipped 1 folder(s) that could not be listed (Permission denied): "
        f"{str(tmp_path / 'locked')!r}. Make them readable to include their images.",
        "Skipped 1 image name(s) that lead to no file that can be read (a link to a missing file "
        f"or to itself, or a file without permission): {str(tmp_path / 'open' / 'gone.jpg')!r}.",
    ]
    assert record[0].filename == __file__


def test_files_in_a_folder_that_cannot_be_entered_are_named_not_found(tmp_path, monkeypatch):
    for folder in ("open", "sealed"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "1.png")
    access = os.access

    def refusing(path, mode, **kwargs):  # as for a folder of mode r--, which root could still enter
        return os.path.basename(os.fspath(path)) != "sealed" and access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", refusing)
    with pytest.warns(UserWarning, match=r"Skipped 1 image name\(s\) that lead to no file that can be read.*sealed"):
        assert find_image_files(tmp_path) == [str(tmp_path / "open" / "1.png")]


def test_every_jpeg_extension_and_other_formats_pillow_reads_are_found(tmp_path):
    # .mpo (3D and burst cameras), .apng, .pbm, .pnm and .jp2 were left out without a word.
    formats = {"a.jfif": "JPEG", "b.jpe": "JPEG", "c.tga": "TGA", "d.JPG": "JPEG", "e.mpo": "MPO",
               "f.apng": "PNG", "g.pbm": "PPM", "h.pnm": "PPM", "i.jp2": "JPEG2000"}
    for name, image_format in formats.items():
        Image.new("1" if name.endswith("pbm") else "RGB", (4, 4)).save(tmp_path / name, format=image_format)
    found = [path.rsplit("/", 1)[-1] for path in find_image_files(tmp_path)]
    assert found == list(formats)
    assert next(as_images([str(tmp_path / name) for name in found]).batches(9)).shape == (9, 3, 4, 4)


def test_photo_files_pillow_cannot_read_here_are_named_in_a_warning(tmp_path):
    if ".heic" in readable_image_extensions():
        pytest.skip("a HEIF opener is registered with Pillow here")
    Image.new("RGB", (4, 4)).save(tmp_path / "kept.png")
    (tmp_path / "phone").mkdir()
    for name in ["IMG_0001.HEIC", "IMG_0002.heic", "raw.cr2", "notes.txt"]:
        (tmp_path / "phone" / name).write_bytes(b"not decoded here")
    with pytest.warns(UserWarning, match=r"Skipped 3 photo file\(s\) in formats Pillow cannot read here "
                                         r"\(.cr2: 1, .heic: 2\).*IMG_0001.HEIC.*pillow_heif.register_heif_opener"
                                         r"\(\).*convert .cr2 files to JPEG or PNG"):
        assert find_image_files(tmp_path) == [str(tmp_path / "kept.png")]


def test_thumbnails_that_photo_software_keeps_beside_the_photos_are_skipped(tmp_path):
    # Each photo was clustered three or four times: with its previews and thumbnails.
    names = ["Photos Library.photoslibrary/originals/A/IMG_1.jpg",
             "Photos Library.photoslibrary/Masters/2019/IMG_0.jpg",
             "Photos Library.photoslibrary/resources/derivatives/A/IMG_1_1_105_c.jpeg",
             "Photos Library.photoslibrary/resources/derivatives/masters/A/IMG_1_4_5005_c.jpeg",
             "nas/IMG_2.jpg", "nas/@eaDir/IMG_2.jpg/SYNOPHOTO_THUMB_M.jpg", "resources/kept.jpg"]
    for name in names + ["Not a library.photoslibrary/resources/kept.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "Photos Library.photoslibrary" / "database").mkdir()  # what makes it a library
    found = [os.path.relpath(path, tmp_path) for path in find_image_files(tmp_path)]
    assert found == ["Not a library.photoslibrary/resources/kept.jpg", names[1], names[0], "nas/IMG_2.jpg",
                     "resources/kept.jpg"]
    library = tmp_path / "Photos Library.photoslibrary"  # given itself, as well
    assert find_image_files(library) == [str(tmp_path / names[1]), str(tmp_path / names[0])]
    # A library whose originals are all in iCloud holds only previews here: say so.
    for originals in ["originals", "Masters"]:
        shutil.rmtree(library / originals)
    with pytest.raises(ValueError, match=r"No image files found under .*and so are the thumbnails and previews "
                                         r"that photo software keeps: '.*photoslibrary/resources'"):
        find_image_files(library)


def test_photos_kept_in_icloud_and_not_downloaded_are_named_in_a_warning(tmp_path):
    # iCloud Drive leaves a hidden placeholder, .IMG_0004.JPG.icloud, of a photo not downloaded.
    Image.new("RGB", (4, 4)).save(tmp_path / "kept.png")
    for name in [".IMG_0004.JPG.icloud", ".notes.txt.icloud", ".DS_Store"]:
        (tmp_path / name).write_bytes(b"a placeholder")
    with pytest.warns(UserWarning, match=r"Skipped 1 photo\(s\) kept in iCloud and not downloaded to this "
                                         r"computer: '[^,]*\.IMG_0004\.JPG\.icloud'\. Download them"):
        assert find_image_files(tmp_path) == [str(tmp_path / "kept.png")]

def test_links_to_image_files_found_already_are_skipped_with_a_warning(tmp_path):
    # A favourites folder of links to the photos was clustered as more photos.
    for name in ("photos/1.png", "photos/2.png", "elsewhere/3.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    root = tmp_path / "photos"
    (root / "favourites").mkdir()
    (root / "favourites" / "a.png").symlink_to(root / "1.png")
    (root / "favourites" / "b.png").symlink_to(tmp_path / "elsewhere" / "3.png")
    (root / "favourites" / "c.png").symlink_to(tmp_path / "elsewhere" / "3.png")
    os.symlink(root / "favourites", root / "z-link-to-favourites")  # a folder met twice: walked once
    with pytest.warns(UserWarning, match=r"Skipped 2 link\(s\) to image files found already, so that each image "
                                         r"is taken once: '.*favourites/a.png', '.*favourites/c.png'\."), \
            pytest.warns(UserWarning, match=r"Skipped 1 link\(s\) to folders found already, .*z-link-to-favourites"):
        assert find_image_files(root) == [str(root / "1.png"), str(root / "2.png"),
                                          str(root / "favourites" / "b.png")]


def test_archives_among_the_images_are_named_in_a_warning_or_the_error(tmp_path):
    # A photos/cats.zip beside photos/dog/ was skipped without a word, and its images with it.
    (tmp_path / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "dog" / "1.png")
    (tmp_path / "cats.ZIP").write_bytes(b"PK")
    (tmp_path / "birds.tar.gz").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"^Skipped 2 archive\(s\) among the images, whose own images are not "
                                         r"read: '.*birds.tar.gz', '.*cats.ZIP'\. Unpack them"):
        assert find_image_files(tmp_path) == [str(tmp_path / "dog" / "1.png")]
    shutil.rmtree(tmp_path / "dog")
    with pytest.raises(ValueError, match=r"are skipped\)\. It holds archives, whose images are read once they are "
                                         r"unpacked: '.*birds.tar.gz', '.*cats.ZIP'\.$"):
        find_image_files(tmp_path)
