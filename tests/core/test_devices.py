"""Device and dtype resolution: devices that cannot run an edit are refused with the fix."""

from __future__ import annotations

import pytest
import torch

from ip2p import devices
from ip2p.errors import IP2PError


@pytest.mark.parametrize("name", ["meta", "xla", "ipu", "hpu"])
def test_devices_that_cannot_run_a_model_are_refused(name):
    with pytest.raises(IP2PError, match=rf"--device {name}: a '{name}' device cannot run a model"):
        devices.resolve_device(name)


def test_an_unknown_device_name_is_refused_with_the_choices():
    with pytest.raises(IP2PError, match="Unknown device 'gpu0'.*cpu, cuda"):
        devices.resolve_device("gpu0")


def test_an_unavailable_gpu_is_refused_suggesting_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(IP2PError, match="CUDA is not available.*--device cpu"):
        devices.resolve_device("cuda")


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")


def test_auto_dtype_is_float32_on_the_cpu_and_float16_on_a_gpu():
    assert devices.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert devices.resolve_dtype("auto", torch.device("cuda")) == torch.float16


def test_an_unknown_dtype_is_refused():
    with pytest.raises(IP2PError, match="Unknown dtype 'float8'"):
        devices.resolve_dtype("float8", torch.device("cpu"))
