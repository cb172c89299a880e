"""The API commands of ``zhisuan``: submit and watch jobs, read queues, usage and inventory, administer a center.

They talk to the server through :class:`api.client.ZhisuanClient` with the URL and token of
:func:`api.profiles.resolve` (``--url``/``--token``/``--profile``, ``$ZHISUAN_URL``/``$ZHISUAN_TOKEN``, the config
file written by ``zhisuan login``)::

    zhisuan login --url http://127.0.0.1:8000 --token zs_...
    zhisuan submit job.yaml --wait
    zhisuan list --state pending -o json
    zhisuan why j0193f2c4a1b7e0d5c3a9
    zhisuan logs j0193f2c4a1b7e0d5c3a9 -f
    zhisuan admin quota set acme --flavor H100 --deserved 64 --limit 128

Output is a human table unless ``-o json`` or ``-o yaml`` (the API's own keys, for scripts). Exit status: 0 done,
1 the API answered a problem (its message on stderr) or the job failed, 2 bad usage or an invalid spec (checked
before any request), 3 the server cannot be reached.
"""

from __future__ import annotations

import typer

from api.commands.admin import admin_app
from api.commands.dashboard import dashboard_command
from api.commands.jobs import cancel, eta, list_jobs, logs, status, submit, why
from api.commands.kube import kube_app
from api.commands.services import services_app
from api.commands.session import login, logout, whoami
from api.commands.views import nodes, queues, usage


def register(app: typer.Typer) -> None:
    """Mount the API commands on the main ``zhisuan`` app."""
    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
    app.command()(submit)
    app.command("list")(list_jobs)
    app.command()(status)
    app.command()(logs)
    app.command()(cancel)
    app.command()(why)
    app.command()(eta)
    app.command()(queues)
    app.command()(usage)
    app.command()(nodes)
    app.add_typer(admin_app, name="admin")
    app.add_typer(kube_app, name="kube")
    app.add_typer(services_app, name="services")
    app.command("dashboard")(dashboard_command)
