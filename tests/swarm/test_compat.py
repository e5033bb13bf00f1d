"""The numpy-2 shim for hivemind 1.1.12's 8-bit codecs, and the codecs a recipe's `compression` selects."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from hivemind.compression import (
    Float16Compression,
    NoCompression,
    SizeAdaptiveCompression,
    deserialize_torch_tensor,
    serialize_torch_tensor,
)
from hivemind.compression.base import CompressionInfo
from hivemind.compression.quantization import Quantile8BitQuantization, Uniform8BitQuantization
from hivemind.proto import runtime_pb2

from swarm.compat import make_compression

HAVE_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None
EIGHT_BIT = [runtime_pb2.CompressionType.UNIFORM_8BIT, runtime_pb2.CompressionType.QUANTILE_8BIT]


def gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def relative_error(restored: torch.Tensor, original: torch.Tensor) -> float:
    return ((restored.float() - original.float()).norm() / original.float().norm()).item()


@pytest.mark.skipif(np.__version__.startswith("1."), reason="hivemind 1.1.12's own codecs work under numpy 1")
@pytest.mark.parametrize("codec", [Uniform8BitQuantization, Quantile8BitQuantization], ids=lambda c: c.__name__)
def test_hivemind_own_8bit_codec_fails_to_decode_under_numpy_2(codec):
    """Why the shim exists: the unpatched classes cannot read back what they wrote."""
    tensor = gaussian(1000)
    serialized = codec().compress(tensor, CompressionInfo.from_tensor(tensor))
    with pytest.raises(TypeError, match="0-dimensional"):
        codec().extract(serialized)


@pytest.mark.parametrize("compression_type", EIGHT_BIT, ids=runtime_pb2.CompressionType.Name)
def test_8bit_round_trip_through_hivemind_serialization_has_bounded_error(compression_type):
    tensor = gaussian(100_000)
    serialized = serialize_torch_tensor(tensor, compression_type)
    assert len(serialized.buffer) < tensor.numel() * 1.02  # about one byte per value plus the codebook
    restored = deserialize_torch_tensor(serialized)
    assert restored.shape == tensor.shape and restored.dtype == tensor.dtype
    assert relative_error(restored, tensor) < 0.04
    assert (restored - tensor).abs().mean().item() < 0.01  # of a unit-variance tensor


@pytest.mark.parametrize("compression_type", EIGHT_BIT, ids=runtime_pb2.CompressionType.Name)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_8bit_round_trip_keeps_shape_dtype_and_requires_grad(compression_type, dtype):
    tensor = gaussian(3, 40, 50, seed=1).to(dtype).requires_grad_(True)
    restored = deserialize_torch_tensor(serialize_torch_tensor(tensor, compression_type))
    assert restored.shape == (3, 40, 50) and restored.dtype == dtype and restored.requires_grad
    assert relative_error(restored, tensor.detach()) < 0.05


def test_make_compression_none_is_lossless():
    codec = make_compression("none")
    assert isinstance(codec, NoCompression)
    tensor = gaussian(1000)
    assert torch.equal(deserialize_torch_tensor(codec.compress(tensor, CompressionInfo.from_tensor(tensor))), tensor)


def test_make_compression_fp16_halves_the_bytes():
    codec = make_compression("fp16")
    tensor = gaussian(1000)
    serialized = codec.compress(tensor, CompressionInfo.from_tensor(tensor))
    assert serialized.compression == runtime_pb2.CompressionType.MEANSTD_16BIT  # any hivemind peer decodes it
    assert len(serialized.buffer) == 2 * tensor.numel() + 8  # and its fp32 mean and standard deviation
    assert relative_error(deserialize_torch_tensor(serialized), tensor) < 1e-3


@pytest.mark.parametrize("scale", [1e-5, 1e-6, 1e-7])
def test_fp16_keeps_gradient_sized_values_that_plain_half_precision_loses(scale):
    # a model's gradient entries are mostly below fp16's smallest normal number (6.1e-5)
    tensor = gaussian(10_000, seed=3) * scale
    info = CompressionInfo.from_tensor(tensor)
    ours = deserialize_torch_tensor(make_compression("fp16").compress(tensor, info))
    plain = deserialize_torch_tensor(Float16Compression().compress(tensor, info))
    per_entry = ((ours - tensor).abs() / tensor.abs()).quantile(0.99).item()
    assert per_entry < 2e-3, per_entry
    assert relative_error(plain, tensor) > 5 * relative_error(ours, tensor)


def test_make_compression_uint8_quantises_large_tensors_and_keeps_small_ones_in_scaled_fp16():
    codec = make_compression("uint8")
    assert isinstance(codec, SizeAdaptiveCompression)
    small, large = gaussian(1000), gaussian(2**16, seed=2)
    small_wire = codec.compress(small, CompressionInfo.from_tensor(small))
    large_wire = codec.compress(large, CompressionInfo.from_tensor(large))
    assert small_wire.compression == runtime_pb2.CompressionType.MEANSTD_16BIT
    assert large_wire.compression == runtime_pb2.CompressionType.UNIFORM_8BIT
    assert len(large_wire.buffer) < large.numel() * 1.02
    assert relative_error(deserialize_torch_tensor(small_wire), small) < 1e-3
    assert relative_error(deserialize_torch_tensor(large_wire), large) < 0.04


def test_an_unknown_compression_name_is_refused():
    with pytest.raises(ValueError, match="unknown compression"):
        make_compression("zip")


@pytest.mark.skipif(not HAVE_BITSANDBYTES, reason="blockwise8 needs bitsandbytes, which is not installed")
def test_blockwise8_round_trip_has_bounded_error():
    codec = make_compression("blockwise8")
    large = gaussian(2**16)
    wire = codec.compress(large, CompressionInfo.from_tensor(large))
    assert wire.compression == runtime_pb2.CompressionType.BLOCKWISE_8BIT
    assert relative_error(deserialize_torch_tensor(wire), large) < 0.04
