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

Why not Ray Serve. Serve owns what the core must decide: its controller creates and places a deployment's
replicas itself, every replica with the same ``ray_actor_options`` / ``placement_group_bundles``, and its
autoscaler owns the count. Zhisuan places each replica as a job — its own node and device share (fractional,
topology- and fragmentation-aware), inside the tenant's quota and fair share, preempting batch work for a
production service — and one Serve deployment cannot give two replicas different nodes or devices; a deployment
per replica would split the endpoint that Serve's routing and autoscaling work within. Per-service keys, per-key
limits and the ledger would sit in front of Serve's proxy anyway, and its custom request router is an alpha API.
So replicas are jobs the Ray executor runs like any other, and the endpoint is a Starlette app (uvicorn) with
aiohttp to the replicas (httpx's pool collapsed under concurrency: encode/httpx#3215).
"""
