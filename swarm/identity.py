"""A volunteer's persistent identity: the same peer id and signing key after every restart.

Stored in one folder (default `~/.swarm/identity`, or `--identity DIR` / `SWARM_IDENTITY`):

- `p2p.key`: the peer's RSA key, in libp2p's format. hivemind derives the peer id from it
  (`DHT(identity_path=...)`), and the same key signs the peer's DHT records (progress, metrics, contributions), so
  every node can check that a record naming a peer id was signed by that peer (`swarm.records.owner_peer_id`).
  hivemind 1.1.12 would sign with a fresh key per process.
- `profile.json`: display name and team, shown on the leaderboard.
- `signing_key.previous.der`: only in identities made before records were signed with the peer's own key (they had
  a second key, `signing_key.der`). Kept so that the contribution log lines it signed still verify.

>>> identity = Identity.load_or_create("/tmp/swarm-id-example", name="ada", team="lovelace")
>>> identity.name
'ada'
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf.message import DecodeError
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from swarm.errors import UsageError
from swarm.records import is_valid_name, is_valid_team, peer_id_of

logger = logging.getLogger("swarm.identity")

DEFAULT_IDENTITY_DIR = Path("~/.swarm/identity")


def _write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file atomically (a crash leaves the old one or the new one), owner-only from the first byte."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
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
    # the rule every node's schema applies to the records (swarm.records): a name it refuses would never be credited
    if value and not is_valid_name(value):
        raise UsageError(f"--{kind} {value!r}: use 1-40 letters, digits, spaces or . @ + - _")
    return value


@dataclass
class Identity:
    folder: Path
    signing_key: RSAPrivateKey  # the key in p2p.key: the peer id is derived from it
    name: str
    team: str
    previous_keys: tuple[RSAPublicKey, ...] = ()  # keys that signed this peer's older contribution log lines

    @property
    def p2p_key_path(self) -> Path:
        return self.folder / "p2p.key"

    @property
    def peer_id(self) -> str:
        """The base58 libp2p peer id the DHT gets from `p2p.key`."""
        return peer_id_of(serialization.load_der_private_key(self.signing_key.to_bytes(), password=None).public_key())

    @classmethod
    def load_or_create(cls, folder: str | os.PathLike | None = None, name: str | None = None,
                       team: str | None = None) -> "Identity":
        """Open the identity folder (creating keys on first use); a given name/team is saved for next time."""
        folder = Path(folder or DEFAULT_IDENTITY_DIR).expanduser()
        _make_identity_folder(folder)
        name, team = _check_label("name", name), _check_label("team", team)
        # every file already there is checked before anything is written: a damaged one stops here, untouched
        _check_p2p_key(folder / "p2p.key")
        profile_path = folder / "profile.json"
        profile = _read_profile(profile_path)
        if profile and not any((folder / name).exists() for name in ("p2p.key", "signing_key.der")):
            logger.warning(f"{folder / 'p2p.key'} is missing from this identity: making a new key, so this peer gets a "
                           "new peer id. Credit already granted stays with the old one, and the contribution lines "
                           "the old key signed no longer verify; restore the file from a backup instead to keep them")
        der, previous = _peer_key(folder)
        signing_key = _private_key(der)

        updated = dict(profile, **{k: v for k, v in (("name", name), ("team", team)) if v is not None})
        updated.setdefault("name", f"volunteer-{der[-6:].hex()}")
        updated.setdefault("team", "")
        if updated != profile:
            _write_atomically(profile_path, (json.dumps(updated, indent=2) + "\n").encode(), mode=0o644)
        return cls(folder=folder, signing_key=signing_key, name=updated["name"], team=updated["team"],
                   previous_keys=tuple(_private_key(key).get_public_key() for key in previous))


def _make_identity_folder(folder: Path) -> None:
    fix = "pass --identity DIR with a folder, new or holding an identity"
    if folder.exists() and not folder.is_dir():  # a file, /dev/null, ...: mkdir would say "File exists"
        raise UsageError(f"the identity folder {folder} is a file, not a folder: {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        blocker = next((parent for parent in folder.parents if parent.exists()), None)
        if isinstance(error, (FileExistsError, NotADirectoryError)) and blocker is not None and not blocker.is_dir():
            raise UsageError(f"cannot create the identity folder {folder}: {blocker} is a file, not a folder; "
                             f"{fix}") from None
        raise UsageError(f"cannot create the identity folder {folder}: {error.strerror or error}; {fix}") from None


def _private_key(der: bytes) -> RSAPrivateKey:
    key = RSAPrivateKey.__new__(RSAPrivateKey)
    key.__setstate__({"_private_key": der})  # hivemind's own pickle path: accepts DER bytes
    return key


def _peer_key(folder: Path) -> tuple[bytes, list[bytes]]:
    """The DER bytes of the peer's key (made on first use), and those of keys that signed its older log lines.

    An identity made before records were signed with the peer's own key has a second key, `signing_key.der`: the
    peer keeps its peer id (and the credit under it), signs with the key of `p2p.key` from now on, and the old key
    is kept as `signing_key.previous.der` for the log lines it signed. An identity that has only `signing_key.der`
    (made, never started) gets its peer id from that key.
    """
    p2p_path, old_path = folder / "p2p.key", folder / "signing_key.der"
    previous_path = folder / "signing_key.previous.der"
    old = _read_der_key(old_path) if old_path.exists() else None
    previous = [_read_der_key(previous_path)] if previous_path.exists() else []
    if p2p_path.exists():  # checked by _check_p2p_key already
        der = crypto_pb2.PrivateKey.FromString(p2p_path.read_bytes()).data
    else:
        if old is not None:
            der = old
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
        _write_atomically(p2p_path, crypto_pb2.PrivateKey(key_type=crypto_pb2.RSA, data=der).SerializeToString())
    if old is None:
        return der, previous
    if old != der:
        previous.append(old)
    try:
        if old == der:
            old_path.unlink()  # the same key as p2p.key now holds
        elif not previous_path.exists():
            os.replace(old_path, previous_path)
            logger.info(f"{folder}: this peer now signs its records with the key of its peer id (p2p.key), so every "
                        "node can check they are its own; the old signing key is kept as signing_key.previous.der")
    except OSError:
        pass  # a read-only folder: the files stay as they are, and are read the same way next time
    return der, previous


def _read_der_key(path: Path) -> bytes:
    try:
        der = path.read_bytes()
        if not isinstance(serialization.load_der_private_key(der, password=None), rsa.RSAPrivateKey):
            raise ValueError("not an RSA key")
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise UsageError(f"{path} is not a readable key ({error}); move it away (the contribution log lines it "
                         "signed will no longer verify)") from None
    return der


def _check_p2p_key(path: Path) -> None:
    """hivemind makes `p2p.key` at the first start; a damaged one must not surface as a protobuf error later."""
    if not path.exists():
        return
    fix = ("move it away to start with a new peer id and key (your name and team stay; credit already granted stays "
           "with the old id), or restore it from a backup")
    try:
        PeerID.from_identity(path.read_bytes())
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not the libp2p key: {fix}") from None
    except OSError as error:
        raise UsageError(f"cannot read {path} ({error.strerror}): check its permissions, or {fix}") from None
    except (DecodeError, ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(f"{path} is not a libp2p key (it is empty or damaged): {fix}") from None


def _read_profile(path: Path) -> dict:
    """The saved name and team; a damaged file is an error, never silently replaced by a new default name."""
    if not path.exists():
        return {}
    fix = ('fix it to read like {"name": "ada", "team": "lovelace"}, or move it away and pass --name and --team '
           "again")
    try:
        profile = json.loads(path.read_bytes().decode("utf-8"))
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not the profile: move it away and pass --name and --team "
                         "again") from None
    except OSError as error:
        raise UsageError(f"cannot read {path} ({error.strerror}): check its permissions") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not text (not UTF-8), so it is damaged: {fix}") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): "
                         f"{fix}") from None
    if not isinstance(profile, dict):
        kind = {list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(type(profile), "a number")
        raise UsageError(f"{path} holds {kind}, not a profile: {fix}")
    for key in ("name", "team"):
        value = profile.get(key, "-")
        if not (is_valid_name(value) if key == "name" else is_valid_team(value)):
            raise UsageError(f"{path}: {key} {json.dumps(value)} is not a {key} (text of 1-40 letters, digits, "
                             f"spaces or . @ + - _): {fix}")
    return profile
