"""Emulation for demos and benchmarks: the whole system on one machine.

* :mod:`~cachenet.sim.wan`: an emulated WAN (a TCP proxy with delay, jitter,
  bandwidth, stalls and cuts);
* :mod:`~cachenet.sim.daemon`: the two daemons as child processes that announce
  readiness;
* :mod:`~cachenet.sim.fleet`: a whole fleet (the cloud, the WAN, N agents) started,
  waited for and torn down as one: what the demos, the benchmarks and the tests run;
* :mod:`~cachenet.sim.stream`: workloads with temporal locality;
* :mod:`~cachenet.sim.demo`, :mod:`~cachenet.sim.drift`: ``cachenet demo``.

The top of the library: with the CLI, the only layer that starts or imports the
daemons (``edge_agent``, ``cloud_server``).
"""
