"""A headless Chromium driven over the DevTools protocol, for the book's browser tests.

One browser serves a whole test module; each :meth:`Browser.open` loads a page in the same tab and records what
the page did: every request it sent, every console error and uncaught exception. :meth:`Browser.click` sends a
real mouse click (press and release) at a point, as a reader's mouse would.

    with Browser() as b:
        page = b.open("http://127.0.0.1:8000/index.html")
        b.evaluate("document.title")
        page.requests, page.errors
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from tornado.websocket import websocket_connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageLog:
    """What one page load did."""

    url: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class BrowserError(RuntimeError):
    """The browser did not answer, or answered a command with an error."""


class Browser:
    """Headless Chromium with one tab, controlled over the DevTools protocol."""

    def __init__(self, *, width: int = 1280, height: int = 1000, timeout: float = 60.0):
        if CHROMIUM is None:
            raise BrowserError("headless Chromium is needed: apt-get install chromium")
        self.timeout = timeout
        self._next_id = 0
        self._ws = None
        self._proc: subprocess.Popen | None = None
        self.log: PageLog | None = None
        # Chromium logs to stderr all along: a thread drains it (a full pipe would stall the browser) and hands
        # the lines over, so that waiting for the DevTools address can time out while the browser stays silent.
        self._stderr: queue.Queue[str | None] = queue.Queue()
        self._stderr_tail: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._profile = tempfile.TemporaryDirectory(prefix="qpm-chromium-")
        try:
            self._proc = subprocess.Popen(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--remote-debugging-port=0",
                 f"--window-size={width},{height}", "--user-data-dir=" + self._profile.name, "about:blank"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            threading.Thread(target=self._drain, args=(self._proc.stderr,), daemon=True).start()
            url = self._devtools_url()
            try:
                self._ws = self._run(self._connect(url))
            except (OSError, asyncio.TimeoutError) as exc:
                raise BrowserError(f"cannot connect to Chromium's DevTools at {url}: {exc!r}") from exc
            target = self._send("Target.createTarget", url="about:blank")["targetId"]
            self._session = self._send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Network", "Log"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ plumbing
    def _drain(self, pipe) -> None:
        for line in pipe:
            self._stderr.put(line)
        self._stderr.put(None)  # the browser closed its stderr: it has exited

    def _devtools_url(self) -> str:
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._stderr.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise BrowserError(f"Chromium exited during startup (status {self._proc.wait()}): "
                                   + "".join(self._stderr_tail[-20:]).strip())
            self._stderr_tail.append(line)
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                return found.group(1)
        raise BrowserError(f"Chromium did not open its DevTools endpoint within {self.timeout:g} s")

    @staticmethod
    async def _connect(url: str):
        return await websocket_connect(url, max_message_size=1 << 28)

    async def _receive(self):
        return await self._ws.read_message()

    def _run(self, coroutine, timeout: float | None = None):
        return self._loop.run_until_complete(asyncio.wait_for(coroutine, timeout or self.timeout))

    def _send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._ws.write_message(json.dumps(message))
        while True:
            reply = self._read()
            if reply is None:
                raise BrowserError(f"no answer to {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def _read(self, timeout: float | None = None) -> dict | None:
        try:
            text = self._run(self._receive(), timeout)
        except asyncio.TimeoutError:
            return None
        return None if text is None else json.loads(text)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if self.log is None or method is None:
            return
        if method == "Network.requestWillBeSent":
            self.log.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.log.errors.append("exception: " + details.get("exception", {}).get("description", details["text"]))
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.log.errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                          for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.log.errors.append(f"log: {entry['text']} {entry.get('url', '')}".strip())

    def send(self, method: str, **params) -> dict:
        """Send a DevTools command to the tab and return its result."""
        return self._send(method, self._session, **params)

    def pump(self, seconds: float) -> None:
        """Let the page run for ``seconds``, recording its events."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self._read(timeout=left)
            if message is not None:
                self._event(message)

    # ----------------------------------------------------------------------------------------------- API
    def open(self, url: str, *, ready: str = "document.readyState === 'complete'", settle: float = 0.3) -> PageLog:
        """Load ``url`` and wait until the JavaScript expression ``ready`` holds; returns the page's log."""
        self.log = PageLog(url)
        # the old document answers until a new one replaces it: mark it, and wait for a document without the mark
        # (the new page, or the page it redirects to)
        self.evaluate("window.__qpmOldPage = true")
        self.send("Page.navigate", url=url)
        self.wait_for("!window.__qpmOldPage && document.readyState === 'complete'")
        self.wait_for(ready)
        self.pump(settle)
        return self.log

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]!r} raised: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> None:
        """Poll ``expression`` until it is true."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            try:
                if self.evaluate(expression):
                    return
            except BrowserError:
                pass
            self.pump(0.1)
        raise BrowserError(f"timed out waiting for {expression!r} on {self.log.url if self.log else '?'}")

    def click(self, x: float, y: float) -> None:
        """A left mouse click at page coordinates (x, y) of the viewport."""
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        self.pump(0.2)

    def screenshot(self, path, *, full_page: bool = True) -> None:
        """Save a PNG of the page (the whole page when ``full_page``)."""
        params = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": min(size[1], 16000), "scale": 1}
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))

    def close(self) -> None:
        """End the browser and remove its profile folder (also after a failed start)."""
        try:
            if self._ws is not None:
                self._ws.close()
                self._ws = None
        finally:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if not self._loop.is_closed():
                self._loop.close()
            self._remove_profile()

    def _remove_profile(self) -> None:
        # Chromium's helper processes can still write into the profile for a moment after the browser has exited
        for _ in range(20):
            try:
                self._profile.cleanup()
                return
            except OSError:
                time.sleep(0.25)
        shutil.rmtree(self._profile.name, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- the book's static twins of widgets
#: True once every switch figure on the page (qpmlib.figures.switch) has been drawn by plotly.js.
SWITCHES_DRAWN = ("(() => { const f = document.querySelectorAll('.qpm-switch-figure'); "
                  "return f.length > 0 && Array.from(f).every(g => g._fullLayout); })()")
_FIGURE = "document.querySelectorAll('.qpm-switch-figure')[{k}]"
#: What figure k shows: which traces are visible, its caption, and its table's cells.
SHOWN = ("(g => JSON.stringify([g.data.map(t => t.visible !== false), g.layout.title && g.layout.title.text, "
         "g.data.filter(t => t.type === 'table').map(t => t.cells.values)]))(" + _FIGURE + ")")
_CENTRE = "(e => { const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })"


#: How many states switch figure k holds (entries of its drop-down or steps of its slider).
STATES = ("(g => ((g.layout.updatemenus || []).length ? g.layout.updatemenus[0].buttons : g.layout.sliders[0].steps)"
          ".length)(" + _FIGURE + ")")


def settled(b: Browser, expression: str, *, tries: int = 50):
    """The value of ``expression`` once it stops changing (plotly slides a drop-down open before it can be used)."""
    last = b.evaluate(expression)
    for _ in range(tries):
        b.pump(0.1)
        now = b.evaluate(expression)
        if now == last:
            return now
        last = now
    raise BrowserError(f"{expression[:80]!r} kept changing")


def move_switch(b: Browser, k: int, *, timeout: float = 10.0) -> tuple[str, str]:
    """Operate the control of switch figure ``k`` with the mouse: pick the second entry of its drop-down, or the
    last step of its slider.

    Returns:
        what the figure showed before and after (:data:`SHOWN`); they differ when the control works.
    """
    figure = _FIGURE.format(k=k)
    b.evaluate(f"{figure}.scrollIntoView({{block: 'start'}})")
    before = settled(b, SHOWN.format(k=k))
    if b.evaluate(f"!!{figure}.querySelector('.updatemenu-header-group')"):
        b.click(*settled(b, f"{_CENTRE}({figure}.querySelector('.updatemenu-header-group'))"))
        buttons = settled(b, f"Array.from({figure}.querySelectorAll('.updatemenu-dropdown-button')).map({_CENTRE})")
        if len(buttons) < 2:
            raise BrowserError(f"switch figure {k}: the drop-down did not open ({len(buttons)} entries)")
        b.click(*buttons[1])
    else:
        labels = settled(b, f"Array.from({figure}.querySelectorAll('.slider-label-group')).map({_CENTRE})")
        if len(labels) < 2:
            raise BrowserError(f"switch figure {k}: a slider with {len(labels)} steps")
        b.click(*labels[-1])
    try:
        b.wait_for(f"{SHOWN.format(k=k)} !== {json.dumps(before)}", timeout=timeout)
    except BrowserError:
        pass  # the caller compares
    return before, b.evaluate(SHOWN.format(k=k))
