#!/usr/bin/env python3
"""Headless-browser tests of raftcron's web dashboard (/ui/).

Starts real processes: a one-node cluster (`raftcron serve`) with a worker agent
(`raftcron worker`) for most tests, then a three-node cluster for the session and
failover tests, each on free loopback ports. Debian's Chromium is driven through Debian's
chromedriver by Selenium (the driver is named, so Selenium Manager never downloads one).
The pages are checked against the dashboard's contract of ids and classes (README.md
beside this file).

    python3 test_dashboard.py BINARY [--out DIR] [-k SUBSTRING ...]

Each `test_*` function prints PASS or FAIL with its time; the last line is
`summary: N passed, N failed`, and the exit status is 1 when any test failed. A failure
saves every open browser's screenshot and HTML to OUT/failures/. OUT also gets
screenshots/ (one PNG per page), axe/ (each page's accessibility violations, as JSON)
and logs/ (the nodes', the worker's and chromedriver's).

Every wait is bounded (WAIT seconds for the browser, START_TIMEOUT for a cluster to
elect a leader), and every process started here is killed when the script ends, however
it ends (finally, atexit, SIGTERM/SIGINT/SIGHUP).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urlsplit

from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    UnexpectedAlertPresentException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--window-size=1280,900",
    "--disable-dev-shm-usage",
    # Loopback only: no proxy, and none of Chromium's own background traffic.
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
]

ADMIN_KEY = "browser-test-admin-key-0123456789"  # RAFTCRON_API_KEY: the extra admin key
OPERATOR_KEY = "operator-key-0123456789"
VIEWER_KEY = "viewer-key-0123456789"
CLUSTER_SECRET = "browser-test-cluster-secret-0123456789"
SESSION_COOKIE = "raftcron_session"
WORKER_ID = "w1"

# What a wait retries: an element replaced by the live refresh, not there yet, or covered
# for a moment.
RETRIED = (
    StaleElementReferenceException,
    NoSuchElementException,
    ElementClickInterceptedException,
    ElementNotInteractableException,
)

# chromedriver's word, now and then, for an element that the live refresh detached
# (instead of a stale element reference).
DETACHED = "does not belong to the document"

WAIT = 20  # seconds: the longest any one browser wait may take
FAILOVER_WAIT = 10  # seconds: a leader change must show on an open overview within this
START_TIMEOUT = 30  # seconds: for a cluster's nodes to answer /api/health with a leader
HTTP_TIMEOUT = 10  # seconds: one REST call
TERMINAL_RUN_STATES = {"succeeded", "failed", "timed_out", "cancelled", "lost"}


# --------------------------------------------------------------------------------------
# Processes


class Processes:
    """Every process this script starts, each in a session of its own, so that stopping
    one also stops whatever it started (a worker's runs)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    @staticmethod
    def send(proc: subprocess.Popen, sig: int) -> None:
        """`sig` to `proc`'s process group."""
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, procs: list[subprocess.Popen], grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL to whatever is left after `grace` seconds."""
        live = [p for p in procs if p.poll() is None]
        for p in live:
            self.send(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in live:
            if p.poll() is None:  # (an exited one's group id may belong to others by now)
                self.send(p, signal.SIGKILL)  # the process group: its children too
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs = [p for p in self.procs if p not in procs]

    def stop_all(self) -> None:
        self.stop(list(self.procs), grace=2.0)


PROCS = Processes()


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (all held open until each is known)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------
# REST API (setup and verification only)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Api:
    """The REST API of one node, as one credential."""

    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key

    def call(self, method: str, path: str, body: object = None) -> tuple[int, dict | None]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(req, timeout=HTTP_TIMEOUT) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = {"raw": raw.decode(errors="replace")[:500]}
        return status, doc

    def ok(self, method: str, path: str, body: object = None) -> dict:
        """The envelope's `data` of a 2xx answer; anything else fails the test."""
        status, doc = self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path} answered {status}: {doc}"
        return doc["data"]

    def create_task(self, name: str, command: str, **fields: object) -> int:
        spec = {"name": name, "executor": "shell", "command": command, "schedule": None, **fields}
        return self.ok("POST", "/api/tasks", spec)["id"]

    def trigger(self, task_id: int) -> int:
        return self.ok("POST", f"/api/tasks/{task_id}/trigger")["id"]

    def wait_run_finished(self, run_id: int, timeout: float = WAIT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.ok("GET", f"/api/runs/{run_id}")
            if run["status"] in TERMINAL_RUN_STATES:
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {run['status']} after {timeout}s: {run}"
            time.sleep(0.2)


# --------------------------------------------------------------------------------------
# Clusters


class Cluster:
    """Nodes 1..n of one cluster, each `raftcron serve --config` with its own config,
    data directory and log under `root`, plus optionally a worker agent."""

    def __init__(self, binary: Path, root: Path, logs: Path, name: str, n: int) -> None:
        self.binary, self.root, self.logs, self.name = binary, root, logs, name
        ports = free_ports(2 * n)
        self.http = {i: f"127.0.0.1:{ports[2 * (i - 1)]}" for i in range(1, n + 1)}
        self.rpc = {i: f"127.0.0.1:{ports[2 * (i - 1) + 1]}" for i in range(1, n + 1)}
        self.nodes: dict[int, subprocess.Popen] = {}
        self.worker: subprocess.Popen | None = None
        peers = ", ".join(json.dumps(f"{i}={addr}") for i, addr in self.rpc.items())
        for i in self.http:
            conf = root / f"node{i}.toml"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(
                "[node]\n"
                f"id = {i}\n"
                f"data_dir = {json.dumps(str(root / f'data{i}'))}\n"
                f'http_addr = "{self.http[i]}"\n'
                f'rpc_addr = "{self.rpc[i]}"\n'
                "[cluster]\n"
                f"peers = [{peers}]\n"
                "heartbeat_ms = 50\n"
                "election_timeout_ms = 500\n"
                f'secret = "{CLUSTER_SECRET}"\n'
                "[[auth.api_keys]]\n"
                'name = "viewer"\nrole = "viewer"\n'
                f'key = "{VIEWER_KEY}"\n'
                "[[auth.api_keys]]\n"
                'name = "operator"\nrole = "operator"\n'
                f'key = "{OPERATOR_KEY}"\n'
            )
            self.nodes[i] = PROCS.start(
                [str(binary), "serve", "--config", str(conf)],
                logs / f"{name}-node{i}.log",
                env={"RAFTCRON_API_KEY": ADMIN_KEY, "RUST_LOG": "info,openraft=warn"},
            )

    def base(self, i: int) -> str:
        return f"http://{self.http[i]}"

    def api(self, i: int = 1, key: str = ADMIN_KEY) -> Api:
        return Api(self.base(i), key)

    def health_leader(self, i: int) -> int | None:
        """The leader node `i` reports, when its /api/health answers 200."""
        try:
            status, doc = self.api(i).call("GET", "/api/health")
        except OSError:
            return None
        if status != 200 or not doc:
            return None
        return ((doc.get("data") or {}).get("raft") or {}).get("leader_id")

    def wait_healthy(self, nodes: list[int] | None = None, timeout: float = START_TIMEOUT) -> int:
        """Waits for every node in `nodes` (default: all) to answer /api/health with 200
        and a leader; returns the leader node 1 (or the first one asked) names."""
        nodes = nodes or list(self.nodes)
        deadline = time.monotonic() + timeout
        while True:
            for i in nodes:
                if self.nodes[i].poll() is not None:
                    raise AssertionError(f"{self.name} node {i} exited ({self.nodes[i].returncode}):\n{self.log_tail(i)}")
            leaders = {i: self.health_leader(i) for i in nodes}
            if all(leaders.values()):
                return leaders[nodes[0]]
            if time.monotonic() > deadline:
                tails = "\n".join(self.log_tail(i) for i in nodes)
                raise AssertionError(f"{self.name}: not healthy within {timeout}s ({leaders}):\n{tails}")
            time.sleep(0.2)

    def start_worker(self) -> None:
        """A worker agent (the admin key may act as any worker) that runs triggered tasks;
        returns once the cluster lists it online."""
        wdir = self.root / "worker"
        (wdir / "work").mkdir(parents=True, exist_ok=True)
        self.worker = PROCS.start(
            [
                str(self.binary), "worker",
                "--server", self.base(1),
                "--id", WORKER_ID,
                "--key", ADMIN_KEY,
                "--max-tasks", "4",
                "--state-dir", str(wdir / "state"),
                "--work-dir", str(wdir / "work"),
            ],
            self.logs / f"{self.name}-worker.log",
            env={"RUST_LOG": "info"},
        )
        deadline = time.monotonic() + WAIT
        while True:
            workers = self.api().ok("GET", "/api/workers")
            if any(w["id"] == WORKER_ID and w["status"] in ("online", "busy") for w in workers):
                return
            if self.worker.poll() is not None or time.monotonic() > deadline:
                log = (self.logs / f"{self.name}-worker.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"worker {WORKER_ID} not online within {WAIT}s ({workers}):\n{log}")
            time.sleep(0.2)

    def kill(self, i: int) -> None:
        """SIGKILL node `i`: no shutdown, as a crash."""
        PROCS.send(self.nodes[i], signal.SIGKILL)
        self.nodes[i].wait(timeout=5)

    def log_tail(self, i: int, lines: int = 15) -> str:
        path = self.logs / f"{self.name}-node{i}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        return f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail)

    def stop(self) -> None:
        procs = list(self.nodes.values()) + ([self.worker] if self.worker else [])
        PROCS.stop(procs)


# --------------------------------------------------------------------------------------
# Browser


def retrying_detached(cond: Callable) -> Callable:
    """`cond`, reporting an element detached under it as stale (so a wait retries)."""

    def guarded(driver):
        try:
            return cond(driver)
        except WebDriverException as e:
            if not isinstance(e, RETRIED) and DETACHED in (e.msg or ""):
                raise StaleElementReferenceException(e.msg) from e
            raise

    return guarded


def leader_named(text: str) -> int | None:
    """The N of "node N" in a text (the overview's #leader), if any."""
    m = re.search(r"\bnode\s+(\d+)\b", text, re.IGNORECASE)
    return int(m.group(1)) if m else None


class Browser:
    """One headless Chromium session (its own profile, so its own cookies) aimed at one
    node's dashboard. Its lookups tolerate the live refresh, which replaces `#live`
    every 2 s: each wait retries a lookup whose element went stale meanwhile, and reads of
    several elements go through one script, which sees one version of the DOM."""

    def __init__(self, label: str, base: str, logs: Path) -> None:
        self.label, self.base = label, base
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in CHROME_ARGS:
            opts.add_argument(arg)
        # Leave a page's alert() open so that a test can see it (the default dismisses it).
        opts.unhandled_prompt_behavior = "ignore"
        service = Service(CHROMEDRIVER, log_output=str(logs / f"chromedriver-{label}.log"))
        self.driver = webdriver.Chrome(service=service, options=opts)
        self.driver.set_page_load_timeout(WAIT)
        self.driver.set_script_timeout(WAIT)

    # -- navigation

    def go(self, path: str) -> None:
        """Opens `path` on this browser's node (or an absolute URL)."""
        self.driver.get(path if "://" in path else self.base + path)

    @property
    def path(self) -> str:
        return urlsplit(self.driver.current_url).path

    def wait_path(self, expected: str, what: str = "", timeout: float = WAIT) -> None:
        self.wait(what or f"the page at {expected}", lambda d: urlsplit(d.current_url).path == expected, timeout)

    def landed(self, expected: str, what: str) -> None:
        """After `go`, which returns once the page loaded (redirects followed): the
        browser is at `expected`."""
        self.wait_path(expected, what, timeout=3)

    # -- waits and lookups

    def wait(self, what: str, cond: Callable, timeout: float = WAIT):
        """`cond(driver)` once it is truthy; stale and missing elements count as not yet.
        A time-out fails with what was awaited, where the browser was and its flashes."""
        try:
            return WebDriverWait(
                self.driver, timeout, poll_frequency=0.2,
                ignored_exceptions=RETRIED,
            ).until(retrying_detached(cond))
        except TimeoutException:
            raise AssertionError(
                f"[{self.label}] timed out after {timeout}s waiting for {what} "
                f"(at {self.driver.current_url}; flash: {self.flashes() or 'none'})"
            ) from None

    def poll(self, what: str, fn: Callable, timeout: float = WAIT, reload_every: float | None = None):
        """Like `wait`, but optionally reloads the page every `reload_every` seconds, for
        waits whose subject is the data, not the live refresh."""
        deadline = time.monotonic() + timeout
        reloaded = time.monotonic()
        while True:
            try:
                value = retrying_detached(fn)(self.driver)
            except RETRIED:
                value = None
            if value:
                return value
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"[{self.label}] timed out after {timeout}s waiting for {what} (at {self.driver.current_url})")
            if reload_every and now - reloaded > reload_every:
                self.go(self.driver.current_url)  # a GET of the URL, never a re-POST
                reloaded = now
            time.sleep(0.25)

    def el(self, css: str, timeout: float = WAIT):
        """The element `css` selects, once there."""
        return self.wait(f"an element {css!r}", lambda d: d.find_element(By.CSS_SELECTOR, css), timeout)

    def els(self, css: str) -> list:
        """Every element `css` selects now (no wait)."""
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def count(self, css: str) -> int:
        return self.js("return document.querySelectorAll(arguments[0]).length", css)

    def text(self, css: str, timeout: float = WAIT) -> str:
        """The visible text of `css`, once the element is there."""
        return self.wait(f"the text of {css!r}", lambda d: (d.find_element(By.CSS_SELECTOR, css).text,), timeout)[0]

    def wait_text(self, css: str, pred: Callable[[str], object], what: str, timeout: float = WAIT):
        """Waits until `pred(text of css)` is truthy; returns its value."""
        return self.wait(what, lambda d: pred(d.find_element(By.CSS_SELECTOR, css).text), timeout)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def flashes(self) -> list[str]:
        try:
            return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, ".flash") if e.text]
        except Exception:  # noqa: BLE001 - only for a failure message
            return []

    # -- actions

    def click(self, css: str) -> None:
        def attempt(d):
            d.find_element(By.CSS_SELECTOR, css).click()
            return True

        self.wait(f"{css!r} to be clickable", attempt)

    def click_and_load(self, css: str) -> None:
        """Clicks `css` and waits for the next page to have loaded."""
        mark = self.mark_page()
        self.click(css)
        self.wait_next_page(mark, f"a new page after clicking {css!r}")

    def submit_form(self, css: str) -> None:
        """Submits form `css` as its submit button would, and waits for the next page."""
        mark = self.mark_page()
        self.wait(
            f"{css!r} to be submitted",
            lambda d: self.js(
                "const f = arguments[0]; f.requestSubmit ? f.requestSubmit() : f.submit(); return true;",
                d.find_element(By.CSS_SELECTOR, css),
            ),
        )
        self.wait_next_page(mark, f"a new page after submitting {css!r}")

    def mark_page(self) -> str:
        """Tags the current document (a script variable, which only a new document lacks;
        the live refresh keeps it)."""
        mark = str(time.monotonic_ns())
        self.js("window.__raftcronPage = arguments[0];", mark)
        return mark

    def wait_next_page(self, mark: str, what: str) -> None:
        def loaded(d):
            try:
                return d.execute_script(
                    "return window.__raftcronPage !== arguments[0] && document.readyState === 'complete';", mark
                )
            except UnexpectedAlertPresentException:
                raise
            except WebDriverException:  # the old document going away under the script
                return False

        self.wait(what, loaded)

    def fill(self, css: str, value: str) -> None:
        el = self.el(css)
        el.clear()
        if value:
            el.send_keys(value)
        actual = el.get_attribute("value")
        assert actual == value, f"[{self.label}] {css} holds {actual!r} after typing {value!r}"

    def choose(self, css: str, value: str) -> None:
        """Sets select `css` to the option `value` without firing its change event (so a
        select that submits on change does not navigate under the test)."""
        el = self.el(css)
        values = [o.get_attribute("value") for o in Select(el).options]
        assert value in values, f"[{self.label}] {css} has no option {value!r} (has {values})"
        self.js("arguments[0].value = arguments[1];", el, value)

    # -- sessions

    def login(self, key: str) -> None:
        """Logs in with `key` through the form and expects the overview."""
        self.attempt_login(key)
        self.wait_path("/ui/", "the login to land on the overview (/ui/)", timeout=5)

    def attempt_login(self, key: str) -> None:
        self.go("/ui/login")
        self.fill("#credential", key)
        self.click_and_load("#login-submit")

    def logout(self) -> None:
        self.submit_form("#logout")

    def clear_cookies(self) -> None:
        """Forgets this browser's cookies for the current host (every port of it)."""
        self.driver.delete_all_cookies()

    def set_session(self, value: str) -> None:
        """Replaces this host's cookies with a session cookie of `value` (the browser
        must be on the node's origin already)."""
        self.driver.delete_all_cookies()
        self.driver.add_cookie({"name": SESSION_COOKIE, "value": value, "path": "/ui"})

    def cookie(self, name: str) -> dict | None:
        return self.driver.get_cookie(name)

    # -- checks

    def alert_text(self, within: float = 2.0) -> str | None:
        """The text of an alert the page raises within `within` seconds (which is then
        dismissed), or None."""
        try:
            WebDriverWait(self.driver, within, poll_frequency=0.1).until(EC.alert_is_present())
        except TimeoutException:
            pass
        try:
            alert = self.driver.switch_to.alert
        except NoAlertPresentException:
            return None
        text = alert.text
        alert.dismiss()
        return text

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        png = self.driver.get_screenshot_as_png()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000, f"not a screenshot: {len(png)} bytes"
        path.write_bytes(png)

    def save_artifacts(self, stem: Path) -> list[Path]:
        """The screenshot and HTML of the current page, for a failure's post-mortem."""
        saved = []
        try:
            self.alert_text(within=0)  # an open alert blocks both
            stem.parent.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(stem.with_suffix(".png")))
            saved.append(stem.with_suffix(".png"))
            stem.with_suffix(".html").write_text(f"<!-- {self.driver.current_url} -->\n" + self.driver.page_source)
            saved.append(stem.with_suffix(".html"))
        except Exception as e:  # noqa: BLE001 - best effort after a failure
            print(f"    (could not save {self.label}'s page: {e})")
        return saved

    def quit(self) -> None:
        try:
            self.driver.quit()
        except Exception:  # noqa: BLE001 - teardown
            pass


# --------------------------------------------------------------------------------------
# Page helpers


def run_ids(b: Browser) -> list[str]:
    """The run ids of the page's `table#runs`, read in one go."""
    return b.js(
        "return Array.from(document.querySelectorAll('table#runs tr[data-run-id]'))"
        ".map(tr => tr.getAttribute('data-run-id'));"
    )


def run_status(b: Browser, run_id: int) -> str | None:
    status = b.js(
        "const td = document.querySelector(`table#runs tr[data-run-id=\"${arguments[0]}\"] td.run-status`);"
        "return td ? td.textContent.trim().toLowerCase() : null;",
        str(run_id),
    )
    return status or None


def task_ids(b: Browser) -> list[str]:
    return b.js(
        "return Array.from(document.querySelectorAll('table#tasks tr[data-task-id]'))"
        ".map(tr => tr.getAttribute('data-task-id'));"
    )


def task_status(b: Browser) -> str:
    return b.text("#task-status").strip().lower()


def parse_instant(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def check_times(b: Browser) -> int:
    """Every `<time>` carries a `datetime` that is an instant in UTC ("...Z", or an
    offset of +00:00); returns how many there are."""
    stamps = b.js("return Array.from(document.querySelectorAll('time')).map(t => t.getAttribute('datetime'));")
    for stamp in stamps:
        try:
            offset = parse_instant(stamp or "").utcoffset()
        except ValueError:
            offset = None
        assert offset is not None and not offset, f"a <time> whose datetime is not a UTC instant: {stamp!r}"
    return len(stamps)


NAV = {
    "#nav-overview": "/ui/",
    "#nav-tasks": "/ui/tasks",
    "#nav-runs": "/ui/runs",
    "#nav-workers": "/ui/workers",
    "#nav-cluster": "/ui/cluster",
}


def check_chrome(b: Browser) -> None:
    """The parts every authenticated page has: the navigation, the logout form, main#main."""
    for css, path in NAV.items():
        href = b.el(f"nav {css}").get_attribute("href")
        assert urlsplit(href).path == path, f"{css} links to {href}, not {path}"
    form = b.el("form#logout")
    assert (form.get_attribute("method") or "").lower() == "post", "the logout form does not POST"
    assert urlsplit(form.get_attribute("action")).path == "/ui/logout", f"logout posts to {form.get_attribute('action')}"
    b.el("main#main")


def no_injected_markup(b: Browser, marker: str) -> None:
    """No element that a reflected `marker` could have created exists: no script
    containing it, no img with src=x, no element carrying an onerror attribute."""
    found = b.js(
        "const m = arguments[0];"
        "const scripts = Array.from(document.scripts).filter(s => s.textContent.includes(m)).length;"
        "const imgs = document.querySelectorAll('img[src=\"x\"]').length;"
        "const handlers = document.querySelectorAll('[onerror]').length;"
        "return {scripts, imgs, handlers};",
        marker,
    )
    assert found == {"scripts": 0, "imgs": 0, "handlers": 0}, f"injected markup on {b.path}: {found}"


# --------------------------------------------------------------------------------------
# The suite's state


class Suite:
    """What the tests share: the output directory, the clusters, the browsers (created on
    first use), and what earlier tests made (with REST fallbacks, so that one failure
    does not fail every later test)."""

    def __init__(self, binary: Path, out: Path) -> None:
        self.binary, self.out = binary, out
        self.logs = out / "logs"
        self.browsers: dict[str, Browser] = {}
        self.single: Cluster | None = None
        self.trio: Cluster | None = None
        self.made: dict[str, int] = {}
        self.logged_in: set[str] = set()

    # -- browsers

    def browser(self, label: str, base: str) -> Browser:
        """The browser `label`, started on first use, aimed at `base`."""
        if label not in self.browsers:
            self.browsers[label] = Browser(label, base, self.logs)
        b = self.browsers[label]
        b.base = base
        return b

    def close_browser(self, label: str) -> None:
        self.logged_in.discard(label)
        b = self.browsers.pop(label, None)
        if b:
            b.quit()

    @property
    def anon(self) -> Browser:
        """A browser on the one-node cluster that is not logged in."""
        return self.browser("anon", self.single.base(1))

    @property
    def admin(self) -> Browser:
        """A browser on the one-node cluster logged in with the admin key."""
        return self.session("admin", ADMIN_KEY)

    @property
    def viewer(self) -> Browser:
        """A browser on the one-node cluster logged in with the viewer key."""
        return self.session("viewer", VIEWER_KEY)

    def session(self, label: str, key: str) -> Browser:
        """The browser `label`, logged in with `key` on first use (again on the next use,
        should that login have failed)."""
        b = self.browser(label, self.single.base(1))
        if label not in self.logged_in:
            b.login(key)
            self.logged_in.add(label)
        return b

    # -- clusters

    def start_single(self) -> None:
        root = self.out / "nodes" / "single"
        self.single = Cluster(self.binary, root, self.logs, "single", 1)
        self.single.wait_healthy()
        self.single.start_worker()

    def stop_single(self) -> None:
        for label in ("anon", "admin", "viewer"):
            self.close_browser(label)
        if self.single:
            self.single.stop()

    def start_trio(self) -> None:
        root = self.out / "nodes" / "trio"
        self.trio = Cluster(self.binary, root, self.logs, "trio", 3)
        self.trio.wait_healthy()

    def stop_trio(self) -> None:
        for label in [k for k in self.browsers if k.startswith("trio")]:
            self.close_browser(label)
        if self.trio:
            self.trio.stop()

    # -- what earlier tests made

    @property
    def api(self) -> Api:
        return self.single.api()

    def task_id(self) -> int:
        """The task test_create_task_through_form made, or a REST-made stand-in."""
        if "task" not in self.made:
            self.made["task"] = self.api.create_task("ui-stand-in-task", "echo hello-from-ui")
        return self.made["task"]

    def run_id(self) -> int:
        """A finished run of that task (test_trigger_run_succeeds's, or a REST one)."""
        if "run" not in self.made:
            run = self.api.trigger(self.task_id())
            self.api.wait_run_finished(run)
            self.made["run"] = run
        return self.made["run"]

    def diagnose(self, test_name: str) -> None:
        """After a failure: every open browser's page to OUT/failures/, node log tails."""
        for label, b in list(self.browsers.items()):
            saved = b.save_artifacts(self.out / "failures" / f"{test_name}-{label}")
            if saved:
                print(f"    {label} was at {b.driver.current_url}; saved {', '.join(str(p) for p in saved)}")
        for cluster in (self.single, self.trio):
            if cluster and any(p.poll() is None for p in cluster.nodes.values()):
                for i in cluster.nodes:
                    print("    " + cluster.log_tail(i, 8).replace("\n", "\n    "))

    def close(self) -> None:
        for label in list(self.browsers):
            self.close_browser(label)
        PROCS.stop_all()


# --------------------------------------------------------------------------------------
# Tests on a one-node cluster with a worker


def test_login_and_redirects(s: Suite) -> None:
    """An unauthenticated visit to any dashboard page lands on the login form; a wrong
    credential is refused there with an error flash and grants no session; the admin key
    logs in to the overview with an HttpOnly session cookie; logging out ends the
    session."""
    b = s.anon
    for path in ("/ui/", "/ui/tasks", "/ui/tasks/new", "/ui/runs", "/ui/workers", "/ui/cluster"):
        b.go(path)
        b.landed("/ui/login", f"{path} to redirect an anonymous visitor to /ui/login")
        b.el("form#login-form")

    b.attempt_login("not-a-key-of-this-cluster-0123456789")
    b.el(".flash.error")
    assert b.path == "/ui/login", f"a refused login went to {b.path}"
    b.go("/ui/")
    b.landed("/ui/login", "a refused login to grant no session")

    b.login(ADMIN_KEY)
    b.el("#leader")
    cookie = b.cookie(SESSION_COOKIE)
    assert cookie, f"no {SESSION_COOKIE} cookie after logging in (cookies: {b.driver.get_cookies()})"
    assert cookie.get("httpOnly"), f"the session cookie is readable by scripts: {cookie}"

    b.logout()
    b.go("/ui/tasks")
    b.landed("/ui/login", "logging out to end the session")


def test_overview_shows_cluster_state(s: Suite) -> None:
    """The overview names the leader (node 1, the only node) and its term, lists the
    member, counts the worker as online and has the task counts, the runs chart and the
    recent failures; the navigation and logout form are there, and times are UTC."""
    b = s.admin
    b.go("/ui/")
    b.wait_text("#leader", lambda t: leader_named(t) == 1, "#leader to name node 1")
    assert re.search(r"\d", b.text("#term")), f"#term shows no number: {b.text('#term')!r}"
    b.el('table#members tr[data-node-id="1"]')
    b.wait_text("#workers-online", lambda t: re.search(r"\b1\b", t), "#workers-online to count 1 worker")
    for css in ("#task-counts", "svg#runs-chart", "#recent-failures"):
        b.el(css)
    check_chrome(b)
    check_times(b)


def test_create_task_through_form(s: Suite) -> None:
    """The new-task form, reached from the tasks page's #new-task link, creates a shell
    task: the browser lands on its page, which shows its name, and the API has it with
    the command and no schedule."""
    b = s.admin
    name = "ui-made-task"
    b.go("/ui/tasks")
    b.click_and_load("a#new-task.write")
    b.wait_path("/ui/tasks/new")
    b.fill("form#task-form [name=name]", name)
    b.choose("form#task-form select[name=executor]", "shell")
    b.fill("form#task-form [name=command]", "echo hello-from-ui")
    b.fill("form#task-form [name=schedule]", "")
    b.click_and_load("#task-submit")
    m = b.wait("the new task's page", lambda d: re.fullmatch(r"/ui/tasks/(\d+)", urlsplit(d.current_url).path))
    task_id = int(m.group(1))
    b.wait_text("#task-name", lambda t: t.strip() == name, f"#task-name to read {name!r}")

    task = s.api.ok("GET", f"/api/tasks/{task_id}")
    assert (task["name"], task["executor"], task["command"], task["schedule"]) == (
        name, "shell", "echo hello-from-ui", None,
    ), f"the API has {task}"
    s.made["task"] = task_id


def test_task_list_filter(s: Suite) -> None:
    """The tasks page lists the task with its name as the link text, and its filter
    narrows the list by name and by status."""
    b = s.admin
    task_id = s.task_id()
    name = s.api.ok("GET", f"/api/tasks/{task_id}")["name"]
    b.go("/ui/tasks")
    link = b.el(f'table#tasks tr[data-task-id="{task_id}"] a.task-link')
    assert link.text.strip() == name, f"the task's link reads {link.text!r}"

    def filtered(search: str, status: str) -> list[str]:
        b.go("/ui/tasks")
        b.fill("form#task-filter input[name=search]", search)
        b.choose("form#task-filter select[name=status]", status)
        b.click_and_load("#filter-submit")
        b.el("main#main")
        return task_ids(b)

    assert str(task_id) in filtered(name, ""), "searching for its name lost the task"
    assert str(task_id) not in filtered("no-task-is-called-this", ""), "a search for another name kept the task"
    assert str(task_id) in filtered("", "active"), "the active filter lost an active task"
    assert str(task_id) not in filtered("", "paused"), "the paused filter kept an active task"


def test_trigger_run_succeeds(s: Suite) -> None:
    """Trigger on the task page makes a run that the worker executes: its row appears in
    #runs and reaches `succeeded`, and the run's page shows the command's output, with
    UTC times."""
    b = s.admin
    task_id = s.task_id()
    b.go(f"/ui/tasks/{task_id}")
    b.el("#task-name")
    before = set(run_ids(b))
    b.click_and_load("button#trigger")
    new = b.poll("a new row in table#runs", lambda d: sorted(set(run_ids(b)) - before, key=int), reload_every=5)
    run_id = int(new[-1])
    # The live refresh should bring the outcome; the reloads only keep this test about
    # the run (test_overview_follows_a_leader_change is about the refresh).
    status = b.poll(
        f"run {run_id} to finish",
        lambda d: (st := run_status(b, run_id)) in TERMINAL_RUN_STATES and st,
        reload_every=6,
    )
    run = s.api.ok("GET", f"/api/runs/{run_id}")
    assert status == "succeeded", f"run {run_id} shows {status!r}; the API has {run}"

    b.click_and_load(f'table#runs tr[data-run-id="{run_id}"] a.run-link')
    b.wait_path(f"/ui/runs/{run_id}")
    b.wait_text("pre#run-output", lambda t: "hello-from-ui" in t, "the run's output in pre#run-output")
    assert "succeeded" in b.text("#run-status").lower(), f"#run-status reads {b.text('#run-status')!r}"
    assert check_times(b) >= 1, "the run page shows no <time>"
    s.made["run"] = run_id


def test_pause_and_resume(s: Suite) -> None:
    """Pause turns the task paused (the page then offers Resume instead of Pause) and
    Resume turns it active again; the API agrees each time."""
    b = s.admin
    task_id = s.task_id()
    b.go(f"/ui/tasks/{task_id}")
    assert task_status(b) == "active", f"the task starts {task_status(b)!r}"

    b.click_and_load("button#pause")
    b.wait_text("#task-status", lambda t: t.strip().lower() == "paused", "#task-status to read paused")
    b.el("button#resume")
    assert not b.els("button#pause"), "a paused task still offers Pause"
    assert s.api.ok("GET", f"/api/tasks/{task_id}")["status"] == "paused"

    b.click_and_load("button#resume")
    b.wait_text("#task-status", lambda t: t.strip().lower() == "active", "#task-status to read active")
    b.el("button#pause")
    assert not b.els("button#resume"), "an active task still offers Resume"
    assert s.api.ok("GET", f"/api/tasks/{task_id}")["status"] == "active"


def test_edit_conflict(s: Suite) -> None:
    """The edit form carries the version it was read at: when the task changes meanwhile
    (here through the API) its submission is refused with #conflict saying the task
    changed, and the other change stands; a fresh form then saves."""
    b = s.admin
    task_id = s.task_id()
    b.go(f"/ui/tasks/{task_id}")
    b.click_and_load("a#edit")
    b.wait_path(f"/ui/tasks/{task_id}/edit")
    task = s.api.ok("GET", f"/api/tasks/{task_id}")
    form_name = b.el("form#task-form [name=name]").get_attribute("value")
    assert form_name == task["name"], f"the edit form shows name {form_name!r}"
    version = b.el("form#task-form input[name=version]").get_attribute("value")
    assert version == str(task["version"]), f"the form's version {version!r} is not the task's {task['version']}"

    s.api.ok("PUT", f"/api/tasks/{task_id}", {"command": "echo changed-by-api"})
    b.fill("form#task-form [name=command]", "echo edited-in-browser")
    b.click_and_load("#task-submit")
    b.wait(
        "#conflict.flash.error (or any next page)",
        lambda d: d.find_elements(By.CSS_SELECTOR, "#conflict") or b.path == f"/ui/tasks/{task_id}",
    )
    assert b.path != f"/ui/tasks/{task_id}", "the stale form was accepted (it went on to the task's page)"
    b.wait_text("#conflict.flash.error", lambda t: "changed" in t.lower(), "#conflict.flash.error saying 'changed'")
    assert s.api.ok("GET", f"/api/tasks/{task_id}")["command"] == "echo changed-by-api", "the stale form overwrote the task"

    b.go(f"/ui/tasks/{task_id}/edit")
    b.fill("form#task-form [name=command]", "echo hello-from-ui")
    b.click_and_load("#task-submit")
    b.wait_path(f"/ui/tasks/{task_id}", "a fresh edit to land on the task's page")
    assert s.api.ok("GET", f"/api/tasks/{task_id}")["command"] == "echo hello-from-ui", "the fresh edit was not saved"


def test_scheduled_task_lists_next_fires(s: Suite) -> None:
    """A scheduled task's page lists its next fire times, the first being the API's
    next_run_at, written in the task's own zone (03:00 in Berlin, whatever the browser's)."""
    b = s.admin
    task_id = s.api.create_task("ui-scheduled-task", "true", schedule="0 3 * * *", timezone="Europe/Berlin")
    next_run = s.api.ok("GET", f"/api/tasks/{task_id}")["next_run_at"]
    b.go(f"/ui/tasks/{task_id}")
    stamps = b.wait(
        "times in ol#next-fires",
        lambda d: b.js("return Array.from(document.querySelectorAll('ol#next-fires time')).map(t => t.getAttribute('datetime'));"),
    )
    assert parse_instant(stamps[0]) == parse_instant(next_run), f"first fire {stamps[0]}, the API says {next_run}"
    assert stamps == sorted(stamps, key=parse_instant) and len(set(stamps)) == len(stamps), f"fires not ascending: {stamps}"
    texts = b.js("return Array.from(document.querySelectorAll('ol#next-fires time')).map(t => t.textContent);")
    assert len(texts) == 10, f"{len(texts)} fire times listed, not 10: {texts}"
    assert all(" 03:00:00 CE" in t for t in texts), f"fire times not shown in Europe/Berlin: {texts}"


def test_delete_task(s: Suite) -> None:
    """Delete goes through a confirmation page; confirming removes the task (the API
    answers 404 and the list no longer has it)."""
    b = s.admin
    task_id = s.api.create_task("ui-task-to-delete", "true")
    b.go(f"/ui/tasks/{task_id}")
    b.click_and_load("a#delete")
    b.wait_path(f"/ui/tasks/{task_id}/delete")
    assert s.api.call("GET", f"/api/tasks/{task_id}")[0] == 200, "the confirmation page deleted already"
    b.click_and_load("button#confirm-delete")
    status, _ = s.api.call("GET", f"/api/tasks/{task_id}")
    assert status == 404, f"the task is still there ({status})"
    b.go("/ui/tasks")
    b.el("table#tasks")
    assert str(task_id) not in task_ids(b), "the deleted task is still listed"


def test_runs_workers_cluster_pages(s: Suite) -> None:
    """The runs page lists runs of every task and its status filter works (checked with a
    failing and a succeeding run); the overview's recent failures show the failed run;
    the workers page lists the worker; the cluster page lists the node and offers the
    admin the leader-transfer form."""
    b = s.admin
    ok_run = s.run_id()
    failing = s.api.create_task("ui-failing-task", "echo about-to-fail; exit 3")
    bad_run = s.api.trigger(failing)
    assert s.api.wait_run_finished(bad_run)["status"] == "failed"

    def listed(status: str) -> list[str]:
        b.go("/ui/runs")
        b.choose("select[name=status]", status)
        b.submit_form("form:has(select[name=status])")
        b.el("main#main")
        return run_ids(b)

    everything = listed("")
    assert {str(ok_run), str(bad_run)} <= set(everything), f"/ui/runs lists {everything}"
    failed = listed("failed")
    assert str(bad_run) in failed and str(ok_run) not in failed, f"status=failed lists {failed}"
    succeeded = listed("succeeded")
    assert str(ok_run) in succeeded and str(bad_run) not in succeeded, f"status=succeeded lists {succeeded}"

    b.go("/ui/")
    b.wait_text(
        "#recent-failures",
        lambda t: "ui-failing-task" in t or b.count(f'#recent-failures a[href$="/ui/runs/{bad_run}"]'),
        "#recent-failures to show the failed run (its task's name or a link to it)",
    )
    b.go("/ui/workers")
    b.el(f'table#workers tr[data-worker-id="{WORKER_ID}"]')
    b.go("/ui/cluster")
    b.el('table#members tr[data-node-id="1"]')
    b.el("form#transfer-leader.write")


def test_viewer_sees_no_write_controls(s: Suite) -> None:
    """A viewer reads every page but is offered no write: no `.write` element anywhere
    (an admin sees them on the same task page, so the selector is live). The server,
    not the page, enforces it: the API answers a viewer's trigger with 403, and a POST
    to the dashboard's own trigger action from the viewer's session makes no run."""
    task_id = s.task_id()
    admin = s.admin
    admin.go(f"/ui/tasks/{task_id}")
    admin.el("#task-name")
    assert admin.count(".write") > 0, "the admin's task page has no .write element"
    action = admin.js(
        "const b = document.getElementById('trigger'); const f = b && b.form;"
        "return f ? (b.getAttribute('formaction') ? b.formAction : f.action) : null;"
    )
    assert action, "the trigger button is not in a form"

    v = s.viewer
    pages = {
        "/ui/": "#leader",
        "/ui/tasks": f'table#tasks tr[data-task-id="{task_id}"]',
        f"/ui/tasks/{task_id}": "#task-name",
        "/ui/runs": "main#main",
        f"/ui/runs/{s.run_id()}": "pre#run-output",
        "/ui/workers": "table#workers",
        "/ui/cluster": "table#members",
    }
    for path, ready in pages.items():
        v.go(path)
        v.el(ready)
        writes = v.js("return Array.from(document.querySelectorAll('.write')).map(e => e.outerHTML.slice(0, 120));")
        assert not writes, f"the viewer is offered writes on {path}: {writes}"

    status, doc = s.single.api(key=VIEWER_KEY).call("POST", f"/api/tasks/{task_id}/trigger")
    assert status == 403, f"the API answered a viewer's trigger with {status}: {doc}"
    assert s.single.api(key=VIEWER_KEY).call("GET", f"/api/tasks/{task_id}")[0] == 200, "a viewer cannot read the task"

    # The POST carries what the viewer's own forms carry (the logout form's hidden fields:
    # its CSRF token), so that what refuses it is the role, not a missing token.
    runs_before = s.api.ok("GET", f"/api/tasks/{task_id}/runs")["total"]
    answer = v.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const body = new URLSearchParams(new FormData(document.getElementById('logout')));"
        "fetch(arguments[0], {method: 'POST', credentials: 'same-origin', body})"
        ".then(r => done(r.status)).catch(e => done(String(e)));",
        action,
    )
    time.sleep(1)  # a run, had one been made, is in the state machine by now
    runs_after = s.api.ok("GET", f"/api/tasks/{task_id}/runs")["total"]
    assert runs_after == runs_before, f"a viewer's POST to {action} (answered {answer}) made a run"


def test_xss_is_escaped(s: Suite) -> None:
    """Markup in a task's name, its command, its run's output and a search parameter is
    shown as text: no alert fires, no element is created from it, and the name's link
    and heading read the literal name."""
    name = "<script>alert(1)</script>"
    img = "<img src=x onerror=alert(2)>"
    task_id = s.api.create_task(name, f"printf '%s\\n' '{img}'")
    run_id = s.api.trigger(task_id)
    assert s.api.wait_run_finished(run_id)["status"] == "succeeded"
    b = s.admin

    def visit(path: str, ready: str) -> None:
        try:
            b.go(path)
        except UnexpectedAlertPresentException:
            pass  # reported just below
        alert = b.alert_text(within=1.0)
        assert alert is None, f"{path} raised alert({alert!r})"
        try:
            b.driver.switch_to.alert
            raise AssertionError(f"{path} has an alert open")
        except NoAlertPresentException:
            pass
        b.el(ready)
        no_injected_markup(b, "alert(")

    visit("/ui/tasks", f'tr[data-task-id="{task_id}"] a.task-link')
    link = b.el(f'tr[data-task-id="{task_id}"] a.task-link').text
    assert link == name, f"the task's link reads {link!r}"
    visit(f"/ui/tasks/{task_id}", "#task-name")
    assert b.text("#task-name") == name, f"#task-name reads {b.text('#task-name')!r}"
    visit(f"/ui/runs/{run_id}", "pre#run-output")
    assert img in b.text("pre#run-output"), f"the output reads {b.text('pre#run-output')!r}"
    visit("/ui/runs", f'tr[data-run-id="{run_id}"]')
    visit("/ui/", "#leader")
    reflected = "\"'><script>alert(3)</script><img src=x onerror=alert(4)>"
    visit("/ui/tasks?search=" + quote(reflected), "main#main")


def page_tour(s: Suite) -> list[tuple[str, Browser, str, str]]:
    """(name, browser, path, selector that shows the page is ready) for each page."""
    task_id, run_id = s.task_id(), s.run_id()
    anon = s.anon
    anon.go("/ui/login")
    anon.clear_cookies()  # the login page as a visitor sees it
    admin = s.admin
    return [
        ("login", anon, "/ui/login", "form#login-form"),
        ("overview", admin, "/ui/", "#leader"),
        ("tasks", admin, "/ui/tasks", "table#tasks"),
        ("task", admin, f"/ui/tasks/{task_id}", "#task-name"),
        ("new-task", admin, "/ui/tasks/new", "form#task-form"),
        ("edit-task", admin, f"/ui/tasks/{task_id}/edit", "form#task-form"),
        ("run", admin, f"/ui/runs/{run_id}", "pre#run-output"),
        ("runs", admin, "/ui/runs", "table#runs"),
        ("workers", admin, "/ui/workers", "table#workers"),
        ("cluster", admin, "/ui/cluster", "table#members"),
    ]


AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']})
  .then(r => done({passes: r.passes.length, violations: r.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl, nodes: v.nodes.length,
    target: v.nodes.length ? JSON.stringify(v.nodes[0].target) : '',
    html: v.nodes.length ? v.nodes[0].html.slice(0, 300) : ''}))}))
  .catch(e => done({error: String(e)}));
"""


def axe_violations(b: Browser, script: str) -> list[dict]:
    """axe-core's violations on the current page (one retry, should the live refresh
    swap the DOM under axe)."""
    for attempt in (1, 2):
        b.js(script)
        result = b.driver.execute_async_script(AXE_RUN)
        if "error" not in result:
            # axe reports the rules a page passed too: none would mean it checked nothing.
            assert result["passes"] > 0, f"axe checked no rule on {b.path}"
            return result["violations"]
        if attempt == 2:
            raise AssertionError(f"axe failed on {b.path}: {result['error']}")
    return []


def test_accessibility(s: Suite) -> None:
    """axe-core (shipped in axe-core-python) finds no serious or critical violation on
    any page; every page's violations, of any impact, are written to OUT/axe/."""
    script = (resources.files("axe_core_python") / "axe.min.js").read_text(encoding="utf-8")
    (s.out / "axe").mkdir(parents=True, exist_ok=True)
    bad = []
    for name, b, path, ready in page_tour(s):
        b.go(path)
        b.el(ready)
        violations = axe_violations(b, script)
        (s.out / "axe" / f"{name}.json").write_text(json.dumps(violations, indent=2))
        minor = [v["id"] for v in violations if v["impact"] not in ("serious", "critical")]
        if minor:
            print(f"    {name}: minor/moderate: {', '.join(minor)}")
        bad += [
            f"{name} ({path}): {v['id']} [{v['impact']}] {v['help']} at {v['target']} ({v['nodes']} nodes)"
            for v in violations if v["impact"] in ("serious", "critical")
        ]
    assert not bad, "serious or critical accessibility violations:\n      " + "\n      ".join(bad)


def test_screenshots(s: Suite) -> None:
    """Every page renders (with the navigation and logout form when logged in), and its
    screenshot is saved to OUT/screenshots/<page>.png."""
    shots = s.out / "screenshots"
    for name, b, path, ready in page_tour(s):
        b.go(path)
        b.el(ready)
        if name != "login":
            check_chrome(b)
        time.sleep(0.3)  # fonts and the chart settle
        b.screenshot(shots / f"{name}.png")
    print(f"    saved {len(list(shots.glob('*.png')))} screenshots to {shots}")


# --------------------------------------------------------------------------------------
# Tests on a three-node cluster


def tampered(value: str) -> str:
    """`value` with its middle character changed."""
    i = len(value) // 2
    return value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1:]


def test_session_cookie_works_on_every_node(s: Suite) -> None:
    """A session belongs to the cluster, not to the node that made it: the cookie node 1
    set at login opens the overview on nodes 2 and 3 in a browser that never logged in
    there, while a tampered copy of it is sent to the login form."""
    c = s.trio
    one = s.browser("trio-node1", c.base(1))
    one.login(ADMIN_KEY)
    cookie = one.cookie(SESSION_COOKIE)
    assert cookie and cookie["value"], f"node 1 set no {SESSION_COOKIE} cookie"
    s.close_browser("trio-node1")

    other = s.browser("trio-other", c.base(2))
    for i in (2, 3):
        other.base = c.base(i)
        other.go("/ui/login")
        other.clear_cookies()
        other.go("/ui/")
        other.landed("/ui/login", f"node {i} to send a browser without a session to log in")
        other.set_session(tampered(cookie["value"]))
        other.go("/ui/")
        other.landed("/ui/login", f"node {i} to refuse a tampered session cookie")
        other.set_session(cookie["value"])
        other.go("/ui/")
        other.landed("/ui/", f"node {i} to accept node 1's session cookie")
        other.el("#leader")
        assert not other.els("#login-form"), f"node {i} shows the login form with node 1's session"


def test_overview_follows_a_leader_change(s: Suite) -> None:
    """The overview's live refresh follows a failover: on a follower's overview, left
    open (never reloaded), #leader changes from the SIGKILLed leader to its successor
    within FAILOVER_WAIT seconds."""
    c = s.trio
    b = s.browser("trio-watch", c.base(1))
    b.login(ADMIN_KEY)
    leader = b.wait("#leader to name a node", lambda d: leader_named(d.find_element(By.ID, "leader").text))
    api_leader = c.health_leader(1)
    assert leader == api_leader, f"node 1's overview names node {leader}; its /api/health says {api_leader}"

    watch = 1 if leader != 1 else 2
    if watch != 1:  # log in on the follower itself
        b.base = c.base(watch)
        b.go("/ui/login")
        b.clear_cookies()
        b.login(ADMIN_KEY)
    b.go("/ui/")
    b.wait_text("#leader", lambda t: leader_named(t) == leader, f"node {watch}'s overview to name node {leader}")
    b.js("window.__raftcronNotReloaded = true;")

    started = time.monotonic()
    c.kill(leader)
    successor = b.wait(
        f"node {watch}'s #leader to name a node other than the killed node {leader}",
        lambda d: (n := leader_named(d.find_element(By.ID, "leader").text)) not in (None, leader) and n,
        timeout=FAILOVER_WAIT,
    )
    took = time.monotonic() - started
    assert b.js("return window.__raftcronNotReloaded === true;"), "the overview was reloaded rather than refreshed"
    assert successor in set(c.nodes) - {leader}, f"#leader names node {successor}, not a member"
    print(f"    leader {leader} killed; node {watch}'s overview named node {successor} after {took:.1f}s")
    b.screenshot(s.out / "screenshots" / "trio-overview-after-failover.png")


# --------------------------------------------------------------------------------------
# Runner

GROUPS = [
    (
        "one node + worker",
        "start_single",
        "stop_single",
        [
            test_login_and_redirects,
            test_overview_shows_cluster_state,
            test_create_task_through_form,
            test_task_list_filter,
            test_trigger_run_succeeds,
            test_pause_and_resume,
            test_edit_conflict,
            test_scheduled_task_lists_next_fires,
            test_delete_task,
            test_runs_workers_cluster_pages,
            test_viewer_sees_no_write_controls,
            test_xss_is_escaped,
            test_accessibility,
            test_screenshots,
        ],
    ),
    (
        "three nodes",
        "start_trio",
        "stop_trio",
        [
            test_session_cookie_works_on_every_node,
            test_overview_follows_a_leader_change,
        ],
    ),
]


def first_line(e: BaseException) -> str:
    text = (e.msg if isinstance(e, WebDriverException) and e.msg else str(e)).strip() or type(e).__name__
    return text if isinstance(e, AssertionError) else f"{type(e).__name__}: {text}"


def run_test(s: Suite, test: Callable[[Suite], None]) -> bool:
    started = time.monotonic()
    try:
        test(s)
    except Exception as e:  # noqa: BLE001 - a test's failure, reported; SystemExit passes
        took = time.monotonic() - started
        print(f"FAIL {test.__name__} ({took:.1f}s)")
        print("    " + first_line(e).replace("\n", "\n    "))
        if not isinstance(e, AssertionError):
            here = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == __file__]
            print("    " + "".join(traceback.format_list(here)).rstrip().replace("\n", "\n    "))
        s.diagnose(test.__name__)
        sys.stdout.flush()
        return False
    print(f"PASS {test.__name__} ({time.monotonic() - started:.1f}s)")
    sys.stdout.flush()
    return True


def prepare_out(out: Path) -> None:
    """Clears what an earlier run left in OUT (its nodes' data too)."""
    for sub in ("nodes", "logs", "screenshots", "axe", "failures"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "screenshots").mkdir(parents=True, exist_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary", type=Path, help="the raftcron binary (target/debug/raftcron)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "raftcron-browser")
    parser.add_argument("-k", dest="only", action="append", default=[], help="run only tests whose name contains this")
    args = parser.parse_args()
    binary, out = args.binary.resolve(), args.out.resolve()
    if not binary.is_file():
        print(f"no raftcron binary at {binary}", file=sys.stderr)
        return 2
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not Path(tool).is_file():
            print(f"missing {tool} (Debian's chromium and chromium-driver)", file=sys.stderr)
            return 2
    prepare_out(out)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    s = Suite(binary, out)
    atexit.register(s.close)
    passed = failed = 0
    started = time.monotonic()
    try:
        for title, setup, teardown, tests in GROUPS:
            chosen = [t for t in tests if not args.only or any(k in t.__name__ for k in args.only)]
            if not chosen:
                continue
            print(f"== {title}")
            try:
                getattr(s, setup)()
            except Exception as e:  # noqa: BLE001 - reported as each test's failure
                for t in chosen:
                    print(f"FAIL {t.__name__} (setup failed)")
                print("    " + first_line(e).replace("\n", "\n    "))
                failed += len(chosen)
                getattr(s, teardown)()
                continue
            try:
                for t in chosen:
                    if run_test(s, t):
                        passed += 1
                    else:
                        failed += 1
            finally:
                getattr(s, teardown)()
    finally:
        s.close()
    print(f"browser tests took {time.monotonic() - started:.0f}s; screenshots, axe results and logs in {out}")
    print(f"summary: {passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
