"""Served inference, the live half: the controller (a step of the scheduler cycle), health checks, the router.

* :mod:`~scheduler.live.serving.store` — the records (services, replicas, load reports, keys) and the two ports:
  :class:`~scheduler.live.serving.store.ServingStore` (controller) and
  :class:`~scheduler.live.serving.store.RouteSource` (routers); SQL in ``api/serving_store.py``, memory in
  :mod:`~scheduler.live.serving.memory`;
* :mod:`~scheduler.live.serving.controller` — scales services, rolls updates, replaces unhealthy replicas and
  finishes drains; every replica is a job the core places;
* :mod:`~scheduler.live.serving.health` — active health checks;
* :mod:`~scheduler.live.serving.router` — the endpoint (keys, least outstanding requests, retries, streaming,
  limits, metering).

The pure rules (autoscaling, rollout plan, spread) are in :mod:`scheduler.serving`.
"""
