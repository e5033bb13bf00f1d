"""A volunteer's persistent identity: the same peer id and signing key after every restart.

Stored in one folder (default `~/.swarm/identity`, or `--identity DIR` / `SWARM_IDENTITY`):

- `p2p.key`: the libp2p key; hivemind derives the peer id from it (`DHT(identity_path=...)`).
- `signing_key.der`: the RSA key that signs this peer's DHT records (progress, metrics, contributions).
  hivemind 1.1.12 makes a fresh one per process and has no loader, so records of a restarted peer would
  otherwise look like a stranger's.
- `profile.json`: display name and team, shown on the leaderboard.

>>> identity = Identity.load_or_create("/tmp/swarm-id-example", name="ada", team="lovelace")
>>> identity.name
'ada'
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.utils.crypto import RSAPrivateKey

from swarm.errors import UsageError

DEFAULT_IDENTITY_DIR = Path("~/.swarm/identity")
_NAME_PATTERN = re.compile(r"[\w .@+-]{1,40}")


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically with owner-only permissions from the first byte."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _check_label(kind: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value and kind == "name":
        return None  # a blank name is no name: keep the saved one (an empty team leaves the team)
    if value and not _NAME_PATTERN.fullmatch(value):
        raise UsageError(f"--{kind} {value!r}: use 1-40 letters, digits, spaces or . @ + - _")
    return value


@dataclass
class Identity:
    folder: Path
    signing_key: RSAPrivateKey
    name: str
    team: str

    @property
    def p2p_key_path(self) -> Path:
        return self.folder / "p2p.key"

    @classmethod
    def load_or_create(cls, folder: str | os.PathLike | None = None, name: str | None = None,
                       team: str | None = None) -> "Identity":
        """Open the identity folder (creating keys on first use); a given name/team is saved for next time."""
        folder = Path(folder or DEFAULT_IDENTITY_DIR).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise UsageError(f"cannot create the identity folder {folder}: {error.strerror}; pass --identity DIR") from None
        name, team = _check_label("name", name), _check_label("team", team)

        key_path = folder / "signing_key.der"
        if key_path.exists():
            try:
                der = key_path.read_bytes()
                if not isinstance(serialization.load_der_private_key(der, password=None), rsa.RSAPrivateKey):
                    raise ValueError("not an RSA key")
            except (OSError, ValueError, TypeError) as error:
                raise UsageError(f"{key_path} is not a readable key ({error}); move it away to make a new identity") from None
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
            _write_private(key_path, der)
        signing_key = RSAPrivateKey.__new__(RSAPrivateKey)
        signing_key.__setstate__({"_private_key": der})  # hivemind's own pickle path: accepts DER bytes

        profile_path = folder / "profile.json"
        profile = {}
        if profile_path.exists():
            try:
                profile = json.loads(profile_path.read_text())
            except (OSError, json.JSONDecodeError):
                profile = {}
        updated = dict(profile, **{k: v for k, v in (("name", name), ("team", team)) if v is not None})
        updated.setdefault("name", f"volunteer-{der[-6:].hex()}")
        updated.setdefault("team", "")
        if updated != profile:
            tmp = profile_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(updated, indent=2))
            os.replace(tmp, profile_path)
        return cls(folder=folder, signing_key=signing_key, name=updated["name"], team=updated["team"])
