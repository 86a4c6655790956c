import gzip
import io
import os
import warnings

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


def test_images_at_the_root_beside_class_folders_mean_no_labels_and_a_warning(image_folder):
    Image.new("RGB", (4, 4)).save(image_folder / "loose.png")
    with pytest.warns(UserWarning, match=r"1 image file\(s\) lie directly in .*'loose.png'.*Move them into a class"):
        data = load_image_folder(image_folder)
    assert data.target is None and len(data.filenames) == 9


def test_a_folder_of_images_alone_is_unlabelled_without_a_warning(tmp_path):
    for name in ["a.png", "b.png"]:
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files, target = load_image_folder(tmp_path, return_X_y=True)
    assert target is None and len(files) == 2


@pytest.mark.parametrize("with_class_folders", [True, False])
def test_max_per_class_needs_class_folders(image_folder, with_class_folders):
    if not with_class_folders:
        for class_folder in ["dark", "bright"]:
            for file in (image_folder / class_folder).iterdir():
                file.rename(image_folder / f"{class_folder}-{file.name}")
    Image.new("RGB", (4, 4)).save(image_folder / "loose.png")
    with pytest.raises(ValueError, match=r"max_per_class needs class folders, but \d+ image file\(s\) lie directly"):
        load_image_folder(image_folder, max_per_class=5, return_X_y=True)


@pytest.mark.parametrize("files_per_thread", [1000, 2], ids=["one-thread", "threads"])
def test_skip_unreadable_leaves_damaged_files_out_with_their_labels(image_folder, monkeypatch, files_per_thread):
    import skdeepclust.datasets

    monkeypatch.setattr(skdeepclust.datasets, "FILES_PER_CHECK_THREAD", files_per_thread)
    broken = image_folder / "dark" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match=r"Left out 1 unreadable image file\(s\) of 9 .*broken.jpg: cannot identify"):
        data = load_image_folder(image_folder, skip_unreadable=True)
    assert str(broken) not in data.filenames and len(data.filenames) == 8
    np.testing.assert_array_equal(np.bincount(data.target), [4, 4])  # the labels still match the files
    assert list(data.unreadable) == [str(broken)]
    assert data.unreadable[str(broken)].startswith("cannot identify image file")
    with pytest.warns(UserWarning, match="Left out 1"):
        files, target = load_image_folder(image_folder, skip_unreadable=True, return_X_y=True)
    assert files == data.filenames and np.array_equal(target, data.target)


def test_skip_unreadable_names_a_few_files_and_counts_the_rest(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "good.png")
    for index in range(7):
        (tmp_path / f"bad{index}.png").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"Left out 7 .* of 8 .*bad4.png: .*; and 2 more, listed in the result's 'unreadable'$"):
        data = load_image_folder(tmp_path, skip_unreadable=True)
    assert data.filenames == [str(tmp_path / "good.png")] and len(data.unreadable) == 7


def test_skip_unreadable_refuses_a_folder_with_no_readable_image(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"None of the 1 image files under .* could be read; .*a.jpg', for one: cannot identify"):
        load_image_folder(tmp_path, skip_unreadable=True)
    with pytest.raises(ValueError, match="skip_unreadable must be True or False; got 'yes'"):
        load_image_folder(tmp_path, skip_unreadable="yes")
    with pytest.raises(ValueError, match="return_X_y must be True or False; got 'no'"):
        load_image_folder(tmp_path, return_X_y="no")  # would return a tuple
    with pytest.raises(ValueError, match="root must be the path of a folder; got None"):
        load_image_folder(None)
    with pytest.raises(ValueError, match="archive must be the path of a file; got None"):
        extract_image_archive(None)


def test_without_skip_unreadable_a_damaged_file_is_listed_and_its_error_points_to_the_option(tmp_path):
    from skdeepclust import ImageEmbedder

    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    data = load_image_folder(tmp_path)
    assert len(data.filenames) == 2 and "unreadable" not in data
    embedder = ImageEmbedder("test_vit", pretrained=False, image_size=32, device="cpu")
    with pytest.raises(ValueError, match=r"bad.png.*load_image_folder\(root, skip_unreadable=True\) leaves such files out"):
        embedder.fit_transform(data.filenames)


def test_max_per_class_is_seeded(image_folder):
    first = load_image_folder(image_folder, max_per_class=2, random_state=0)
    again = load_image_folder(image_folder, max_per_class=2, random_state=0)
    assert first.filenames == again.filenames
    np.testing.assert_array_equal(np.bincount(first.target), [2, 2])
    with pytest.raises(ValueError, match="max_per_class"):
        load_image_folder(image_folder, max_per_class=0)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(ValueError, match=r"not a folder\.$"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"not a folder\. Python does not expand '~'; pass os\.path\.expanduser"):
        load_image_folder("~/no/such/photos")
    with pytest.raises(ValueError, match=r"not a folder\. A pattern is not expanded; pass one folder\.$"):
        load_image_folder(str(tmp_path / "*"))
    with pytest.raises(ValueError, match="No image files"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize("kind", ["tar.gz", "zip", "ZIP", "TGZ"])
def test_archive_is_extracted_once(image_folder, tmp_path_factory, kind):
    import shutil

    # Upper-case suffixes, as some Windows tools write them, were "not a .zip archive".
    archive_base = tmp_path_factory.mktemp("archives") / "pictures"
    made = shutil.make_archive(str(archive_base), "zip" if kind.lower() == "zip" else "gztar", image_folder)
    archive = f"{archive_base}.{kind}"
    os.rename(made, archive)
    cache = tmp_path_factory.mktemp("cache")
    folder = extract_image_archive(archive, cache)
    assert folder.parent == cache and folder.name.startswith("pictures-")
    assert len(load_image_folder(folder).filenames) == 8
    (folder / "dark").rename(folder / "moved")  # a second call must not unpack again
    assert extract_image_archive(archive, cache) == folder
    assert not (folder / "dark").exists()


def _zip(path, names):
    import zipfile

    with zipfile.ZipFile(path, "w") as zipped:
        for name in names:
            zipped.writestr(name, _png_bytes())
    return path


def _png_bytes():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_archive_that_changes_or_shares_a_name_is_unpacked_again(tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = extract_image_archive(_zip(tmp_path / "a" / "data.zip", ["x/1.png", "y/1.png"]), cache)
    other = extract_image_archive(_zip(tmp_path / "b" / "data.zip", ["z/1.png", "w/1.png"]), cache)
    assert first != other
    assert load_image_folder(first).target_names == ["x", "y"]
    assert load_image_folder(other).target_names == ["w", "z"]
    updated = _zip(tmp_path / "a" / "data.zip", ["x/1.png", "y/1.png", "v/1.png"])
    os.utime(updated, ns=(0, os.stat(updated).st_mtime_ns + 10**9))
    assert load_image_folder(extract_image_archive(updated, cache)).target_names == ["v", "x", "y"]


def test_archive_of_one_top_folder_made_on_a_mac(tmp_path):
    names = ["photos/cat/1.png", "photos/dog/1.png", "__MACOSX/photos/cat/._1.png", "photos/dog/._2.png"]
    folder = extract_image_archive(_zip(tmp_path / "photos.zip", names), tmp_path / "cache")
    data = load_image_folder(folder)
    assert folder.name == "photos" and data.target_names == ["cat", "dog"] and len(data.filenames) == 2


def test_a_zip_made_on_windows_with_backslashes_keeps_its_class_folders(tmp_path):
    # Unpacked on Linux into one folder of files named "photos\\cat\\1.png": no classes, no warning.
    import shutil
    import zipfile

    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as zipped:
        for name in ["photos\\cat\\1.png", "photos\\cat\\2.png", "photos\\dog\\1.png"]:
            member = zipfile.ZipInfo(name)
            member.create_system = 0  # MS-DOS and Windows
            zipped.writestr(member, _png_bytes())
    data = load_image_folder(extract_image_archive(tmp_path / "photos.zip", tmp_path / "cache"))
    assert data.target_names == ["cat", "dog"] and data.target.tolist() == [0, 0, 1]
    # Unpacked flat by an earlier version, it is unpacked anew rather than taken from the cache.
    folder = tmp_path / "cache" / data.filenames[0].split(os.sep)[-4]
    marker = folder / ".extracted"
    marker.write_text(marker.read_text().replace("unpacking revision 2", "unpacking revision 1"))
    shutil.rmtree(folder / "photos")
    (folder / "photos\\cat\\1.png").write_bytes(_png_bytes())
    data = load_image_folder(extract_image_archive(tmp_path / "photos.zip", tmp_path / "cache"))
    assert data.target_names == ["cat", "dog"] and len(data.filenames) == 3


def test_cache_dir_with_a_tilde_is_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = extract_image_archive(_zip(tmp_path / "data.zip", ["a/1.png", "b/1.png"]), "~/cache")
    assert folder.parent == tmp_path / "home" / "cache"


@pytest.mark.parametrize("spelling", ["root/./cat/1.png", "root//cat/1.png", "root/cat/"])
def test_class_folder_labels_read_odd_spellings_as_paths(spelling):
    from pathlib import Path

    from skdeepclust.datasets import class_folder_labels

    files = [spelling, "root/dog/2.png"]
    in_root = len(Path(spelling).relative_to("root").parts) == 1
    assert class_folder_labels("root", files) == ((None, []) if in_root else (
        pytest.approx([0, 1]), ["cat", "dog"]))


def test_hidden_files_and_folders_are_skipped(image_folder):
    (image_folder / ".thumbnails").mkdir()
    Image.new("RGB", (4, 4)).save(image_folder / ".thumbnails" / "1.png")
    Image.new("RGB", (4, 4)).save(image_folder / "dark" / ".hidden.png")
    data = load_image_folder(image_folder)
    assert data.target_names == ["bright", "dark"] and len(data.filenames) == 8


def test_linked_class_folders_are_followed_once(tmp_path):
    store = tmp_path / "store"
    for name in ["cat/1.png", "dog/1.png", "dog/2.png"]:
        (store / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(store / name)
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / "cat").symlink_to(store / "cat", target_is_directory=True)
    (subset / "dog").symlink_to(store / "dog", target_is_directory=True)
    (subset / "dog" / "loop").symlink_to(subset, target_is_directory=True)  # a cycle must not hang
    with pytest.warns(UserWarning, match=r"Skipped 1 link\(s\) to folders found already, .*dog/loop'\.$"):
        data = load_image_folder(subset)
    assert data.target_names == ["cat", "dog"] and data.target.tolist() == [0, 1, 1]


def test_files_sort_by_class_then_path(tmp_path):
    for name in ["dog-1/a.png", "dog/b.png", "Dog/c.png", "dog/a.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    data = load_image_folder(tmp_path)
    assert data.target_names == ["Dog", "dog", "dog-1"]
    assert data.target.tolist() == [0, 1, 1, 2]
    assert [f.split("/")[-1] for f in data.filenames] == ["c.png", "a.png", "b.png", "a.png"]


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_a_damaged_archive_leaves_nothing_in_the_cache(image_folder, tmp_path, kind):
    import shutil
    import stat

    archive = shutil.make_archive(str(tmp_path / "pictures"), "gztar" if kind == "tar.gz" else "zip", image_folder)
    cache = tmp_path / "cache"
    folder = extract_image_archive(archive, cache)
    (tmp_path / "plain").mkdir()  # readable by others as far as the umask lets it be
    assert stat.S_IMODE(folder.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    whole = open(archive, "rb").read()
    with open(archive, "wb") as cut:  # a download cut short
        cut.write(whole[: len(whole) // 2])
    damaged = r"^archive=.*pictures.* is damaged or cut short \(\w+: .*\); copy or download it again."
    with pytest.raises(ValueError, match=damaged):
        extract_image_archive(archive, cache)
    assert _unpacked(cache) == [folder.name]  # the earlier version only
    shutil.rmtree(folder)
    with pytest.raises(ValueError, match=damaged):
        extract_image_archive(archive, cache)
    assert _unpacked(cache) == []
    with open(archive, "wb") as garbage:
        garbage.write(b"not an archive at all")
    with pytest.raises(ValueError, match=damaged):
        extract_image_archive(archive, cache)


def test_a_tar_gz_damaged_in_the_middle_is_refused_not_unpacked_in_part(tmp_path):
    import tarfile

    source = tmp_path / "pictures" / "cat"
    source.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(30):
        (source / f"{index}.png").write_bytes(rng.bytes(3000) + bytes(3000))
    archive = tmp_path / "pictures.tar.gz"
    with tarfile.open(archive, "w:gz") as tarred:
        tarred.add(source.parent, arcname="pictures")
    damaged = bytearray(archive.read_bytes())
    for position in range(len(damaged) // 3, len(damaged) // 3 + 50):
        damaged[position] ^= 0xFF  # tarfile then meets a bad header and stops, as at the end
    archive.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="is damaged or cut short"):
        extract_image_archive(archive, tmp_path / "cache")
    assert _unpacked(tmp_path / "cache") == []


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_an_archive_with_a_damaged_member_header_is_refused_not_unpacked_in_part(tmp_path, mode):
    # Damage made before compression: gzip's own check passes, and tarfile stops at
    # the bad header as it would at the end of the archive.
    import tarfile

    source = tmp_path / "pictures" / "cat"
    source.mkdir(parents=True)
    for index in range(6):
        (source / f"{index}.png").write_bytes(bytes([index + 1]) * 3000)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tarred:
        tarred.add(source.parent, arcname="pictures")
    with tarfile.open(fileobj=io.BytesIO(plain.getvalue())) as tarred:
        header = tarred.getmembers()[4].offset
    damaged = bytearray(plain.getvalue())
    damaged[header + 10:header + 30] = b"X" * 20
    archive = tmp_path / ("pictures.tar" if mode == "w" else "pictures.tar.gz")
    archive.write_bytes(bytes(damaged) if mode == "w" else gzip.compress(bytes(damaged)))
    with pytest.raises(ValueError, match="is damaged or cut short .*a damaged member header"):
        extract_image_archive(archive, tmp_path / "cache")
    assert _unpacked(tmp_path / "cache") == []


def test_an_archive_with_a_link_outside_itself_is_refused_for_safety(tmp_path):
    import tarfile

    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tarred:
        link = tarfile.TarInfo("photos/cat/1.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tarred.addfile(link)
    with pytest.raises(ValueError, match="holds a member that is refused for safety .*Unpack it yourself"):
        extract_image_archive(archive, tmp_path / "cache")


def test_unpacking_one_archive_at_once_and_after_a_killed_unpacking(image_folder, tmp_path):
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    archive = shutil.make_archive(str(tmp_path / "pictures"), "gztar", image_folder)
    cache = tmp_path / "cache"
    folder = extract_image_archive(archive, cache)
    killed = cache / f".{folder.name}-unpacking"  # what an unpacking killed half-way leaves
    killed.mkdir()
    (killed / "half.png").write_bytes(b"")
    shutil.rmtree(folder)
    with ThreadPoolExecutor(3) as pool:
        folders = list(pool.map(lambda _: extract_image_archive(archive, cache), range(3)))
    assert folders == [folder] * 3 and len(load_image_folder(folder).filenames) == 8
    assert _unpacked(cache) == [folder.name]


def _unpacked(cache):
    """What the cache holds besides the lock files of its archives."""
    return sorted(entry.name for entry in cache.iterdir() if not entry.name.endswith(".lock"))


def test_archive_errors(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        extract_image_archive(tmp_path / "none.tar.gz")
    other = tmp_path / "data.rar"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .tar"):
        extract_image_archive(other)


def test_max_per_class_draws_with_the_given_random_state(image_folder):
    samples = {tuple(load_image_folder(image_folder, max_per_class=2, random_state=seed).filenames)
               for seed in range(5)}
    assert len(samples) > 1


def test_max_per_class_keeps_the_folder_order(image_folder):
    every = load_image_folder(image_folder).filenames
    for seed in range(5):
        sample = load_image_folder(image_folder, max_per_class=2, random_state=seed).filenames
        assert sample == [path for path in every if path in sample]
