"""Executors carry out the core's START/PREEMPT decisions on real machines.

- :mod:`scheduler.live.executors.base`: the interface the scheduler service calls (``LaunchRequest``,
  ``ExecutionStatus``, ``Executor`` ...), free of any cluster dependency;
- :mod:`scheduler.live.executors.ray`: ``RayExecutor``, placement groups pinned to the chosen nodes on a Ray cluster,
  the ranks handed to a long-lived supervisor actor on each node (or one actor per rank, launch mode ``actor``);
- :mod:`scheduler.live.executors.worker`: what runs on the nodes: the node supervisor, the per-rank actor, and the
  rank process they both hold.

Importing this package imports nothing heavy; ``ray`` is imported by :mod:`scheduler.live.executors.ray` only.
"""
