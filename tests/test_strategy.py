import json

import pytest
import tensorflow as tf

from common.distribute import strategy as strategy_lib, tf_config
from common.errors import UserError
from tests.conftest import NUM_TEST_CPU_DEVICES


def test_default_strategy_is_tensorflows_own_and_runs_one_replica():
    strategy = strategy_lib.get_strategy("default")
    assert strategy is tf.distribute.get_strategy()
    assert strategy_lib.strategy_name(strategy) == "DefaultStrategy"
    values = strategy.experimental_local_results(strategy.run(lambda: tf.constant(3.0)))
    assert [float(v) for v in values] == [3.0]  # one replica, the step ran once


def test_mirrored_runs_one_replica_per_logical_cpu():
    strategy = strategy_lib.get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == NUM_TEST_CPU_DEVICES

    def step():
        context = tf.distribute.get_replica_context()
        return tf.constant(1.0) + tf.cast(context.replica_id_in_sync_group, tf.float32)

    per_replica = strategy.run(step)
    values = strategy.experimental_local_results(per_replica)
    assert [float(v) for v in values] == [1.0, 2.0]
    devices = {v.device for v in values}
    assert len(devices) == NUM_TEST_CPU_DEVICES  # really on distinct devices
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    assert float(total) == 3.0


def test_one_device_cpu():
    strategy = strategy_lib.get_strategy("one_device", device="cpu")
    assert strategy.num_replicas_in_sync == 1


def test_one_device_gpu_without_gpu_is_one_line():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="--device=gpu requested but this machine has 0 GPU"):
        strategy_lib.get_strategy("one_device", device="gpu")


def test_bad_device_name():
    with pytest.raises(UserError, match="'npu'"):
        strategy_lib.get_strategy("one_device", device="npu")


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(UserError, match="'horovod'.*default, one_device, mirrored"):
        strategy_lib.get_strategy("horovod")


def test_tpu_without_tpu_is_one_line():
    with pytest.raises(UserError, match="no TPU found at --tpu='local'") as raised:
        strategy_lib.get_strategy("tpu", tpu="")
    assert "\n" not in str(raised.value)


WORKERS = {"worker": ["127.0.0.1:1111", "127.0.0.1:1112"]}


@pytest.mark.parametrize("raw, needle", [
    ("{not json", "TF_CONFIG is not JSON"),
    (json.dumps({"cluster": WORKERS}), "TF_CONFIG has no task"),
    (json.dumps({"cluster": WORKERS, "task": {"type": "worker", "index": 2}}),
     "task index 2 is outside cluster.worker, which has 2 address(es) (index 0 to 1)"),
    (json.dumps({"cluster": {**WORKERS, "evaluator": ["127.0.0.1:1113"]},
                 "task": {"type": "evaluator", "index": 0}}), "'evaluator' job"),
    (json.dumps({"cluster": WORKERS, "task": {"type": "evaluator", "index": 0}}),
     "task is an evaluator"),
    (json.dumps({"cluster": {"worker": "127.0.0.1:1111,127.0.0.1:1112"},
                 "task": {"type": "worker", "index": 0}}), "must be a list of"),
    (json.dumps({"cluster": {"chief": ["a:1", "b:2"]}, "task": {"type": "chief"}}),
     "more than one chief"),
])
def test_tf_config_mistakes_are_one_line(raw, needle):
    with pytest.raises(UserError) as raised:
        tf_config.parse_tf_config(raw)
    assert needle in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("cluster, task", [
    ({"chief": ["127.0.0.1:1111"]}, {"type": "chief", "index": 0}),
    ({"chief": ["127.0.0.1:1111"], "worker": ["127.0.0.1:1112"]}, {"type": "worker", "index": 0}),
    (WORKERS, {"type": "worker", "index": 1}),
])
def test_valid_tf_configs_are_accepted(cluster, task):
    config = tf_config.parse_tf_config(json.dumps({"cluster": cluster, "task": task}))
    assert config["task"] == task


def test_global_batch_must_divide_across_replicas():
    strategy = strategy_lib.get_strategy("mirrored")
    assert strategy_lib.check_global_batch(64, strategy) == 32
    with pytest.raises(UserError, match="batch size 33 does not divide across 2 replicas"):
        strategy_lib.check_global_batch(33, strategy)
