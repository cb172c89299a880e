"""What ships in the package: vendored files match their manifest, nothing points off this machine, every text
a page asks for is translated, and ``zhisuan dashboard`` prints a working single-use link."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import httpx
import typer
from typer.testing import CliRunner
from ui_stack import Dashboard

from api.commands.dashboard import dashboard_command
from api.ui import pages
from api.ui.i18n import ZH
from api.ui.web import SERVED, STATIC

UI = Path(pages.__file__).resolve().parent
TEMPLATES = UI / "templates"


def test_vendored_files_match_the_manifest_and_carry_their_license() -> None:
    manifest = json.loads((STATIC / "vendor" / "MANIFEST.json").read_text())
    vendored = {p.name for p in (STATIC / "vendor").iterdir()} - {"MANIFEST.json"}
    assert vendored == set(manifest["files"]), "every vendored file is in the manifest, and only those"
    for name, entry in manifest["files"].items():
        digest = hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{name} changed: refresh it from npm and the manifest together"
        if "license_file" in entry:
            assert (STATIC / "vendor" / entry["license_file"]).is_file()
            assert entry["license"] and entry["version"] and entry["package"]


def test_pages_load_nothing_from_elsewhere_and_stay_small() -> None:
    url = re.compile(r"""(?:https?:)?//[A-Za-z0-9.\-]+""")
    # XML namespace names in htmx are identifiers, never fetched.
    allowed = ("//127.0.0.1", "//localhost", "http://www.w3.org")
    for path in [*TEMPLATES.rglob("*.html"), *(STATIC / name for name in SERVED)]:
        text = path.read_text()
        for found in url.findall(text):
            if found.startswith("//") and path.suffix == ".js":
                continue  # comments and regular expressions in scripts
            assert found.startswith(allowed), f"{path.name} names {found}"
        if "vendor" not in path.parts:  # htmx itself knows these words; our pages never use them
            assert "<style" not in text and " style=" not in text, path.name
            assert "hx-on" not in text and "javascript:" not in text, path.name
    assert not [p for p in TEMPLATES.rglob("*.html") if "<script>" in p.read_text()], "no inline scripts"
    scripts = sum((STATIC / name).stat().st_size for name in SERVED if name.endswith(".js"))
    assert scripts < 110_000, f"{scripts} bytes of JavaScript"
    assert (STATIC / "app.js").stat().st_size < 10_000


def test_every_text_a_page_asks_for_has_its_chinese() -> None:
    asked: set[str] = set()
    call = re.compile(r"""\b(?:t|unknown)\(\s*(["'])(.+?)\1""")
    for path in TEMPLATES.rglob("*.html"):
        asked.update(m.group(2) for m in call.finditer(path.read_text()))
    # texts the Python side hands to t(): reasons of unknown values, hints, why a model cannot start now
    python = re.compile(r"""(?:Unknown|unknown)\(\s*"([^"]+)"\)""")
    for path in UI.glob("*.py"):
        asked.update(python.findall(path.read_text()))
    asked.update(pages.REASON_HINTS.values())
    asked.update(("no free devices", "quota full", "no quota for this model", "waited {d}", "ran {d}"))
    asked.update(("pending", "starting", "running", "cancelling", "succeeded", "failed", "cancelled"))
    missing = sorted(a for a in asked if a not in ZH)
    assert not missing, missing


def test_zhisuan_dashboard_prints_a_link_that_signs_in_once(dash: Dashboard) -> None:
    app = typer.Typer()
    app.command("dashboard")(dashboard_command)
    app.command("noop")(lambda: None)  # a group, so "dashboard" is a subcommand as in the real CLI
    result = CliRunner().invoke(
        app, ["dashboard", "/ui/jobs", "--print", "--url", dash.url, "--token", dash.tokens["alice"]]
    )
    assert result.exit_code == 0, result.output
    link = result.output.strip()
    assert link.startswith(f"{dash.url}/ui/login?next=/ui/jobs#t=zs_")
    token = link.split("#t=", 1)[1]
    first = httpx.post(f"{dash.url}/ui/login", data={"token": token, "next": "/ui/jobs"}, headers={"Origin": dash.url})
    assert first.status_code == 303 and first.headers["location"] == "/ui/jobs"
    again = httpx.post(f"{dash.url}/ui/login", data={"token": token}, headers={"Origin": dash.url})
    assert again.status_code == 401
    refused = CliRunner().invoke(app, ["dashboard", "--print", "--url", dash.url, "--token", "zs_bad_bad"])
    assert refused.exit_code == 1 and "not valid" in refused.output
