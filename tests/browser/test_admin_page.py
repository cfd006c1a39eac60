"""The admin page in a real browser (Debian's Chromium, headless, driven by Playwright) against a
real gateway in front of the fake Ollama: sign in, create a key, use it from the openai client,
see its usage in the chart, watch it in flight, revoke it and see the client refused.

Set GATEWAY_SCREENSHOTS_DIR to also keep one screenshot per page there (README's come from it).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.usage.store import UsageCounts, UsageKey, open_usage_store
from tests.browser.chromium import chromium
from tests.browser.pages import WAIT_MS, seed_usage, sign_in, until
from tests.conftest import issue_key, issue_keys
from tests.fake_ollama import Behaviour, FakeOllama
from tests.fake_ollama.gate import StepGate
from tests.ollama_signer import USER_AGENT, OllamaSigner, fingerprint_of, make_key, signin_url
from tests.servers import RunningGateway

# Without Playwright these tests are skipped, saying why (as without Chromium: see chromium.py).
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
).expect

pytestmark = pytest.mark.timeout(120)


def test_sign_in_create_use_watch_and_revoke_a_key(
    browser_gateway: RunningGateway, fake: FakeOllama, database_url: str, tmp_path: Path, shots: Callable[..., Path]
) -> None:
    gateway = browser_gateway
    with (
        httpx.Client(base_url=gateway.url + "/admin/api", headers=gateway.auth, timeout=10) as admin_api,
        chromium(tmp_path / "profile") as browser,
    ):
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("dialog", lambda dialog: problems.append(f"unexpected dialog: {dialog.message}"))
        page.set_default_timeout(WAIT_MS)

        # Sign in.
        page.goto(gateway.url + "/admin/")
        page.wait_for_selector("#page-signin:not([hidden]) h1")
        assert page.inner_text("#page-signin h1") == "Sign in"
        assert not page.is_visible("#nav")
        shots(page, "signin")
        page.fill("#signin-key", "ogw_wrong_key")
        page.click("#signin-form button")
        page.wait_for_selector("#notice.error:not([hidden])")
        # The browser reports the refused request on its console (its wording is its own).
        assert len(problems) == 1
        assert "401" in problems[0]
        problems.clear()
        page.fill("#signin-key", gateway.key)
        page.click("#signin-form button")
        page.wait_for_selector("#page-keys:not([hidden]) tr[data-key='test-admin-0']")
        assert page.is_visible("#nav")
        assert not page.is_visible("#page-signin")
        assert page.inner_text("#page-keys h1") == "Keys"
        assert page.evaluate("sessionStorage.getItem('ollama-gateway-admin-key')") == gateway.key
        assert page.evaluate("document.cookie") == ""
        assert gateway.key not in page.url
        assert browser.cookies() == []

        # Create a key with limits and a model glob; its secret is shown once.
        page.click("#create-box summary")
        page.fill("#create-form [name=name]", "browser-user")
        page.fill("#create-form [name=models]", "llama3*")
        page.fill("#create-form [name=rpm]", "100")
        page.fill("#create-form [name=tpd]", "unlimited")
        page.click("#create-form button[type=submit]")
        page.wait_for_selector("#secret-panel:not([hidden])")
        secret = page.inner_text("#secret-value")
        row = page.locator("tr[data-key='browser-user']")
        row.wait_for()
        key_id = row.locator("code").inner_text()
        assert secret.startswith(f"ogw_{key_id}_")
        assert "rpm=100" in row.inner_text()
        assert "tpd=unlimited" in row.inner_text()
        assert "llama3*" in row.inner_text()
        page.click("#secret-copy")
        expect(page.locator("#secret-copy")).not_to_have_text("Copy")
        page.evaluate(  # the README's picture shows no secret, not even a throwaway one
            "id => { document.querySelector('#secret-value').textContent = 'ogw_' + id + '_••••••••••••••••'; }",
            key_id,
        )
        shots(page, "keys")
        page.click("#secret-done")
        assert page.inner_text("#secret-value") == ""
        assert not page.is_visible("#secret-panel")

        # The key works from the openai client.
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0) as client:
            answer = client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hello"}])
            assert answer.usage is not None
            used = answer.usage.prompt_tokens + answer.usage.completion_tokens

            # Its usage reaches the database within a flush interval; then the chart shows it.
            def usage_written() -> bool:
                rows = admin_api.get("/usage", params={"key": "browser-user"}).json()["rows"]
                return bool(rows) and rows[0]["requests"] == 1

            until(usage_written, 10, "the request's usage in the database")
            # Another key's earlier days, so the chart has days to span and keys to stack.
            seed_usage(database_url, "team-a", days=3)
            page.goto(gateway.url + "/admin/#usage")
            page.wait_for_selector("#page-usage:not([hidden]) #usage-chart canvas")
            legend = page.locator("#usage-chart .u-legend")
            legend.get_by_text("browser-user").wait_for()
            assert "team-a" in legend.inner_text()
            table = page.inner_text("#usage-table tbody")
            assert "browser-user" in table
            assert f"{answer.usage.prompt_tokens}" in table
            assert page.inner_text("#page-usage h1") == "Usage"
            with page.expect_download() as download:
                page.click("#usage-csv")
            csv = Path(download.value.path()).read_text()
            assert csv.startswith("key,requests,prompt_tokens,completion_tokens,errors\n")
            assert f"browser-user,1,{answer.usage.prompt_tokens},{answer.usage.completion_tokens},0" in csv
            assert used > 0

            # A model outside its globs is refused, and the live page lists the refusal.
            with pytest.raises(openai.PermissionDeniedError):
                client.chat.completions.create(model="qwen3", messages=[{"role": "user", "content": "hi"}])

            # While a stream of it runs, the live page shows it in flight.
            gate = StepGate(timeout=20)
            fake.behaviour = Behaviour(tokens=3, gate=gate)
            streaming = threading.Event()

            def stream() -> None:
                with client.chat.completions.create(
                    model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
                ) as chunks:
                    for _ in chunks:
                        streaming.set()

            worker = threading.Thread(target=stream)
            worker.start()
            try:
                assert streaming.wait(10)
                page.goto(gateway.url + "/admin/#live")
                page.wait_for_selector("#page-live:not([hidden])")
                page.locator("#live-keys").get_by_text("browser-user").wait_for()
                assert page.inner_text("#live-in-flight") == "1"
                assert "up" in page.inner_text("#live-upstreams tbody")
                refusal = page.inner_text("#live-refusals tbody")
                assert "403" in refusal
                assert "browser-user" in refusal
                assert "/v1/chat/completions" in refusal
                assert page.inner_text("#page-live h1") == "Live traffic"
                assert "ogw_wrong_key" not in page.content()
                shots(page, "live")
            finally:
                gate.release(10)
                worker.join(10)
            # Refreshed on its own: the stream's end shows without a reload.
            page.locator("#live-keys").get_by_text("Nothing in flight or queued.").wait_for()

            # Revoke it, confirmed in a dialog; the client is refused at once.
            page.goto(gateway.url + "/admin/#keys")
            page.locator("tr[data-key='browser-user'] button.danger").click()
            page.wait_for_selector("#confirm[open]")
            assert "browser-user" in page.inner_text("#confirm-text")
            page.click("#confirm-yes")
            page.locator("tr[data-key='browser-user'] .status.revoked").wait_for()
            with pytest.raises(openai.AuthenticationError) as refused:
                client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "again?"}])
            assert refused.value.status_code == 401

        # Signing out forgets the key.
        page.click("#sign-out")
        page.wait_for_selector("#page-signin:not([hidden])")
        assert page.evaluate("sessionStorage.length") == 0
        assert problems == []


def test_names_are_shown_as_text_never_run(browser_gateway: RunningGateway, database_url: str, tmp_path: Path) -> None:
    gateway = browser_gateway
    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    created = httpx.post(gateway.url + "/admin/api/keys", headers=gateway.auth, json={"name": hostile})
    assert created.status_code == 201
    # Model names come from request bodies, paths from request lines: anyone can choose them.
    today = dt.datetime.now(dt.UTC).date().isoformat()
    store = open_usage_store(database_url)
    try:
        store.add({UsageKey(today, "id-x", hostile, hostile): UsageCounts(1, 5, 5, 0)})
    finally:
        store.close()
    hostile_path = "/api/<img src=x onerror=document.title='pwned'>"
    refused = httpx.get(gateway.url + hostile_path, headers={"Authorization": "Bearer ogw_bad_key"})
    assert refused.status_code == 401
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(gateway.url + "/admin/")
        page.fill("#signin-key", gateway.key)
        page.click("#signin-form button")
        page.locator("#keys-table").get_by_text(hostile).wait_for()
        assert page.title() == "ollama-gateway admin"
        assert page.locator("#keys-table img").count() == 0
        # The policy itself refuses inline script, whatever gets into the page (the standard
        # violation event says which directive did; the console's wording is the browser's own).
        violated = page.evaluate(
            """() => new Promise((resolve) => {
                document.addEventListener("securitypolicyviolation", (event) => resolve(event.effectiveDirective));
                const s = document.createElement("script");
                s.textContent = 'document.title = "ran"';
                document.body.append(s);
            })"""
        )
        assert violated == "script-src-elem"
        assert page.title() == "ollama-gateway admin"
        # The same names as a usage table row and a chart legend, by key and by model.
        page.goto(gateway.url + "/admin/#usage")
        for stack in ("key", "model"):
            page.select_option("#usage-form [name=stack]", stack)
            page.click("#usage-form button[type=submit]")
            page.locator("#usage-table tbody").get_by_text(hostile).wait_for()
            page.locator("#usage-chart .u-legend").get_by_text(hostile).wait_for()
            assert page.locator("#page-usage img").count() == 0
        # And a refused request's path on the live page.
        page.goto(gateway.url + "/admin/#live")
        page.locator("#live-refusals").get_by_text("<img", exact=False).wait_for()
        assert page.locator("#page-live img").count() == 0
        assert page.title() == "ollama-gateway admin"


def test_the_page_cannot_be_framed(browser_gateway: RunningGateway, tmp_path: Path) -> None:
    gateway = browser_gateway
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        # The main frame's load waits for its frames: by then Chromium has refused this one
        # (X-Frame-Options DENY, frame-ancestors 'none') and shows its error page instead.
        page.set_content(f'<iframe id="f" src="{gateway.url}/admin/"></iframe>', wait_until="load")
        child = page.frames[1]
        assert child.url.startswith("chrome-error://")
        assert child.locator("#page-signin").count() == 0


def test_rotate_shows_the_new_secret_once(browser_gateway: RunningGateway, database_url: str, tmp_path: Path) -> None:
    gateway = browser_gateway
    old = issue_key(database_url, "rotating")
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(gateway.url + "/admin/#keys")
        page.fill("#signin-key", gateway.key)
        page.click("#signin-form button")
        page.locator("tr[data-key='rotating'] button.quiet").click()
        page.wait_for_selector("#secret-panel:not([hidden])")
        new = page.inner_text("#secret-value")
        assert new != old
        assert new.split("_")[1] == old.split("_")[1]  # same key id
        assert _status(gateway, old) == 401
        assert _status(gateway, new) == 200
        # Leaving the page forgets the secret: it is not in the page any more.
        page.goto(gateway.url + "/admin/#usage")
        page.wait_for_selector("#page-usage:not([hidden])")
        assert new not in page.content()
        page.goto(gateway.url + "/admin/#keys")
        page.wait_for_selector("#page-keys:not([hidden])")
        assert not page.is_visible("#secret-panel")
        # Revoking the key one is signed in with says so.
        page.locator("tr[data-key='test-admin-0'] button.danger").click()
        page.wait_for_selector("#confirm[open]")
        assert "the key you are signed in with" in page.inner_text("#confirm-text")
        page.click("#confirm-no")
        assert _status(gateway, gateway.key) == 200


def test_rotating_the_signed_in_key_keeps_the_page_signed_in(browser_gateway: RunningGateway, tmp_path: Path) -> None:
    gateway = browser_gateway
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        sign_in(page, gateway)
        page.locator("tr[data-key='test-admin-0'] button.quiet").click()
        page.wait_for_selector("#secret-panel:not([hidden])")
        # The table reloads with the new key, so the page stays on it and the secret stays shown.
        page.locator("tr[data-key='test-admin-0'] button.quiet").wait_for()
        new = page.inner_text("#secret-value")
        assert new.startswith("ogw_" + gateway.key.split("_")[1] + "_")
        assert new != gateway.key
        assert "signed in with" in page.inner_text("#secret-title")
        assert page.is_visible("#page-keys")
        assert page.evaluate("sessionStorage.getItem('ollama-gateway-admin-key')") == new
        assert _status(gateway, gateway.key) == 401
        assert _status(gateway, new) == 200
        # Other pages work with it too.
        page.goto(gateway.url + "/admin/#usage")
        page.wait_for_selector("#page-usage:not([hidden])")
        assert not page.is_visible("#page-signin")


def test_the_page_creates_exactly_the_scopes_ticked(browser_gateway: RunningGateway, tmp_path: Path) -> None:
    gateway = browser_gateway
    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        sign_in(page, gateway)
        page.click("#create-box summary")
        page.fill("#create-form [name=name]", "ops-only")
        page.uncheck("#create-form [name=scope][value=inference]")
        page.uncheck("#create-form [name=scope][value=read]")
        page.check("#create-form [name=scope][value=admin]")
        page.click("#create-form button[type=submit]")
        page.wait_for_selector("#secret-panel:not([hidden])")
        page.click("#secret-done")
        page.click("#create-box summary")
        page.fill("#create-form [name=name]", "no-scope")
        for scope in ("inference", "read", "admin"):
            page.uncheck(f"#create-form [name=scope][value={scope}]")
        page.click("#create-form button[type=submit]")
        page.wait_for_selector("#notice.error:not([hidden])")
        assert page.inner_text("#notice") == "a key needs at least one scope (one of inference, read, admin)"
    listed = httpx.get(gateway.url + "/admin/api/keys", headers=gateway.auth).json()
    assert {item["name"]: item["scopes"] for item in listed} == {
        "ops-only": ["admin"],
        "test-admin-0": ["admin", "inference", "read"],
    }


def _status(gateway: RunningGateway, key: str) -> int:
    return httpx.get(gateway.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}).status_code


def _follow_signin_link(
    browser: Any, client: httpx.Client, signer: OllamaSigner, gateway: RunningGateway, problems: list[str]
) -> Any:
    """`ollama signin` against the gateway (a 401 with the link the command prints), that link
    opened and the admin signed in: the page (its script errors go to ``problems``)."""
    link = signin_url(signer.request(client, "POST", "/api/me", {}))
    assert link is not None
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("pageerror", lambda error: problems.append(str(error)))
    # The link leads to the sign-in first, then straight to the request.
    page.goto(link.replace("https://gpu.example.com", gateway.url))
    page.fill("#signin-key", gateway.key)
    page.click("#signin-form button")
    return page


def test_an_ollama_key_asks_for_access_and_is_granted_on_the_page(
    browser_gateway: RunningGateway, tmp_path: Path, shots: Callable[..., Path]
) -> None:
    gateway = browser_gateway
    signer = OllamaSigner(make_key(tmp_path / "laptop", "alice@laptop"))
    with httpx.Client(base_url=gateway.url, timeout=10) as client, chromium(tmp_path / "profile") as browser:
        problems: list[str] = []
        page = _follow_signin_link(browser, client, signer, gateway, problems)
        page.wait_for_selector("#page-connect:not([hidden]) #connect-detail:not([hidden])")
        fingerprint = fingerprint_of(signer.public_file)
        assert page.inner_text("#connect-fingerprint") == fingerprint
        assert USER_AGENT in page.inner_text("#connect-seen")
        assert fingerprint in page.inner_text("#connect-pending")
        shots(page, "connect")
        # Granted to a new key, after a confirmation.
        page.check("#connect-to-new")
        page.fill("#connect-form [name=name]", "alice")
        page.click("#connect-form button[type=submit]")
        page.wait_for_selector("#confirm[open]")
        assert fingerprint in page.inner_text("#confirm-text")
        assert page.inner_text("#confirm-yes") == "Grant"
        page.click("#confirm-yes")
        page.locator("#connect-owner").get_by_text("already acts as the key alice").wait_for()
        # The person's next `ollama signin` says who they are.
        assert signer.request(client, "POST", "/api/me", {}).json() == {"name": "alice"}
        # The keys page lists the public key, and detaching it (confirmed) sends it back to sign-in.
        page.goto(gateway.url + "/admin/#keys")
        keys_row = page.locator("tr[data-key='alice']")
        keys_row.locator(".ollama-key").wait_for()
        assert keys_row.locator(".ollama-key code").get_attribute("title") == fingerprint
        keys_row.locator(".ollama-key button").click()
        page.click("#confirm-yes")
        expect(keys_row.locator(".ollama-key")).to_have_count(0)
        assert signin_url(signer.request(client, "POST", "/api/me", {})) is not None
        assert problems == []


def test_an_ollama_key_is_granted_to_a_key_found_among_many(
    browser_gateway: RunningGateway, database_url: str, tmp_path: Path
) -> None:
    gateway = browser_gateway
    issue_keys(database_url, [f"user-{n:04d}" for n in range(150)])
    issue_key(database_url, "aa-revoked")
    httpx.post(
        gateway.url + f"/admin/api/keys/{_id_of(gateway, 'aa-revoked')}/revoke", headers=gateway.auth
    ).raise_for_status()
    signer = OllamaSigner(make_key(tmp_path / "laptop", "bob@laptop"))
    with httpx.Client(base_url=gateway.url, timeout=10) as client, chromium(tmp_path / "profile") as browser:
        page = _follow_signin_link(browser, client, signer, gateway, [])
        # The first 100 active keys by name are offered (never a revoked one), and it says so.
        more = page.locator("#connect-more")
        expect(more).to_have_text("the first 100 of 151: type to find others")
        options = page.locator("#connect-existing option")
        assert options.first.inner_text() == f"test-admin-0 ({gateway.key.split('_')[1]})"
        assert "aa-revoked" not in page.inner_text("#connect-existing")
        # Typing finds a key past them; it is granted to that one.
        page.fill("#connect-find", "USER-0149")
        expect(options).to_have_count(1)
        assert options.first.inner_text().startswith("user-0149 (")
        expect(more).to_have_text("")
        page.click("#connect-form button[type=submit]")
        page.click("#confirm-yes")
        page.locator("#connect-owner").get_by_text("already acts as the key user-0149").wait_for()
        assert signer.request(client, "POST", "/api/me", {}).json() == {"name": "user-0149"}


def _id_of(gateway: RunningGateway, name: str) -> str:
    found = httpx.get(gateway.url + "/admin/api/keys", params={"q": name}, headers=gateway.auth).json()
    return next(item["id"] for item in found if item["name"] == name)  # type: ignore[no-any-return]
