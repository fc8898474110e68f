"""A minimal W3C WebDriver client (standard library only) that drives Debian's headless Chromium through
chromedriver: open a page, find elements, press keys, run a script, read the console, take a screenshot.

Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`; `.ci/run` installs them
when absent). `browser_or_skip()` gives a Browser, or skips the test naming the install command; under CI
(CI=true) a missing browser fails the test instead, so CI never passes without running it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
KEYS = {"home": "\ue011", "end": "\ue010", "right": "\ue014", "left": "\ue012"}
# the flags a closed-network, root, GPU-less machine needs (no sandbox as root; no background connections)
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1300,900"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Browser:
    """One Chromium session through chromedriver."""

    def __init__(self, chromium: str, driver: str) -> None:
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="circuitdyn-chromium-")
        self.process = subprocess.Popen([driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self._call("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    self.process.kill()
                    raise RuntimeError("chromedriver did not start within 30 s") from None
                time.sleep(0.1)
        options = {"binary": chromium, "args": [*FLAGS, f"--user-data-dir={self.profile}"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options,
                                                 "goog:loggingPrefs": {"browser": "ALL"}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"WebDriver {method} {path}: {err.read().decode(errors='replace')[:500]}") from None

    def _session(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, path: Path) -> None:
        self._session("POST", "/url", {"url": path.resolve().as_uri()})

    def find_all(self, css: str) -> list[str]:
        return [e[ELEMENT] for e in self._session("POST", "/elements", {"using": "css selector", "value": css})]

    def find(self, css: str) -> str:
        found = self.find_all(css)
        if not found:
            raise AssertionError(f"no element matches {css!r}")
        return found[0]

    def press(self, element: str, key: str) -> None:
        self._session("POST", f"/element/{element}/value", {"text": KEYS[key]})

    def click(self, element: str) -> None:
        self._session("POST", f"/element/{element}/click", {})

    def script(self, source: str, *args: Any) -> Any:
        return self._session("POST", "/execute/sync", {"script": source, "args": list(args)})

    def console(self) -> list[dict[str, Any]]:
        """The browser's console entries since the last call (chromedriver's log endpoint)."""
        return list(self._session("POST", "/se/log", {"type": "browser"}))

    def screenshot(self) -> bytes:
        return base64.b64decode(self._session("GET", "/screenshot"))

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


def find_chromium() -> tuple[str, str] | None:
    chromium = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@contextmanager
def browser_or_skip() -> Iterator[Browser]:
    found = find_chromium()
    if found is None:
        message = ("headless Chromium and chromedriver are not installed: apt-get install chromium chromium-driver "
                   "(.ci/run installs them)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    browser = Browser(*found)
    try:
        yield browser
    finally:
        browser.close()
