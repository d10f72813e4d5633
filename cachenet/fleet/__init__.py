"""The cloud's fleet: what each device runs, and what it should run next.

* :mod:`~cachenet.fleet.store`: the versioned store of bundles per agent (no torch, so
  ``cachenet models`` runs on any machine);
* :mod:`~cachenet.fleet.specialize`: partition models for what a device sees, made
  with the toolchain (torch) and compared through :mod:`cachenet.core.cascade`.

The cloud server's specialiser (:mod:`cloud_server.specializer`) runs them; the
control plane (:mod:`cloud_server.control`) pushes what the store holds. It builds on
:mod:`cachenet.core`, :mod:`cachenet.protocol` and :mod:`cachenet.toolchain`.
"""
