"""Layer caches: answers from inside a network, so a request can stop early.

A *site* is a named point between two stages of a model (a ResNet block, a
TinyCNN stage). At each site the stage before it also gives a short feature
vector (the activation average-pooled to 2x2), and *rules* look it up:

* ``learned`` (GATI, Abedi et al.): a small head on the features, trained by
  self-distillation on the full model's own answers (:mod:`.head`);
* ``knn`` (Freeze Inference): the nearest stored keys, filled with the full
  model's answers, unanimous within a radius (:mod:`.knn`);
* ``akey`` (Finamore et al.): an exact lookup under a coarse quantised key
  (:mod:`.akey`).

Each kind is a config dataclass and a class registered in :data:`KINDS`
(:mod:`.kinds`); adding one is one module. Every rule gives, per input, a label
and a confidence in [0, 1]; it answers when the confidence reaches its
threshold. The thresholds of all rules are calibrated *together*
(:mod:`.calibrate`): the Clopper-Pearson guarantee covers the cascade as a
whole, where a request's first hit ends it. :mod:`.cascade` runs the cascade on
a batch with any runner of stages (torch in the cloud, ONNX Runtime on the
edge), hit rows leaving the batch; :mod:`.control` re-checks a share of hits
against the full model online (auto-refresh) and tightens a rule whose error
breaks its bound; :mod:`.spec` reads the bundle's ``layer_cache`` section.

numpy only: the edge imports this package.
"""

from cachenet.layercache.akey import KeyCache, KeyConfig
from cachenet.layercache.calibrate import CascadeCalibration, calibrate_cascade
from cachenet.layercache.cascade import Answered, LayerCascade, Rule, Runner
from cachenet.layercache.control import Refresh
from cachenet.layercache.head import HeadCache, HeadConfig
from cachenet.layercache.kinds import KINDS, Lookup, SiteCache
from cachenet.layercache.knn import KnnCache, KnnConfig
from cachenet.layercache.spec import LayerCacheSpec, load_cascade, parse_spec

__all__ = ["KINDS", "Answered", "CascadeCalibration", "HeadCache", "HeadConfig", "KeyCache",
           "KeyConfig", "KnnCache", "KnnConfig", "LayerCacheSpec", "LayerCascade", "Lookup",
           "Refresh", "Rule", "Runner", "SiteCache", "calibrate_cascade", "load_cascade",
           "parse_spec"]
