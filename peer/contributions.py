"""A volunteer's own record of its work, per swarm epoch, kept on disk and signed with its identity key.

The swarm's credit must not depend on the coordinator being up when an epoch ends. So each peer appends
every closed epoch to `contributions.jsonl` (one signed JSON line per epoch) and keeps re-publishing to the
DHT every epoch the coordinator's ledger has not committed yet (the coordinator announces how far its
ledger goes). A restarted volunteer with the same identity picks its log up again.

>>> log = ContributionLog(Path("/tmp/x"), identity)          # doctest: +SKIP
>>> log.add(epoch=3, samples=16, compute_s=0.4); log.close_epochs_before(4)
>>> [work.epoch for work in log.unpublished(ledger_epoch=2)]  # doctest: +SKIP
[3]
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from swarm.identity import Identity
from swarm.records import MAX_EPOCHS_PER_RECORD, EpochWork

logger = logging.getLogger("swarm.peer")


class ContributionLog:
    def __init__(self, folder: Path, identity: Identity):
        self.path = Path(folder) / "contributions.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self.closed: dict[int, EpochWork] = {}
        self.open: dict[int, EpochWork] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        public_key = self.identity.signing_key.get_public_key()
        unsigned = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            try:
                row = json.loads(line)
                body = json.dumps(row["work"], sort_keys=True, separators=(",", ":")).encode()
                if not public_key.verify(body, bytes.fromhex(row["signature"])):
                    unsigned.append(number)
                    continue
                work = EpochWork.parse_obj(row["work"])
            except Exception as error:  # a torn last line after a crash, or an edited file: skip, say so
                logger.warning(f"{self.path}:{number}: skipping an unreadable contribution line ({error})")
                continue
            self.closed[work.epoch] = work
        if unsigned:
            # one line for all: a replaced signing key (its file deleted, so a new one was made) fails every old line
            lines = (f"line {unsigned[0]}" if len(unsigned) == 1
                     else f"{len(unsigned)} lines ({unsigned[0]}-{unsigned[-1]})")
            logger.warning(f"{self.path}: skipping {lines} whose signature does not verify with this identity's "
                           f"signing key ({self.identity.folder / 'signing_key.der'}): it was replaced since they were "
                           "written, or they were edited. Their epochs are not re-published; the ledger keeps what "
                           "was credited")

    def add(self, epoch: int, samples: int, compute_s: float) -> None:
        work = self.open.get(epoch) or self.closed.get(epoch)
        if work is None:
            work = EpochWork(epoch=epoch, samples=0, micro_steps=0, compute_s=0.0)
        self.open[epoch] = EpochWork(epoch=epoch, samples=work.samples + samples, micro_steps=work.micro_steps + 1,
                                     compute_s=float(work.compute_s + compute_s))
        self.closed.pop(epoch, None)

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
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps({"work": work.dict(), "signature": signature}, sort_keys=True) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self.closed[work.epoch] = work

    def unpublished(self, ledger_epoch: int) -> list[EpochWork]:
        """Closed epochs the ledger has not committed, oldest first, as many as fit one DHT record."""
        pending = [self.closed[e] for e in sorted(self.closed) if e > ledger_epoch]
        return pending[:MAX_EPOCHS_PER_RECORD]
