"""What every API command shares: the connection options, the exit statuses, and one line per error."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.markup import escape

from api.client import ApiError, Unreachable, ZhisuanClient
from api.commands.render import Fmt, stderr
from api.profiles import ConfigFileError, resolve
from scheduler.errors import ConfigError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_API = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
#: Extra attempts after a failed connection, 429 or 503 (waits of about 0.25, 0.5 and 1 s, or Retry-After).
CLI_RETRIES = 3

OutputOpt = Annotated[Fmt, typer.Option("--output", "-o", help="table, or json/yaml with the API's keys")]
UrlOpt = Annotated[
    str | None, typer.Option("--url", help="API URL (default: $ZHISUAN_URL, then the profile)", show_default=False)
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="API token (default: $ZHISUAN_TOKEN, then the profile)", show_default=False),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", help="config profile (default: $ZHISUAN_PROFILE, then 'default')", show_default=False),
]
JobArg = Annotated[
    str, typer.Argument(help="job id (as printed by submit/list), or a name: your newest job of that name")
]
JOB_ID = re.compile(r"^j[0-9a-f]{19}$")


def fail(message: str, code: int) -> typer.Exit:
    """Print each line of ``message`` as an error (a file with several problems names each) and exit."""
    for line in message.splitlines() or [""]:
        stderr().print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
    return typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the client's and the loaders' exceptions into one line on stderr and the documented exit status."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except Unreachable as exc:
            raise fail(str(exc), EXIT_UNREACHABLE) from exc
        except ApiError as exc:
            message = str(exc)
            if exc.status == 401:
                message += "; log in again with `zhisuan login` (or pass --token)"
            raise fail(message, EXIT_API) from exc
        except (ConfigError, ConfigFileError) as exc:
            raise fail(str(exc), EXIT_USAGE) from exc
        except KeyboardInterrupt as exc:
            raise fail("interrupted", 130) from exc

    return wrapper


@contextmanager
def connect(
    url: str | None, token: str | None, profile: str | None, *, need_token: bool = True
) -> Iterator[ZhisuanClient]:
    settings = resolve(url, token, profile)
    if need_token and not settings.token:
        raise fail(
            f"no API token for profile {settings.profile!r}: run `zhisuan login` (or pass --token / set ZHISUAN_TOKEN)",
            EXIT_USAGE,
        )
    with ZhisuanClient(settings.url, settings.token, retries=CLI_RETRIES) as client:
        yield client
