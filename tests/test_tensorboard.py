"""What `tensorboard --logdir results` shows, asked through its HTTP API."""

import json
import pathlib
import subprocess
import sys
import time
import urllib.request

import pytest



from common.config.options import RunOptions
from common.modes import dispatch
from tests.fixtures import free_port, write_cifar10_batches, write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def tensorboard(tmp_path):
    """Starts TensorBoard on a folder; yields a function that asks its
    HParams plugin for (hyperparameter names, {session: hparams})."""
    processes = []

    def ask(logdir: pathlib.Path):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}",
             f"--port={port}", "--host=127.0.0.1", "--load_fast=false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(process)
        deadline = time.monotonic() + 90
        while True:
            try:
                experiment = _post(port, "/data/plugin/hparams/experiment",
                                   {"experimentName": ""})
                groups = _post(port, "/data/plugin/hparams/session_groups", {
                    "experimentName": "", "allowedStatuses": [
                        "STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                        "STATUS_RUNNING"],
                    "colParams": [], "startIndex": 0, "sliceSize": 1000})
                if groups.get("sessionGroups"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("TensorBoard did not answer")
            time.sleep(1)
        names = {info["name"] for info in experiment.get("hparamInfos", [])}
        sessions = {group["name"]: group["hparams"] for group in groups["sessionGroups"]}
        return names, sessions

    yield ask
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_every_run_and_trial_shows_with_its_own_hyperparameters(tmp_path, tensorboard):
    results = tmp_path / "results"
    idx = write_idx_dataset(tmp_path / "idx", num_train=200, num_test=40)
    write_cifar10_batches(tmp_path / "cifar", records_per_batch=20)
    common = dict(results_dir=str(results), verbose=0, batch_size=16)
    dispatch.run(RunOptions(experiment="mnist_lenet", data_dir=str(idx), epochs=1,
                          run_name="lenet", **common))
    dispatch.run(RunOptions(experiment="cifar_vgg_transfer", data_dir=str(tmp_path / "cifar"),
                          weights="none", run_name="vgg",
                          hparams=("phase1_epochs=1", "phase2_epochs=0", "head_units=8"),
                          **common))
    dispatch.run(RunOptions(experiment="mnist_lenet", mode="tune", tuner="random",
                          max_trials=2, max_epochs=1, data_dir=str(idx), sweep_name="s",
                          **common))

    names, sessions = tensorboard(results)
    assert set(sessions) == {"lenet (mnist_lenet)", "vgg (cifar_vgg_transfer)",
                             "s/trial_1 (mnist_lenet)", "s/trial_2 (mnist_lenet)"}
    # Every run's own hyperparameters are columns, not just the sweep's three.
    assert {"dropout", "head_units", "unfreeze_from", "learning_rate", "batch_size"} <= names
    assert sessions["vgg (cifar_vgg_transfer)"]["head_units"] == 8
    assert sessions["lenet (mnist_lenet)"]["dropout"] == 0.0

    # A sweep's own folder still compares just its trials.
    _, trials = tensorboard(results / "mnist_lenet" / "s")
    assert set(trials) == {"s/trial_1 (mnist_lenet)", "s/trial_2 (mnist_lenet)"}



