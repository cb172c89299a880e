"""Logging in: ``zhisuan login | logout | whoami`` (profiles in the CLI's config file, mode 0600)."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from api.client import ZhisuanClient
from api.commands.common import (
    CLI_RETRIES,
    EXIT_USAGE,
    OutputOpt,
    ProfileOpt,
    TokenOpt,
    UrlOpt,
    connect,
    fail,
    handle_errors,
)
from api.commands.render import (
    Fmt,
    emit,
    key_values,
    stdout,
)
from api.profiles import Profile, config_path, remove_profile, resolve, save_profile


@handle_errors
def login(
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Check a URL and token against the server (whoami) and store them in the config file (mode 0600)."""
    settings = resolve(url, token, profile)
    secret = settings.token
    if not secret:
        if not sys.stdin.isatty():
            raise fail("no token given: pass --token or set ZHISUAN_TOKEN", EXIT_USAGE)
        secret = typer.prompt("API token", hide_input=True).strip()
    with ZhisuanClient(settings.url, secret, retries=CLI_RETRIES) as client:
        me = client.whoami()
    path = save_profile(Profile(settings.profile, settings.url, secret))
    who = me.user or "node agent"
    tenant = f" of tenant {me.tenant}" if me.tenant else ""
    stdout().print(
        f"Logged in to {escape(client.url)} as [bold]{escape(who)}[/bold] ({me.role}{escape(tenant)}); "
        f"profile {escape(settings.profile)!r} saved in {escape(str(path))}"
    )


@handle_errors
def logout(profile: ProfileOpt = None) -> None:
    """Forget a profile's URL and token."""
    name = resolve(profile=profile).profile
    if remove_profile(name):
        stdout().print(f"Removed profile {name!r} from {config_path()}")
    else:
        stdout().print(f"No profile {name!r} in {config_path()}")


@handle_errors
def whoami(
    url: UrlOpt = None, token: TokenOpt = None, profile: ProfileOpt = None, output: OutputOpt = Fmt.TABLE
) -> None:
    """Who the token belongs to: user, tenant, role."""
    with connect(url, token, profile) as client:
        me = client.whoami()
    emit(
        me.to_dict(),
        output,
        lambda c: key_values(
            c,
            [
                ("user", me.user or "-"),
                ("tenant", me.tenant or "-"),
                ("role", me.role),
                ("token", me.token_id or "-"),
                ("server", client.url),
            ],
        ),
    )
