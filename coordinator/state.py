"""Fetching the swarm's current model from its peers, the way a newcomer would, without training.

The coordinator does not train, so it must not look like a peer to hivemind's progress tracker (a silent
"peer" would make real peers wait for a group that never forms). It uses a bare DecentralizedAverager under
the run's state-averager prefix: it downloads state but never shares state or joins averaging.
"""

from __future__ import annotations

import logging
import time

import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.optim.state_averager import TrainingStateAverager

from swarm.optim import parameter_order

logger = logging.getLogger("swarm.coordinator")

POLL_S = 0.5  # how often a wait for a download looks whether the downloader process is still alive


class _OneLineDownloadFailures(logging.Filter):
    """hivemind logs each failed download (a departed peer still listed for a minute) with a full traceback, 3 s
    apart while the coordinator retries: one line each is enough, unless hivemind's debug logs are on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith("Failed to download state from"):
            if not logging.getLogger("hivemind").isEnabledFor(logging.DEBUG):
                record.msg, record.args = " ".join(record.getMessage().split()), ()
                record.exc_info, record.exc_text = None, None
                record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


_DOWNLOAD_LOGGER = "hivemind.averaging.averager"


class _StateDownloader(DecentralizedAverager):
    """Speaks to peers' state averagers: hivemind names each RPC after the *caller's* class, so ours must match."""

    @classmethod
    def _get_handle_name(cls, namespace, method_name):
        return TrainingStateAverager._get_handle_name(namespace, method_name)


class StateFetcher:
    """Downloads (epoch, parameters) from the peer that advertises the newest state.

    >>> fetcher = StateFetcher(dht, run_id="tiny-stdlib")          # doctest: +SKIP
    >>> epoch = fetcher.fetch_into(model, timeout_s=60)             # doctest: +SKIP
    """

    def __init__(self, dht, run_id: str):
        # before the averager's process forks: it inherits the filter
        download_logger = logging.getLogger(_DOWNLOAD_LOGGER)
        if not any(isinstance(f, _OneLineDownloadFailures) for f in download_logger.filters):
            download_logger.addFilter(_OneLineDownloadFailures())
        self.dht = dht
        self.averager = _StateDownloader(
            averaged_tensors=[torch.zeros(1)],
            dht=dht,
            prefix=f"{run_id}_state_averager",  # hivemind.Optimizer's state averager lives here
            start=True,
            allow_state_sharing=False,
            client_mode=True,
        )

    def fetch_into(self, model: torch.nn.Module, timeout_s: float) -> int | None:
        """Copy the newest swarm parameters into `model`; returns their epoch, or None if no peer answered."""
        if not self.is_alive():
            return None
        future = self.averager.load_state_from_peers(wait=False, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                loaded = future.result(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
                break
            except TimeoutError:  # the download goes through the DHT too: a dead one would keep it waiting
                if not self.is_alive() or not self.dht.is_alive() or time.monotonic() >= deadline:
                    future.cancel()
                    return None
            except Exception as error:  # a peer leaving mid-download: report and let the caller retry later
                logger.warning(f"Downloading the state from peers failed: {error!r}")
                return None
        if loaded is None:
            return None
        metadata, tensors = loaded
        names = parameter_order(model)
        params = dict(model.named_parameters())
        if len(tensors) < len(names) or not isinstance(metadata, dict) or not isinstance(metadata.get("epoch"), int):
            logger.warning("A peer sent a state that does not fit this recipe's model; ignoring it")
            return None
        for name, tensor in zip(names, tensors):
            if tuple(tensor.shape) != tuple(params[name].shape):
                logger.warning(f"A peer sent {name} with shape {tuple(tensor.shape)}, expected {tuple(params[name].shape)}")
                return None
        with torch.no_grad():
            for name, tensor in zip(names, tensors):
                params[name].copy_(tensor.to(params[name].dtype))
        return metadata["epoch"]

    def is_alive(self) -> bool:
        """Whether the downloader's process runs (it dies with the coordinator)."""
        return self.averager.is_alive()

    def shutdown(self) -> None:
        if self.averager.is_alive():  # hivemind logs a traceback-like error for a process already gone
            self.averager.shutdown()
