"""Where the CLI finds its server and token: ``~/.config/zhisuan/config.toml``, env vars, command-line options.

The file holds named profiles (``$XDG_CONFIG_HOME`` replaces ``~/.config``); it is written with mode 0600
because it holds tokens::

    [profiles.default]
    url = "http://127.0.0.1:8000"
    token = "zs_..."

    [profiles.prod]
    url = "https://zhisuan.example.cn"
    token = "zs_..."

The profile is ``--profile``, else ``$ZHISUAN_PROFILE``, else ``default``. Its URL and token are overridden by
``$ZHISUAN_URL`` / ``$ZHISUAN_TOKEN``, and those by ``--url`` / ``--token``::

    >>> resolve(url="http://api:8000", env={}, path=Path("/nonexistent/config.toml")).url
    'http://api:8000'
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PROFILE = "default"


class ConfigFileError(ValueError):
    """The config file cannot be read or parsed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Profile:
    name: str
    url: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class Settings:
    """What a command connects with, and where each value came from (for messages)."""

    url: str
    token: str | None
    profile: str
    url_source: str
    token_source: str | None


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/zhisuan/config.toml``, defaulting to ``~/.config/zhisuan/config.toml``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "zhisuan" / "config.toml"


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    """All profiles of the config file (none if there is no file)."""
    path = config_path() if path is None else path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}; fix it or run `zhisuan login` again") from exc
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigFileError(f"{path}: profiles must be a table ([profiles.NAME])")
    out: dict[str, Profile] = {}
    for name, values in profiles.items():
        if not isinstance(values, dict):
            raise ConfigFileError(f"{path}: profiles.{name} must be a table with url and token")
        url, token = values.get("url"), values.get("token")
        for key, value in (("url", url), ("token", token)):
            if value is not None and not isinstance(value, str):
                raise ConfigFileError(f"{path}: profiles.{name}.{key} must be a string")
        out[name] = Profile(name, url, token)
    return out


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dump_profiles(profiles: Mapping[str, Profile]) -> str:
    """The TOML text of ``profiles`` (only strings: URLs and tokens)."""
    lines = ["# Zhisuan CLI configuration (written by `zhisuan login`). It holds API tokens: keep it private.", ""]
    for name in sorted(profiles):
        profile = profiles[name]
        lines.append(f"[profiles.{_toml_string(name)}]")
        if profile.url is not None:
            lines.append(f"url = {_toml_string(profile.url)}")
        if profile.token is not None:
            lines.append(f"token = {_toml_string(profile.token)}")
        lines.append("")
    return "\n".join(lines)


def save_profile(profile: Profile, path: Path | None = None) -> Path:
    """Add or replace one profile, keeping the others; the file is written atomically with mode 0600."""
    path = config_path() if path is None else path
    profiles = load_profiles(path)
    profiles[profile.name] = profile
    write_profiles(profiles, path)
    return path


def remove_profile(name: str, path: Path | None = None) -> bool:
    path = config_path() if path is None else path
    profiles = load_profiles(path)
    if profiles.pop(name, None) is None:
        return False
    write_profiles(profiles, path)
    return True


def write_profiles(profiles: Mapping[str, Profile], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, and an old temp file gets the right mode too
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(dump_profiles(profiles))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def resolve(
    url: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Settings:
    """Combine options, env vars and the config file (options win, then env vars, then the profile)."""
    env = os.environ if env is None else env
    name = profile or env.get("ZHISUAN_PROFILE") or DEFAULT_PROFILE
    stored = load_profiles(config_path(env) if path is None else path).get(name, Profile(name))
    if url:
        url_value, url_source = url, "--url"
    elif env.get("ZHISUAN_URL"):
        url_value, url_source = env["ZHISUAN_URL"], "ZHISUAN_URL"
    elif stored.url:
        url_value, url_source = stored.url, f"profile {name}"
    else:
        url_value, url_source = DEFAULT_URL, "default"
    token_value: str | None
    token_source: str | None
    if token:
        token_value, token_source = token, "--token"
    elif env.get("ZHISUAN_TOKEN"):
        token_value, token_source = env["ZHISUAN_TOKEN"], "ZHISUAN_TOKEN"
    elif stored.token:
        token_value, token_source = stored.token, f"profile {name}"
    else:
        token_value, token_source = None, None
    return Settings(url_value, token_value, name, url_source, token_source)
