"""Validation loss on the held-out documents: the same batches on every machine, so numbers compare."""

from __future__ import annotations

import torch


@torch.no_grad()
def validation_loss(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device | str = "cpu") -> float:
    """Mean next-token cross-entropy (nats per token) over `batches`, in eval mode, restoring the mode after."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            batch = batch.to(device)
            loss = model(input_ids=batch, labels=batch).loss
            tokens = batch.shape[0] * (batch.shape[1] - 1)
            total += loss.item() * tokens
            count += tokens
    finally:
        model.train(was_training)
    return total / max(1, count)
