"""The API's routers, one per resource (``api.app.create_app`` includes them all)."""

from __future__ import annotations

from fastapi import APIRouter

from api.routers import agent, health, jobs, nodes, queues, services, tenants, usage, users_tokens

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    jobs.router,
    queues.router,
    tenants.router,
    users_tokens.router,
    usage.router,
    nodes.router,
    agent.router,
    services.router,
)
