"""Executors carry out the core's START/PREEMPT decisions on real machines.

- :mod:`scheduler.executors.base`: the interface the scheduler service calls (``LaunchRequest``,
  ``ExecutionStatus``, ``Executor`` ...), free of any cluster dependency;
- :mod:`scheduler.executors.ray`: ``RayExecutor``, placement groups pinned to the chosen nodes and one actor per
  worker on a Ray cluster;
- :mod:`scheduler.executors.worker`: the worker actor that runs a job's entrypoint on its node.

Importing this package imports nothing heavy; ``ray`` is imported by :mod:`scheduler.executors.ray` only.
"""
