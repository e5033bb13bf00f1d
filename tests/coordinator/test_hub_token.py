"""Where the coordinator's Hub token comes from (HF_TOKEN, else the one `hf auth login` saved), and what is said,
without a request, when there is none or it cannot be one. The Hub is the fake one (tests/coordinator/fake_hub.py)."""

from __future__ import annotations

import pytest
from fake_hub import FakeHub

from coordinator.hub import HubConfigError, HubPublisher, find_hub_token, saved_token_path

REPO_ID = "swarm-test/token"


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    """No token anywhere: HF_TOKEN unset and HF_HOME an empty folder (returned)."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    return home


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with FakeHub(tmp_path / "fake-hub") as fake:
        fake.patch_client(monkeypatch)
        yield fake


def test_the_token_is_hf_token_then_the_older_name_then_the_saved_login(no_token, monkeypatch, tmp_path):
    assert find_hub_token() == (None, "")
    (no_token / "token").write_text("hf_saved\n")
    assert saved_token_path() == no_token / "token"
    assert find_hub_token() == ("hf_saved", f"the token `hf auth login` saved in {no_token / 'token'}")
    assert find_hub_token(saved=False) == (None, "")
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert find_hub_token() == (None, "")  # HF_TOKEN_PATH names the file, as for huggingface_hub
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_older")
    assert find_hub_token() == ("hf_older", "HUGGING_FACE_HUB_TOKEN")
    monkeypatch.setenv("HF_TOKEN", " hf_env ")
    assert find_hub_token() == ("hf_env", "HF_TOKEN")


def test_a_saved_login_token_publishes(no_token, hub):
    (no_token / "token").write_text(hub.write_token + "\n")
    HubPublisher(REPO_ID, endpoint=hub.url).ensure_repo()
    assert REPO_ID in hub.repos


def test_without_a_token_the_launch_check_names_the_key_and_makes_no_request(no_token, hub):
    with pytest.raises(HubConfigError, match=r"^checkpoint.hub_repo_id is swarm-test/token but there is no token for "
                                             r"the Hub: set HF_TOKEN .*`hf auth login`"):
        HubPublisher(REPO_ID, endpoint=hub.url).check_at_launch("t", "0" * 64)
    assert hub.requests == []


@pytest.mark.parametrize("token", ['"hf_quoted"', "hf_one hf_two", "hf_line\nhf_break", "hf_ünïcode"])
def test_a_token_that_cannot_be_one_is_refused_without_a_request_or_quoting_it(no_token, hub, monkeypatch, token):
    """A token is sent in an HTTP header: httpx refused these with a message that quoted the token."""
    monkeypatch.setenv("HF_TOKEN", token)
    publisher = HubPublisher(REPO_ID, endpoint=hub.url)
    for check in (lambda: publisher.check_at_launch("t", "0" * 64), publisher.ensure_repo):
        with pytest.raises(HubConfigError, match="HF_TOKEN is not a Hub token") as raised:
            check()
        assert token.strip() not in str(raised.value)
    assert hub.requests == []
