"""Data-parallel training: 4 devices give the single-device weights; the plan's checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from arcface import distribution as D
from arcface.config import finalize_stage1, validate_config
from arcface.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEVICES = 4


def stage1(**over):
    raw = dict(batch_size=8, sub_name="t", backbone_type="TinyNet")
    raw.update(over)
    return finalize_stage1(validate_config(raw))


@pytest.fixture(scope="module")
def four_device_runs(tmp_path_factory):
    """The child script's three runs (single, parallel, resumed) on 4 virtual CPU devices.

    TensorFlow runs without random flips: its replicas draw augmentation per replica, so
    only JAX (one global step) is bitwise the single-device run with them on."""
    out = tmp_path_factory.mktemp("multidevice")
    backend = keras.backend.backend()
    cmd = [sys.executable, str(REPO / "tests" / "multidevice_train.py"), str(out), "--devices", str(DEVICES)]
    if backend == "jax":
        cmd.append("--flip")
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {name: dict(np.load(out / f"{name}.npz")) for name in ("single", "parallel", "resumed")}
    return runs, json.loads((out / "summary.json").read_text()), done.stdout


def test_four_devices_give_the_single_device_weights(four_device_runs):
    runs, summary, stdout = four_device_runs
    assert summary["single"]["weight_devices"] == 1
    assert summary["parallel"]["weight_devices"] == DEVICES   # the weights really live on 4 devices
    assert f"data parallel over {DEVICES} devices" in stdout
    single, parallel = runs["single"], runs["parallel"]
    assert single.keys() == parallel.keys() and len(single) > 10   # model and optimizer variables
    moved = 0
    for key in single:
        np.testing.assert_allclose(parallel[key], single[key], rtol=1e-4, atol=2e-5, err_msg=key)
        moved += not np.allclose(single[key], 0)
    assert moved > 10
    np.testing.assert_allclose(summary["parallel"]["loss"], summary["single"]["loss"], rtol=1e-5)
    # verification during training ran on the distributed backbone too, with the same results
    single_eval, parallel_eval = summary["single"]["verification"], summary["parallel"]["verification"]
    assert [h["step"] for h in parallel_eval] == [h["step"] for h in single_eval] == [4, 8]
    for a, b in zip(single_eval, parallel_eval):
        assert a["val/mean_accuracy"] == pytest.approx(b["val/mean_accuracy"], abs=1e-6)


def test_a_data_parallel_checkpoint_resumes_on_one_device(four_device_runs):
    runs, summary, _ = four_device_runs
    first, second = summary["resumed"]["first"], summary["resumed"]["second"]
    assert first["end_step"] == 4 and first["weight_devices"] == DEVICES
    assert second["start_step"] == 4 and second["end_step"] == 8 and second["weight_devices"] == 1
    for key, value in runs["single"].items():
        np.testing.assert_allclose(runs["resumed"][key], value, rtol=1e-4, atol=2e-5, err_msg=key)


def test_auto_and_none_use_one_device_here():
    cfg = stage1()
    plan = D.plan_distribution(cfg)   # this process sees one device
    assert plan.kind == "none" and plan.replicas == 1 and plan.is_chief
    assert D.plan_distribution(stage1(distribution="none")).kind == "none"
    one = D.plan_distribution(stage1(distribution="data_parallel"))
    assert one.kind == "data_parallel" and one.replicas == len(D.available_devices())


def test_plan_checks_devices_and_batch(monkeypatch):
    four = [f"dev:{i}" for i in range(4)]
    monkeypatch.setattr(D, "available_devices", lambda backend=None: four)
    plan = D.plan_distribution(stage1(batch_size=12))
    assert plan.kind == "data_parallel" and plan.devices == tuple(four)
    assert D.plan_distribution(stage1(batch_size=12, num_devices=2)).devices == ("dev:0", "dev:1")
    assert D.plan_distribution(stage1(batch_size=12, distribution="none")).devices == ("dev:0",)
    with pytest.raises(ConfigError, match="'batch_size' \\(10\\).*4 devices"):
        D.plan_distribution(stage1(batch_size=10))
    with pytest.raises(ConfigError, match="'num_devices' is 5 .* 4 device"):
        D.plan_distribution(stage1(batch_size=10, num_devices=5))
    # one device asked for: auto falls back to one device, any batch
    assert D.plan_distribution(stage1(batch_size=10, num_devices=1)).kind == "none"


def test_config_keys_are_validated():
    with pytest.raises(ConfigError, match="'distribution' must be one of"):
        stage1(distribution="model_parallel")
    with pytest.raises(ConfigError, match="'num_devices' must be > 0"):
        stage1(num_devices=0)
    assert stage1()["distribution"] == "auto" and stage1()["num_devices"] is None


def test_process_slice_splits_the_global_batch():
    hosts = [D.DistributionPlan("data_parallel", "jax", ("a", "b", "c", "d"), i, 2) for i in range(2)]
    assert [D.process_slice(8, p) for p in hosts] == [slice(0, 4), slice(4, 8)]
    assert not hosts[1].is_chief
    assert D.process_slice(8, D.DistributionPlan("none", "jax", ("a",))) == slice(0, 8)
    with pytest.raises(ConfigError, match="batch_size \\(7\\).*2 hosts"):
        D.process_slice(7, hosts[0])


def test_loader_rows_are_the_slice_of_the_full_batch(identity_folder):
    from arcface.data.loader import make_train_loader, open_image_source

    source = open_image_source(identity_folder)
    full = make_train_loader(source, 8, seed=2, stop_step=3, input_size=32, workers=1, engine="numpy")
    parts = [make_train_loader(source, 8, seed=2, stop_step=3, input_size=32, workers=1, engine="numpy",
                               rows=slice(4 * i, 4 * i + 4)) for i in range(2)]
    for (images, labels), *halves in zip(full, *parts):
        np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), images)
        np.testing.assert_array_equal(np.concatenate([h[1] for h in halves]), labels)
    if keras.backend.backend() == "tensorflow":
        with pytest.raises(ConfigError, match="NumPy loader"):
            make_train_loader(source, 8, rows=slice(0, 4), engine="tf")


def test_host_environment_is_checked(monkeypatch):
    for name in D.HOST_ENV:
        monkeypatch.delenv(name, raising=False)
    assert D.initialize_hosts() is False
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    if keras.backend.backend() == "jax":
        with pytest.raises(ConfigError, match="missing KERAS_DISTRIBUTION_JOB_ADDRESSES"):
            D.initialize_hosts()
        monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "127.0.0.1:1")
        monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "2")
        with pytest.raises(ConfigError, match="PROCESS_ID \\(2\\) must be in"):
            D.initialize_hosts()
    else:
        with pytest.raises(ConfigError, match="JAX backend only"):
            D.initialize_hosts()


def test_batch_norm_is_synchronised_on_tensorflow_only():
    from tests.conftest import tiny_net

    model = tiny_net()
    parallel = D.DistributionPlan("data_parallel", keras.backend.backend(), ("a", "b"))
    assert D.synchronize_batch_norm(model, D.DistributionPlan("none", parallel.backend, ("a",))) == 0
    changed = D.synchronize_batch_norm(model, parallel)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if parallel.backend == "tensorflow":
        assert changed == len(bns) == 1 and bns[0].synchronized
    else:
        assert changed == 0 and not bns[0].synchronized


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="multi-host training runs on JAX only")
def test_two_hosts_give_the_single_device_weights(four_device_runs, tmp_path):
    """Two processes joined by jax.distributed (the README's multi-host command, on one
    machine: 2 virtual CPU devices each) train the single-device run's weights."""
    runs, _, _ = four_device_runs
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    address = f"127.0.0.1:{free_port()}"
    hosts = [subprocess.Popen([sys.executable, str(REPO / "tests" / "multidevice_train.py"), str(tmp_path),
                               "--devices", "2", "--flip", "--host", str(i), "--hosts", "2",
                               "--coordinator", address],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [h.communicate(timeout=600) for h in hosts]
    for h, (out, err) in zip(hosts, outputs):
        assert h.returncode == 0, err[-3000:]
    assert "data parallel over 4 devices on 2 hosts" in outputs[0][0]
    host1 = json.loads((tmp_path / "summary_host1.json").read_text())
    assert host1["weight_devices"] == 4 and host1["end_step"] == 8
    weights = dict(np.load(tmp_path / "multihost.npz"))     # written by process 0 alone
    assert weights.keys() == runs["single"].keys()
    for key, value in runs["single"].items():
        np.testing.assert_allclose(weights[key], value, rtol=1e-4, atol=2e-5, err_msg=key)
