"""A tiny headless-Chromium driver for report tests: Chrome DevTools Protocol over a pipe (stdlib only).

Chromium started with ``--remote-debugging-pipe`` reads NUL-terminated JSON commands on fd 3 and
writes responses/events on fd 4. ``Browser.load(url)`` opens a page, waits for its load event and
returns what the tests check: console errors, uncaught exceptions, log errors (CSP violations
among them) and every image's decode state. ``CHROMIUM`` is None when no browser is installed.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-pipe", "--window-size=1280,1000",
)


@dataclass
class PageReport:
    """What happened while a page loaded."""

    url: str
    loaded: bool
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  # {src_prefix, complete, naturalWidth}
    dialogs: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.console_errors + self.exceptions + self.log_errors + self.dialogs


class Browser:
    """``with Browser() as b: report = b.load("file:///...")``; one Chromium for several pages."""

    def __init__(self, timeout: float = 30.0):
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed")
        self.timeout = timeout
        self._id = 0
        self._buffer = b""
        self._events: list[dict] = []

    def __enter__(self) -> "Browser":
        self._profile = tempfile.mkdtemp(prefix="tilpheno-chromium-")
        cmd_r, cmd_w = os.pipe()    # we write commands, chromium reads fd 3
        resp_r, resp_w = os.pipe()  # chromium writes fd 4, we read

        def _wire_fds():
            os.dup2(cmd_r, 3)
            os.dup2(resp_w, 4)

        self._proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=_wire_fds,
        )
        os.close(cmd_r)
        os.close(resp_w)
        self._out, self._in = cmd_w, resp_r
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._send("Browser.close", wait=False)
        except OSError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._out, self._in):
            os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    # --- protocol ---
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from chromium")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if message.get("method") == "Page.javascriptDialogOpening":  # alert() etc. would block the page
            self._send("Page.handleJavaScriptDialog", {"accept": True}, session=message.get("sessionId"), wait=False)
        return message

    def _send(self, method: str, params: dict | None = None, session: str | None = None, wait: bool = True):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        if not wait:
            return None
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self._events.append(m)

    def _wait_event(self, method: str, session: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            for m in self._events:
                if m.get("method") == method and m.get("sessionId") == session:
                    return True
            try:
                self._events.append(self._read_message(deadline))
            except TimeoutError:
                return False

    # --- pages ---
    def open(self, url: str) -> str:
        """A new tab at about:blank with Runtime/Log/Page enabled, navigated to ``url``; returns its session."""
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            self._send(domain, session=session)
        self._events.clear()
        self._send("Page.navigate", {"url": url}, session=session)
        self._loaded = self._wait_event("Page.loadEventFired", session, self.timeout)
        return session

    def evaluate(self, session: str, expression: str):
        """Evaluate a JavaScript expression in the page; returns its JSON value."""
        res = self._send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                         session=session)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def settle(self, session: str, seconds: float = 0.3) -> None:
        """Drain events for a moment (late console messages, image decodes)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._events.append(self._read_message(deadline))
            except TimeoutError:
                return

    def collect(self, session: str, url: str) -> PageReport:
        """Everything the page reported so far, plus the state of every <img>."""
        self.evaluate(session, "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")
        self.settle(session)
        report = PageReport(url=url, loaded=self._loaded)
        for m in self._events:
            if m.get("sessionId") != session:
                continue
            p = m.get("params", {})
            if m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                report.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m.get("method") == "Runtime.exceptionThrown":
                report.exceptions.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif m.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                report.log_errors.append(p["entry"].get("text", ""))
            elif m.get("method") == "Page.javascriptDialogOpening":
                report.dialogs.append(p.get("message", ""))
        report.images = self.evaluate(
            session,
            "Array.from(document.images).map(i => ({src: i.src.slice(0, 30), complete: i.complete, naturalWidth: i.naturalWidth}))",
        )
        return report

    def load(self, url: str) -> tuple[str, PageReport]:
        """Open ``url`` and return (session, report)."""
        session = self.open(url)
        return session, self.collect(session, url)

    def screenshot(self, session: str, path: str, full_page: bool = True) -> None:
        """Save a PNG of the page (full length when ``full_page``)."""
        params = {"format": "png"}
        if full_page:
            size = self.evaluate(session, "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})
        data = self._send("Page.captureScreenshot", params, session=session)["data"]
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))

    def pdf(self, session: str) -> bytes:
        """The page printed as the browser's print dialog would (the page's own @page size and
        margin boxes, backgrounds, no browser header/footer): PDF bytes."""
        params = {"preferCSSPageSize": True, "printBackground": True, "displayHeaderFooter": False}
        return base64.b64decode(self._send("Page.printToPDF", params, session=session)["data"])
