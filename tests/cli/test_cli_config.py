"""The CLI's config file: location, profiles, precedence of options over env vars over the file, mode 0600."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from api.profiles import (
    DEFAULT_URL,
    ConfigFileError,
    Profile,
    config_path,
    dump_profiles,
    load_profiles,
    remove_profile,
    resolve,
    save_profile,
)


def test_config_path_follows_xdg_config_home(tmp_path: Path) -> None:
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "zhisuan" / "config.toml"
    assert config_path({}) == Path.home() / ".config" / "zhisuan" / "config.toml"
    # The XDG spec says relative values are invalid and must be ignored.
    assert config_path({"XDG_CONFIG_HOME": "relative/dir"}) == Path.home() / ".config" / "zhisuan" / "config.toml"


def test_save_writes_mode_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "zhisuan" / "config.toml"
    old = os.umask(0o000)
    try:
        save_profile(Profile("default", "http://a:8000", "zs_a_secret"), path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # An existing file with a wide mode is replaced by a private one.
    path.chmod(0o644)
    save_profile(Profile("other", "http://b:8000", "zs_b_secret"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob(".*.tmp"))


def test_profiles_round_trip_and_keep_each_other(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    tricky = 'a "quoted" \\ back\tslash ünïcode 智算 \x7f'
    save_profile(Profile("default", "http://a:8000", "zs_1"), path)
    save_profile(Profile("prod center", "https://zs.example.cn", tricky), path)
    save_profile(Profile("default", "http://a:9000", "zs_2"), path)
    profiles = load_profiles(path)
    assert profiles == {
        "default": Profile("default", "http://a:9000", "zs_2"),
        "prod center": Profile("prod center", "https://zs.example.cn", tricky),
    }
    assert tomllib.loads(dump_profiles(profiles))["profiles"]["prod center"]["token"] == tricky
    assert remove_profile("default", path)
    assert not remove_profile("default", path)
    assert set(load_profiles(path)) == {"prod center"}


def test_missing_file_means_no_profiles(tmp_path: Path) -> None:
    assert load_profiles(tmp_path / "none.toml") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[profiles.default\nurl = 1", "not valid TOML"),
        ("profiles = 3", "profiles must be a table"),
        ("[profiles]\ndefault = 3", "profiles.default must be a table"),
        ("[profiles.default]\nurl = 3", "profiles.default.url must be a string"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=message):
        load_profiles(path)


def test_precedence_options_over_env_over_profile(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    save_profile(Profile("default", "http://file:1", "zs_file"), path)
    save_profile(Profile("prod", "http://prod:1", "zs_prod"), path)

    s = resolve(env={}, path=path)
    assert (s.url, s.token, s.profile, s.url_source) == ("http://file:1", "zs_file", "default", "profile default")

    s = resolve(env={"ZHISUAN_PROFILE": "prod"}, path=path)
    assert (s.url, s.token, s.profile) == ("http://prod:1", "zs_prod", "prod")

    env = {"ZHISUAN_PROFILE": "prod", "ZHISUAN_URL": "http://env:1", "ZHISUAN_TOKEN": "zs_env"}
    s = resolve(env=env, path=path)
    assert (s.url, s.token, s.url_source, s.token_source) == ("http://env:1", "zs_env", "ZHISUAN_URL", "ZHISUAN_TOKEN")

    s = resolve(url="http://opt:1", token="zs_opt", profile="default", env=env, path=path)
    assert (s.url, s.token, s.profile, s.token_source) == ("http://opt:1", "zs_opt", "default", "--token")


def test_nothing_configured_means_local_default_and_no_token(tmp_path: Path) -> None:
    s = resolve(env={}, path=tmp_path / "none.toml")
    assert (s.url, s.token, s.url_source) == (DEFAULT_URL, None, "default")
