"""Run folders are input (docs/security.md): a run someone hands you can run
no code, write outside its folder, or break a command.

Each hostile run is made here by hand, around a tiny real model; where a
payload could run, it would create a marker file, and the test asserts that
the marker is absent afterwards.
"""

import json
import os
import pathlib
import re
import sys

import numpy as np
import pytest
import tf_keras

from common.config.options import RunOptions
from common.errors import UserError
from common.modes import dispatch
from tests.fixtures import write_idx_dataset

CLASS_NAMES = [str(i) for i in range(10)]  # MNIST's, the handed-over runs' dataset


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), num_train=120, num_test=40)


def _tiny_model(marker=None) -> tf_keras.Model:
    inputs = tf_keras.Input(shape=(28, 28, 1), name="image")
    x = tf_keras.layers.Rescaling(1.0 / 255)(inputs)
    if marker is not None:
        def touch(t, path=str(marker)):  # the payload: runs when the layer is called
            open(path, "w").close()
            return t
        x = tf_keras.layers.Lambda(touch, name="payload")(x)
    x = tf_keras.layers.Flatten()(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(10, name="logits")(x))


def _run(results: pathlib.Path, name: str = "shared", *, model_file: str = "model/model.keras",
         fmt: str = "keras", marker=None, save_as: str = None, **entry) -> pathlib.Path:
    """A finished mnist_lenet run folder someone handed over, its model saved
    as `save_as` (a format suffix) under the name `model_file`."""
    run_dir = results / "mnist_lenet" / name
    (run_dir / "model").mkdir(parents=True)
    model = _tiny_model(marker)
    written = run_dir / model_file
    suffix = save_as or written.suffix
    temporary = written.with_name("saving" + suffix)
    model.save(temporary)
    temporary.rename(written)
    if marker is not None:
        pathlib.Path(marker).unlink()  # building the model ran it once
    (run_dir / "config.json").write_text(json.dumps({
        "experiment": "mnist_lenet", "hparams": {"dataset": "mnist"},
        "class_names": CLASS_NAMES, "image_shape": [28, 28, 1]}))
    (run_dir / "metrics.json").write_text(json.dumps({
        "status": "completed", "test_accuracy": 0.1,
        "models": [{"name": "model", "format": fmt, "path": model_file, **entry}]}))
    return run_dir


def _declare(run_dir: pathlib.Path, **entry) -> None:
    """Rewrites the run's metrics.json so that its model entry has `entry`."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["models"][0].update(entry)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def _configure(run_dir: pathlib.Path, **fields) -> None:
    """Rewrites the run's config.json with `fields`."""
    config = json.loads((run_dir / "config.json").read_text())
    config.update(fields)
    (run_dir / "config.json").write_text(json.dumps(config))


def _options(results, mode, **values):
    return RunOptions(experiment="mnist_lenet", mode=mode, run_name="shared",
                      results_dir=str(results), verbose=0, **values)


def _mode_options(mode, results, idx_dir, tmp_path):
    extra = {}
    if mode == "eval":
        extra = {"data_dir": str(idx_dir)}
    if mode == "predict":
        image = tmp_path / "in.png"
        tf_keras.utils.save_img(image, np.zeros((28, 28, 1), np.uint8), scale=False)
        extra = {"inputs": str(image), "output": str(tmp_path / "out.csv")}
    return _options(results, mode, **extra)


# --- 1. no code reference from a data file ----------------------------------

def test_a_module_named_in_metrics_json_is_never_imported(tmp_path, monkeypatch):
    payload = tmp_path / "payloads"
    payload.mkdir()
    marker = tmp_path / "imported"
    (payload / "evil_scope.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef scope():\n    raise SystemExit\n")
    monkeypatch.syspath_prepend(str(payload))
    results = tmp_path / "results"
    _run(results, load_scope="evil_scope:scope")
    with pytest.raises(UserError, match="needs its experiment's custom objects to load, and "
                                        "this experiment declares none"):
        dispatch.run(_options(results, "export"))
    assert not marker.exists()
    assert "evil_scope" not in sys.modules


# --- 2. models load in safe mode, whatever their container -------------------

@pytest.mark.parametrize("mode", ["export", "eval", "predict"])
def test_an_hdf5_model_with_a_lambda_is_refused_in_every_mode(tmp_path, idx_dir, mode):
    marker = tmp_path / "ran"
    results = tmp_path / "results"
    _run(results, model_file="model/model.h5", fmt="h5", marker=marker)
    with pytest.raises(UserError) as raised:
        dispatch.run(_mode_options(mode, results, idx_dir, tmp_path))
    message = str(raised.value)
    assert "holds Python code (Lambda layer 'payload'" in message
    assert "--unsafe_deserialization" in message and "\n" not in message
    assert not marker.exists()


def test_an_hdf5_file_named_keras_is_refused(tmp_path):
    marker = tmp_path / "ran"
    results = tmp_path / "results"
    _run(results, model_file="model/model.keras", save_as=".h5", marker=marker)
    with pytest.raises(UserError, match="is declared as .keras but is not a .keras zip file"):
        dispatch.run(_options(results, "export"))
    assert not marker.exists()


def test_a_keras_zip_with_a_lambda_is_refused_too(tmp_path):
    marker = tmp_path / "ran"
    results = tmp_path / "results"
    _run(results, marker=marker)
    with pytest.raises(UserError, match="Lambda layer 'payload'"):
        dispatch.run(_options(results, "export"))
    assert not marker.exists()


def test_unsafe_deserialization_loads_a_trusted_run(tmp_path):
    marker = tmp_path / "ran"
    results = tmp_path / "results"
    run_dir = _run(results, model_file="model/model.h5", fmt="h5", marker=marker)
    dispatch.run(_options(results, "export", unsafe_deserialization=True))
    assert marker.exists()  # the user said the run is trusted: its code ran
    assert (run_dir / "export" / "saved_model" / "1").is_dir()
    # The next command, without the flag, is safe again.
    marker.unlink()
    with pytest.raises(UserError, match="--unsafe_deserialization"):
        dispatch.run(_options(results, "export"))
    assert not marker.exists()


@pytest.mark.parametrize("through", ["init_from", "hparams_file"])
def test_init_from_a_run_with_a_lambda_is_refused(tmp_path, idx_dir, through):
    marker = tmp_path / "ran"
    results = tmp_path / "results"
    run_dir = _run(results, model_file="model/model.h5", fmt="h5", marker=marker)
    values = {"init_from": str(run_dir)}
    if through == "hparams_file":
        best = tmp_path / "best_hparams.json"
        best.write_text(json.dumps({"hparams": {"init_from": str(run_dir)}}))
        values = {"hparams_file": str(best)}
    with pytest.raises(UserError, match="holds Python code"):
        dispatch.run(RunOptions(experiment="pruning_qat", dataset="mnist",
                                data_dir=str(idx_dir), results_dir=str(tmp_path / "out"),
                                verbose=0, **values))
    assert not marker.exists()
    assert not (tmp_path / "out").exists()  # refused before any folder was written


# --- 3. the lock follows no link --------------------------------------------

def test_a_lock_linked_to_another_file_leaves_it_alone(tmp_path, idx_dir):
    results = tmp_path / "results"
    run_dir = _run(results)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, run_dir / ".lock")
    with pytest.raises(UserError, match=r"\.lock is a symbolic link"):
        dispatch.run(_options(results, "export"))
    # A training command naming the finished run is refused before the lock.
    with pytest.raises(UserError, match="already finished"):
        dispatch.run(_options(results, "train", data_dir=str(idx_dir)))
    assert victim.read_text() == "precious\n"


# --- 4. declared paths stay inside the run folder ---------------------------

@pytest.mark.parametrize("path, needle", [
    ("/etc/passwd", "is not a path inside the run folder"),
    ("../elsewhere/model/model.keras", "leads outside the run folder"),
    ("model/link.keras", "leads outside the run folder"),
])
def test_a_model_path_that_leaves_the_run_folder_is_refused(tmp_path, path, needle):
    results = tmp_path / "results"
    elsewhere = _run(results, name="elsewhere")
    run_dir = _run(results)
    os.symlink(elsewhere / "model" / "model.keras", run_dir / "model" / "link.keras")
    _declare(run_dir, path=path)
    with pytest.raises(UserError, match=needle):
        dispatch.run(_options(results, "export"))
    assert not (elsewhere / "export").exists() and not (run_dir / "export").exists()


@pytest.mark.parametrize("models, needle", [
    ('"model/model.keras"', '"models" is not a list of objects'),
    ('{"name": "model"}', '"models" is not a list of objects'),
    ('[{"name": "model", "format": "keras"}]', "path None is not a path inside"),
    ('[{"format": "keras", "path": "model/model.keras"}]', "a model entry has no name"),
    ('[{"name": "model", "format": "pickle", "path": "model/model.keras"}]',
     "in format 'pickle'; known formats: keras, h5, tflite, saved_model"),
])
def test_a_malformed_models_list_is_one_line(tmp_path, models, needle):
    results = tmp_path / "results"
    run_dir = _run(results)
    (run_dir / "metrics.json").write_text('{"status": "completed", "models": ' + models + "}")
    with pytest.raises(UserError, match=needle) as raised:
        dispatch.run(_options(results, "export"))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "huge"])
def test_metrics_json_that_is_no_regular_file_is_one_line(tmp_path, kind):
    from common.runs import files
    results = tmp_path / "results"
    run_dir = _run(results)
    metrics = run_dir / "metrics.json"
    metrics.unlink()
    if kind == "fifo":
        os.mkfifo(metrics)
        needle = "is not a regular file"
    elif kind == "symlink":
        os.symlink("/dev/zero", metrics)
        needle = "is a symbolic link"
    else:
        metrics.write_bytes(b" " * (files.MAX_JSON_BYTES + 1))
        needle = "more than the"
    with pytest.raises(UserError, match=needle):
        dispatch.run(_options(results, "export"))


# --- 6. predict's --output writes only its own file -------------------------

def _png(tmp_path) -> pathlib.Path:
    image = tmp_path / "in.png"
    tf_keras.utils.save_img(image, np.zeros((28, 28, 1), np.uint8), scale=False)
    return image


@pytest.mark.parametrize("target, needle", [
    ("other_metrics", "metrics.json is a run folder's own file"),
    ("own_config", "config.json is a run folder's own file"),
    ("device", "exists and is not a regular file"),
    ("notes", "exists and is not a predictions CSV, so it is not replaced"),
])
def test_predict_output_never_replaces_what_predict_did_not_write(tmp_path, target, needle):
    results = tmp_path / "results"
    run_dir = _run(results)
    other = _run(results, name="other")
    paths = {"other_metrics": other / "metrics.json", "own_config": run_dir / "config.json",
             "device": tmp_path / "null", "notes": tmp_path / "notes.txt"}
    output = paths[target]
    if target == "device":
        os.mknod(output, 0o666 | 0o020000, os.makedev(1, 3))  # what /dev/null is
    elif target == "notes":
        output.write_text("my notes\n")
    before = output.read_bytes() if target != "device" else None
    with pytest.raises(UserError, match=needle):
        dispatch.run(_options(results, "predict", inputs=str(_png(tmp_path)),
                              output=str(output)))
    if target == "device":
        assert output.is_char_device()
    else:
        assert output.read_bytes() == before


def test_predict_replaces_its_own_csv_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    results = tmp_path / "results"
    _run(results)
    output = tmp_path / "out.csv"
    options = _options(results, "predict", inputs=str(_png(tmp_path)), output=str(output))
    dispatch.run(options)
    first = output.read_text()
    assert first.startswith("file,class,probability")
    dispatch.run(options)  # its own CSV: replaced
    assert output.read_text() == first

    def full(*args):
        raise OSError(28, "No space left on device", str(output))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(UserError, match="No space left on device"):
        dispatch.run(options)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert output.read_text() == first


def test_predict_on_no_image_keeps_the_earlier_predictions(tmp_path):
    results = tmp_path / "results"
    run_dir = _run(results)
    dispatch.run(_options(results, "predict", inputs=str(_png(tmp_path))))
    earlier = (run_dir / "predictions.csv").read_text()
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    with pytest.raises(UserError, match="nothing written to"):
        dispatch.run(_options(results, "predict", inputs=str(notes)))
    assert (run_dir / "predictions.csv").read_text() == earlier


# --- 7. one hostile or damaged file breaks nothing else ---------------------

def _hostile_report_folder(results: pathlib.Path) -> None:
    _run(results, name="good")
    bad = {
        "loss_object": {"status": "completed", "test_accuracy": 0.5,
                        "history": [{"epoch": 0, "loss": {"x": 1}}]},
        "stages_number": {"status": "completed", "test_accuracy": 0.5, "stages": 3},
        "models_string": {"status": "completed", "test_accuracy": 0.5, "models": "m"},
        "dataset_list": {"status": "completed", "test_accuracy": 0.5, "dataset": ["a"]},
    }
    for name, metrics in bad.items():
        folder = results / "mnist_lenet" / name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(metrics))
    fifo = results / "mnist_lenet" / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "metrics.json")
    zero = results / "mnist_lenet" / "zero"
    zero.mkdir()
    os.symlink("/dev/zero", zero / "metrics.json")
    html = results / "mnist_lenet" / "html|<script>alert(1)<"
    html.mkdir()
    (html / "metrics.json").write_text(json.dumps({
        "status": "completed", "test_accuracy": 0.5,
        "dataset": "x\n## injected <img src=x onerror=alert(1)>", "strategy": "a|b"}))


def test_the_report_skips_hostile_runs_and_escapes_what_it_writes(tmp_path):
    import subprocess
    results = tmp_path / "results"
    _hostile_report_folder(results)
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "common.runs.report",
                           f"--results_dir={results}"], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    skipped = [line for line in done.stderr.splitlines() if line.startswith("report: skipping")]
    assert len(skipped) == 6, done.stderr
    for needle in ("its history holds something other than values",
                   "its stages is not a list of objects", "its models is not a list",
                   "its dataset is a list", "is not a regular file", "is a symbolic link"):
        assert any(needle in line for line in skipped), (needle, skipped)
    markdown = (results / "report.md").read_text()
    assert "<script>" not in markdown and "<img" not in markdown
    assert "\n## injected" not in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| html")]
    assert len(table) == 1
    # Escaped pipes do not split cells: the row has as many cells as the header.
    cells = [c for c in re.split(r"(?<!\\)\|", table[0])[1:-1]]
    header = next(line for line in markdown.splitlines() if line.startswith("| run |"))
    assert len(cells) == header.count("|") - 1


def test_a_resume_over_a_config_whose_hparams_is_a_list_is_one_line(tmp_path, idx_dir):
    results = tmp_path / "results"
    run_dir = results / "mnist_lenet" / "half"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text('{"hparams": [1, 2], "data": {}}')
    with pytest.raises(UserError, match="config.json is damaged \\(its 'hparams' is not an "
                                        "object\\); rerun with --restart"):
        dispatch.run(RunOptions(experiment="mnist_lenet", run_name="half", epochs=1,
                                data_dir=str(idx_dir), results_dir=str(results), verbose=0))


@pytest.mark.parametrize("shape", [[28, 28, "x"], [28, 28], [32, 32, 3], "28x28"])
def test_an_edited_image_shape_is_one_line_on_export(tmp_path, shape):
    results = tmp_path / "results"
    run_dir = _run(results)
    _configure(run_dir, image_shape=shape)
    with pytest.raises(UserError, match="is not its model's input shape"):
        dispatch.run(_options(results, "export"))


@pytest.mark.parametrize("name", ["Bag\nShoe", "Bag\u2028Shoe"])
def test_a_class_name_with_a_line_break_is_refused(tmp_path, name):
    results = tmp_path / "results"
    run_dir = _run(results)
    _configure(run_dir, class_names=CLASS_NAMES[:9] + [name])
    with pytest.raises(UserError, match="a class name must be one line of printable text"):
        dispatch.run(_options(results, "export"))
    assert not (run_dir / "export").exists()
    folder = tmp_path / "images"
    for label in ("Coat", name):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            tf_keras.utils.save_img(folder / label / f"{i}.png",
                                    np.full((28, 28, 1), 40 * i, np.uint8), scale=False)
    with pytest.raises(UserError, match="bad class name .* must be one line of printable text"):
        dispatch.run(RunOptions(experiment="mnist_lenet", dataset="image_folder",
                                data_dir=str(folder), results_dir=str(tmp_path / "out"),
                                epochs=1, verbose=0))
    assert not (tmp_path / "out").exists()


# --- 8. predict's inputs ----------------------------------------------------

def test_a_glob_through_link_loops_ends_and_finds_each_file_once(tmp_path):
    import concurrent.futures
    from common.deploy import predict
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    _png(root / "a")
    os.symlink(root, root / "a" / "up")
    os.symlink(root / "a", root / "a" / "self")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        found = pool.submit(predict.find_images, f"{root}/**/*.png").result(timeout=30)
    assert found == [root / "a" / "in.png"]


def test_a_fifo_as_inputs_is_not_a_regular_file(tmp_path):
    from common.deploy import predict
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UserError, match="not a regular file or a folder"):
        predict.find_images(str(tmp_path / "pipe"))


# --- holes found by attacking the first version ------------------------------

def test_a_file_that_is_hdf5_and_zip_at_once_is_refused(tmp_path):
    marker = tmp_path / "ran"
    results = tmp_path / "results"
    run_dir = _run(results, model_file="model/model.h5", fmt="h5", marker=marker)
    harmless = tmp_path / "harmless.keras"
    _tiny_model().save(harmless)
    polyglot = run_dir / "model" / "model.bin"
    polyglot.write_bytes((run_dir / "model" / "model.h5").read_bytes() + harmless.read_bytes())
    for fmt in ("keras", "h5"):
        _declare(run_dir, format=fmt, path="model/model.bin")
        with pytest.raises(UserError, match="is both an HDF5 file and a zip"):
            dispatch.run(_options(results, "export"))
    assert not marker.exists()


def test_a_keras_name_linked_to_another_file_is_judged_by_that_file(tmp_path):
    marker = tmp_path / "ran"
    results = tmp_path / "results"
    run_dir = _run(results, model_file="model/real.bin", save_as=".h5", marker=marker)
    os.symlink("real.bin", run_dir / "model" / "model.keras")
    _declare(run_dir, path="model/model.keras")
    with pytest.raises(UserError, match="real.bin is declared as .keras but is not a .keras zip"):
        dispatch.run(_options(results, "predict", inputs=str(_png(tmp_path))))
    assert not marker.exists()


@pytest.mark.parametrize("config, found", [
    ({"class_name": "RNN", "config": {"cell": {"class_name": "ResidualWrapper", "config": {
        "residual_fn": ["bytecode", None, None], "residual_fn_type": "lambda"}}}},
     "a Python function (residual_fn_type)"),
    ({"class_name": "DropoutWrapper", "config": {"dropout_fn_type": "lambda"}},
     "a Python function (dropout_fn_type)"),
    ({"class_name": "Functional", "module": "results.mnist_lenet.shared.payload"},
     "module 'results.mnist_lenet.shared.payload'"),
    ({"layers": [{"class_name": "TimeDistributed", "config": {"layer": {
        "class_name": "Lambda", "config": {"name": "inner"}}}}]}, "Lambda layer 'inner'"),
    ({"class_name": "__lambda__", "config": {"value": ["bytecode"]}},
     "a serialised Python function"),
])
def test_every_kind_of_code_in_a_model_configuration_is_found(config, found):
    from common.runs import saved
    assert found in set(saved._code_layers(config))


def test_the_project_models_name_no_foreign_module():
    import experiments
    from common.runs import saved
    model = experiments.get("mnist_lenet").build_model({"dropout": 0.0}, (28, 28, 1), 10)
    assert list(saved._code_layers(json.loads(model.to_json()))) == []


def test_a_run_folder_that_is_a_link_is_not_written_through(tmp_path, idx_dir):
    results = tmp_path / "results"
    outside = tmp_path / "outside"
    outside.mkdir()
    (results / "mnist_lenet").mkdir(parents=True)
    os.symlink(outside, results / "mnist_lenet" / "linked")
    with pytest.raises(UserError, match="is a symbolic link; a run folder must be a folder"):
        dispatch.run(RunOptions(experiment="mnist_lenet", run_name="linked", epochs=1,
                                data_dir=str(idx_dir), results_dir=str(results), verbose=0))
    assert list(outside.iterdir()) == []


def test_the_report_replaces_links_instead_of_writing_through_them(tmp_path):
    from common.runs import report
    results = tmp_path / "results"
    _run(results)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, results / "report.md")
    os.symlink(victim, results / "report_mnist_lenet_curves.png")
    text, markdown = report.build_report(results)
    from common.runs import files
    files.write_text_atomic(results / "report.md", markdown)
    assert victim.read_text() == "precious\n"
    assert not (results / "report.md").is_symlink()


def test_a_lock_hard_linked_to_another_file_leaves_it_alone(tmp_path):
    results = tmp_path / "results"
    run_dir = _run(results)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, run_dir / ".lock")
    with pytest.raises(UserError, match="hard link to another file"):
        dispatch.run(_options(results, "export"))
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("payload, needle", [
    ('{"learning_rate": NaN}', "is not JSON"),
    ('{"init_from": {"path": "x"}}', "'init_from' is not a number, a string or true/false"),
    ("[" * 100000 + "]" * 100000, "nests too deeply"),
])
def test_a_hostile_hparams_file_is_one_line(tmp_path, payload, needle):
    from common.config import hparams
    path = tmp_path / "best_hparams.json"
    path.write_text(payload)
    with pytest.raises(UserError, match=needle):
        hparams.read_file(str(path))


def test_a_path_with_a_nul_and_class_names_with_escape_codes_are_one_line(tmp_path):
    results = tmp_path / "results"
    run_dir = _run(results)
    _declare(run_dir, path="model/model.keras\u0000")
    with pytest.raises(UserError, match="is not a path inside the run folder"):
        dispatch.run(_options(results, "export"))
    _declare(run_dir, path="model/model.keras")
    _configure(run_dir, class_names=["\x1b[2J\x1b[31mFAKE\x1b[0m"] + CLASS_NAMES[1:])
    with pytest.raises(UserError, match="one line of printable text"):
        dispatch.run(_options(results, "predict", inputs=str(_png(tmp_path))))
