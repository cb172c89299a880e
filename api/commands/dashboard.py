"""``zhisuan dashboard``: open the dashboard in a browser, signed in, without the token ever being typed or kept.

It asks the API for a single-use token (``ui-link``, valid 60 s) and opens ``<url>/ui/login#t=<token>``: the
fragment never reaches the server or its logs; the login page posts it, the server exchanges it for a browser
session and revokes it at once, so the link is dead after its first use or a minute, whichever comes first.
"""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer

from api.commands.common import ProfileOpt, TokenOpt, UrlOpt, connect, handle_errors
from api.commands.render import stdout
from api.ui.session import LINK_NAME

LINK_TTL_S = 60.0


def link_url(api_url: str, token: str, page: str = "/ui/") -> str:
    """The one-click login address.

    >>> link_url("http://127.0.0.1:8000/", "zs_a_b", "/ui/jobs")
    'http://127.0.0.1:8000/ui/login?next=/ui/jobs#t=zs_a_b'
    """
    base = api_url.rstrip("/")
    suffix = f"?next={page}" if page != "/ui/" else ""
    return f"{base}/ui/login{suffix}#t={token}"


@handle_errors
def dashboard_command(
    page: Annotated[str, typer.Argument(help="page to open, e.g. /ui/jobs (default: the overview)")] = "/ui/",
    print_only: Annotated[
        bool, typer.Option("--print", help="print the single-use link instead of opening a browser")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Open the web dashboard, signed in with a single-use link (valid 60 s)."""
    if not page.startswith("/ui"):
        page = "/ui/" + page.lstrip("/")
    with connect(url, token, profile) as client:
        created = client.create_token(name=LINK_NAME, expires_in_s=LINK_TTL_S)
        address = link_url(str(client.url), created.token or "", page)
    if print_only or not webbrowser.open(address):
        stdout().print(address, soft_wrap=True, markup=False, highlight=False)
