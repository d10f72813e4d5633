"""The wire between device and cloud: ``cachenet.v1`` over gRPC.

* :mod:`~cachenet.protocol.v1`: the code generated from ``proto/cachenet/v1``
  (``scripts/gen_proto.py``);
* :mod:`~cachenet.protocol.client`: the cloud's clients, where gRPC errors become
  :class:`~cachenet.exceptions.CloudError` (here and nowhere else);
* :mod:`~cachenet.protocol.push`: bundles over the control plane, in verified chunks.

No torch: the edge agent speaks it. It builds on :mod:`cachenet.core` only.
"""
