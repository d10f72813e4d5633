"""The torch toolchain: from a data set and a full model to a cache bundle.

* :mod:`~cachenet.toolchain.data`: data sets and seeded splits;
* :mod:`~cachenet.toolchain.models`: architectures (the
  :data:`~cachenet.toolchain.models.ARCHITECTURES` registry), checkpoints, MACs;
* :mod:`~cachenet.toolchain.train`, :mod:`~cachenet.toolchain.full`,
  :mod:`~cachenet.toolchain.distill`: training, the full model, distillation;
* :mod:`~cachenet.toolchain.export`, :mod:`~cachenet.toolchain.quantize`: ONNX and int8;
* :mod:`~cachenet.toolchain.build`: ``cachenet build``, all of the above in order.

Everything here needs torch (the ``build`` extra); importing the package without it
raises :class:`~cachenet.exceptions.ConfigError` saying so. It builds on
:mod:`cachenet.core` only.
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # the edge install has no torch
    from cachenet.exceptions import ConfigError

    raise ConfigError("cachenet.toolchain needs torch: install cachenet with the 'build' "
                      "extra (pip install -c constraints.txt 'cachenet[build]')") from exc
