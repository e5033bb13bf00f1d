"""Publishing versions to a Hugging Face Hub repo: one commit per version on `main`, tagged `epoch-NNNNNN`.

The repo root always holds the newest version, so `from_pretrained("<org>/<name>")` loads it, and every
published version stays loadable by its tag: `from_pretrained("<org>/<name>", revision="epoch-000050")`.
The local checkpoint folder is only read; a failed upload leaves it as it was.

A repo holds one run: each version's `swarm.json` names its run id and recipe fingerprint, and a version of
another run (on `main` or under a tag) is never replaced. A new run pointed at a used repo fails at launch.

The Hub may be away (no network, 5xx, no answer): a version is saved in the local checkpoint folder first, and its
upload is retried until it succeeds, with a delay that doubles up to a cap. A launch during an outage warns and
goes on; the repo is checked (same rules) before the first upload. A configuration error (no token, a token
refused, a repo not found) or another run's repo stops the uploads: retrying cannot fix those. Whatever is not
uploaded is named when the coordinator stops, with the command that uploads it later (`publish_versions`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shlex
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import swarm
from swarm.errors import SwarmError, UsageError

if TYPE_CHECKING:
    from swarm.recipe import CheckpointConfig

logger = logging.getLogger("swarm.coordinator")

# Files of the repo that a version does not carry but that must survive each publish: the Hub creates
# .gitattributes with the repo, and it routes large files through LFS/Xet storage.
_KEEP_IN_REPO = frozenset({".gitattributes"})

RETRY_DELAY_S = 60.0  # a failed upload is tried again after this, then after twice as long each time...
MAX_RETRY_DELAY_S = 600.0  # ...up to this: a Hub outage of hours costs a few requests every 10 min
# huggingface_hub's HTTP client waits for ever by default (create_repo and create_commit take no timeout): a Hub that
# accepts the connection and never answers hung the launch, and every later upload behind it. Per socket operation
# (connect, each read or write), not per request: a large upload that keeps moving is never cut.
REQUEST_TIMEOUT_S = 120.0


def hub_token_from_env() -> str | None:
    """The Hub token from `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`); None when neither is set."""
    return find_hub_token(saved=False)[0]


def saved_token_path() -> Path:
    """Where `hf auth login` saves the token: HF_TOKEN_PATH, else `token` in HF_HOME (~/.cache/huggingface).

    Read from the environment at each call: huggingface_hub reads it once, at import."""
    if os.environ.get("HF_TOKEN_PATH"):
        return Path(os.path.expanduser(os.environ["HF_TOKEN_PATH"]))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("HF_HOME") or os.path.join(cache, "huggingface")))
                ) / "token"


def find_hub_token(saved: bool = True) -> tuple[str | None, str]:
    """The Hub token and where it came from: `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else the token `hf
    auth login` saved (`saved_token_path`); (None, "") when there is none. Reads the environment and that one file:
    no request is made."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(name, "").strip()
        if value:
            return value, name
    if saved:
        path = saved_token_path()
        try:
            value = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            value = ""
        if value:
            return value, f"the token `hf auth login` saved in {path}"
    return None, ""


def token_shape_problem(token: str) -> str | None:
    """Why `token` cannot be a Hub token (a paste with spaces, quotes or a line break), or None; said without a
    request. A token is sent in an HTTP header, where such characters fail with a message that quotes the token."""
    if any(char.isspace() or not char.isprintable() or not char.isascii() or char in "'\"" for char in token):
        return "it holds spaces, quotes or other characters a token never has"
    return None


TOKEN_FIX = "log in with `hf auth login` (`huggingface-cli login` before huggingface_hub 0.34)"


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


class HubConfigError(UsageError):
    """The Hub answered that the token or repo is wrong (no token, 401, 403, 404, offline mode): retrying cannot
    help; the fix is HF_TOKEN or checkpoint.hub_repo_id (exit code 2)."""


class HubUnavailableError(SwarmError):
    """The Hub was not reached, did not answer in time, or answered 408, 429 or 5xx: an outage, retried later."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason  # "could not reach it (ConnectError: ...)", "the Hub answered 503": for one-line logs


@dataclass
class _Upload:
    """One queued version: tried until it is uploaded, or until the publisher stops."""

    epoch: int
    version_dir: Path
    message: str | None
    future: Future = field(default_factory=Future)
    attempts: int = 0
    due_at: float = 0.0  # time.monotonic() of the next try
    tried_at_close: bool = False
    error: BaseException | None = None


class HubPublisher:
    """Uploads each published version to a Hub model repo, as one commit on `main` plus a tag `epoch-NNNNNN`.

    The repo is created on the first publish if it does not exist (private if `private=True`). Each commit
    makes the repo root equal to the version folder: files the version lacks are deleted in the same commit
    (`.gitattributes` stays), so `main` never mixes two versions; a version uploaded after a newer one (a retry
    that succeeded late) is tagged, and `main` is given the newer one back from its folder next to it. Publishing
    an epoch again moves its tag to the new commit only if the tag's version is of the same run (run id and recipe
    fingerprint in its swarm.json: a coordinator restarted without its checkpoint folder). A repo whose `main` or
    tag holds another run's version is refused with `HubRunConflictError`, before anything is uploaded: pass
    `run_id` and `recipe_fingerprint` to `check_at_launch` to be refused at launch, and give each run a repo of its
    own.

        publisher = HubPublisher("my-org/tiny-stdlib")          # token: find_hub_token(); endpoint from HF_ENDPOINT
        publisher.check_at_launch(run_id, fingerprint)           # raises on a wrong token or repo; an outage warns
        future = publisher.publish_async(Path("runs/tiny/checkpoints/epoch-000050"), epoch=50)
        ...                                                      # the monitor loop goes on meanwhile
        commit_id = future.result()                              # or let the log line report it
        publisher.close()                                        # names what was not uploaded, and how to

    `publish` blocks and raises `SwarmError` with the fix in words; `publish_async` queues the upload for a
    background thread that retries it after `retry_delay_s`, twice as long each time up to `max_retry_delay_s`,
    while newer versions go ahead. If the log says "set HF_TOKEN", create a token with write access at
    <endpoint>/settings/tokens and relaunch; if it says "could not reach" or "the Hub answered 5xx", nothing is
    needed: the version is safe in the local folder and the upload is retried. If the coordinator stops first,
    its last log line is the `swarm checkpoint publish` command that uploads the rest.
    """

    def __init__(
        self,
        repo_id: str,
        token: str | None = None,
        endpoint: str | None = None,
        private: bool = False,
        retry_delay_s: float = RETRY_DELAY_S,
        max_retry_delay_s: float = MAX_RETRY_DELAY_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        ledger_dir: Path | None = None,
        pending_file: Path | None = None,
    ):
        from huggingface_hub import HfApi, constants

        self.repo_id = repo_id
        # The run's ledger folder: each commit carries it as `ledger/` (read when the version is uploaded, so the log
        # extends the head the version was saved with), so the repo, and each tag, holds a ledger that verifies.
        self.ledger_dir = Path(ledger_dir) if ledger_dir is not None else None
        # The versions not uploaded yet, kept on disk (even through a kill -9) for the next launch to upload first
        self.pending_file = Path(pending_file) if pending_file is not None else None
        self.private = private
        self.retry_delay_s = retry_delay_s
        self.max_retry_delay_s = max(max_retry_delay_s, retry_delay_s)
        # huggingface_hub reads HF_ENDPOINT once, at import; read it again in case it was set since.
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        self._token, self._token_source = (token, "the token given") if token is not None else find_hub_token()
        _bound_request_time(request_timeout_s)
        self._api = HfApi(
            endpoint=self.endpoint,
            # False, not None, without a token: None makes HfApi read the saved one from the HF_HOME of its import
            token=self._token or False,
            library_name="swarm",
            library_version=swarm.__version__,
        )
        self._repo_ready = False
        self._publish_lock = threading.Lock()  # one commit at a time: each is built on the current head of main
        self._closing = threading.Event()
        self._queue_changed = threading.Condition()
        self._queued: dict[int, _Upload] = {}  # by epoch: waiting for its (next) try
        self._given_up: dict[int, _Upload] = {}  # not uploaded and no longer tried (the publisher stopped)
        self._run_to_check: RunMark | None = None  # the launch's run check, put off by an outage
        self._stopped_by: SwarmError | None = None  # a refused token or another run's repo: nothing more is tried
        self._worker: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: CheckpointConfig, ledger_dir: Path | None = None,
                    pending_file: Path | None = None) -> HubPublisher | None:
        """The publisher for `checkpoint.hub_repo_id`, or None when the recipe publishes locally only."""
        if not config.hub_repo_id:
            return None
        return cls(config.hub_repo_id, ledger_dir=ledger_dir, pending_file=pending_file)

    def publish_pending(self) -> list[int]:
        """Queue the versions an earlier publisher with the same `pending_file` and repo did not upload (the
        coordinator stopped or was killed first); returns their epochs. A version whose folder is gone is skipped
        with a warning."""
        if self.pending_file is None:
            return []
        try:
            state = json.loads(self.pending_file.read_bytes())
            if state.get("repo_id") != self.repo_id:
                logger.warning(f"{self.pending_file} lists versions not uploaded to {state.get('repo_id')!r}, not to "
                               f"{self.repo_id}: upload them with `swarm checkpoint publish --repo ...` if needed")
                return []
            versions = [(int(v["epoch"]), Path(v["folder"])) for v in state["versions"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.warning(f"Cannot read the list of versions not uploaded yet ({self.pending_file}: {error!r}); "
                           "upload them with `swarm checkpoint publish --all-missing` if any")
            return []
        queued = []
        for epoch, folder in sorted(versions):
            if not (folder / "swarm.json").is_file():
                logger.warning(f"{version_tag(epoch)} was not uploaded to {self.repo_id} by the last launch, and "
                               f"{folder} is gone: it cannot be uploaded")
                continue
            try:
                if self.tag_exists(epoch):  # uploaded since, by `swarm checkpoint publish`
                    continue
            except SwarmError:
                pass  # the Hub is away: queued, and retried like any upload
            self.publish_async(folder, epoch)
            queued.append(epoch)
        if queued:
            logger.info(f"Uploading to {self.repo_id} first what the last launch could not: "
                        f"{', '.join(version_tag(epoch) for epoch in queued)}")
        self._write_pending()
        return queued

    @property
    def repo_url(self) -> str:
        return f"{self.endpoint}/{self.repo_id}"

    # ---- blocking API -----------------------------------------------------------------------------------------

    def ensure_repo(self, run_id: str | None = None, recipe_fingerprint: str | None = None) -> None:
        """Create the repo if it does not exist yet (a no-op after the first success); raises SwarmError.

        With `run_id` and `recipe_fingerprint`, also refuse (`HubRunConflictError`) a repo whose `main` holds a
        version of another run, whose tags this run's versions would otherwise take over. An outage raises
        `HubUnavailableError`; a wrong token or repo `HubConfigError`.
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

    def check_at_launch(self, run_id: str, recipe_fingerprint: str) -> bool:
        """`ensure_repo` at launch, which a Hub outage does not stop: True if the repo was checked now.

        A missing or refused token, a repo not found, and a repo of another run raise (the launch stops with the
        fix). If the Hub cannot be reached or answers 5xx, a one-line warning says so and this returns False: the
        run starts, versions are saved locally, and the repo is checked by the same rules before the first upload.
        """
        self.check_token_at_launch()
        try:
            self.ensure_repo(run_id=run_id, recipe_fingerprint=recipe_fingerprint)
        except HubUnavailableError as error:
            self._run_to_check = RunMark(run_id, recipe_fingerprint)
            logger.warning(
                f"The Hub repo {self.repo_id} could not be checked at launch ({error.reason}): the run starts "
                "anyway. Versions are saved in the checkpoint folder first; their uploads will be retried, the "
                "repo checked first, once the Hub answers"
            )
            return False
        return True

    def check_token_at_launch(self) -> None:
        """Raise `HubConfigError` naming the recipe key when there is no token, or no token could be one; no request
        is made. The launch calls it before the data are prepared, which can take a long time."""
        found = self._token_problem()
        if found is not None:
            problem, fix = found
            raise HubConfigError(f"checkpoint.hub_repo_id is {self.repo_id} but {problem}: {fix}; or remove "
                                 "checkpoint.hub_repo_id from the recipe to publish locally only")

    def _token_problem(self) -> tuple[str, str] | None:
        """(what is wrong with the token, how to fix it), found without a request; None when it can be used."""
        if not self._token:
            return "there is no token for the Hub", (
                f"set HF_TOKEN to a write token for {self.repo_id} (create one at {self.endpoint}/settings/tokens), "
                f"or {TOKEN_FIX}")
        problem = token_shape_problem(self._token)
        if problem is not None:
            return f"{self._token_source} is not a Hub token ({problem})", (
                f"set HF_TOKEN to the token alone, as {self.endpoint}/settings/tokens shows it, or {TOKEN_FIX}")
        return None

    def publish(self, version_dir: Path, epoch: int, message: str | None = None) -> str:
        """Upload `version_dir` as one commit on `main`, tag it `epoch-NNNNNN`, and return the commit id.

        If `main` held a newer version of this run, that version is published again from its folder next to
        `version_dir` (a late upload never leaves `main` behind); without that folder, a warning says so.
        """
        version_dir = Path(version_dir)
        tag = version_tag(epoch)
        files = _version_files(version_dir)
        self._require_token(f"publish {tag} to")
        size_mb = sum((version_dir / name).stat().st_size for name in files) / 1e6
        with self._publish_lock:
            started = time.monotonic()
            try:
                commit_id, newer_on_main = self._publish(version_dir, files, tag, message)
                if newer_on_main is not None and newer_on_main > epoch:
                    self._give_main_back(version_dir, epoch, newer_on_main)
            except SwarmError:  # a conflict, or already explained
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

    def tag_exists(self, epoch: int) -> bool:
        """Whether the repo has the tag of `epoch` (False when the repo does not exist yet)."""
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            self._api.model_info(self.repo_id, revision=version_tag(epoch))
        except (RevisionNotFoundError, RepositoryNotFoundError):
            return False
        except Exception as error:
            raise self._explain(error, "read") from error
        return True

    def epoch_on_main(self) -> int | None:
        """The epoch of the version `main` holds (from its swarm.json); None without one."""
        try:
            found = self._version_at(self._api.model_info(self.repo_id, revision="main"))
        except Exception as error:
            raise self._explain(error, "read") from error
        return found[1] if found is not None else None

    # ---- background API ---------------------------------------------------------------------------------------

    def publish_async(self, version_dir: Path, epoch: int, message: str | None = None) -> Future[str]:
        """Queue `publish` for the background thread and return at once; the future's result is the commit id.

        The oldest version due goes first. A failure is logged (WARNING) and tried again after `retry_delay_s`,
        twice as long each time up to `max_retry_delay_s`, while the versions behind it go ahead; when one upload
        succeeds, those that failed because the Hub was away are tried at once. A refused token or another run's
        repo stops every upload (logged once, as an ERROR, with the fix); their futures raise the SwarmError.
        """
        if self._closing.is_set():
            raise SwarmError(f"the Hub publisher for {self.repo_id} is closed; create a new one to publish")
        upload = _Upload(epoch=epoch, version_dir=Path(version_dir), message=message)
        with self._queue_changed:
            if self._stopped_by is not None:
                self._give_up(upload, self._stopped_by)
                return upload.future
            queued = self._queued.get(epoch)
            if queued is not None:  # the same epoch again: one upload, of the newest folder given
                queued.version_dir, queued.message, queued.due_at = upload.version_dir, message, 0.0
                return queued.future
            self._given_up.pop(epoch, None)
            self._queued[epoch] = upload
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="hub-publish", daemon=True)
                self._worker.start()
            self._queue_changed.notify_all()
        self._write_pending()
        return upload.future

    def not_uploaded(self) -> list[int]:
        """Epochs queued that are not on the Hub (yet): waiting for a retry, or given up at close."""
        with self._queue_changed:
            return sorted({*self._queued, *self._given_up})

    def close(self, wait: bool = True) -> None:
        """Stop taking uploads. With `wait`, every queued version gets one more try now (not after its delay),
        and the upload in progress is finished. Then one ERROR line names the versions that were not uploaded and
        the command that uploads them later."""
        self._closing.set()
        with self._queue_changed:
            self._queue_changed.notify_all()
        try:
            if wait and self._worker is not None:
                self._worker.join()
        finally:
            with self._queue_changed:
                for upload in list(self._queued.values()):
                    if not self._worker or not self._worker.is_alive() or not wait:
                        self._give_up(upload, upload.error or SwarmError("the coordinator stopped first"))
            self._say_not_uploaded()

    def __enter__(self) -> HubPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _work(self) -> None:
        """The background thread: one upload at a time, the oldest due first, until closed."""
        while True:
            with self._queue_changed:
                upload = self._next_due()
                while upload is None:
                    if self._closing.is_set() and not any(not u.tried_at_close for u in self._queued.values()):
                        return
                    due = [u.due_at for u in self._queued.values()]
                    timeout = None if not due or self._closing.is_set() else max(0.0, min(due) - time.monotonic())
                    self._queue_changed.wait(timeout if timeout is None else min(timeout, 1.0))
                    upload = self._next_due()
                if self._closing.is_set():
                    upload.tried_at_close = True
            self._try(upload)

    def _next_due(self) -> _Upload | None:
        if self._closing.is_set():  # one last try for each, at once
            waiting = [u for u in self._queued.values() if not u.tried_at_close]
        else:
            now = time.monotonic()
            waiting = [u for u in self._queued.values() if u.due_at <= now]
        return min(waiting, key=lambda u: u.epoch, default=None)

    def _try(self, upload: _Upload) -> None:
        tag = version_tag(upload.epoch)
        try:
            if self._run_to_check is not None:
                self._check_run_put_off()
            commit_id = self.publish(upload.version_dir, upload.epoch, upload.message)
        except (HubRunConflictError, HubConfigError) as error:
            self._stop_uploads(error)
            return
        except Exception as error:  # SwarmError from the Hub; OSError from a folder changed under us
            upload.attempts += 1
            upload.error = error
            with self._queue_changed:
                if self._closing.is_set():
                    self._give_up(upload, error)
                    return
                delay_s = min(self.retry_delay_s * 2 ** (upload.attempts - 1), self.max_retry_delay_s)
                upload.due_at = time.monotonic() + delay_s
            logger.warning(f"Hub upload of {tag} failed (try {upload.attempts}), retrying in {delay_s:g} s; "
                           f"newer versions go ahead meanwhile: {error}")
            return
        with self._queue_changed:
            self._queued.pop(upload.epoch, None)
            self._given_up.pop(upload.epoch, None)
            for waiting in self._queued.values():  # the Hub answers again: what the outage held goes now
                if isinstance(waiting.error, HubUnavailableError):
                    waiting.due_at = 0.0
            self._queue_changed.notify_all()
        self._write_pending()
        if upload.attempts:
            logger.info(f"Hub upload of {tag} succeeded after {upload.attempts} failed tr"
                        f"{'y' if upload.attempts == 1 else 'ies'}")
        upload.future.set_result(commit_id)

    def _check_run_put_off(self) -> None:
        """The launch's check of the repo, which an outage put off: done once, before the first upload."""
        mark = self._run_to_check
        self.ensure_repo(run_id=mark.run_id, recipe_fingerprint=mark.recipe_fingerprint)
        self._run_to_check = None
        logger.info(f"The Hub repo {self.repo_id} answers again and is this run's: uploading the queued versions")

    def _stop_uploads(self, error: SwarmError) -> None:
        """A refused token, a repo not found, or another run's repo: no retry can fix it, so none is made."""
        with self._queue_changed:
            if self._stopped_by is None:
                self._stopped_by = error
                logger.error(f"{error}. Until that is fixed and the coordinator launched again, no more versions are "
                             "uploaded to the Hub; they are kept in the checkpoint folder")
            for upload in list(self._queued.values()):
                self._give_up(upload, error)

    def _give_up(self, upload: _Upload, error: BaseException) -> None:
        """With `_queue_changed` held: the version is not uploaded, and its future says why."""
        self._queued.pop(upload.epoch, None)
        self._given_up[upload.epoch] = upload
        upload.error = error
        if not upload.future.done():
            upload.future.set_exception(error)

    def _write_pending(self) -> None:
        """The versions not uploaded yet into `pending_file` (atomically; an empty list once all are up)."""
        if self.pending_file is None:
            return
        with self._queue_changed:
            uploads = sorted({**self._given_up, **self._queued}.values(), key=lambda u: u.epoch)
            if not uploads and not self._pending_file_is_ours():
                return  # nothing of ours to record, and no list of another repo's is emptied
            state = dict(repo_id=self.repo_id,
                         versions=[dict(epoch=u.epoch, folder=str(u.version_dir.resolve())) for u in uploads])
            try:
                self.pending_file.parent.mkdir(parents=True, exist_ok=True)
                temporary = self.pending_file.with_name(f".{self.pending_file.name}.tmp")
                temporary.write_text(json.dumps(state, indent=1) + "\n")
                os.replace(temporary, self.pending_file)
            except OSError as error:
                logger.warning(f"Cannot record the versions not uploaded yet in {self.pending_file}: {error!r}")

    def _pending_file_is_ours(self) -> bool:
        try:
            return json.loads(self.pending_file.read_bytes()).get("repo_id") == self.repo_id
        except (OSError, ValueError, AttributeError):
            return False

    def _say_not_uploaded(self) -> None:
        self._write_pending()
        with self._queue_changed:
            missed = sorted(self._given_up.values(), key=lambda u: u.epoch)
        if not missed:
            return
        folders = sorted({str(u.version_dir.parent) for u in missed})
        tags = ", ".join(version_tag(u.epoch) for u in missed)
        ledger = ""
        if self.ledger_dir is not None and any((Path(folder).parent / "ledger").resolve() != self.ledger_dir.resolve()
                                              for folder in folders):
            ledger = f" --ledger-dir {shlex.quote(str(self.ledger_dir))}"  # not where the command looks by default
        commands = " and ".join(
            f"swarm checkpoint publish --checkpoint-dir {shlex.quote(folder)}{ledger} --repo {self.repo_id} "
            "--all-missing" for folder in folders)
        when = "once the Hub answers" if self._stopped_by is None else "once the error above is fixed"
        several = len(missed) > 1
        relaunch = " (or launch the coordinator again: it uploads them first)" if self.pending_file else ""
        logger.error(f"{len(missed)} version{'s were' if several else ' was'} not uploaded to the Hub repo "
                     f"{self.repo_id}: {tags}. {'They are' if several else 'It is'} kept in {', '.join(folders)}; "
                     f"upload {'them' if several else 'it'} {when} with: {commands}{relaunch}")

    # ---- internals --------------------------------------------------------------------------------------------

    def _require_token(self, action: str) -> None:
        found = self._token_problem()
        if found is not None:
            problem, fix = found
            raise HubConfigError(f"cannot {action} the Hub repo {self.repo_id}: {problem}. {fix[0].upper()}{fix[1:]}")

    def _ensure_repo(self) -> None:
        if not self._repo_ready:
            self._api.create_repo(self.repo_id, private=self.private, exist_ok=True)
            self._repo_ready = True

    def _run_at(self, revision_info) -> RunMark | None:
        """The run of the version at one revision (a `model_info` answer), from its swarm.json; None without one."""
        found = self._version_at(revision_info)
        return found[0] if found is not None else None

    def _version_at(self, revision_info) -> tuple[RunMark, int | None] | None:
        """The run and epoch of the version at one revision, from its swarm.json; None without one."""
        if "swarm.json" not in {sibling.rfilename for sibling in revision_info.siblings or []}:
            return None
        with tempfile.TemporaryDirectory(prefix="swarm-hub-") as cache_dir:  # read once, not kept in HF_HOME
            path = self._api.hf_hub_download(self.repo_id, "swarm.json", revision=revision_info.sha,
                                             cache_dir=cache_dir)
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        try:
            epoch = json.loads(text).get("epoch")
        except (ValueError, AttributeError):
            epoch = None
        return RunMark.of_metadata(text), epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None

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

    def _publish(self, version_dir: Path, files: list[str], tag: str, message: str | None) -> tuple[str, int | None]:
        """The commit and tag; returns the commit id and the epoch of this run's version `main` held before."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.errors import HfHubHTTPError

        self._ensure_repo()
        local = version_dir / "swarm.json"
        ours = RunMark.of_metadata(local.read_text(encoding="utf-8", errors="replace")) if local.is_file() \
            else RunMark(None, None)
        head = self._api.model_info(self.repo_id, revision="main")
        # checked before the commit: main, then the tag, must not hold another run's version
        found = self._version_at(head)
        on_main, epoch_on_main = found if found is not None else (None, None)
        if on_main is not None and not ours.is_run(on_main):
            raise self._conflict(version_dir, tag, "its main", on_main, ours)
        self._check_tag(version_dir, tag, ours)
        with tempfile.TemporaryDirectory(prefix="swarm-ledger-upload-") as scratch:
            ledger = self._ledger_files(ours, Path(scratch))
            in_repo = {sibling.rfilename for sibling in head.siblings or []}
            stale = sorted(in_repo - set(files) - set(ledger) - _KEEP_IN_REPO)
            operations: list = [CommitOperationAdd(name, path_or_fileobj=str(version_dir / name)) for name in files
                                if name not in ledger]
            operations += [CommitOperationAdd(name, path_or_fileobj=str(path)) for name, path in ledger.items()]
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
        return commit.oid, epoch_on_main

    def _ledger_files(self, ours: RunMark, scratch: Path) -> dict[str, Path]:
        """The run's ledger as of its newest checkpoint, copied into `scratch`, as the `ledger/...` files of the
        commit; none without a ledger folder, or with one of another run (a version then carries only its head)."""
        from swarm.ledger import LedgerSourceError, export_signed_ledger

        if self.ledger_dir is None:
            return {}
        try:
            newest = export_signed_ledger(self.ledger_dir, scratch)
        except LedgerSourceError as error:
            logger.warning(f"The ledger is not uploaded with this version ({error}); the version carries its "
                           "ledger head only")
            return {}
        if newest is not None and ours.run_id is not None and newest.run_id != ours.run_id:
            logger.warning(f"The ledger in {self.ledger_dir} is not run {ours.run_id!r}'s: not uploaded with its "
                           "version, which carries its ledger head only")
            return {}
        return {f"ledger/{path.name}": path for path in sorted(scratch.iterdir())}

    def _give_main_back(self, version_dir: Path, epoch: int, newer: int) -> None:
        """`version_dir` (epoch `epoch`) was uploaded after the newer version `newer`, which main held: publish that
        one again from its folder next to it, so that main and `from_pretrained(repo)` stay on the newest."""
        newer_dir = version_dir.parent / version_tag(newer)
        if not (newer_dir / "swarm.json").is_file():
            logger.warning(f"{version_tag(epoch)} was uploaded after {version_tag(newer)}, and main now holds it; "
                           f"{newer_dir} is not here to put back: publish {version_tag(newer)} again to restore main")
            return
        message = f"Publish {version_tag(newer)} again: {version_tag(epoch)} was uploaded after it"
        self._publish(newer_dir, _version_files(newer_dir), version_tag(newer), message)
        logger.info(f"{version_tag(epoch)} was uploaded after {version_tag(newer)}: main holds "
                    f"{version_tag(newer)} again")

    def _explain(self, error: Exception, action: str, version_dir: Path | None = None) -> SwarmError:
        """The SwarmError a user can act on, for an exception raised by huggingface_hub."""
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        what = f"cannot {action} the Hub repo {self.repo_id} at {self.endpoint}"
        kept = f"; the version stays in {version_dir}" if version_dir is not None else ""
        if isinstance(error, OfflineModeIsEnabled):
            return HubConfigError(f"{what}: HF_HUB_OFFLINE is set; unset it to publish{kept}")
        if isinstance(error, HfHubHTTPError):
            status = error.response.status_code if error.response is not None else None
            said = f" (the Hub said: {error.server_message})" if error.server_message else ""
            if status == 401:
                return HubConfigError(
                    f"{what}: the token was refused (401){said}. Set HF_TOKEN to a valid write token for "
                    f"{self.repo_id} (create one at {self.endpoint}/settings/tokens), or {TOKEN_FIX}{kept}"
                )
            if status == 403:
                return HubConfigError(
                    f"{what}: the token may not write there (403){said}. Set HF_TOKEN to a token with write "
                    f"access to {self.repo_id}, or pick a namespace you own in checkpoint.hub_repo_id{kept}"
                )
            if status == 404:
                return HubConfigError(
                    f"{what}: not found (404){said}. Check checkpoint.hub_repo_id and that the HF_TOKEN "
                    f"account can see and create repos in that namespace{kept}"
                )
            if status in (409, 412):
                return SwarmError(f"{what}: main changed during the upload ({status}){said}; publish again{kept}")
            if status is not None and (status in (408, 429) or status >= 500):
                reason = f"the Hub answered {status}"
                return HubUnavailableError(f"{what}: {reason}{said}; try again later{kept}", reason)
            return SwarmError(f"{what}: the Hub refused the request ({status}){said}{kept}")
        if isinstance(error, _network_errors()):
            reason = f"could not reach it ({type(error).__name__}: {error})"
            return HubUnavailableError(f"{what}: {reason}. Check the network, or HF_ENDPOINT if you use a mirror{kept}",
                                       reason)
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


_request_timeout_s: float | None = None


def _bound_request_time(timeout_s: float) -> None:
    """Give huggingface_hub's shared HTTP client a timeout per connect, read and write (it has none by default).

    Done through its own hook (`set_client_factory`), and only while nobody chose another client factory.
    """
    global _request_timeout_s
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    if timeout_s == _request_timeout_s:
        return
    ours = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None)
    if ours is not _http.default_client_factory and not getattr(ours, "swarm_timeout", False):
        return  # the program set its own client: its timeouts are its own

    def client_with_timeouts() -> httpx2.Client:
        client = _http.default_client_factory()
        client.timeout = httpx2.Timeout(_request_timeout_s, connect=min(_request_timeout_s, 30.0))
        return client

    client_with_timeouts.swarm_timeout = True  # type: ignore[attr-defined]
    _request_timeout_s = timeout_s
    set_client_factory(client_with_timeouts)  # closes the current client: the next request makes one with these


@dataclass
class PublishReport:
    """What `publish_versions` did: epochs uploaded now, and epochs the repo had already (same run)."""

    repo_id: str
    uploaded: list[int]
    already_there: list[int]


def publish_versions(checkpoint_dir: Path, epochs: list[int] | None = None, repo_id: str | None = None,
                     endpoint: str | None = None, request_timeout_s: float = REQUEST_TIMEOUT_S,
                     ledger_dir: Path | None = None) -> PublishReport:
    """Upload a run's versions from its checkpoint folder to its Hub repo: what `swarm checkpoint publish` runs.

    Each commit carries the run's ledger (`ledger_dir`, by default the `ledger` folder next to the checkpoint folder,
    where the coordinator keeps it) as `ledger/`; without one, the versions go with their ledger heads only.

    `epochs` None (`--all-missing`): every version of the folder whose tag the repo lacks. With `epochs`
    (`--epoch N`, repeatable): those versions, uploaded again if their tag is there already (same run only). The
    repo is `checkpoint.hub_repo_id` of the newest version's recipe (its swarm.json) unless `repo_id` is given; the
    token comes from HF_TOKEN (or `hf auth login`). Oldest first; `main` ends on the newest version of the folder.
    The same safety rules as the coordinator's: a repo or tag of another run is never written to.

        report = publish_versions(Path("runs/tiny/checkpoints"))        # after "N versions were not uploaded"
        print(report.uploaded)                                           # [50, 100]

    Raises UsageError (no version, an epoch the folder lacks, no repo), HubConfigError (token, repo),
    HubRunConflictError, or HubUnavailableError (the Hub is still away: run it again later).
    """
    from coordinator.checkpoint import latest_version, published_epoch

    checkpoint_dir = Path(checkpoint_dir)
    try:
        local = {epoch: path for path in checkpoint_dir.iterdir() if (epoch := published_epoch(path)) is not None}
    except OSError:
        local = {}
    if not local:
        raise UsageError(f"--checkpoint-dir {checkpoint_dir} holds no version (epoch-NNNNNN/ folders with weights and "
                         "swarm.json): give the run's checkpoint folder (checkpoint.dir in its recipe)")
    listed = ", ".join(str(epoch) for epoch in sorted(local))
    for epoch in epochs or []:
        if epoch not in local:
            raise UsageError(f"--epoch {epoch}: {checkpoint_dir} has no version {version_tag(epoch)}; it has epochs "
                             f"{listed}")
    newest = latest_version(checkpoint_dir)
    metadata = json.loads((newest / "swarm.json").read_text(encoding="utf-8", errors="replace"))
    mark = RunMark.of_metadata(json.dumps(metadata))
    if repo_id is None:
        try:
            repo_id = metadata["recipe"]["checkpoint"]["hub_repo_id"]
        except (KeyError, TypeError):
            repo_id = None
        if not repo_id:
            raise UsageError(f"the recipe of {newest / 'swarm.json'} names no Hub repo (checkpoint.hub_repo_id): pass "
                             "--repo <namespace/name>")
    from swarm.ledger import ENTRIES_FILE

    if ledger_dir is None:
        beside = checkpoint_dir.parent / "ledger"
        ledger_dir = beside if (beside / ENTRIES_FILE).is_file() else None
        if ledger_dir is None:
            logger.warning(f"No ledger next to {checkpoint_dir} ({beside}): the versions are uploaded with their "
                           "ledger heads only; pass --ledger-dir to upload the run's ledger with them")
    elif not (Path(ledger_dir) / ENTRIES_FILE).is_file():
        raise UsageError(f"--ledger-dir {ledger_dir} is not a ledger folder (it has no {ENTRIES_FILE}): give the run's "
                         "ledger folder (next to its checkpoints, or the coordinator's --ledger-dir)")
    publisher = HubPublisher(repo_id, endpoint=endpoint, request_timeout_s=request_timeout_s, ledger_dir=ledger_dir)
    publisher.ensure_repo(run_id=mark.run_id, recipe_fingerprint=mark.recipe_fingerprint)
    if epochs:
        wanted, there = sorted(set(epochs)), []
    else:
        there = [epoch for epoch in sorted(local) if publisher.tag_exists(epoch)]
        wanted = [epoch for epoch in sorted(local) if epoch not in there]
    for epoch in wanted:
        publisher.publish(local[epoch], epoch)
    newest_epoch = max(local)
    if newest_epoch not in wanted and publisher.epoch_on_main() != newest_epoch:
        publisher.publish(local[newest_epoch], newest_epoch)  # a restore of main that an outage cut short
    return PublishReport(repo_id=repo_id, uploaded=wanted, already_there=there)
