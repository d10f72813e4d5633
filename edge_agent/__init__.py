"""The edge side of cachenet: runs cache bundles under ONNX Runtime, never imports torch.

The ZeroMQ daemon comes with the serving loop; what the edge runs today is the
verified loading and gating path, re-exported here so that the edge's import
surface is one package.
"""

from cachenet.core.bundle import verify_bundle
from cachenet.core.gate import Gate
from cachenet.core.manifest import Manifest
from cachenet.core.runtime import CacheModel, Prediction, load_cache_model

__all__ = ["CacheModel", "Gate", "Manifest", "Prediction", "load_cache_model", "verify_bundle"]
