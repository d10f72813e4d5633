"""The cloud side of cachenet: serves the full PyTorch model."""

from cloud_server.model import load_full_model, pick_device

__all__ = ["load_full_model", "pick_device"]
