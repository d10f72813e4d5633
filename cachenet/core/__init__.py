"""The runtime a device imports: numpy and ONNX Runtime, never torch.

* :mod:`~cachenet.core.tensors`: tensors on the wire (dtype, shape, raw bytes);
* :mod:`~cachenet.core.gate`: confidence scores (the :data:`~cachenet.core.gate.SCORES`
  registry) and the gate;
* :mod:`~cachenet.core.calibration`: thresholds with a Clopper-Pearson guarantee;
* :mod:`~cachenet.core.manifest`: the bundle manifest, its schema and its versions;
* :mod:`~cachenet.core.bundle`: bundles on disk, verified file by file;
* :mod:`~cachenet.core.install`: pushed bundles installed into a state directory;
* :mod:`~cachenet.core.runtime`: a verified bundle loaded into ONNX Runtime;
* :mod:`~cachenet.core.cascade`: the one definition of who answers a request
  (the active cache model, then the general one, then the cloud).

This layer imports nothing of cachenet's but :mod:`cachenet.exceptions`
(``tests/test_layers.py`` checks it).
"""
