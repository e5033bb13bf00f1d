"""`collaboration.compression: blockwise8` on a CPU volunteer: bitsandbytes runs it there (tested with the real codec
and two real averagers, where bitsandbytes is installed); without it, or with a build that cannot run it, the peer is
refused at setup with the recipe key and the install command, not in its first averaging round. swarm depends on
bitsandbytes, so CI runs the real codec."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from hivemind.compression import deserialize_torch_tensor
from hivemind.compression.base import CompressionInfo
from hivemind.proto import runtime_pb2

from swarm.compat import make_compression
from swarm.errors import UsageError

HAVE_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None


def test_without_bitsandbytes_blockwise8_is_refused_with_the_key_and_the_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "bitsandbytes" else real_find_spec(name, *args))
    with pytest.raises(UsageError) as refused:
        make_compression("blockwise8")
    assert str(refused.value) == (
        "collaboration.compression in this run's recipe is blockwise8, which needs bitsandbytes on every peer, CPUs "
        "included (it runs there): install it in swarm's environment (`.venv/bin/pip install bitsandbytes`), then start "
        "again")


def test_a_bitsandbytes_that_cannot_quantise_here_is_refused_with_its_version_and_the_upgrade(tmp_path, monkeypatch):
    """Old builds failed on a machine without CUDA only when first used: in the first averaging round."""
    package = tmp_path / "bitsandbytes"
    (package / "functional.py").parent.mkdir()
    (package / "__init__.py").write_text("")
    (package / "functional.py").write_text(
        "def quantize_blockwise(*args, **kwargs):\n"
        "    raise RuntimeError('CUDA Setup failed despite GPU being available.\\nInspect the output above.')\n"
        "dequantize_blockwise = quantize_blockwise\n")
    (tmp_path / "bitsandbytes-0.41.0.dist-info").mkdir()
    (tmp_path / "bitsandbytes-0.41.0.dist-info" / "METADATA").write_text("Name: bitsandbytes\nVersion: 0.41.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "bitsandbytes"}
    for name in installed:
        del sys.modules[name]
    try:
        with pytest.raises(UsageError) as refused:
            make_compression("blockwise8")
    finally:  # the real one (if any) back in place of the stand-in
        for name in [name for name in sys.modules if name.split(".")[0] == "bitsandbytes"]:
            del sys.modules[name]
        sys.modules.update(installed)
    assert str(refused.value).endswith(
        "and bitsandbytes 0.41.0 cannot run it on this machine (RuntimeError: CUDA Setup failed despite GPU being "
        "available.): upgrade it (`.venv/bin/pip install -U bitsandbytes`), then start again")


@pytest.mark.skipif(not HAVE_BITSANDBYTES, reason="blockwise8 needs bitsandbytes, which is not installed here")
def test_blockwise8_runs_on_the_cpu_with_the_real_codec():
    codec = make_compression("blockwise8")
    tensor = torch.randn(2**17, generator=torch.Generator().manual_seed(0))  # above the 2**16 quantising threshold
    wire = codec.compress(tensor, CompressionInfo.from_tensor(tensor))
    assert wire.compression == runtime_pb2.CompressionType.BLOCKWISE_8BIT
    assert len(wire.buffer) < tensor.numel() * 1.01
    restored = deserialize_torch_tensor(wire)
    assert restored.device.type == "cpu" and restored.shape == tensor.shape
    assert ((restored - tensor).norm() / tensor.norm()).item() < 0.04


@pytest.mark.skipif(not HAVE_BITSANDBYTES, reason="blockwise8 needs bitsandbytes, which is not installed here")
@pytest.mark.timeout(120)
def test_two_cpu_peers_average_through_blockwise8(tmp_path):
    """A real all-reduce between two averagers on loopback, every tensor on the CPU, in the recipe's blockwise8."""
    from hivemind.averaging import DecentralizedAverager

    from swarm.identity import Identity
    from swarm.network import create_dht, join_addresses

    values = [torch.linspace(-1.0, 1.0, 2**17), torch.linspace(1.0, 3.0, 2**17)]
    nodes, averagers = [], []
    try:
        for index in range(2):
            identity = Identity.load_or_create(tmp_path / f"peer{index}")
            nodes.append(create_dht(join_addresses(nodes[0]) if nodes else [], host="127.0.0.1", identity=identity))
        for node, value in zip(nodes, values):
            averagers.append(DecentralizedAverager([value.clone()], node, prefix="blockwise8-cpu", target_group_size=2,
                                                   min_matchmaking_time=2.0, request_timeout=1.0,
                                                   compression=make_compression("blockwise8"), start=True))
        controls = [averager.step(wait=False, timeout=30) for averager in averagers]
        assert all(len(control.result(timeout=60)) == 2 for control in controls)
        expected = (values[0] + values[1]) / 2
        for averager in averagers:
            with averager.get_tensors() as (averaged,):
                assert (averaged - expected).abs().max().item() < 0.05  # 8 bits per value of a range of 4
    finally:
        for averager in averagers:
            averager.shutdown()
        for node in nodes:
            node.shutdown()
