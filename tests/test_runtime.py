"""Tests for nucleilib.runtime: device, threads, mixed precision, memory layout, the compile policy."""

import contextlib

import pytest
import torch

from nucleilib import runtime


def test_cpu_defaults():
    assert runtime.select_device("cpu").type == "cpu"
    assert runtime.configure_cpu_threads() >= 1
    if not runtime.cpu_supports_bf16():
        assert isinstance(runtime.autocast(torch.device("cpu")), contextlib.nullcontext)
    assert runtime.grad_scaler(torch.device("cpu")) is None


def test_bf16_cpus_autocast_to_bfloat16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert runtime.autocast(torch.device("cpu")).fast_dtype == torch.bfloat16


def test_place_moves_the_model_to_channels_last():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 2, 3))
    assert runtime.place(net, "cpu") == torch.device("cpu")
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.ndim == 4)


def test_one_process_shuffles_with_the_generator():
    order = runtime.epoch_order(10, torch.Generator().manual_seed(3), epoch=5, seed=0)
    assert torch.equal(order, torch.randperm(10, generator=torch.Generator().manual_seed(3)))
    cpu = torch.device("cpu")
    assert runtime.all_sum([1, 2], cpu) == [1.0, 2.0]


def test_should_compile_decides_by_device_steps_and_environment(monkeypatch):
    monkeypatch.delenv(runtime.COMPILE_ENV, raising=False)
    monkeypatch.setattr(runtime, "compile_available", lambda: True)
    assert not runtime.should_compile("cpu", runtime.COMPILE_MIN_STEPS - 1)
    assert runtime.should_compile("cpu", runtime.COMPILE_MIN_STEPS)
    assert not runtime.should_compile("cpu", 10_000, world_size=2)
    assert not runtime.should_compile("cuda", 10_000)
    assert runtime.should_compile("cpu", 1, requested=True)
    assert not runtime.should_compile("cpu", 10_000, requested=False)
    monkeypatch.setenv(runtime.COMPILE_ENV, "1")
    assert runtime.should_compile("cpu", 1)
    monkeypatch.setenv(runtime.COMPILE_ENV, "0")
    assert not runtime.should_compile("cpu", 10_000)
    monkeypatch.delenv(runtime.COMPILE_ENV)
    monkeypatch.setattr(runtime, "compile_available", lambda: False)
    assert not runtime.should_compile("cpu", 10_000)


@pytest.mark.parametrize("quota, expected", [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1)])
def test_a_container_cpu_quota_caps_the_cpus(monkeypatch, quota, expected):
    real_read_text = runtime.Path.read_text

    def read_text(path, *args, **kwargs):
        return quota if str(path) == "/sys/fs/cgroup/cpu.max" else real_read_text(path, *args, **kwargs)

    affinity = len(runtime.os.sched_getaffinity(0)) if hasattr(runtime.os, "sched_getaffinity") else None
    monkeypatch.setattr(runtime.Path, "read_text", read_text)
    if affinity is None:
        pytest.skip("no CPU affinity on this platform")
    assert runtime.available_cpus() == (affinity if expected is None else min(affinity, expected))
