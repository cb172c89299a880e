"""The dashboard in a real headless Chromium against the real server, agents and scheduler service.

Each test fails on a console error, a page error (CSP violations included) or a request leaving 127.0.0.1
(see ``conftest.new_page``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Watch, screenshot
from playwright.sync_api import expect
from ui_stack import Dashboard

pytestmark = pytest.mark.browser
NewPage = Callable[..., Any]


def session_token_ids(dash: Dashboard, user: str) -> list[str]:
    with dash.api("admin") as client:
        tokens = client.get("/v1/tokens", params={"user": user}).json()["items"]
    return [t["id"] for t in tokens if t["name"] == "ui-session" and t["revoked_at"] is None]


def test_login_sets_an_httponly_cookie_and_shows_the_overview(dash: Dashboard, new_page: NewPage) -> None:
    page = new_page()
    page.goto(f"{dash.url}/ui/jobs?state=pending")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fjobs%3Fstate%3Dpending"))
    page.fill("#token", dash.tokens["alice"])
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{dash.url}/ui/jobs?state=pending")
    cookies = page.context.cookies()
    session = [c for c in cookies if c["name"] == "zs_ui"]
    assert len(session) == 1, cookies
    assert session[0]["httpOnly"] and session[0]["sameSite"] == "Strict" and session[0]["path"] == "/ui"
    assert session[0]["value"] != dash.tokens["alice"]  # a new, short-lived token, not the pasted one
    assert "zs_ui" not in page.evaluate("document.cookie")
    # htmx notes the current path in sessionStorage; no token may be anywhere a script can read
    stored = page.evaluate("JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])")
    assert "zs_" not in stored, stored
    page.goto(f"{dash.url}/ui/")
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10_000)
    expect(page.locator("[data-figure=running] .big")).to_have_text("0")
    expect(page.locator("#p-runnow tr[data-model=H100] [data-figure=free]")).to_have_text("32")
    screenshot(page, "tenant-overview")


def test_running_job_shows_placement_telemetry_and_the_idle_badge(dash: Dashboard, new_page: NewPage) -> None:
    job = dash.submit("alice", name="train-telemetry", workers=1, devices_per_worker=2)
    running = dash.wait_state("alice", job["id"], "running")
    worker = running["placement"]["workers"][0]
    node, (busy, idle) = worker["node"], worker["devices"]
    shim = dash.shims[node]
    shim.set_load(idle, utilization_pct=1.0, memory_used_mib=512.0)  # allocated, but the job does not use it
    try:
        page = new_page("alice")
        page.goto(f"{dash.url}/ui/jobs/{job['id']}")
        expect(page.locator(".jobhead")).to_have_attribute("data-state", "running")
        busy_row = page.locator(f"#p-placement tr[data-node='{node}'][data-device='{busy}']")
        idle_row = page.locator(f"#p-placement tr[data-node='{node}'][data-device='{idle}']")
        expect(busy_row.locator("[data-figure=util]")).to_contain_text("100 %", timeout=10_000)
        expect(idle_row.locator(".badge.idle")).to_be_visible(timeout=10_000)
        expect(busy_row.locator(".badge.idle")).to_have_count(0)
        assert page.locator("#p-placement tbody tr").count() == 2  # exactly the job's devices
        screenshot(page, "job-running-placement")
    finally:
        shim.clear_load(idle)


def test_a_pending_job_starts_live_on_its_page(dash: Dashboard, new_page: NewPage) -> None:
    blocker = dash.submit("alice", name="blocker", workers=4, devices_per_worker=8)
    dash.wait_state("alice", blocker["id"], "running")
    waiting = dash.submit("alice", name="waits-for-h100", workers=1, devices_per_worker=8)
    dash.wait(lambda: bool(dash.job("alice", waiting["id"])["reasons"]), message="no reason was written")
    page = new_page("alice")
    page.goto(f"{dash.url}/ui/jobs/{waiting['id']}")
    expect(page.locator(".jobhead")).to_have_attribute("data-state", "pending")
    expect(page.locator("#p-why .reasons li").first).to_be_visible()
    screenshot(page, "job-pending-why")
    page.evaluate("window.__same_page = true")
    dash.cancel("alice", blocker["id"])
    expect(page.locator(".jobhead")).to_have_attribute("data-state", "running", timeout=15_000)
    expect(page.locator("#p-placement tbody tr")).to_have_count(8)
    assert page.evaluate("window.__same_page === true")  # updated in place, not reloaded
    events = page.locator("#p-events .ev-started")
    expect(events).to_have_count(1)


def test_cancel_from_the_jobs_page(dash: Dashboard, new_page: NewPage) -> None:
    job = dash.submit("alice", name="to-cancel", workers=1, devices_per_worker=1)
    dash.wait_state("alice", job["id"], "running")
    page = new_page("alice")
    page.goto(f"{dash.url}/ui/jobs")
    row = page.locator(f"tr[data-job='{job['id']}']")
    expect(row).to_have_attribute("data-state", "running")
    row.locator("button[data-cancel]").click()  # the confirm dialog is accepted
    expect(page.locator("#toast")).to_contain_text("to-cancel")
    expect(page.locator(f"tr[data-job='{job['id']}']")).to_have_attribute("data-state", "cancelled", timeout=15_000)
    assert dash.job("alice", job["id"])["state"] == "cancelled"


def test_log_tail_grows_and_hostile_text_stays_text(dash: Dashboard, new_page: NewPage) -> None:
    job = dash.submit("alice", name="logger", workers=1, devices_per_worker=1)
    dash.wait_state("alice", job["id"], "running")
    hostile = '<img src=x onerror="document.title=1">\n<script>window.__pwned=1</script>\n'
    dash.executor.emit(job["id"], "step 1 loss=2.31\n" + hostile)
    page = new_page("alice")
    page.goto(f"{dash.url}/ui/jobs/{job['id']}")
    log = page.locator("#log")
    expect(log).to_contain_text("step 1 loss=2.31", timeout=10_000)
    expect(log).to_contain_text("<script>window.__pwned=1</script>")
    assert log.locator("img, script").count() == 0
    dash.executor.emit(job["id"], "step 2 loss=1.97\n")
    expect(log).to_contain_text("step 2 loss=1.97", timeout=10_000)
    assert page.evaluate("window.__pwned === undefined") and page.title() != "1"


def test_quota_editor_shows_the_apis_422_field_by_field(dash: Dashboard, new_page: NewPage, watch: Watch) -> None:
    watch.allowed.append("status of 422")  # the browser notes the 422 answer of the form post
    with dash.api("admin") as client:
        before = client.get("/v1/queues/acme").json()
    page = new_page("admin")
    page.goto(f"{dash.url}/ui/admin/queues")
    screenshot(page, "center-queues")
    page.click("[data-edit=acme]")
    form = page.locator("#queue-form")
    expect(form.locator("input[name=name]")).to_have_value("acme")
    flavors = [form.locator(f"input[name=flavor-{i}]").input_value() for i in range(3)]
    h100 = flavors.index("H100")
    form.locator(f"input[name=guarantee-{h100}]").fill("100")  # above its limit (64)
    form.locator("input[name=weight]").fill("heavy")
    form.locator("#save-queue").click()
    errors = page.locator("#p-editor .field-error")
    expect(page.locator("#form-errors")).to_be_visible()
    expect(page.locator("#p-editor .field-error[data-field=weight]")).to_contain_text("number")
    form.locator("input[name=weight]").fill("2")
    form.locator("#save-queue").click()
    expect(
        page.locator(
            f"#p-editor .field-error[data-field=flavor-{h100}], #p-editor .field-error[data-field=guarantee-{h100}]"
        ).first
    ).to_contain_text("guarantee")
    assert errors.count() >= 1
    screenshot(page, "center-queue-editor-422")
    with dash.api("admin") as client:
        after = client.get("/v1/queues/acme").json()
    assert after["policy_version"] == before["policy_version"] and after["quota"] == before["quota"]
    form.locator(f"input[name=guarantee-{h100}]").fill("16")
    form.locator("input[name=weight]").fill("3")
    form.locator("#save-queue").click()
    expect(page.locator("#saved")).to_be_visible()
    with dash.api("admin") as client:
        saved = client.get("/v1/queues/acme").json()
    assert saved["weight"] == 3 and saved["policy_version"] == before["policy_version"] + 1
    expect(page.locator("#saved")).to_contain_text(str(saved["policy_version"]))
    with dash.api("admin") as client:  # put the weight back for the other tests
        client.put("/v1/queues/acme", json={**_spec(before)})


def _spec(queue: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "tenant": queue["tenant"],
        "weight": queue["weight"],
        "quota": {flavor: {k: v for k, v in q.items() if v is not None} for flavor, q in queue["quota"].items()},
    }
    if queue["parent"]:
        body["parent"] = queue["parent"]
    return body


def test_tenant_isolation_in_the_browser(dash: Dashboard, new_page: NewPage, watch: Watch) -> None:
    watch.allowed.append("status of 404")  # the 404 pages themselves
    secret = dash.submit("alice", name="alice-secret-run", workers=1, devices_per_worker=1)
    page = new_page("bob")
    page.goto(f"{dash.url}/ui/jobs")
    expect(page.locator("#p-table")).to_be_visible()
    assert "alice-secret-run" not in page.content() and secret["id"] not in page.content()
    response = page.goto(f"{dash.url}/ui/jobs/{secret['id']}")
    assert response is not None and response.status == 404
    assert "alice-secret-run" not in page.content()
    for admin_page in ("/ui/admin", "/ui/admin/queues", "/ui/admin/nodes", "/ui/users"):
        response = page.goto(f"{dash.url}{admin_page}")
        assert response is not None and response.status == 404, admin_page


def test_expired_session_returns_to_login_and_back_to_the_page(dash: Dashboard, new_page: NewPage) -> None:
    page = new_page("boss")
    wanted = f"{dash.url}/ui/jobs?state=pending&queue=acme"
    page.goto(wanted)
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10_000)
    with dash.api("admin") as client:
        for token_id in session_token_ids(dash, "boss@acme"):
            assert client.delete(f"/v1/tokens/{token_id}").status_code == 204
    time.sleep(0.2)
    dash.submit("alice", name="wakes-the-panels", workers=1, devices_per_worker=1)  # a live refresh is refused
    expect(page).to_have_url(
        re.compile(r"/ui/login\?next=%2Fui%2Fjobs%3Fstate%3Dpending%26queue%3Dacme"), timeout=15_000
    )
    expect(page.locator("#expired")).to_be_visible()
    page.fill("#token", dash.tokens["boss"])
    page.click("button[type=submit]")
    expect(page).to_have_url(wanted)


def test_single_use_link_of_zhisuan_dashboard(dash: Dashboard, new_page: NewPage, watch: Watch) -> None:
    watch.allowed.append("status of 401")  # the second use of the link is refused
    with dash.api("alice") as client:
        link = client.post("/v1/tokens", json={"name": "ui-link", "expires_in_s": 60}).json()
    page = new_page()
    page.goto(f"{dash.url}/ui/login?next=/ui/usage#t={link['token']}")
    expect(page).to_have_url(f"{dash.url}/ui/usage")
    assert link["token"] not in page.url
    second = new_page()
    second.goto(f"{dash.url}/ui/login#t={link['token']}")
    expect(second.locator("#login-error")).to_contain_text("revoked")


def test_center_pages_and_chinese(dash: Dashboard, new_page: NewPage) -> None:
    job = dash.submit("alice", name="center-view", workers=1, devices_per_worker=4)
    dash.wait_state("alice", job["id"], "running")
    dash.submit("bob", name="bob-waits", workers=4, devices_per_worker=8)
    page = new_page("admin")
    page.goto(f"{dash.url}/ui/admin")
    expect(page.locator("#p-devices tr[data-model=H100] [data-figure=allocated]")).to_have_text("4")
    expect(page.locator("#p-grid a.cell")).to_have_count(5)
    screenshot(page, "center-overview")
    page.goto(f"{dash.url}/ui/admin/nodes")
    screenshot(page, "center-nodes")
    page.goto(f"{dash.url}/ui/admin/jobs")
    expect(page.locator("#p-reasons")).to_be_visible()
    screenshot(page, "center-all-jobs")
    page.goto(f"{dash.url}/ui/admin/billing")
    screenshot(page, "center-billing")
    zh = new_page("alice", lang="zh")
    zh.goto(f"{dash.url}/ui/")
    expect(zh.locator("h1")).to_have_text("概览")
    expect(zh.locator("html")).to_have_attribute("lang", "zh-CN")
    screenshot(zh, "tenant-overview-zh")
    zh.goto(f"{dash.url}/ui/jobs")
    screenshot(zh, "tenant-jobs-zh")
    zh.goto(f"{dash.url}/ui/usage")
    screenshot(zh, "tenant-usage-zh")
