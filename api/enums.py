"""The API's own vocabulary (roles, node states and sources), shared by the tables, the wire models and the SDK
without pulling in the database layer::

    >>> Role("center-admin") is Role.CENTER_ADMIN, NodeStatus.DOWN.value
    (True, 'down')
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    TENANT_USER = "tenant-user"
    TENANT_ADMIN = "tenant-admin"
    CENTER_ADMIN = "center-admin"
    NODE_AGENT = "node-agent"


class NodeStatus(StrEnum):
    READY = "ready"
    CORDONED = "cordoned"
    DOWN = "down"


class NodeSource(StrEnum):
    AGENT = "agent"
    FILE = "file"
    #: Kubernetes Nodes, listed and watched (``zhisuan server --inventory kubernetes``).
    KUBERNETES = "kubernetes"
