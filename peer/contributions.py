"""A volunteer's own record of its work, per swarm epoch, kept on disk and signed with its identity key.

The swarm's credit must not depend on the coordinator being up when an epoch ends. So each peer appends
every closed epoch to `contributions.jsonl` (one signed JSON line per epoch) and keeps re-publishing to the
DHT every epoch the coordinator's ledger has not committed yet (the coordinator announces how far its
ledger goes). A restarted volunteer with the same identity picks its log up again.

Where the log cannot be written (a read-only identity folder, a disk that filled up mid-run), the peer says so
once and trains on: its claims stay in memory and are still published, and they are written as soon as the disk
takes them again. Only what the ledger has not credited when the peer leaves is then lost.

>>> log = ContributionLog(Path("/tmp/x"), identity)          # doctest: +SKIP
>>> log.add(epoch=3, samples=16, compute_s=0.4); log.close_epochs_before(4)
>>> [work.epoch for work in log.unpublished(ledger_epoch=2)]  # doctest: +SKIP
[3]
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
from pathlib import Path

from swarm.identity import Identity
from swarm.records import MAX_EPOCHS_PER_RECORD, EpochWork

logger = logging.getLogger("swarm.peer")


class ContributionLog:
    def __init__(self, folder: Path, identity: Identity):
        self.path = Path(folder) / "contributions.jsonl"
        self.identity = identity
        self.closed: dict[int, EpochWork] = {}
        self.open: dict[int, EpochWork] = {}
        self._unsaved: dict[int, str] = {}  # epoch -> its signed line, closed but not on disk yet
        self._write_error: OSError | None = None  # why the last write failed; None while the disk takes them
        self._never_published: set[int] = set()  # epochs closed in this session that no record has carried yet
        self._load()
        self._check_writable()

    def _check_writable(self) -> None:
        """Say at start, not at the first epoch's end, that the log cannot be written; the peer trains on."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND))
            else:  # a probe, not the log itself: an empty log would be a file for nothing if the peer leaves now
                handle, probe = tempfile.mkstemp(dir=self.path.parent, prefix=".probe-")
                os.close(handle)
                os.unlink(probe)
        except OSError as error:
            self._write_error = error
            logger.warning(f"cannot write the contribution log {self.path} ({_reason(error)}): this peer's claims "
                           "are kept in memory and still published, but those the ledger has not credited when it "
                           f"leaves are lost; {self._fix(error)} to keep a record on disk")

    def _fix(self, error: OSError) -> str:
        if _is_full(error):
            return "free space"
        return (f"make {self.path.parent} writable (or pass --identity with a writable copy of "
                f"{self.identity.folder})")

    def _load(self) -> None:
        if not self.path.exists():
            return
        public_keys = (self.identity.signing_key.get_public_key(), *self.identity.previous_keys)
        unsigned = []
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            logger.warning(f"cannot read the contribution log {self.path} ({error}): the epochs it holds are not "
                           "re-published; the ledger keeps what was credited")
            return
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                row = json.loads(line)
                body = json.dumps(row["work"], sort_keys=True, separators=(",", ":")).encode()
                signature = bytes.fromhex(row["signature"])
                if not any(key.verify(body, signature) for key in public_keys):
                    unsigned.append(number)
                    continue
                work = EpochWork.parse_obj(row["work"])
            except Exception as error:  # a torn last line after a crash, or an edited file: skip, say so
                logger.warning(f"{self.path}:{number}: skipping an unreadable contribution line ({error})")
                continue
            self.closed[work.epoch] = work
        if unsigned:
            # one line for all: a replaced key (its file deleted, so a new one was made) fails every old line
            lines = (f"line {unsigned[0]}" if len(unsigned) == 1
                     else f"{len(unsigned)} lines ({unsigned[0]}-{unsigned[-1]})")
            logger.warning(f"{self.path}: skipping {lines} whose signature does not verify with this identity's "
                           f"key ({self.identity.p2p_key_path}): it was replaced since they were "
                           "written, or they were edited. Their epochs are not re-published; the ledger keeps what "
                           "was credited")

    def add(self, epoch: int, samples: int, compute_s: float) -> None:
        work = self.open.get(epoch) or self.closed.get(epoch)
        if work is None:
            work = EpochWork(epoch=epoch, samples=0, micro_steps=0, compute_s=0.0)
        self.open[epoch] = EpochWork(epoch=epoch, samples=work.samples + samples, micro_steps=work.micro_steps + 1,
                                     compute_s=float(work.compute_s + compute_s))
        self.closed.pop(epoch, None)

    def drop(self, epoch: int) -> int:
        """Claim nothing for an open `epoch` (its gradient never reached the swarm); returns its samples."""
        work = self.open.pop(epoch, None)
        return work.samples if work is not None else 0

    def close_epochs_before(self, epoch: int) -> None:
        """Persist every open epoch older than `epoch` (the peer has moved past them)."""
        for done in sorted(e for e in self.open if e < epoch):
            self._persist(self.open.pop(done))

    def close_all(self) -> None:
        for done in sorted(self.open):
            self._persist(self.open.pop(done))

    def _persist(self, work: EpochWork) -> None:
        body = json.dumps(work.dict(), sort_keys=True, separators=(",", ":"))
        signature = self.identity.signing_key.sign(body.encode()).hex()
        self._unsaved[work.epoch] = json.dumps({"work": work.dict(), "signature": signature}, sort_keys=True) + "\n"
        self.closed[work.epoch] = work  # published from memory whether or not the disk takes it
        self._never_published.add(work.epoch)
        self._write_unsaved()

    def _write_unsaved(self) -> None:
        """Append every closed epoch that is not on disk yet; a failed write leaves the file as it was."""
        data = "".join(self._unsaved[epoch] for epoch in sorted(self._unsaved)).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                size = os.fstat(handle).st_size
                try:
                    written = 0
                    while written < len(data):
                        written += os.write(handle, data[written:])
                    os.fsync(handle)
                except OSError:
                    # a torn line would join the next one: cut it off (truncating frees space, so it works when full)
                    os.ftruncate(handle, size)
                    raise
            finally:
                os.close(handle)
        except OSError as error:
            if self._write_error is None:
                logger.warning(f"cannot write the contribution log {self.path} ({_reason(error)}): this peer's claims "
                               f"for epoch {min(self._unsaved)} on are kept in memory and still published; "
                               f"{self._fix(error)} to keep a record on disk")
            self._write_error = error
            return
        if self._write_error is not None:
            logger.info(f"The contribution log {self.path} is written again: {len(self._unsaved)} epochs kept in "
                        "memory are saved")
            self._write_error = None
        self._unsaved.clear()

    @property
    def unsaved_epochs(self) -> list[int]:
        """Closed epochs held only in memory (the log could not be written)."""
        return sorted(self._unsaved)

    def unpublished(self, ledger_epoch: int) -> list[EpochWork]:
        """Closed epochs the ledger has not committed, oldest first, as many as fit one DHT record."""
        pending = [self.closed[e] for e in sorted(self.closed) if e > ledger_epoch][:MAX_EPOCHS_PER_RECORD]
        self._never_published.difference_update(work.epoch for work in pending)
        return pending

    def missed(self, ledger_epoch: int) -> list[EpochWork]:
        """Epochs closed in this session that no record carried before the ledger committed them: the coordinator
        credited those epochs without this peer's claim (the machine was paused or cut off as they ended), and a
        signed ledger never reopens an epoch. Each is returned once."""
        missed = [self.closed[e] for e in sorted(self._never_published) if e <= ledger_epoch and e in self.closed]
        self._never_published.difference_update(work.epoch for work in missed)
        return missed


def _is_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
