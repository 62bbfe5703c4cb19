"""The data layer against hostile folders and public failure reports (issue
22, item 7): names that are not UTF-8, linked sub-folders and loops, FIFOs
and devices named like images, and a resume on a changed file set. Damaged
prepared copies are in test_image_folder.py."""

import json
import os
import pathlib
import signal

import numpy as np
import pytest
from PIL import Image

from common.config.options import RunOptions
from common.data import image_folder
from common.errors import UserError
from common.modes import dispatch
from common.runs import folder as run_folder

CLASSES = ("cats", "dogs")


def _save(path: pathlib.Path, value: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size, size), np.uint8)).save(path)


def _folder(root: pathlib.Path, per_class: int = 12) -> pathlib.Path:
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            _save(root / name / f"{i:03d}.png", 1000 * c + i)
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(image_folder.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def alarm():
    """Fails a test that blocks (a FIFO read) instead of hanging the suite."""
    def timeout(*_):
        raise TimeoutError("the test blocked for 60 s")
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _reasons(splits) -> dict[str, str]:
    return {s["file"]: s["reason"] for s in splits.report["skipped"]}


def test_names_that_are_not_utf8_are_used_with_escapes(tmp_path):
    root = _folder(tmp_path / "d")
    latin1 = os.fsdecode(b"caf\xe9.png")           # the name's bytes on disk
    _save(root / "cats" / latin1, 77)
    odd_class = root / os.fsdecode(b"r\xe9sum\xe9")
    for i in range(4):
        _save(odd_class / f"{i}.png", 500 + i)
    splits = image_folder.load(str(root), image_size=12, image_channels=1)
    assert splits.class_names == ("cats", "dogs", "r\\xe9sum\\xe9")
    files = {s["file"] for s in splits.report["skipped"]}
    assert not files  # every image used
    counts = splits.report["counts"]
    assert sum(counts[s]["cats"] for s in counts) == 13  # caf\xe9.png included
    assert sum(counts[s]["r\\xe9sum\\xe9"] for s in counts) == 4
    text = json.dumps(splits.report, allow_nan=False)  # strict JSON, no lone surrogates
    text.encode("utf-8")
    # A whole run: config.json, data_report.json, labels.txt all written.
    metrics = dispatch.run(RunOptions(
        experiment="mnist_mlp", dataset="image_folder", data_dir=str(root), epochs=1,
        batch_size=4, verbose=0, results_dir=str(tmp_path / "results"), run_name="odd",
        hparams=("image_size=12",)))
    assert metrics["status"] == "completed"
    run_dir = tmp_path / "results" / "mnist_mlp" / "odd"
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    assert config["class_names"] == ["cats", "dogs", "r\\xe9sum\\xe9"]
    assert "r\\xe9sum\\xe9" in (run_dir / "export" / "labels.txt").read_text(encoding="utf-8")


def test_a_linked_sub_folder_is_read_and_a_loop_is_skipped(tmp_path):
    root = _folder(tmp_path / "d")
    elsewhere = tmp_path / "more_cats"
    for i in range(5):
        _save(elsewhere / f"{i}.png", 300 + i)
    (root / "cats" / "extra").symlink_to(elsewhere, target_is_directory=True)
    (root / "cats" / "extra_again").symlink_to(elsewhere, target_is_directory=True)
    (root / "dogs" / "loop").symlink_to(root / "dogs", target_is_directory=True)
    splits = image_folder.load(str(root), image_size=12, image_channels=1)
    counts = splits.report["counts"]
    assert sum(counts[s]["cats"] for s in counts) == 12 + 5
    reasons = _reasons(splits)
    assert reasons["dogs/loop/"] == "a link to a folder already read (a loop)"
    assert reasons["cats/extra_again/"] == "a link to a folder already read (a loop)"
    assert sum(counts[s]["dogs"] for s in counts) == 12


def test_fifos_and_devices_named_like_images_are_skipped_not_read(tmp_path, alarm):
    root = _folder(tmp_path / "d")
    os.mkfifo(root / "cats" / "x.png")
    (root / "dogs" / "zero.png").symlink_to("/dev/zero")
    (root / "dogs" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    splits = image_folder.load(str(root), image_size=12, image_channels=1)
    reasons = _reasons(splits)
    assert reasons["cats/x.png"] == "a FIFO, not a regular file"
    assert reasons["dogs/zero.png"] == "a character device, not a regular file"
    assert reasons["dogs/gone.png"].startswith("unreadable: No such file")
    assert splits.num_train + splits.num_validation + splits.num_test == 24


def _copies(cache: pathlib.Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.is_dir())


def _trained_run(tmp_path: pathlib.Path):
    """A finished one-epoch run "r" on a small image folder: (the folder,
    the run's options, the run folder)."""
    root = _folder(tmp_path / "d")
    options = RunOptions(experiment="mnist_mlp", dataset="image_folder", data_dir=str(root),
                         results_dir=str(tmp_path / "results"), run_name="r", epochs=1,
                         batch_size=4, verbose=0, hparams=("image_size=12",))
    dispatch.run(options)
    return root, options, tmp_path / "results" / "mnist_mlp" / "r"


def test_a_resume_on_a_changed_file_set_is_refused_naming_the_change(tmp_path, cache):
    """Refused before the changed folder is prepared (it was refused only
    after: minutes of decoding on a large folder)."""
    root, options, run_dir = _trained_run(tmp_path)
    (run_dir / "metrics.json").unlink()  # as if killed before the end
    _save(root / "cats" / "new1.png", 71)
    _save(root / "cats" / "new2.png", 72)
    (root / "dogs" / "000.png").unlink()
    prepared_before = _copies(cache)
    with pytest.raises(UserError) as error:
        dispatch.run(options)
    assert _copies(cache) == prepared_before and len(prepared_before) == 1
    message = str(error.value)
    assert "\n" not in message and "image folder changed" in message
    assert "2 image file(s) added to 'cats'" in message
    assert "1 removed from 'dogs'" in message and "(25 image files, was 24)" in message


def test_eval_after_the_folder_changed_writes_its_own_file_naming_the_change(tmp_path):
    """--mode=eval on the run's own folder, since changed, scored other test
    files and wrote them over eval.json beside the recorded accuracy."""
    root, options, run_dir = _trained_run(tmp_path)
    evaluate = RunOptions(experiment="mnist_mlp", mode="eval", run_name="r",
                          results_dir=options.results_dir, verbose=0)
    same = dispatch.run(evaluate)
    assert same["data"]["same_as_run"] and (run_dir / "eval.json").is_file()
    before = (run_dir / "eval.json").read_bytes()
    for i in range(6):
        _save(root / "dogs" / f"new{i}.png", 80 + i)
    changed = dispatch.run(evaluate)
    assert changed["data"]["same_as_run"] is False
    assert changed["data"]["differs"] == ("the image folder changed since the run: 6 image "
                                          "file(s) added to 'dogs' (30 image files, was 24)")
    assert (run_dir / f"eval-image_folder-{changed['data']['key']}.json").is_file()
    assert (run_dir / "eval.json").read_bytes() == before


def test_describe_change_takes_a_damaged_record():
    now = {"files": 3, "sha256": "x", "classes": {"a": [3, "d"]}}
    assert image_folder.describe_change(now, now) == ""
    assert image_folder.describe_change(None, now) == "the run did not record its image files"
    assert image_folder.describe_change({"classes": {"a": "junk"}}, now).startswith(
        "3 image file(s) added to 'a'")



def test_claiming_a_run_compares_the_file_sets(tmp_path):
    now = {"files": 3, "sha256": "x", "classes": {"a": [3, "d"]}}
    before = {"files": 2, "sha256": "y", "classes": {"a": [2, "c"]}}
    path, _, lock = run_folder.claim_run_dir(tmp_path, "r", {}, {"file_set": before})
    (path / "config.json").write_text(json.dumps({"hparams": {}, "data": {"file_set": before}}))
    lock.release()
    with pytest.raises(UserError, match="1 image file\\(s\\) added to 'a' \\(3 image files, "
                                        "was 2\\)"):
        run_folder.claim_run_dir(tmp_path, "r", {}, {"file_set": now})
    _, resuming, lock = run_folder.claim_run_dir(tmp_path, "r", {}, {"file_set": before})
    assert resuming
    lock.release()
