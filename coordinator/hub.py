"""Publishing versions to a Hugging Face Hub repo: one commit per version on `main`, tagged `epoch-NNNNNN`.

The repo root always holds the newest version, so `from_pretrained("<org>/<name>")` loads it, and every
published version stays loadable by its tag: `from_pretrained("<org>/<name>", revision="epoch-000050")`.
The local checkpoint folder is only read; a failed upload leaves it as it was.

A repo holds one run: each version's `swarm.json` names its run id and recipe fingerprint, and a version of
another run (on `main` or under a tag) is never replaced. A new run pointed at a used repo fails at launch.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import swarm
from swarm.errors import SwarmError

if TYPE_CHECKING:
    from swarm.recipe import CheckpointConfig

logger = logging.getLogger("swarm.coordinator")

# Files of the repo that a version does not carry but that must survive each publish: the Hub creates
# .gitattributes with the repo, and it routes large files through LFS/Xet storage.
_KEEP_IN_REPO = frozenset({".gitattributes"})


def hub_token_from_env() -> str | None:
    """The Hub token from `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`); None when neither is set."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def version_tag(epoch: int) -> str:
    """The tag (and local folder name) of the version published at swarm epoch `epoch`."""
    return f"epoch-{epoch:06d}"


@dataclass(frozen=True)
class RunMark:
    """Which run a version belongs to, as its `swarm.json` says (None where it says nothing readable)."""

    run_id: str | None
    recipe_fingerprint: str | None

    def is_run(self, other: RunMark | None) -> bool:
        """Whether `other` is this same run; a mark that names no run is no run's."""
        return other is not None and self.run_id is not None and self == other

    def __str__(self) -> str:
        if self.run_id is None:
            return "a version whose swarm.json names no run"
        return f"run {self.run_id!r}, recipe fingerprint {(self.recipe_fingerprint or '?')[:16]}"

    @classmethod
    def of_metadata(cls, text: str) -> RunMark:
        """From the text of a swarm.json (coordinator/checkpoint.py writes it: VersionInfo plus the recipe)."""
        try:
            metadata = json.loads(text)
            return cls(str(metadata["recipe"]["run"]["id"]), str(metadata["recipe_fingerprint"]))
        except (ValueError, KeyError, TypeError):
            return cls(None, None)


class HubRunConflictError(SwarmError):
    """The Hub repo holds another run's versions: publishing would replace them, which swarm never does."""


class HubPublisher:
    """Uploads each published version to a Hub model repo, as one commit on `main` plus a tag `epoch-NNNNNN`.

    The repo is created on the first publish if it does not exist (private if `private=True`). Each commit
    makes the repo root equal to the version folder: files the version lacks are deleted in the same commit
    (`.gitattributes` stays), so `main` never mixes two versions. Publishing an epoch again moves its tag to
    the new commit only if the tag's version is of the same run (run id and recipe fingerprint in its
    swarm.json: a coordinator restarted without its checkpoint folder). A repo whose `main` or tag holds another
    run's version is refused with `HubRunConflictError`, before anything is uploaded: pass `run_id` and
    `recipe_fingerprint` to `ensure_repo` to be refused at launch, and give each run a repo of its own.

        publisher = HubPublisher("my-org/tiny-stdlib")          # token from HF_TOKEN, endpoint from HF_ENDPOINT
        future = publisher.publish_async(Path("runs/tiny/checkpoints/epoch-000050"), epoch=50)
        ...                                                      # the monitor loop goes on meanwhile
        commit_id = future.result()                              # or let the log line report it
        publisher.close()

    `publish` blocks and raises `SwarmError` with the fix in words; `publish_async` runs uploads one at a
    time in a background thread, retries a failed one once after `retry_delay_s`, and logs the outcome. If
    the log says "set HF_TOKEN", create a token with write access at <endpoint>/settings/tokens; if it says
    "could not reach", check the network (or HF_ENDPOINT) - the version is safe in the local folder either way.
    """

    def __init__(
        self,
        repo_id: str,
        token: str | None = None,
        endpoint: str | None = None,
        private: bool = False,
        retry_delay_s: float = 60.0,
    ):
        from huggingface_hub import HfApi, constants

        self.repo_id = repo_id
        self.private = private
        self.retry_delay_s = retry_delay_s
        # huggingface_hub reads HF_ENDPOINT once, at import; read it again in case it was set since.
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        self._token = token if token is not None else hub_token_from_env()
        self._api = HfApi(
            endpoint=self.endpoint,
            # False, not None, without a token: None makes HfApi fall back to one saved by `hf auth login`
            token=self._token or False,
            library_name="swarm",
            library_version=swarm.__version__,
        )
        self._repo_ready = False
        self._publish_lock = threading.Lock()  # one commit at a time: each is built on the current head of main
        self._executor: ThreadPoolExecutor | None = None
        self._closing = threading.Event()

    @classmethod
    def from_config(cls, config: CheckpointConfig) -> HubPublisher | None:
        """The publisher for `checkpoint.hub_repo_id`, or None when the recipe publishes locally only."""
        return cls(config.hub_repo_id) if config.hub_repo_id else None

    @property
    def repo_url(self) -> str:
        return f"{self.endpoint}/{self.repo_id}"

    # ---- blocking API -----------------------------------------------------------------------------------------

    def ensure_repo(self, run_id: str | None = None, recipe_fingerprint: str | None = None) -> None:
        """Create the repo if it does not exist yet (a no-op after the first success); raises SwarmError.

        With `run_id` and `recipe_fingerprint`, also refuse (`HubRunConflictError`) a repo whose `main` holds a
        version of another run, whose tags this run's versions would otherwise take over.
        """
        self._require_token("create")
        try:
            self._ensure_repo()
            if run_id is None:
                return
            ours = RunMark(run_id, recipe_fingerprint)
            theirs = self._run_at(self._api.model_info(self.repo_id, revision="main"))
        except Exception as error:
            raise self._explain(error, "create") from error
        if theirs is not None and not ours.is_run(theirs):
            namespace = self.repo_id.split("/")[0]
            raise HubRunConflictError(
                f"the Hub repo {self.repo_id} holds versions of another run ({theirs}; this one is {ours}), and a "
                f"published version is never replaced: set checkpoint.hub_repo_id in the recipe to a repo of this "
                f"run's own (e.g. {namespace}/{run_id}), or remove it to publish locally only"
            )

    def publish(self, version_dir: Path, epoch: int, message: str | None = None) -> str:
        """Upload `version_dir` as one commit on `main`, tag it `epoch-NNNNNN`, and return the commit id."""
        version_dir = Path(version_dir)
        tag = version_tag(epoch)
        files = _version_files(version_dir)
        self._require_token(f"publish {tag} to")
        size_mb = sum((version_dir / name).stat().st_size for name in files) / 1e6
        with self._publish_lock:
            started = time.monotonic()
            try:
                commit_id = self._publish(version_dir, files, tag, message)
            except HubRunConflictError:
                raise
            except Exception as error:
                raise self._explain(error, f"publish {tag} to", version_dir) from error
        logger.info(
            "published %s (%.1f MB) to %s in %.1f s: commit %s, tag %s",
            version_dir,
            size_mb,
            self.repo_url,
            time.monotonic() - started,
            commit_id[:12],
            tag,
        )
        return commit_id

    # ---- background API ---------------------------------------------------------------------------------------

    def publish_async(self, version_dir: Path, epoch: int, message: str | None = None) -> Future[str]:
        """Queue `publish` in a background thread and return at once; the future's result is the commit id.

        Uploads run one at a time in the order they were queued. A failure is logged and retried once after
        `retry_delay_s`; if the retry fails too, it is logged as an error and the future raises the SwarmError.
        """
        if self._closing.is_set():
            raise SwarmError(f"the Hub publisher for {self.repo_id} is closed; create a new one to publish")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-publish")
        return self._executor.submit(self._publish_with_retry, Path(version_dir), epoch, message)

    def close(self, wait: bool = True) -> None:
        """Stop taking uploads; with `wait`, finish the queued ones first (a pending retry starts right away)."""
        self._closing.set()
        if self._executor is not None:
            self._executor.shutdown(wait=wait)

    def __enter__(self) -> HubPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _publish_with_retry(self, version_dir: Path, epoch: int, message: str | None) -> str:
        tag = version_tag(epoch)
        try:
            return self.publish(version_dir, epoch, message)
        except HubRunConflictError as error:  # the same answer on a retry: said once, loudly
            logger.warning("%s", error)
            raise
        except SwarmError as error:
            logger.warning("Hub upload of %s failed, retrying once in %.0f s: %s", tag, self.retry_delay_s, error)
        self._closing.wait(self.retry_delay_s)
        try:
            return self.publish(version_dir, epoch, message)
        except HubRunConflictError as error:
            logger.warning("%s", error)
            raise
        except SwarmError as error:
            logger.error("Hub upload of %s failed again, giving up on it: %s", tag, error)
            raise

    # ---- internals --------------------------------------------------------------------------------------------

    def _require_token(self, action: str) -> None:
        if not self._token:
            raise SwarmError(
                f"cannot {action} the Hub repo {self.repo_id}: no token. Set HF_TOKEN to a write token for "
                f"{self.repo_id} (create one at {self.endpoint}/settings/tokens)"
            )

    def _ensure_repo(self) -> None:
        if not self._repo_ready:
            self._api.create_repo(self.repo_id, private=self.private, exist_ok=True)
            self._repo_ready = True

    def _run_at(self, revision_info) -> RunMark | None:
        """The run of the version at one revision (a `model_info` answer), from its swarm.json; None without one."""
        if "swarm.json" not in {sibling.rfilename for sibling in revision_info.siblings or []}:
            return None
        with tempfile.TemporaryDirectory(prefix="swarm-hub-") as cache_dir:  # read once, not kept in HF_HOME
            path = self._api.hf_hub_download(self.repo_id, "swarm.json", revision=revision_info.sha,
                                             cache_dir=cache_dir)
            return RunMark.of_metadata(Path(path).read_text(encoding="utf-8", errors="replace"))

    def _check_tag(self, version_dir: Path, tag: str, ours: RunMark) -> None:
        """Refuse a `tag` that exists and holds a version of another run (or one swarm did not publish)."""
        from huggingface_hub.errors import RevisionNotFoundError

        try:
            tagged = self._api.model_info(self.repo_id, revision=tag)
        except RevisionNotFoundError:
            return
        theirs = self._run_at(tagged)
        if not ours.is_run(theirs):
            raise self._conflict(version_dir, tag, f"its tag {tag}", theirs, ours)

    def _conflict(self, version_dir: Path, tag: str, where: str, theirs: RunMark | None,
                  ours: RunMark) -> HubRunConflictError:
        owner = theirs if theirs is not None else "a model swarm did not publish (no swarm.json)"
        return HubRunConflictError(
            f"not publishing {tag} to the Hub repo {self.repo_id}: {where} holds a version of another run "
            f"({owner}; this one is {ours}), and a published version is never replaced. The version stays "
            f"published in {version_dir}; set checkpoint.hub_repo_id to a repo of this run's own"
        )

    def _publish(self, version_dir: Path, files: list[str], tag: str, message: str | None) -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError

        self._ensure_repo()
        local = version_dir / "swarm.json"
        ours = RunMark.of_metadata(local.read_text(encoding="utf-8", errors="replace")) if local.is_file() \
            else RunMark(None, None)
        head = self._api.model_info(self.repo_id, revision="main")
        # checked before the commit: main, then the tag, must not hold another run's version
        on_main = self._run_at(head)
        if on_main is not None and not ours.is_run(on_main):
            raise self._conflict(version_dir, tag, "its main", on_main, ours)
        self._check_tag(version_dir, tag, ours)
        in_repo = {sibling.rfilename for sibling in head.siblings or []}
        stale = sorted(in_repo - set(files) - _KEEP_IN_REPO)
        operations: list = [CommitOperationAdd(name, path_or_fileobj=str(version_dir / name)) for name in files]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        commit = self._api.create_commit(
            self.repo_id,
            operations=operations,
            commit_message=message or f"Publish {tag}",
            commit_description=f"Published by swarm {swarm.__version__} from {version_dir.name}.",
            revision="main",
            parent_commit=head.sha,  # fail rather than overwrite a commit that landed since we read main
        )
        try:
            self._api.create_tag(self.repo_id, tag=tag, revision=commit.oid, tag_message=message or tag)
        except HfHubHTTPError as error:
            if error.response is None or error.response.status_code != 409:
                raise
            # The same run's epoch published again (a coordinator restarted without its checkpoint folder): the
            # newer version takes the tag. Asked again: the tag may have been made since it was checked above.
            self._check_tag(version_dir, tag, ours)
            self._api.delete_tag(self.repo_id, tag=tag)
            self._api.create_tag(self.repo_id, tag=tag, revision=commit.oid, tag_message=message or tag)
        return commit.oid

    def _explain(self, error: Exception, action: str, version_dir: Path | None = None) -> SwarmError:
        """The SwarmError a user can act on, for an exception raised by huggingface_hub."""
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        what = f"cannot {action} the Hub repo {self.repo_id} at {self.endpoint}"
        kept = f"; the version stays in {version_dir}" if version_dir is not None else ""
        if isinstance(error, OfflineModeIsEnabled):
            return SwarmError(f"{what}: HF_HUB_OFFLINE is set; unset it to publish{kept}")
        if isinstance(error, HfHubHTTPError):
            status = error.response.status_code if error.response is not None else None
            said = f" (the Hub said: {error.server_message})" if error.server_message else ""
            if status == 401:
                return SwarmError(
                    f"{what}: the token was refused (401){said}. Set HF_TOKEN to a valid write token for "
                    f"{self.repo_id} (create one at {self.endpoint}/settings/tokens){kept}"
                )
            if status == 403:
                return SwarmError(
                    f"{what}: the token may not write there (403){said}. Set HF_TOKEN to a token with write "
                    f"access to {self.repo_id}, or pick a namespace you own in checkpoint.hub_repo_id{kept}"
                )
            if status == 404:
                return SwarmError(
                    f"{what}: not found (404){said}. Check checkpoint.hub_repo_id and that the HF_TOKEN "
                    f"account can see and create repos in that namespace{kept}"
                )
            if status in (409, 412):
                return SwarmError(f"{what}: main changed during the upload ({status}){said}; publish again{kept}")
            if status is not None and (status == 429 or status >= 500):
                return SwarmError(f"{what}: the Hub answered {status}{said}; try again later{kept}")
            return SwarmError(f"{what}: the Hub refused the request ({status}){said}{kept}")
        if isinstance(error, _network_errors()):
            return SwarmError(
                f"{what}: could not reach it ({type(error).__name__}: {error}). Check the network, or "
                f"HF_ENDPOINT if you use a mirror{kept}"
            )
        return SwarmError(f"{what}: {type(error).__name__}: {error}{kept}")


def _version_files(version_dir: Path) -> list[str]:
    """Paths (relative, '/'-separated) of the files of a version folder; hidden files are not part of it."""
    if not version_dir.is_dir():
        raise SwarmError(f"cannot publish {version_dir}: it is not a folder; pass a version folder epoch-NNNNNN/")
    files = sorted(
        path.relative_to(version_dir).as_posix()
        for path in version_dir.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(version_dir).parts)
    )
    if not files:
        raise SwarmError(f"cannot publish {version_dir}: the folder is empty")
    return files


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning 'the Hub was not reached', whichever HTTP library huggingface_hub uses."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]  # hf_xet raises the builtin ones
    candidates = (("httpx2", "RequestError"), ("httpx", "RequestError"), ("requests", "RequestException"))
    for module_name, class_name in candidates:
        try:
            types.append(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)
