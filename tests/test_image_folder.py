"""--dataset=image_folder on real images: Fashion-MNIST test images written
as PNG, JPEG, BMP and GIF files into class folders, with corrupt files and
duplicates mixed in (common/data/image_folder.py).

The images are Fashion-MNIST's own where Debian's dataset-fashion-mnist is
installed, else tests.fixtures.learnable_images (CI does not install it).
"""

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common.config import resolve
from common.config.options import RunOptions
from common.data import image_folder, local_files, sources
from common.errors import UserError
from common.modes import dispatch
from tests.fixtures import learnable_images

ROOT = pathlib.Path(__file__).resolve().parent.parent
FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
# Fashion-MNIST's names as folder names ("T-shirt/top" cannot be one).
CLASSES = [name.replace("/", "_") for name in local_files.CLASS_NAMES["fashion_mnist"]]
PER_CLASS = 30


def _images_by_class(per_class: int) -> list[np.ndarray]:
    """per_class 28x28 uint8 images of each of the ten classes."""
    labels_file = FASHION_MNIST / "t10k-labels-idx1-ubyte.gz"
    if labels_file.is_file():
        images = local_files.read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz",
                                      local_files.IDX_IMAGES_MAGIC)
        labels = local_files.read_idx(labels_file, local_files.IDX_LABELS_MAGIC)
    else:
        labels = np.repeat(np.arange(10), per_class * 2)
        images = learnable_images(labels, seed=3)
    return [images[labels == c][:per_class] for c in range(10)]


def _save(path: pathlib.Path, image: np.ndarray, fmt: str = "PNG", mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).convert(mode).save(path, format=fmt)


def _format_of(index: int) -> tuple[str, str]:
    return {0: ("JPEG", ".jpg"), 1: ("BMP", ".bmp"), 2: ("GIF", ".gif")}.get(
        index % 10, ("PNG", ".png"))


def _write_class(folder: pathlib.Path, images: np.ndarray, start: int = 0) -> None:
    for i, image in enumerate(images, start):
        fmt, extension = _format_of(i)
        _save(folder / f"{i:05d}{extension}", image, fmt)


@pytest.fixture(scope="module")
def by_class():
    return _images_by_class(PER_CLASS + 2)


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory, by_class):
    """PATH/<class>/ with every kind of problem the cleaning pass reports."""
    root = tmp_path_factory.mktemp("fashion") / "images"
    for name, images in zip(CLASSES, by_class):
        _write_class(root / name, images[:PER_CLASS])
    png = (root / "Bag" / "00003.png").read_bytes()
    (root / "Bag" / "truncated.png").write_bytes(png[:len(png) // 2])
    (root / "Coat" / "empty.png").write_bytes(b"")
    (root / "Dress" / "notes.jpg").write_text("not an image\n")
    (root / "Bag" / "labels.csv").write_text("file,label\n")
    (root / "README.txt").write_text("Fashion-MNIST test images\n")
    (root / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored
    # A white garment whose shape is its alpha: over black, the image itself.
    shirt = by_class[CLASSES.index("Shirt")][PER_CLASS]
    rgba = np.dstack([np.full((28, 28, 3), 255, np.uint8), shirt])
    _save(root / "Shirt" / "transparent.png", rgba, mode="RGBA")
    # The same pixels as Sneaker/00003.png, as a BMP: a duplicate by content.
    sneaker = np.asarray(Image.open(root / "Sneaker" / "00003.png"))
    _save(root / "Sneaker" / "copy.bmp", sneaker, "BMP")
    # One image under two labels.
    shared = by_class[CLASSES.index("Sandal")][PER_CLASS + 1]
    _save(root / "Sandal" / "shared.png", shared)
    _save(root / "Trouser" / "shared.png", shared)
    # A PNG named .jpg: read by content, kept.
    _save(root / "Pullover" / "actually_png.jpg", by_class[CLASSES.index("Pullover")][PER_CLASS])
    return root


@pytest.fixture(scope="module")
def split_folders(tmp_path_factory, by_class):
    """PATH/train/<class>/ and PATH/test/<class>/; one test image is also in train."""
    root = tmp_path_factory.mktemp("fashion") / "split"
    for name, images in zip(CLASSES, by_class):
        _write_class(root / "train" / name, images[:24])
        _write_class(root / "test" / name, images[24:PER_CLASS], start=24)
    shutil.copy(root / "train" / "Ankle boot" / "00005.png",
                root / "test" / "Ankle boot" / "leak.png")
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh image cache for every test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(image_folder.CACHE_ENV, str(folder))
    return folder


def _files(entries, key="file"):
    return {entry[key] for entry in entries}


def test_the_report_lists_every_problem(class_folders):
    splits = sources.load("image_folder", str(class_folders), 0.1, image_size=28,
                          image_channels=1, test_fraction=0.1)
    report = splits.report
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert reasons["Bag/truncated.png"].startswith("truncated or corrupt PNG")
    assert reasons["Coat/empty.png"] == "empty file"
    assert reasons["Dress/notes.jpg"].startswith("not an image")
    assert reasons["Bag/labels.csv"].startswith("unsupported extension '.csv'")
    assert reasons["README.txt"] == "not inside a class folder"
    assert len(reasons) == 5  # .DS_Store is hidden, not reported
    assert report["extension_mismatch"] == [{"file": "Pullover/actually_png.jpg",
                                             "format": "PNG"}]
    duplicates = report["duplicates"]
    assert duplicates["within_class"] == [{"class": "Sneaker", "split": "train",
                                           "kept": "Sneaker/00003.png",
                                           "dropped": ["Sneaker/copy.bmp"]}]
    assert duplicates["across_classes"] == [{"classes": ["Sandal", "Trouser"],
                                             "files": ["Sandal/shared.png",
                                                       "Trouser/shared.png"]}]
    assert duplicates["across_splits"] == []
    # The transparent shirt is the only image converted, and it is the shirt.
    assert report["images"]["modes"]["RGBA"] == 1
    assert report["images"]["converted"] == {"alpha_flattened": 1, "channels": 1,
                                             "resized": 0, "exif_rotated": 0, "any": 1}
    assert set(report["images"]["formats"]) == {"PNG", "JPEG", "BMP", "GIF"}
    assert report["images"]["sizes"] == {"28x28": report["images_decoded"]}
    assert report["classes"] == sorted(CLASSES)
    # Counts: 30 per class + the extra files, less what was dropped.
    kept = {name: PER_CLASS for name in CLASSES}
    kept["Shirt"] += 1
    kept["Pullover"] += 1
    total = {name: sum(report["counts"][s][name] for s in image_folder.SPLITS)
             for name in CLASSES}
    assert total == kept
    # Carved by each file's hash: every class in every split, about 10% of
    # the files for test and 9% for validation.
    for name in CLASSES:
        assert all(report["counts"][split][name] >= 1 for split in image_folder.SPLITS)
    total = sum(kept.values())
    assert 0.05 < report["totals"]["test"] / total < 0.15
    assert 0.05 < report["totals"]["validation"] / total < 0.15
    assert report["summary"]["skipped"] == 5 and report["imbalance"]["strong"] is False
    assert (splits.num_train, splits.num_validation, splits.num_test) == tuple(
        report["totals"][s] for s in image_folder.SPLITS)
    assert splits.image_shape == (28, 28, 1) and splits.class_names == tuple(sorted(CLASSES))
    shirt_label = sorted(CLASSES).index("Shirt")
    images = np.concatenate([np.stack([x.numpy() for x, y in split if int(y) == shirt_label])
                             for split in (splits.train, splits.validation, splits.test)])
    flattened = images.reshape(len(images), -1)
    original = np.asarray(Image.open(class_folders / "Shirt" / "transparent.png"))[..., 3]
    assert (flattened == original.reshape(-1)).all(axis=1).sum() == 1
    json.dumps(report, allow_nan=False)  # strict JSON


def test_carving_is_deterministic_and_disjoint(class_folders):
    hparams = {"image_size": 28, "image_channels": 1, "test_fraction": 0.2}
    first = image_folder.load(str(class_folders), validation_fraction=0.2, **hparams)
    second = image_folder.load(str(class_folders), validation_fraction=0.2, **hparams)
    for name in ("train", "validation", "test"):
        a = np.stack([x.numpy() for x, _ in getattr(first, name)])
        b = np.stack([x.numpy() for x, _ in getattr(second, name)])
        assert np.array_equal(a, b)
    digests = {name: {hash(x.numpy().tobytes()) for x, _ in getattr(first, name)}
               for name in ("train", "validation", "test")}
    assert not digests["train"] & digests["test"] and not digests["train"] & digests["validation"]
    totals = first.report["totals"]
    everything = sum(totals.values())
    assert 0.12 < totals["test"] / everything < 0.28                 # 20%
    assert 0.10 < totals["validation"] / everything < 0.22           # 20% of the rest


def _split_of_every_file(splits) -> dict[str, str]:
    """{file: split}, from the prepared copy's records (their indices are the
    files' places in scan order)."""
    scanned = image_folder.scan(pathlib.Path(splits.source))
    found = {}
    for name in image_folder.SPLITS:
        split = getattr(splits, name)
        for record in split.records():
            index = int(np.frombuffer(record.numpy()[:8], "<i8")[0])
            found[scanned.files[index].rel] = name
    return found


def test_a_file_keeps_its_split_when_files_are_added_or_removed(class_folders, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(class_folders, folder)
    hparams = {"image_size": 28, "image_channels": 1}
    before = _split_of_every_file(image_folder.load(str(folder), **hparams))
    rng = np.random.default_rng(5)
    for name in CLASSES[:4]:  # ten new images in four classes, two removed
        for i in range(10):
            _save(folder / name / f"new{i}.png", rng.integers(0, 256, (28, 28), np.uint8))
    (folder / "Coat" / "00007.png").unlink()
    (folder / "Bag" / "00011.bmp").unlink()
    after = _split_of_every_file(image_folder.load(str(folder), **hparams))
    kept = set(before) & set(after)
    assert len(kept) == len(before) - 2
    moved = {f: (before[f], after[f]) for f in kept if before[f] != after[f]}
    assert moved == {}  # validation as well as test
    assert len([f for f in after if "/new" in f]) == 40


def test_the_split_layout_removes_test_images_also_in_train(split_folders):
    splits = image_folder.load(str(split_folders), validation_fraction=0.1,
                               image_size=32, image_channels=3)
    report = splits.report
    assert report["layout"] == "split_folders"
    assert report["duplicates"]["across_splits"] == [{
        "class": "Ankle boot", "split": "test", "removed": "test/Ankle boot/leak.png",
        "train_copy": "train/Ankle boot/00005.png"}]
    assert report["counts"]["test"] == {name: 6 for name in sorted(CLASSES)}
    # No validation/: carved from train, per class.
    assert report["carving"]["validation_from"] == "train"
    assert all(n >= 1 for n in report["counts"]["validation"].values())
    assert splits.num_train + splits.num_validation == 240
    assert splits.image_shape == (32, 32, 3)
    assert report["images"]["converted"]["resized"] == report["images_decoded"]


def test_a_validation_folder_is_used_as_is(tmp_path, by_class):
    for name, images in zip(CLASSES[:3], by_class):
        for split, part in (("train", images[:5]), ("validation", images[5:7]),
                            ("test", images[7:9])):
            _write_class(tmp_path / "data" / split / name, part)
    splits = image_folder.load(str(tmp_path / "data"), image_size=28, image_channels=1)
    assert (splits.num_train, splits.num_validation, splits.num_test) == (15, 6, 6)
    assert splits.report["carving"]["validation_from"] == "validation/"


def _copies(cache: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and p.suffix != ".partial")


def test_the_second_read_comes_from_the_prepared_copy_and_a_change_prepares_it_again(
        class_folders, cache, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(class_folders, folder)
    first = image_folder.load(str(folder), image_size=28, image_channels=1)
    second = image_folder.load(str(folder), image_size=28, image_channels=1)
    assert first.report["cache"]["hit"] is False
    assert first.report["cache"]["decoded_files"] > 300
    assert second.report["cache"] == {**second.report["cache"], "hit": True, "decoded_files": 0}
    assert {k: v for k, v in second.report.items() if k != "cache"} == {
        k: v for k, v in first.report.items() if k != "cache"}
    assert np.array_equal(np.stack([x.numpy() for x, _ in first.train]),
                          np.stack([x.numpy() for x, _ in second.train]))
    # Another size is another copy; the first stays.
    other = image_folder.load(str(folder), image_size=14, image_channels=1)
    assert other.report["cache"]["hit"] is False and other.image_shape == (14, 14, 1)
    assert len(_copies(cache)) == 2
    # A new image: prepared again. The stale copy of that size stays while a
    # process reads it (this one does) ...
    _save(folder / "Bag" / "new.png", np.zeros((28, 28), np.uint8))
    third = image_folder.load(str(folder), image_size=28, image_channels=1)
    assert third.report["cache"]["hit"] is False
    assert third.report["summary"]["files_found"] == first.report["summary"]["files_found"] + 1
    assert len(_copies(cache)) == 3
    # ... and goes once none does: as if the earlier reads were other,
    # finished processes, the next new copy removes the stale ones.
    from common.data import prepared
    for fd in prepared._HELD.values():
        os.close(fd)
    prepared._HELD.clear()
    _save(folder / "Bag" / "newer.png", np.ones((28, 28), np.uint8))
    image_folder.load(str(folder), image_size=28, image_channels=1)
    assert [p.name.split("-")[2] for p in _copies(cache)] == ["s14c1", "s28c1"]


def _damage_truncated(copy: pathlib.Path) -> None:
    shard = sorted(copy.glob("train-*.tfrecord"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])


def _damage_garbage_manifest(copy: pathlib.Path) -> None:
    (copy / "manifest.json").write_bytes(b"PK\x03\x04 not json")


def _damage_wrong_shape(copy: pathlib.Path) -> None:
    """A hand-made manifest that calls the 28x28x1 records 14x14x4: the
    sizes on disk no longer match."""
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["image_shape"] = [14, 14, 4]
    (copy / "manifest.json").write_text(json.dumps(manifest))


def _damage_counts(copy: pathlib.Path) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["test"]["shards"][0]["kept"] += 1
    manifest["splits"]["test"]["shards"][0]["examples"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))


def _damage_shard_is_a_link(copy: pathlib.Path) -> None:
    shard = sorted(copy.glob("test-*.tfrecord"))[0]
    shard.unlink()
    shard.symlink_to("/dev/zero")


@pytest.mark.parametrize("damage", [_damage_truncated, _damage_garbage_manifest,
                                    _damage_wrong_shape, _damage_counts,
                                    _damage_shard_is_a_link])
def test_a_damaged_or_hand_made_copy_is_prepared_again(class_folders, cache, tmp_path,
                                                      damage, caplog):
    folder = tmp_path / "copy"
    shutil.copytree(class_folders, folder)
    first = image_folder.load(str(folder), image_size=28, image_channels=1)
    (copy,) = _copies(cache)
    damage(copy)
    again = image_folder.load(str(folder), image_size=28, image_channels=1)
    assert again.report["cache"]["hit"] is False
    assert "Ignoring the prepared copy" in caplog.text
    assert (again.num_train, again.num_test) == (first.num_train, first.num_test)
    assert np.array_equal(np.stack([x.numpy() for x, _ in first.test]),
                          np.stack([x.numpy() for x, _ in again.test]))


def test_an_interrupted_preparation_keeps_its_complete_shards(class_folders, cache, tmp_path,
                                                              caplog, monkeypatch):
    from common.data import prepared
    caplog.set_level(logging.INFO, logger="absl")
    folder = tmp_path / "copy"
    shutil.copytree(class_folders, folder)
    written = []
    real = prepared.Writer.shard

    def dies_after_three(self, *args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt  # a kill half-way
        written.append(args[:2])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(prepared.Writer, "shard", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        image_folder.load(str(folder), image_size=28, image_channels=1)
    assert _copies(cache) == []  # nothing complete to read
    (partial,) = cache.glob("*.partial")
    assert len(list(partial.glob("*.tfrecord"))) == 3
    assert not list(partial.glob(".*.tmp"))  # the fourth shard's temporary file is gone
    monkeypatch.setattr(prepared.Writer, "shard", real)
    splits = image_folder.load(str(folder), image_size=28, image_channels=1)
    assert "3 of 24 shards were written by an interrupted pass and are kept" in caplog.text
    whole = image_folder.load(str(tmp_path / "copy"), image_size=28, image_channels=1)
    assert splits.report["counts"] == whole.report["counts"]
    assert splits.report["duplicates"] == whole.report["duplicates"]


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "is empty"),
    (lambda root: (root / "a.png").write_bytes(b"x"), "has no class folders (found 1 files"),
    (lambda root: _save(root / "cats" / "a.png", np.zeros((8, 8), np.uint8)),
     "has one class folder (cats/)"),
    (lambda root: [_save(root / c / f"{i}.png", np.full((8, 8), i + 10 * len(c) * (c == "dogs"),
                                                          np.uint8))
                   for c in ("cats", "dogs") for i in range(3 if c == "cats" else 2)],
     "'dogs' has 2 image file(s), needs 3"),
    (lambda root: [(root / s / "cats").mkdir(parents=True) for s in ("train", "cats")],
     "mixes split folders (train) with other folders (cats)"),
    (lambda root: (root / "train" / "cats").mkdir(parents=True), "has train/ but no test/"),
])
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    with pytest.raises(UserError) as error:
        image_folder.load(str(root), image_size=8, image_channels=1)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_sizes_that_differ_need_image_size(tmp_path):
    for i, size in enumerate((8, 8, 8, 12, 12, 12)):
        _save(tmp_path / "d" / ("a" if i < 3 else "b") / f"{i}.png",
              np.full((size, size), i * 20, np.uint8))
    with pytest.raises(UserError, match="differ in size .*image_size=N"):
        image_folder.load(str(tmp_path / "d"))
    splits = image_folder.load(str(tmp_path / "d"), image_size=10)
    assert splits.image_shape == (10, 10, 1)  # channels 0: all grey, so grey


def test_channels_zero_keeps_grey_unless_a_colour_image_is_there(tmp_path):
    for i in range(6):
        _save(tmp_path / "d" / ("a" if i < 3 else "b") / f"{i}.png",
              np.full((8, 8), i * 20, np.uint8))
    assert image_folder.load(str(tmp_path / "d")).image_shape == (8, 8, 1)
    _save(tmp_path / "d" / "a" / "colour.png", np.full((8, 8, 3), [200, 0, 0], np.uint8),
          mode="RGB")
    splits = image_folder.load(str(tmp_path / "d"))
    assert splits.image_shape == (8, 8, 3)
    assert splits.report["images"]["converted"]["channels"] == 6


def test_modes_are_normalised_and_jpegs_turned_upright(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        _save(root / "a" / f"{i}.png", np.full((8, 16), 10 * i, np.uint8))
        _save(root / "b" / f"{i}.png", np.full((8, 16), 100 + 10 * i, np.uint8))
    # 16-bit grey: 257 * v is v in 8 bits.
    Image.fromarray(np.full((8, 16), 257 * 77, np.uint16)).save(root / "a" / "wide.png")
    # A colour palette.
    colours = np.zeros((8, 16, 3), np.uint8)
    colours[:, 8:] = [255, 0, 0]
    _save(root / "b" / "palette.png", colours, mode="P")
    # A JPEG stored sideways (16 wide) with EXIF orientation 6: 16 tall upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((8, 16), 200, np.uint8)).save(root / "b" / "phone.jpg", exif=exif)
    splits = image_folder.load(str(root), image_size=8, image_channels=3)
    images = splits.report["images"]
    assert images["modes"] == {"grey": 7, "grey 16-bit": 1, "palette": 1}
    assert images["sizes"] == {"8x16": 8, "16x8": 1}
    assert images["converted"]["exif_rotated"] == 1
    assert images["converted"]["channels"] == 8  # the grey ones, to RGB
    pixels = {int(x.numpy().max()) for split in (splits.train, splits.validation, splits.test)
              for x, _ in split}
    assert 77 in pixels and 255 in pixels  # 16-bit scaled; the palette's red kept


def test_the_image_hyperparameters_are_checked_before_any_work():
    import experiments
    for assignment, expected in (("image_channels=2", "expected one of: 0, 1, 3"),
                                 ("test_fraction=1", "expected float > 0 and < 1"),
                                 ("image_size=-1", "expected int >= 0")):
        with pytest.raises(UserError, match=expected):
            resolve.resolve_config(experiments.get("mnist_lenet"), RunOptions(
                experiment="mnist_lenet", hparams=(assignment,)))
    with pytest.raises(UserError, match="needs --data_dir=PATH"):
        sources.load("image_folder", None)


def _options(tmp_path, data_dir, **overrides):
    values = dict(experiment="mnist_lenet", dataset="image_folder", data_dir=str(data_dir),
                  results_dir=str(tmp_path / "results"), batch_size=16, verbose=0)
    return RunOptions(**{**values, **overrides})


@pytest.mark.slow
def test_mnist_lenet_learns_the_folder_and_the_second_run_uses_the_cache(
        tmp_path, class_folders):
    options = _options(tmp_path, class_folders, epochs=15, run_name="first",
                       hparams=("test_fraction=0.2",))
    metrics = dispatch.run(options)
    assert metrics["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    run_dir = tmp_path / "results" / "mnist_lenet" / "first"
    report = json.loads((run_dir / "data_report.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert report["cache"]["hit"] is False and len(report["skipped"]) == 5
    assert config["data"]["layout"] == "class_folders"
    assert config["data"]["source"] == str(class_folders.resolve())
    assert config["data_report"] == report["summary"]
    assert config["class_names"] == sorted(CLASSES) and config["image_shape"] == [28, 28, 1]
    assert metrics["num_test_examples"] == report["totals"]["test"]

    again = dispatch.run(dataclasses_replace(options, epochs=1, run_name="second"))
    second = json.loads((tmp_path / "results" / "mnist_lenet" / "second" /
                         "data_report.json").read_text())
    assert second["cache"]["hit"] is True and second["cache"]["decoded_files"] == 0
    assert second["summary"] == report["summary"]
    assert again["num_test_examples"] == metrics["num_test_examples"]

    # An unfinished run resumed on another folder is refused.
    (run_dir / "metrics.json").unlink()
    other = tmp_path / "other"
    shutil.copytree(class_folders, other)
    with pytest.raises(UserError, match="started on other data"):
        dispatch.run(dataclasses_replace(options, data_dir=str(other)))


def dataclasses_replace(options, **changes):
    import dataclasses
    return dataclasses.replace(options, **changes)


@pytest.mark.slow
def test_split_layout_under_mirrored_strategy_and_a_sweep(tmp_path, split_folders):
    metrics = dispatch.run(_options(tmp_path, split_folders, epochs=1, strategy="mirrored",
                                  run_name="mirrored"))
    assert metrics["num_replicas"] == 2 and metrics["status"] == "completed"
    report = json.loads((tmp_path / "results" / "mnist_lenet" / "mirrored" /
                         "data_report.json").read_text())
    assert report["layout"] == "split_folders" and report["totals"]["test"] == 60
    assert metrics["num_test_examples"] == 60

    dispatch.run(_options(tmp_path, split_folders, mode="tune", tuner="random", max_trials=2,
                        max_epochs=1, sweep_name="sweep"))
    trials = sorted((tmp_path / "results" / "mnist_lenet" / "sweep").glob("trial_*"))
    assert len(trials) == 2
    for trial in trials:  # the folder was decoded by the first run: no trial decodes it
        trial_report = json.loads((trial / "data_report.json").read_text())
        assert trial_report["cache"]["hit"] is True
        assert json.loads((trial / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_cifar_vgg_transfer_runs_on_the_grey_images(tmp_path, class_folders):
    metrics = dispatch.run(_options(
        tmp_path, class_folders, experiment="cifar_vgg_transfer", weights="none",
        epochs=1, batch_size=32, hparams=("head_units=8",)))
    assert [stage["name"] for stage in metrics["stages"]] == ["phase1_head", "phase2_finetune"]
    assert metrics["status"] == "completed"
    run_dir = next((tmp_path / "results" / "cifar_vgg_transfer").iterdir())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["image_shape"] == [32, 32, 3]
    report = json.loads((run_dir / "data_report.json").read_text())
    # Every test image scored once: the accuracy is a whole count of them.
    tested = report["totals"]["test"]
    assert metrics["num_test_examples"] == tested
    assert metrics["test_accuracy"] * tested == pytest.approx(
        round(metrics["test_accuracy"] * tested), abs=1e-6)
    # Grey images to RGB and 28 to 32 pixels: every image converted.
    assert report["images"]["converted"]["any"] == report["images_decoded"]


def test_launch_reports_a_folder_without_classes_in_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "photo.png").write_bytes(b"x")
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--experiment=mnist_lenet",
         "--dataset=image_folder", f"--data_dir={tmp_path / 'data'}",
         f"--results_dir={tmp_path / 'results'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("launch.py: error: --data_dir") and "has no class folders" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()


def test_pipeline_headroom_measures_an_image_folder(tmp_path, class_folders):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pipeline_headroom.py"), "--steps=3",
         "--experiments=mnist_lenet", f"--image_folder={class_folders}",
         f"--results_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "bench" / "pipeline_headroom.json").read_text())
    row = figures["experiments"]["mnist_lenet"]
    assert figures["image_folder"] == str(class_folders)
    assert row["data_source"] == str(class_folders.resolve())
    assert row["ratio"] == pytest.approx(row["pipeline_images_per_second"]
                                         / row["model_images_per_second"])
    assert row["first_read_ratio"] == pytest.approx(row["first_read_images_per_second"]
                                                    / row["model_images_per_second"])
    assert min(row["pipeline_images_per_second"], row["model_images_per_second"],
               row["first_read_images_per_second"]) > 1  # images/s actually measured
    assert "mnist_lenet: pipeline" in result.stdout and "first read" in result.stdout


def test_a_damaged_copy_other_processes_read_is_marked_and_prepared_again(
        class_folders, cache, tmp_path, caplog):
    """A sweep's workers or a cluster's read one copy: the process that finds
    the damage cannot delete it, so it removes the manifest, and no later
    run trusts the copy."""
    from common.data import prepared
    folder = tmp_path / "copy"
    shutil.copytree(class_folders, folder)
    first = image_folder.load(str(folder), image_size=28, image_channels=1)
    (copy,) = _copies(cache)
    assert prepared.explain_data_loss(None) is None  # nothing damaged: not ours to explain
    shard = sorted(copy.glob("train-*.tfrecord"))[0]
    damaged = bytearray(shard.read_bytes())
    damaged[12 + 100] ^= 0xFF
    shard.write_bytes(damaged)
    other = prepared._Lock(copy.with_name(copy.name + ".lock"))
    assert other.acquire(shared=True)  # another reader, as a second process would hold it
    try:
        explained = prepared.explain_data_loss(None)
    finally:
        other.release()
    assert f"the prepared copy {copy} is damaged ({shard.name}: corrupted record at 12); " \
           "other processes read it, so it was marked damaged" in str(explained)
    assert copy.is_dir() and not (copy / "manifest.json").exists()
    again = image_folder.load(str(folder), image_size=28, image_channels=1)
    assert "Ignoring the prepared copy" in caplog.text
    assert again.report["cache"]["hit"] is False and again.num_train == first.num_train
    assert prepared.damaged_shard(copy) is None


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "tune"])
def test_a_record_damaged_in_place_is_one_line_and_the_copy_is_prepared_again(
        class_folders, cache, tmp_path, mode):
    """A byte changed inside a record keeps every size right, so only
    TensorFlow's CRC check finds it, mid-training: one line naming the copy
    and the shard (not "unexpected DataLossError"), the copy deleted, and the
    same command prepares it again and runs."""
    from common.data import prepared
    folder = tmp_path / "copy"
    shutil.copytree(class_folders, folder)
    image_folder.load(str(folder), image_size=28, image_channels=1)
    for fd in prepared._HELD.values():  # as if another, finished process made it
        os.close(fd)
    prepared._HELD.clear()
    (copy,) = _copies(cache)
    shard = sorted(copy.glob("train-*.tfrecord"))[1]
    damaged = bytearray(shard.read_bytes())
    damaged[12 + 100] ^= 0xFF  # a pixel of the first record, which starts at byte 12
    shard.write_bytes(damaged)
    command = [sys.executable, str(ROOT / "launch.py"), "--experiment=mnist_mlp",
               "--dataset=image_folder", f"--data_dir={folder}", f"--mode={mode}",
               f"--results_dir={tmp_path / 'results'}", "--hparams=batch_size=32"]
    command += (["--run_name=damaged", "--epochs=1"] if mode == "train" else
                ["--sweep_name=damaged", "--tuner=random", "--max_trials=1",
                 "--max_epochs=1"])
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"launch.py: error: the prepared copy {copy} is damaged ({shard.name}: "
                    "corrupted record at 12); it was deleted; the same command prepares it "
                    "again (with the same --run_name or --sweep_name it resumes where it "
                    "stopped)")
    assert "Traceback" not in result.stderr and not copy.exists()
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [c.name for c in _copies(cache)] == [copy.name]
    assert prepared.damaged_shard(copy) is None
