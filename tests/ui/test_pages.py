"""The dashboard over HTTP (no browser) against the real server: pages per role, the numbers against the API,
hostile text, tenant isolation, the session and CSRF rules, the event stream."""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from html_tree import parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from ui_stack import Dashboard

from api.tables import API_TOKENS
from api.ui import fmt
from api.ui.web import CSP

Session = Callable[[str], httpx.Client]
TENANT_PAGES = ["/ui/", "/ui/jobs", "/ui/jobs?state=pending", "/ui/usage", "/ui/capacity", "/ui/services", "/ui/tokens"]
ADMIN_PAGES = [
    "/ui/admin",
    "/ui/admin/queues",
    "/ui/admin/jobs",
    "/ui/admin/nodes",
    "/ui/admin/nodes/h100-a",
    "/ui/admin/billing",
    "/ui/admin/reports",
    "/ui/admin/queues?edit=acme",
]


def get(client: httpx.Client, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, f"{path}: {response.status_code} {response.text[:300]}"
    return response.text


@pytest.mark.parametrize("who", ["alice", "boss", "bob", "admin"])
def test_every_page_renders_for_each_role_with_the_security_headers(
    dash: Dashboard, session_of: Session, who: str
) -> None:
    client = session_of(who)
    pages = [*TENANT_PAGES, "/ui/users"] if who in ("boss", "admin") else TENANT_PAGES
    for path in pages + (ADMIN_PAGES if who == "admin" else []):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert response.headers["content-security-policy"] == CSP
        assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert len(response.content) < 200_000, path
        assert "<script>" not in response.text and " style=" not in response.text, path  # nothing inline
    if who != "admin":
        for path in ADMIN_PAGES + ([] if who == "boss" else ["/ui/users"]):
            assert client.get(path).status_code == 404, path


def _formatted(dash: Dashboard, call: Callable[[], Any], render: Callable[[Any], str], earlier: Any = None) -> set[str]:
    """The API's figure rendered as the page renders it: ``earlier`` (the API's answer read before the page was)
    and the answer read now (a running job's NCU-hours and charge grow between two requests)."""
    return {render(call())} | ({render(earlier)} if earlier is not None else set())


def test_every_figure_equals_the_apis(dash: Dashboard, session_of: Session) -> None:
    running = dash.submit("alice", name="figures-run", workers=1, devices_per_worker=2)
    dash.wait_state("alice", running["id"], "running")
    other = dash.submit("bob", name="figures-bob", workers=1, devices_per_worker=1)
    dash.wait_state("bob", other["id"], "running")
    api = dash.api("alice")
    admin_api = dash.api("admin")
    usage_before = api.get("/v1/usage").json()
    page = parse(get(session_of("alice"), "/ui/"))
    jobs = api.get("/v1/jobs", params={"limit": 500}).json()["items"]
    assert page.figure("running") == str(sum(j["state"] in ("starting", "running", "cancelling") for j in jobs))
    assert page.figure("pending") == str(sum(j["state"] == "pending" for j in jobs))
    queues = api.get("/v1/queues").json()["items"]
    assert page.figure("ncu-held") == fmt.ncu(sum(q["usage"].get("ncu", 0.0) for q in queues if not q["parent"]))
    assert page.figure("ncu-hours") in _formatted(
        dash, lambda: api.get("/v1/usage").json(), lambda u: fmt.ncu(u["ncu_hours"]), usage_before
    )
    assert page.figure("bill") in _formatted(
        dash,
        lambda: api.get("/v1/usage").json(),
        lambda u: fmt.money(u["billable_charge"], u["currency"]),
        usage_before,
    )
    for queue in queues:
        for flavor in queue["quota"]:
            row = page.find(data_queue=queue["name"], data_flavor=flavor)
            assert row.figure("used") == fmt.devices(queue["usage"].get(flavor, 0.0)), (queue["name"], flavor)
    pools = api.get("/v1/pools").json()["items"]
    for model in {p["model"] for p in pools}:
        free = sum(p["devices_free"] for p in pools if p["model"] == model)
        assert page.find(data_model=model).figure("free") == str(free)

    tabs = parse(get(session_of("alice"), "/ui/jobs"))
    for state in ("pending", "running", "cancelled", "succeeded"):
        count = len(api.get("/v1/jobs", params={"state": state, "limit": 500}).json()["items"])
        assert tabs.figure(f"count-{state}") == str(count), state
    assert tabs.figure("count-all") == str(len(jobs))
    listed = [r.attrs["data-job"] for r in tabs.find_all(data_state="running") if "data-job" in r.attrs]
    assert running["id"] in listed and other["id"] not in listed

    capacity = parse(get(session_of("alice"), "/ui/capacity"))
    for pool in pools:
        row = capacity.find(data_pool=pool["pool"])
        assert (row.figure("devices"), row.figure("free"), row.figure("healthy")) == (
            str(pool["devices"]),
            str(pool["devices_free"]),
            str(pool["devices_healthy"]),
        )

    usage = api.get("/v1/usage").json()
    usage_page = parse(get(session_of("alice"), "/ui/usage"))
    for model, line in usage["by_model"].items():
        shown = usage_page.find(data_group="by_model").find(data_key=model).figure("charge")
        assert shown in {
            fmt.money(line["charge"], usage["currency"]),
            fmt.money(api.get("/v1/usage").json()["by_model"][model]["charge"], usage["currency"]),
        }

    center = parse(get(session_of("admin"), "/ui/admin"))
    nodes = admin_api.get("/v1/nodes").json()["items"]
    all_pools = admin_api.get("/v1/pools").json()["items"]
    all_jobs = admin_api.get("/v1/jobs", params={"state": "starting,running,cancelling", "limit": 500}).json()["items"]
    for model in {n["model"] for n in nodes}:
        row = center.find(data_model=model)
        assert row.figure("total") == str(sum(n["device_count"] for n in nodes if n["model"] == model))
        assert row.figure("free") == str(sum(p["devices_free"] for p in all_pools if p["model"] == model))
        held = {
            (w["node"], d)
            for j in all_jobs
            if j["placement"] and j["placement"]["model"] == model
            for w in j["placement"]["workers"]
            for d in w["devices"]
        }
        assert row.figure("allocated") == str(len(held))
    assert center.figure("running") == str(len(all_jobs))

    tree = parse(get(session_of("admin"), "/ui/admin/queues"))
    for queue in admin_api.get("/v1/queues").json()["items"]:
        rows = tree.find_all(data_queue=queue["name"])
        assert rows[0].figure("running") == str(queue["running"]) and rows[0].figure("pending") == str(
            queue["pending"]
        ), queue["name"]

    def bill(t: str) -> Any:
        return admin_api.get("/v1/usage", params={"tenant": t}).json()

    tenants = ("acme", "sme-vision")
    bills_before = {t: bill(t) for t in tenants}
    bills = parse(get(session_of("admin"), "/ui/admin/billing"))
    for tenant in tenants:
        row = bills.find(data_tenant=tenant)
        assert row.figure("charge") in _formatted(
            dash, functools.partial(bill, tenant), lambda u: fmt.money(u["charge"], u["currency"]), bills_before[tenant]
        )
    api.close()
    admin_api.close()


HOSTILE = [
    "<script>alert('zs')</script>",
    '"><img src=x onerror=alert(1)>',
    "{{ 7*7 }}{% raw %}",
    "javascript:alert(1)",
    "' hx-get='/ui/admin' hx-trigger='load",
]


def test_hostile_job_text_never_becomes_markup(dash: Dashboard, session_of: Session) -> None:
    job = dash.submit(
        "alice",
        name="hostile",
        entrypoint=" ; ".join(HOSTILE),
        labels={"note": HOSTILE[1], "tpl": HOSTILE[2]},
        workers=1,
        devices_per_worker=1,
    )
    dash.wait_state("alice", job["id"], "running")
    dash.executor.emit(job["id"], "\n".join(HOSTILE) + "\n")
    with dash.api("alice") as api:
        api.post("/v1/tokens", json={"name": HOSTILE[0]})
        dash.wait(lambda: HOSTILE[0] in api.get(f"/v1/jobs/{job['id']}/logs").json()["text"])
    client = session_of("alice")
    for path in (f"/ui/jobs/{job['id']}", "/ui/tokens", "/ui/jobs", "/ui/"):
        html = get(client, path)
        for text in (HOSTILE[0], HOSTILE[1], HOSTILE[4]):  # the ones with markup or quotes
            assert text not in html, (path, text)
        assert "<img src=x" not in html and "hx-get='/ui/admin'" not in html
    html = get(client, f"/ui/jobs/{job['id']}")
    assert "&lt;script&gt;alert(&#39;zs&#39;)&lt;/script&gt;" in html  # shown, as text
    assert "{{ 7*7 }}{% raw %}" in html  # template syntax in data is shown, never evaluated
    chunk = client.get(f"/ui/jobs/{job['id']}/logs.json").json()
    assert chunk["text"].startswith(HOSTILE[0])  # the page appends it as a text node (app.js)
    assert client.get(f"/ui/jobs/{job['id']}/logs.json").headers["content-type"] == "application/json"


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.from_regex(r"[a-z0-9]{3,12}", fullmatch=True))
def test_a_tenant_never_sees_another_tenants_jobs(dash: Dashboard, session_of: Session, suffix: str) -> None:
    theirs = dash.submit("bob", name=f"bobjob-{suffix}", workers=1, devices_per_worker=1)
    mine = dash.submit("alice", name=f"alicejob-{suffix}", workers=1, devices_per_worker=1)
    alice = session_of("alice")
    for path in (
        *TENANT_PAGES,
        "/ui/jobs?state=all",
        f"/ui/jobs?name=bobjob-{suffix}",
        "/ui/?panel=latest",
        "/ui/jobs?panel=table",
    ):
        html = get(alice, path)
        echoed = html.replace(f"name=bobjob-{suffix}", "").replace(f'value="bobjob-{suffix}"', "")  # the filter
        assert theirs["id"] not in html and f"bobjob-{suffix}" not in echoed, path
    assert mine["id"] in get(alice, "/ui/jobs")
    for path in (
        f"/ui/jobs/{theirs['id']}",
        f"/ui/jobs/{theirs['id']}?panel=placement",
        f"/ui/jobs/{theirs['id']}/logs.json",
        f"/ui/jobs/{theirs['id']}/logs.txt",
    ):
        response = alice.get(path)
        assert response.status_code == 404 and f"bobjob-{suffix}" not in response.text, path
    csrf = re.search(r'"X-CSRF-Token": "([0-9a-f]+)"', get(alice, "/ui/")).group(1)  # type: ignore[union-attr]
    refused = alice.post(f"/ui/jobs/{theirs['id']}/cancel", headers={"X-CSRF-Token": csrf, "Origin": dash.url})
    assert refused.status_code == 404 and dash.job("bob", theirs["id"])["state"] != "cancelled"
    assert "bobjob" not in get(alice, "/ui/jobs?tenant=sme-vision")  # the tenant filter is the admins'


def _csrf(client: httpx.Client) -> str:
    found = re.search(r'"X-CSRF-Token": "([0-9a-f]+)"', get(client, "/ui/"))
    assert found is not None
    return found.group(1)


def test_login_refuses_what_it_must(dash: Dashboard) -> None:
    client = httpx.Client(base_url=dash.url, follow_redirects=False)
    origin = {"Origin": dash.url}
    bad = client.post("/ui/login", data={"token": "zs_nope_nope"}, headers=origin)
    assert bad.status_code == 401 and "not valid" in bad.text and "zs_ui" not in bad.headers.get("set-cookie", "")
    junk = client.post("/ui/login", data={"token": "hello"}, headers=origin)
    assert junk.status_code == 401 and "zs_&lt;id&gt;_&lt;secret&gt;" in junk.text
    with dash.api("admin") as api:
        node = api.post("/v1/nodes/tokens", json={"node_id": "h100-a"}).json()["token"]
    refused = client.post("/ui/login", data={"token": node}, headers=origin)
    assert refused.status_code == 401 and "node" in refused.text
    foreign = client.post("/ui/login", data={"token": dash.tokens["alice"]}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    away = client.post(
        "/ui/login", data={"token": dash.tokens["alice"], "next": "https://evil.example/ui"}, headers=origin
    )
    assert away.status_code == 303 and away.headers["location"] == "/ui/"
    cookie = away.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http on 127.0.0.1 only; any other host gets Secure
    session = client.cookies.get("zs_ui")
    assert session and session != dash.tokens["alice"]
    only_cookie = httpx.get(f"{dash.url}/v1/jobs", cookies={"zs_ui": session})
    assert only_cookie.status_code == 401  # the browser session is no API credential
    client.close()


def test_every_action_needs_the_csrf_token_and_this_origin(dash: Dashboard, session_of: Session) -> None:
    job = dash.submit("alice", name="csrf-target", workers=1, devices_per_worker=1)
    client = session_of("alice")
    csrf = _csrf(client)
    url = f"/ui/jobs/{job['id']}/cancel"
    assert client.post(url).status_code == 403
    assert client.post(url, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    assert client.post(url, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}).status_code == 403
    assert client.post("/ui/tokens", data={"name": "x"}).status_code == 403
    assert client.post("/ui/logout").status_code == 403
    assert dash.job("alice", job["id"])["state"] != "cancelled"
    other = session_of("alice")
    assert _csrf(other) != csrf  # per session
    assert client.post(url, headers={"X-CSRF-Token": _csrf(other), "Origin": dash.url}).status_code == 403
    done = client.post(url, headers={"X-CSRF-Token": csrf, "Origin": dash.url, "HX-Request": "true"})
    assert done.status_code == 200 and "csrf-target" in done.text and done.headers["hx-trigger"] == "zs:jobs"
    assert dash.job("alice", job["id"])["state"] in ("cancelled", "cancelling")


def test_logout_revokes_the_session_token(dash: Dashboard, session_of: Session) -> None:
    client = session_of("bob")
    cookie = client.cookies.get("zs_ui")
    assert cookie is not None
    token_id = cookie.split("_")[1]
    out = client.post("/ui/logout", data={"csrf": _csrf(client)}, headers={"Origin": dash.url})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert 'zs_ui=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    with dash.engine.connect() as conn:
        revoked = conn.execute(select(API_TOKENS.c.revoked_at).where(API_TOKENS.c.id == token_id)).scalar()
    assert revoked is not None
    replay = httpx.get(f"{dash.url}/ui/jobs", cookies={"zs_ui": cookie}, follow_redirects=False)
    assert replay.status_code == 303 and replay.headers["location"].startswith("/ui/login?next=%2Fui%2Fjobs")


def test_an_expired_session_goes_to_login_keeping_the_page(dash: Dashboard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZHISUAN_UI_SESSION_S", "1")
    client = httpx.Client(base_url=dash.url, follow_redirects=False)
    login = client.post(
        "/ui/login", data={"token": dash.tokens["alice"], "next": "/ui/usage"}, headers={"Origin": dash.url}
    )
    assert login.status_code == 303
    assert client.get("/ui/usage").status_code == 200
    time.sleep(1.2)
    page = client.get("/ui/jobs?state=pending&queue=acme")
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%3Fstate%3Dpending%26queue%3Dacme&expired=1"
    fragment = client.get(
        "/ui/jobs?panel=table", headers={"HX-Request": "true", "HX-Current-URL": f"{dash.url}/ui/jobs?state=running"}
    )
    assert fragment.status_code == 200 and fragment.headers["hx-redirect"].startswith(
        "/ui/login?next=%2Fui%2Fjobs%3Fstate%3Drunning"
    )
    assert client.get("/ui/session?next=/ui/capacity").json() == {
        "ok": False,
        "login": "/ui/login?next=%2Fui%2Fcapacity&expired=1",
    }
    client.close()


def test_a_login_link_works_once(dash: Dashboard) -> None:
    with dash.api("alice") as api:
        link = api.post("/v1/tokens", json={"name": "ui-link", "expires_in_s": 60}).json()
    first = httpx.post(f"{dash.url}/ui/login", data={"token": link["token"]}, headers={"Origin": dash.url})
    assert first.status_code == 303 and "zs_ui=" in first.headers["set-cookie"]
    second = httpx.post(f"{dash.url}/ui/login", data={"token": link["token"]}, headers={"Origin": dash.url})
    assert second.status_code == 401 and "revoked" in second.text
    with dash.engine.connect() as conn:
        assert conn.execute(select(API_TOKENS.c.revoked_at).where(API_TOKENS.c.id == link["id"])).scalar()


def _read_events(client: httpx.Client, seconds: float, out: list[str], started: threading.Event) -> None:
    try:
        with client.stream("GET", "/ui/events", timeout=httpx.Timeout(seconds + 5, read=seconds)) as stream:
            started.set()
            deadline = time.monotonic() + seconds
            for line in stream.iter_lines():
                out.append(line)
                if time.monotonic() > deadline:
                    break
    except httpx.ReadTimeout:
        pass
    finally:
        started.set()


def test_the_event_stream_names_changes_only_to_the_tenant_they_concern(dash: Dashboard, session_of: Session) -> None:
    alice, bob = session_of("alice"), session_of("bob")
    seen: dict[str, list[str]] = {"alice": [], "bob": []}
    threads = []
    for who, client in (("alice", alice), ("bob", bob)):
        started = threading.Event()
        thread = threading.Thread(target=_read_events, args=(client, 4.0, seen[who], started), daemon=True)
        thread.start()
        started.wait(5)
        threads.append(thread)
    time.sleep(1.5)  # the hub takes its first marks
    job = dash.submit("alice", name="stream-me", workers=1, devices_per_worker=1)
    for thread in threads:
        thread.join(10)
    assert "event: jobs" in seen["alice"], seen["alice"]
    assert "event: jobs" not in seen["bob"], seen["bob"]
    assert all(job["id"] not in line and "stream-me" not in line for lines in seen.values() for line in lines)
    assert seen["alice"][0].startswith("retry:")


def test_a_session_may_hold_three_streams(dash: Dashboard, session_of: Session) -> None:
    client = session_of("boss")
    streams = [client.stream("GET", "/ui/events", timeout=10) for _ in range(3)]
    opened = [s.__enter__() for s in streams]
    try:
        assert all(r.status_code == 200 for r in opened)
        fourth = client.get("/ui/events", timeout=10)
        assert fourth.status_code == 429 and "live pages" in fourth.text
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)


def test_rows_do_not_jump_on_a_live_refresh(dash: Dashboard, session_of: Session) -> None:
    dash.submit("alice", name="row-one", workers=1, devices_per_worker=1)
    client = session_of("alice")
    first = parse(get(client, "/ui/jobs"))
    shown = [r.attrs["data-job"] for r in first.find(id="p-table").iter() if "data-job" in r.attrs and r.tag == "tr"]
    refresh = first.find(id="p-table").attrs["hx-get"]
    assert f"upto={shown[0]}" in refresh
    dash.submit("alice", name="row-two", workers=1, devices_per_worker=1)
    again = parse(get(client, refresh))
    rows = [r.attrs["data-job"] for r in again.iter() if "data-job" in r.attrs and r.tag == "tr"]
    assert rows[: len(shown)] == shown[: len(rows)] and rows[0] == shown[0]
    assert "1 newer jobs" in again.find(id="p-table").text
    assert "row-two" in get(client, "/ui/jobs")


def test_the_dashboard_can_be_turned_off(dash: Dashboard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZHISUAN_UI", "0")
    assert httpx.get(f"{dash.url}/ui/login").status_code == 404
    assert httpx.get(f"{dash.url}/healthz").status_code == 200


def test_usage_csv_is_the_apis_usage(dash: Dashboard, session_of: Session) -> None:
    client = session_of("alice")
    response = client.get("/ui/usage.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().splitlines()
    assert lines[0] == "group,key,ncu_hours,device_hours,charge,currency"
    assert lines[-1].startswith("billable,") and lines[-2].startswith("total,")
    assert client.get("/ui/usage.csv?month=2020-01").text.splitlines()[-2] == "total,,0.000000,0.000000,0.000000,CNY"
    admin = session_of("admin")
    assert admin.get("/ui/admin/billing.csv").status_code == 200
    assert session_of("bob").get("/ui/admin/billing.csv").status_code == 404


def test_simulator_reports_open_in_a_sandboxed_frame(
    dash: Dashboard, session_of: Session, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    (tmp_path / "fgd-vs-binpack.html").write_text("<html><body><h1>report</h1><script>x=1</script></body></html>")
    (tmp_path / "notes.txt").write_text("not a report")
    monkeypatch.setenv("ZHISUAN_UI_REPORTS_DIR", str(tmp_path))
    admin = session_of("admin")
    listing = get(admin, "/ui/admin/reports?show=fgd-vs-binpack.html")
    assert "fgd-vs-binpack.html" in listing and "notes.txt" not in listing
    assert '<iframe class="report" sandbox=""' in listing
    report = admin.get("/ui/admin/reports/file/fgd-vs-binpack.html")
    assert report.status_code == 200 and report.headers["content-security-policy"].startswith("sandbox;")
    assert admin.get("/ui/admin/reports/file/notes.txt").status_code == 404
    assert admin.get("/ui/admin/reports/file/..%2Fzhisuan.db").status_code == 404
    assert session_of("alice").get("/ui/admin/reports/file/fgd-vs-binpack.html").status_code == 404
