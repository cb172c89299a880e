"""Executors carry out the core's START/PREEMPT decisions on real machines.

- :mod:`scheduler.live.executors.base`: the interface the scheduler service calls (``LaunchRequest``,
  ``ExecutionStatus``, ``Executor`` ...), free of any cluster dependency;
- :mod:`scheduler.live.executors.ray`: ``RayExecutor``, placement groups pinned to the chosen nodes on a Ray
  cluster, the ranks handed to a long-lived supervisor actor on each node (:mod:`scheduler.live.executors.ray.node`);
- :mod:`scheduler.live.executors.instant`: the executor contract without a cluster (launches accepted at once,
  runs end on a clock), for the service at scale, without a database, or on a virtual clock.

Importing this package imports nothing heavy; ``ray`` is imported by :mod:`scheduler.live.executors.ray` only.
"""
