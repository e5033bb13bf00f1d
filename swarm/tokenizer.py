"""How text becomes token ids: a built-in byte-level tokenizer, or a pretrained one from transformers.

Both kinds share one small interface, so the data pipeline and checkpoints never ask which one they have:

>>> from swarm.recipe import TokenizerConfig
>>> from swarm.tokenizer import build_tokenizer
>>> tokenizer = build_tokenizer(TokenizerConfig(kind="byte"))
>>> tokenizer.encode("hé").tolist()
[107, 198, 172]
>>> tokenizer.decode([107, 198, 172, tokenizer.eos_id])
'hé'
>>> tokenizer.vocab_size, tokenizer.eos_id, tokenizer.pad_id
(259, 1, 0)

`identity()` is a short string that changes whenever the ids would; it is part of the data identity that every
peer checks on join, so a peer with another tokenizer is refused instead of training on different ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from swarm.errors import UsageError

if TYPE_CHECKING:
    from swarm.recipe import TokenizerConfig

# transformers is imported inside the functions that need it: it takes seconds to import, and the byte
# tokenizer (the default) never needs it except to write a checkpoint.


class Tokenizer(Protocol):
    """What the data pipeline and the checkpoint writer need from a tokenizer."""

    vocab_size: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

    def save_pretrained(self, directory: str | os.PathLike) -> None: ...

    def identity(self) -> str: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: uint16 halves the token cache for vocabularies up to 65536."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _byte_level_chars() -> dict[int, str]:
    """The visible character `tokenizers`' ByteLevel pre-tokenizer writes for each byte value: itself when it is a
    printable Latin-1 character, else the next unused code point from U+0100 up (GPT-2's convention)."""
    visible = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    spare = iter(range(0x100, 0x200))
    return {byte: chr(byte) if byte in visible else chr(next(spare)) for byte in range(256)}


class ByteTokenizer:
    """Byte-level tokenizer with the ids of `transformers.ByT5Tokenizer(extra_ids=0)`: nothing to download.

    Ids: pad=0, eos=1, unk=2, and byte `b` of the UTF-8 encoding is `b + 3` (vocab_size 259). Any text encodes,
    so no document is ever lost to unknown characters; the price is one token per byte, so a sample of `seq_len`
    tokens holds about `seq_len` characters of ASCII code.

    >>> tokenizer = ByteTokenizer()
    >>> tokenizer.encode("hi").tolist()
    [107, 108]
    >>> tokenizer.decode(tokenizer.encode("naïve €"))
    'naïve €'

    Checkpoints call `save_pretrained(folder)`, which writes a tokenizer with these ids that
    `transformers.AutoTokenizer.from_pretrained(folder)` loads, so published models are usable without swarm.
    """

    pad_id = 0
    eos_id = 1
    unk_id = 2
    byte_offset = 3
    vocab_size = 256 + byte_offset

    def encode(self, text: str) -> np.ndarray:
        """UTF-8 bytes shifted by 3, as uint16; no eos is appended (the data pipeline adds one per document)."""
        raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return raw.astype(np.uint16) + np.uint16(self.byte_offset)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of the byte ids; pad, eos and unk are skipped, and broken UTF-8 becomes U+FFFD."""
        array = np.asarray(ids, dtype=np.int64).reshape(-1)
        byte_ids = array[(array >= self.byte_offset) & (array < self.vocab_size)] - self.byte_offset
        return byte_ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_transformers(self) -> Any:
        """The equivalent fast `transformers` tokenizer (a `tokenizers` word-level model over the 256 byte values),
        for checkpoints and for anyone outside swarm.

        Not `ByT5Tokenizer`, although it has the same ids: a checkpoint names its tokenizer class, and for some
        model types (qwen2, mistral, phi3, ...) `AutoTokenizer` overrides the named class with the model type's own,
        which read a ByT5 folder as an empty vocabulary or failed. Every class loads a `tokenizer.json`. Unlike
        ByT5, it appends no eos to what it encodes, which is what a prompt for generation wants.
        """
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {"<pad>": self.pad_id, "</s>": self.eos_id, "<unk>": self.unk_id}
        vocab.update({char: byte + self.byte_offset for byte, char in _byte_level_chars().items()})
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        # ByteLevel writes each UTF-8 byte as one visible character, which Split isolates: one token per byte
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            pre_tokenizers.Split(Regex("."), "isolated"),
        ])
        backend.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>",
                                       unk_token="<unk>")

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.to_transformers().save_pretrained(str(directory))
        # transformers 5 names the class TokenizersBackend, which transformers 4 lacks; both load this name
        config_path = Path(directory) / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def identity(self) -> str:
        return f"byte-{self.vocab_size}"

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


class PretrainedTokenizer:
    """A `transformers` tokenizer (a local folder or a Hub id) behind the same interface as `ByteTokenizer`.

    >>> tokenizer = PretrainedTokenizer("gpt2")  # doctest: +SKIP
    >>> tokenizer.encode("def f(): pass").tolist()  # doctest: +SKIP
    [4299, 277, 33529, 1208]

    `eos_id` separates documents in the token stream: a tokenizer without an eos token falls back to its sep
    token, and one with neither is refused. `pad_id` falls back to `eos_id`. Texts are encoded without special
    tokens (no BOS/CLS added). Pin a Hub tokenizer with a local copy or a fixed id: its `identity()` goes into the
    data identity, so a tokenizer that changed upstream makes joining peers fail the data check.
    """

    def __init__(self, name: str, revision: str | None = None):
        from transformers import AutoTokenizer

        from swarm.recipe import looks_like_local_path

        self.name = name
        if looks_like_local_path(name) and not os.path.exists(name):
            raise UsageError(f"tokenizer.name: {name!r} does not exist: fix the path or use a Hub id such as 'gpt2'")
        try:
            self.hf = AutoTokenizer.from_pretrained(name, revision=revision)
        except (OSError, ValueError) as error:
            raise UsageError(
                f"cannot load tokenizer {name!r} ({error.__class__.__name__}: {str(error).splitlines()[0]}): set "
                "tokenizer.name to a local folder with tokenizer files or a Hub id such as 'gpt2'"
            ) from error
        self.vocab_size = len(self.hf)
        eos_id = self.hf.eos_token_id if self.hf.eos_token_id is not None else self.hf.sep_token_id
        if eos_id is None:
            raise UsageError(
                f"tokenizer {name!r} has neither an eos nor a sep token, so documents could not be separated: "
                "use a tokenizer with an eos token, or tokenizer.kind: byte"
            )
        self.eos_id = int(eos_id)
        self.pad_id = int(self.hf.pad_token_id) if self.hf.pad_token_id is not None else self.eos_id
        self._dtype = token_dtype(self.vocab_size)
        self._identity: str | None = None

    def encode(self, text: str) -> np.ndarray:
        """Ids without special tokens; uint16 when the vocabulary fits, else uint32."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of many texts at once: fast (Rust) tokenizers spread the batch over all cores."""
        if self.hf.is_fast:
            # The backend directly: no "sequence longer than model_max_length" warning for whole documents.
            encodings = self.hf.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
            return [np.asarray(encoding.ids, dtype=self._dtype) for encoding in encodings]
        return [
            np.asarray(self.hf.encode(text, add_special_tokens=False, verbose=False), dtype=self._dtype)
            for text in texts
        ]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.hf.decode(np.asarray(ids).reshape(-1).tolist(), skip_special_tokens=True)

    def to_transformers(self) -> Any:
        return self.hf

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.hf.save_pretrained(str(directory))

    def identity(self) -> str:
        """sha256 (16 hex digits) of what maps text to ids: the tokenizer model, its added tokens, eos and pad.

        Hashing the tokenizer's content rather than its name means two copies of one tokenizer in different
        folders agree, and a retrained tokenizer under an old name does not.
        """
        if self._identity is None:
            digest = hashlib.sha256(json.dumps([self.eos_id, self.pad_id, self.vocab_size]).encode())
            if self.hf.is_fast:
                # Canonical JSON: the same tokenizer serialised by another process hashes the same.
                backend = json.loads(self.hf.backend_tokenizer.to_str())
                digest.update(json.dumps(backend, sort_keys=True, separators=(",", ":")).encode())
            else:
                with tempfile.TemporaryDirectory() as folder:
                    for path in sorted(self.hf.save_vocabulary(folder)):
                        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes())
            self._identity = f"pretrained-{digest.hexdigest()[:16]}"
        return self._identity

    def __repr__(self) -> str:
        return f"PretrainedTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def build_tokenizer(cfg: "TokenizerConfig") -> ByteTokenizer | PretrainedTokenizer:
    """The tokenizer a recipe's `tokenizer:` section asks for.

    >>> from swarm.recipe import TokenizerConfig
    >>> build_tokenizer(TokenizerConfig())
    ByteTokenizer(vocab_size=259)
    """
    if cfg.kind == "byte":
        return ByteTokenizer()
    assert cfg.name is not None  # the recipe refuses kind=pretrained without a name
    return PretrainedTokenizer(os.path.expanduser(cfg.name))
