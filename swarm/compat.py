"""Small, tested fixes for hivemind 1.1.12 behaviour that swarm depends on. Imported for its side effects.

- With numpy 2, hivemind 1.1.12's 8-bit codecs fail on decode: `int(np.frombuffer(buf, count=1))` raises
  "only 0-dimensional arrays can be converted to Python scalars" (fixed upstream after 1.1.12, PR #670).
  numpy<2 cannot be pinned cleanly (pandas, pulled in by datasets, needs numpy>=2), so we register
  subclasses that read the header as a scalar in hivemind's codec table, which is what deserialisation uses.
"""

from __future__ import annotations

import numpy as np
import torch
from hivemind.compression import serialization
from hivemind.compression.quantization import (
    _BLOCKWISE_QUANTIZATION_BLOCKSIZE,
    BlockwiseQuantization,
    Quantile8BitQuantization,
    Uniform8BitQuantization,
)
from hivemind.proto import runtime_pb2


def _header(buffer: bytes, offset: int = 0) -> int:
    return int.from_bytes(buffer[offset:offset + 8], "little", signed=True)


class _CodebookExtractMixin:
    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        buffer = serialized_tensor.buffer
        codebook = np.frombuffer(buffer, offset=8, count=_header(buffer), dtype=self.codebook_dtype)
        quantized = np.frombuffer(buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype)
        # copies: the message's buffer is read-only, which torch warns about for a tensor that shares it
        quantized = torch.from_numpy(quantized.astype(np.int64)).reshape(tuple(serialized_tensor.size))
        codebook = torch.from_numpy(codebook.copy()).to(dtype=getattr(torch, serialized_tensor.dtype))
        return codebook[quantized].requires_grad_(serialized_tensor.requires_grad)


class FixedUniform8BitQuantization(_CodebookExtractMixin, Uniform8BitQuantization):
    pass


class FixedQuantile8BitQuantization(_CodebookExtractMixin, Quantile8BitQuantization):
    pass


class FixedBlockwiseQuantization(BlockwiseQuantization):
    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        from bitsandbytes.functional import dequantize_blockwise

        buffer = serialized_tensor.buffer
        absmax_size, codebook_size = _header(buffer), _header(buffer, 8)
        absmax = np.frombuffer(buffer, offset=16, count=absmax_size, dtype=self.codebook_dtype)
        codebook = np.frombuffer(buffer, offset=16 + absmax.nbytes, count=codebook_size, dtype=self.codebook_dtype)
        quantized = np.frombuffer(buffer, offset=16 + absmax.nbytes + codebook.nbytes, dtype=self.indices_dtype)
        result = dequantize_blockwise(
            torch.as_tensor(quantized).reshape(tuple(serialized_tensor.size)),
            absmax=torch.as_tensor(absmax),
            code=torch.as_tensor(codebook),
            blocksize=_BLOCKWISE_QUANTIZATION_BLOCKSIZE,
            nested=False,
        )
        return result.to(getattr(torch, serialized_tensor.dtype)).requires_grad_(serialized_tensor.requires_grad)


def _install() -> None:
    table = serialization._BASE_COMPRESSION_TYPES
    table["UNIFORM_8BIT"] = FixedUniform8BitQuantization()
    table["QUANTILE_8BIT"] = FixedQuantile8BitQuantization()
    table["BLOCKWISE_8BIT"] = FixedBlockwiseQuantization()


_install()


def make_compression(name: str):
    """The hivemind codec for a recipe's `collaboration.compression` value.

    "fp16" is hivemind's mean-std scaled half precision (wire type MEANSTD_16BIT: each part of a tensor is sent as
    fp16 after subtracting its mean and dividing by its standard deviation, plus those two fp32 numbers). Plain fp16
    loses gradients: after the first steps half or more of a model's gradient entries lie below fp16's smallest
    normal number (6.1e-5), where it keeps few significant bits, and Adam turns an entry's relative error into an
    error of its step however small the entry is. On the tiny recipe's real gradients (`benchmarks/codecs.py`, steps
    10-120) plain fp16 left 1% of the entries off by 2-14% and decoded 0.1-0.3% of them as zero; scaled, 99% are
    within 0.05% and none becomes zero, for 8 more bytes per part of up to 256k values and no slower encoding.
    """
    from hivemind.compression import NoCompression, ScaledFloat16Compression, SizeAdaptiveCompression

    if name == "none":
        return NoCompression()
    if name == "fp16":
        return ScaledFloat16Compression()
    if name not in ("uint8", "blockwise8"):
        raise ValueError(f"unknown compression {name!r}: use none, fp16, uint8 or blockwise8")
    if name == "blockwise8":
        _check_blockwise_codec()
    eight_bit = FixedUniform8BitQuantization() if name == "uint8" else FixedBlockwiseQuantization()
    # tiny tensors (biases, norms) are not worth quantising: the codebook would outweigh the savings
    return SizeAdaptiveCompression(threshold=2**16, less=ScaledFloat16Compression(), greater_equal=eight_bit)


def _check_blockwise_codec() -> None:
    """Fail now, naming the recipe key, if bitsandbytes cannot run blockwise8 here: not in the middle of the first
    averaging round, minutes into training.

    hivemind runs the codec on the averager's CPU copies of the tensors, on GPU machines too, and bitsandbytes
    quantises blockwise on a CPU (measured with 0.43.3 and 0.50.2 on a 2-core CPU machine: a round trip of 10M values
    in 0.3-0.8 s, uint8's 0.3-1.4 s). swarm depends on it; an environment that lacks it (installed without
    dependencies) is named here, and a round trip of one block catches a build that cannot run on this machine."""
    import importlib.metadata
    import importlib.util

    from swarm.errors import UsageError

    needs = ("collaboration.compression in this run's recipe is blockwise8, which needs bitsandbytes on every peer, "
             "CPUs included (it runs there)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(f"{needs}: install it in swarm's environment (`.venv/bin/pip install bitsandbytes`), "
                         "then start again")
    try:
        from bitsandbytes.functional import dequantize_blockwise, quantize_blockwise

        block = torch.linspace(-1.0, 1.0, _BLOCKWISE_QUANTIZATION_BLOCKSIZE)
        quantized, state = quantize_blockwise(block, blocksize=_BLOCKWISE_QUANTIZATION_BLOCKSIZE, nested=False)
        if not torch.allclose(dequantize_blockwise(quantized, state), block, atol=0.02):
            raise ValueError("a round trip of one block came back wrong")
    except Exception as error:  # an old or broken build: a CUDA-only one, or a library that does not load
        try:
            version = importlib.metadata.version("bitsandbytes")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}" if str(error).strip() else \
            type(error).__name__
        raise UsageError(f"{needs}, and bitsandbytes {version} cannot run it on this machine ({reason}): upgrade it "
                         "(`.venv/bin/pip install -U bitsandbytes`), then start again") from None
