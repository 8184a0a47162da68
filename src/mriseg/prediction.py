"""Apply a trained model: slices in, label maps out."""
import numpy as np
import torch

from .training import autocast


@torch.no_grad()
def predict_labels(model, x, device, amp=True, batch_size=32):
    """images [N,1,H,W] float32 -> labels [N,H,W] uint8 (argmax over the three classes)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with autocast(device, amp):
            logits = model(x[i:i + batch_size].to(device))
        out.append(logits.argmax(dim=1).to(torch.uint8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0,) + tuple(x.shape[2:]), np.uint8)
