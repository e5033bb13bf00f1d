"""A volunteer's identity: the same keys, peer id and profile after every restart, and clear errors when broken."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.p2p import P2P, PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey

from small_disk import small_disk

from swarm import records
from swarm.errors import UsageError
from swarm.identity import Identity, _private_key
from swarm.network import create_dht


def public_key_bytes(identity: Identity) -> bytes:
    return identity.signing_key.get_public_key().to_bytes()


@pytest.fixture(scope="module")
def made_folder(tmp_path_factory):
    """One freshly created identity (RSA key generation takes about a second on two cores)."""
    folder = tmp_path_factory.mktemp("made") / "id"
    Identity.load_or_create(folder)
    return folder


@pytest.fixture
def existing(made_folder, tmp_path):
    """A copy of an existing identity folder, as a returning volunteer has it."""
    return shutil.copytree(made_folder, tmp_path / "id")


def test_signing_key_is_the_same_after_reloading(tmp_path):
    first = Identity.load_or_create(tmp_path / "id")
    second = Identity.load_or_create(tmp_path / "id")
    assert first.p2p_key_path.read_bytes() == crypto_pb2.PrivateKey(
        key_type=crypto_pb2.RSA, data=first.signing_key.to_bytes()).SerializeToString()
    assert not (tmp_path / "id" / "signing_key.der").exists(), "one key: the peer id's"
    assert public_key_bytes(first) == public_key_bytes(second)
    # a record signed before a restart verifies with the key loaded after it
    signature = first.signing_key.sign(b"epoch 7")
    assert second.signing_key.get_public_key().verify(b"epoch 7", signature)


def test_two_folders_are_two_identities(tmp_path):
    one = Identity.load_or_create(tmp_path / "one")
    other = Identity.load_or_create(tmp_path / "other")
    assert public_key_bytes(one) != public_key_bytes(other)
    assert one.name != other.name  # default names derive from the key


def test_peer_id_survives_a_restart_of_the_dht(tmp_path, existing):
    folder = tmp_path / "restart"
    dht = create_dht([], host="127.0.0.1", identity=Identity.load_or_create(folder))
    try:
        first_peer_id = dht.peer_id
    finally:
        dht.shutdown()
    assert Identity.load_or_create(folder).p2p_key_path.exists()

    dht = create_dht([], host="127.0.0.1", identity=Identity.load_or_create(folder))
    try:
        assert dht.peer_id == first_peer_id
    finally:
        dht.shutdown()

    other = create_dht([], host="127.0.0.1", identity=Identity.load_or_create(existing))
    try:
        assert other.peer_id != first_peer_id
    finally:
        other.shutdown()


def test_secret_files_are_readable_by_the_owner_only(tmp_path):
    folder = tmp_path / "id"
    identity = Identity.load_or_create(folder)
    key_mode = stat.S_IMODE(identity.p2p_key_path.stat().st_mode)
    assert key_mode == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0
    dht = create_dht([], host="127.0.0.1", identity=identity)
    dht.shutdown()
    assert stat.S_IMODE(identity.p2p_key_path.stat().st_mode) & 0o077 == 0
    assert not list(folder.glob("*.tmp")), "no half-written secrets are left behind"


def test_name_and_team_given_once_are_remembered(existing):
    folder = existing
    Identity.load_or_create(folder, name="Ada Lovelace", team="analytical-engines")
    again = Identity.load_or_create(folder)
    assert (again.name, again.team) == ("Ada Lovelace", "analytical-engines")
    assert json.loads((folder / "profile.json").read_text()) == {"name": "Ada Lovelace", "team": "analytical-engines"}


def test_a_new_name_replaces_the_old_one_and_keeps_the_team(existing):
    folder = existing
    Identity.load_or_create(folder, name="ada", team="lovelace")
    renamed = Identity.load_or_create(folder, name="countess")
    assert (renamed.name, renamed.team) == ("countess", "lovelace")
    assert Identity.load_or_create(folder).name == "countess"


def test_default_name_is_stable_and_team_is_empty(tmp_path):
    first = Identity.load_or_create(tmp_path / "id")
    assert first.name.startswith("volunteer-") and first.team == ""
    assert Identity.load_or_create(tmp_path / "id").name == first.name


def test_names_are_stripped_and_may_use_letters_of_any_language(existing):
    identity = Identity.load_or_create(existing, name="  Zoë ada.l@x+1_y-z  ")
    assert identity.name == "Zoë ada.l@x+1_y-z"


@pytest.mark.parametrize(
    "name",
    ["x" * 41, "ada/../../etc", "two\nlines", "<script>alert(1)</script>", "tab\there", "emoji 🚀"],
    ids=["too-long", "slash", "newline", "html", "tab", "emoji"],
)
def test_invalid_names_are_refused_with_the_allowed_characters(existing, name):
    with pytest.raises(UsageError, match=r"--name .*1-40 letters, digits"):
        Identity.load_or_create(existing, name=name)


def test_invalid_team_is_refused_and_nothing_is_saved(existing):
    folder = existing
    Identity.load_or_create(folder, name="ada", team="good")
    with pytest.raises(UsageError, match="--team"):
        Identity.load_or_create(folder, team="bad;team")
    assert Identity.load_or_create(folder).team == "good"


LABEL_SAMPLES = ["ada", "José 深度", "volunteer-3f9a2c", "a.l@x+1_y-z", "x" * 40, "x" * 41, "-2+3", "=1+1",
                 "ada\x1b[31m", "[x](https://evil.example)", "a | b", "<b>", "emoji 🚀", "tab\there", "\u202eevil"]


def test_the_clis_rule_for_names_and_teams_is_the_one_every_node_applies_to_the_records(existing):
    """One rule: a name the CLI accepts is never refused by the swarm's schema, and what the CLI refuses (a modified
    client may still send it) is refused by every honest node."""
    def accepted_by_cli(**label: str) -> bool:
        try:
            Identity.load_or_create(existing, **label)
        except UsageError:
            return False
        return True

    def accepted_by_schema(**label: str) -> bool:
        row = dict(peer_id="QmAda", name="ada", team="", epoch=0, samples_total=0, samples_per_second=0.0, loss=None,
                   averaged_rounds=0, solo_rounds=0, last_group_size=0, device="cpu", version="0.1.0", time=0.0,
                   client_mode=False, addresses=[])
        try:
            records.PeerMetrics.parse_obj(dict(row, **label))
        except ValueError:
            return False
        return True

    for value in LABEL_SAMPLES:
        for field in ("name", "team"):
            assert accepted_by_cli(**{field: value}) == accepted_by_schema(**{field: value}), (field, value)
    assert accepted_by_cli(team="") and accepted_by_schema(team="")
    assert sum(accepted_by_schema(name=value) for value in LABEL_SAMPLES) == 6


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_a_corrupt_old_signing_key_gives_a_usage_error_naming_the_file(old_identity, damage):
    folder = old_identity
    key_path = folder / "signing_key.der"
    good = key_path.read_bytes()
    damaged = {"empty": b"", "garbage": b"not a key at all", "truncated": good[: len(good) // 2]}[damage]
    key_path.write_bytes(damaged)
    with pytest.raises(UsageError) as error:
        Identity.load_or_create(folder)
    assert str(key_path) in str(error.value)
    assert "move it away" in str(error.value)
    assert key_path.read_bytes() == damaged, "the broken key is left for the user to inspect, not replaced"


def test_an_old_signing_key_that_is_not_rsa_gives_a_usage_error_naming_the_file(tmp_path):
    folder = tmp_path / "id"
    folder.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "signing_key.der").write_bytes(
        key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with pytest.raises(UsageError, match="signing_key.der"):
        Identity.load_or_create(folder)


def test_an_unusable_identity_folder_is_a_usage_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match="--identity DIR"):
        Identity.load_or_create(blocker / "id")


def test_an_identity_folder_that_is_a_file_is_named_as_a_file(tmp_path):
    # it said "cannot create the identity folder idfile: File exists; pass --identity DIR"
    blocker = tmp_path / "idfile"
    blocker.write_text("not a folder")
    path = re.escape(str(blocker))
    with pytest.raises(UsageError, match=rf"the identity folder {path} is a file, not a folder: pass --identity DIR"):
        Identity.load_or_create(blocker)
    with pytest.raises(UsageError, match=rf"cannot create the identity folder {path}/id: {path} is a file, not a "
                                         "folder; pass --identity DIR"):
        Identity.load_or_create(blocker / "id")
    assert blocker.read_text() == "not a folder"


DAMAGED_PROFILES = {
    "truncated": b'{"name": "ada", "team": "x"',  # was replaced by a generated name and no team
    "empty": b"",
    "not-utf8": b'{"name": "ada\xff"}',
    "a-list": b"[1, 2]",
    "text": b'"x"',
    "a-number": b"5",
    "wrong-types": b'{"name": 5, "team": ["a"]}',  # was accepted as it was
    "null-name": b'{"name": null, "team": ""}',
    "bad-characters": b'{"name": "<script>", "team": ""}',
}


@pytest.mark.parametrize("content", DAMAGED_PROFILES.values(), ids=DAMAGED_PROFILES)
def test_a_damaged_profile_is_an_error_naming_the_file_and_is_never_replaced(existing, content):
    profile = existing / "profile.json"
    profile.write_bytes(content)
    for name, team in ((None, None), ("ada", "lovelace")):  # not even when the flags would give a whole new one
        with pytest.raises(UsageError) as error:
            Identity.load_or_create(existing, name=name, team=team)
        message = str(error.value)
        assert str(profile) in message and "move it away and pass --name and --team again" in message
    assert profile.read_bytes() == content
    assert sorted(path.name for path in existing.iterdir()) == ["p2p.key", "profile.json"]


def test_a_folder_named_profile_json_is_an_error_naming_it(existing):
    profile = existing / "profile.json"
    profile.unlink()
    profile.mkdir()
    with pytest.raises(UsageError, match=rf"{profile} is a folder, not the profile: move it away"):
        Identity.load_or_create(existing, name="ada")
    assert profile.is_dir() and not any(profile.iterdir())


def test_a_damaged_profile_in_a_new_folder_stops_before_any_key_is_made(tmp_path):
    folder = tmp_path / "id"
    folder.mkdir()
    (folder / "profile.json").write_text("[]")
    with pytest.raises(UsageError, match="profile.json holds a list, not a profile"):
        Identity.load_or_create(folder)
    assert [path.name for path in folder.iterdir()] == ["profile.json"]


@pytest.fixture(scope="module")
def p2p_key(tmp_path_factory) -> bytes:
    """A libp2p key as hivemind writes it at a node's first start."""
    path = tmp_path_factory.mktemp("p2p") / "p2p.key"
    P2P.generate_identity(str(path))
    return path.read_bytes()


def test_a_p2p_key_written_by_hivemind_is_accepted_as_the_peers_key(existing, p2p_key):
    (existing / "p2p.key").write_bytes(p2p_key)
    identity = Identity.load_or_create(existing)
    assert identity.p2p_key_path.read_bytes() == p2p_key
    assert identity.peer_id == PeerID.from_identity(p2p_key).to_base58()


def test_the_records_a_peer_signs_name_its_peer_id_as_their_owner(tmp_path):
    """Every node checks a row's peer_id against the key that signed it (swarm.records): the key is the peer id's."""
    identity = Identity.load_or_create(tmp_path / "id")
    dht = create_dht([], host="127.0.0.1", identity=identity)
    try:
        assert dht.peer_id.to_base58() == identity.peer_id
    finally:
        dht.shutdown()
    subkey = RSASignatureValidator(identity.signing_key).local_public_key
    assert records.owner_peer_id(subkey) == identity.peer_id
    assert records.owner_peer_id(RSASignatureValidator(RSAPrivateKey()).local_public_key) != identity.peer_id
    assert records.owner_peer_id(b"no owner here") is None


@pytest.fixture
def old_identity(tmp_path, p2p_key) -> Path:
    """An identity as earlier versions left it: hivemind's p2p.key, and a second RSA key that signed the records."""
    folder = tmp_path / "old"
    folder.mkdir(mode=0o700)
    (folder / "p2p.key").write_bytes(p2p_key)
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "signing_key.der").write_bytes(old.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    (folder / "profile.json").write_text('{"name": "ada", "team": "lovelace"}')
    return folder


def test_an_old_identity_keeps_its_peer_id_and_signs_with_its_key_from_now_on(old_identity, p2p_key):
    old_der = (old_identity / "signing_key.der").read_bytes()
    identity = Identity.load_or_create(old_identity)
    assert identity.peer_id == PeerID.from_identity(p2p_key).to_base58(), "the credit under the peer id stays its own"
    assert records.owner_peer_id(RSASignatureValidator(identity.signing_key).local_public_key) == identity.peer_id
    assert (identity.name, identity.team) == ("ada", "lovelace")
    assert not (old_identity / "signing_key.der").exists()
    assert (old_identity / "signing_key.previous.der").read_bytes() == old_der
    signature = _private_key(old_der).sign(b"epoch 3")
    assert [key.verify(b"epoch 3", signature) for key in identity.previous_keys] == [True]

    again = Identity.load_or_create(old_identity)
    assert again.peer_id == identity.peer_id and len(again.previous_keys) == 1


def test_an_old_read_only_identity_is_used_as_it_is(old_identity, p2p_key, tmp_path):
    before = {path.name: path.read_bytes() for path in old_identity.iterdir()}

    def provision(disk):
        shutil.copytree(old_identity, disk / "id")

    with small_disk(tmp_path / "disk", read_only=True, before_read_only=provision) as disk:
        identity = Identity.load_or_create(disk / "id")
        assert identity.peer_id == PeerID.from_identity(p2p_key).to_base58() and len(identity.previous_keys) == 1
        assert {path.name: path.read_bytes() for path in (disk / "id").iterdir()} == before


def test_an_old_identity_never_started_gets_its_peer_id_from_its_signing_key(old_identity):
    (old_identity / "p2p.key").unlink()
    der = (old_identity / "signing_key.der").read_bytes()
    identity = Identity.load_or_create(old_identity)
    assert identity.signing_key.to_bytes() == der and identity.previous_keys == ()
    assert identity.peer_id == PeerID.from_identity(identity.p2p_key_path.read_bytes()).to_base58()
    assert sorted(path.name for path in old_identity.iterdir()) == ["p2p.key", "profile.json"]


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "folder"])
def test_a_damaged_p2p_key_is_an_error_naming_the_file_and_what_to_do(existing, p2p_key, damage):
    # it surfaced as "could not start the DHT node: Error parsing message with type 'crypto.pb.PrivateKey'"
    key_path = existing / "p2p.key"
    if damage == "folder":
        key_path.unlink()
        key_path.mkdir()
    else:
        key_path.write_bytes({"empty": b"", "garbage": b"not a key at all", "truncated": p2p_key[:100]}[damage])
    before = key_path.is_dir() or key_path.read_bytes()
    with pytest.raises(UsageError) as error:
        Identity.load_or_create(existing)
    message = str(error.value)
    assert str(key_path) in message and "move it away to start with a new peer id" in message
    assert (key_path.is_dir() or key_path.read_bytes()) == before
