"""Headless Chromium for tests, driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
commands on fd 3, replies and events on fd 4, NUL-separated JSON). No browser download and no
client library: the system's Chromium (Debian's `chromium` package in CI) is all it needs.

`Browser` starts one Chromium; `Browser.open(url)` gives a `Page` to evaluate JavaScript in, wait for
conditions, type, press keys, hand files to `<input type=file>` and take screenshots; `Page.errors()`
lists what the browser's console showed (uncaught exceptions, console.error and warnings, resources
that failed to load). `load_page` opens one page and reads one expression after its load event.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
BASH = shutil.which("bash")  # its redirections take fds above 9 (dash's do not)
# CI installs Chromium and sets this, so that tests needing it can never be skipped there
REQUIRE = "RSAGENT_REQUIRE_CHROMIUM"
AVAILABLE = CHROMIUM is not None and BASH is not None


def skip_reason() -> str | None:
    """Why browser tests must be skipped here, or None (also None where CI requires them: they then fail)."""
    if AVAILABLE or os.environ.get(REQUIRE):
        return None
    return "headless Chromium is not installed"


class Browser:
    def __init__(self, user_dir: Path | None = None, timeout: float = 60.0, window: tuple[int, int] = (1280, 900)) -> None:
        if not AVAILABLE:
            raise RuntimeError("no Chromium (chromium, chromium-browser or google-chrome) and bash on PATH")
        self.timeout = timeout
        pipes = os.pipe() + os.pipe()
        # above any fd the shell redirections below write to, so that they cannot clobber each other
        cmd_r, self._cmd_w, self._evt_r, evt_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in pipes)
        for fd in pipes:
            os.close(fd)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", f"--window-size={window[0]},{window[1]}",
                "--hide-scrollbars", "--remote-debugging-pipe", "about:blank"]
        if user_dir is not None:
            args.insert(0, f"--user-data-dir={user_dir}")
        # Chromium reads DevTools commands on fd 3 and writes replies and events on fd 4
        self._proc = subprocess.Popen([BASH, "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{evt_w}', CHROMIUM, *args],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      pass_fds=(cmd_r, evt_w))
        os.close(cmd_r)
        os.close(evt_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    # --- the protocol ------------------------------------------------------------------------------
    def receive(self, until: float) -> dict | None:
        """The next message, or None when nothing came before `until` (a monotonic time)."""
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._evt_r], [], [], max(0.0, until - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(self._evt_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def pump(self, seconds: float) -> None:
        """Collect events for `seconds`."""
        until = time.monotonic() + seconds
        while (message := self.receive(until)) is not None:
            self.events.append(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self.receive(deadline)
            if reply is None:
                raise TimeoutError(f"no answer to {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def download_to(self, folder: Path) -> None:
        """Save what pages download into `folder` (under the file's own name)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder.resolve())})

    def open(self, url: str, width: int = 1280, height: int = 900) -> Page:
        """A new tab at `url`, returned once its load event has fired (and half a second after it)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable", "DOM.enable"):
            self.call(domain, session=session)
        page = Page(self, session, target)
        page.resize(width, height)
        self.call("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + self.timeout
        settle = None
        while True:  # until the load event, then half a second for late errors
            message = self.receive(settle or deadline)
            if message is None:
                if settle is None:
                    raise TimeoutError(f"{url} did not finish loading")
                break
            self.events.append(message)
            if message.get("method") == "Page.loadEventFired" and message.get("sessionId") == session:
                settle = time.monotonic() + 0.5
        return page

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for fd in (self._cmd_w, self._evt_r):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser, self.session, self.target = browser, session, target

    def close(self) -> None:
        """Close the tab (and the connections it holds: a browser opens only six per server at once)."""
        self.browser.call("Target.closeTarget", {"targetId": self.target})

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.browser.call(method, params, session=self.session)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (promises awaited), returned by value."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"{expression!r} raised: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str | None = None):
        """Poll `expression` until it is truthy; returns its value (TimeoutError with the last value)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            self.browser.pump(0.1)
        raise TimeoutError(f"waited {timeout:.0f} s for {what or expression}; last value {value!r}")

    def text(self, selector: str) -> str:
        """The text content of the first element matching `selector` ('' when there is none)."""
        return self.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")

    def click(self, selector: str) -> None:
        self.wait_for(f"!!document.querySelector({json.dumps(selector)})", 10, f"{selector} to exist")
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def type(self, selector: str, text: str, clear: bool = True) -> None:
        """Focus the input and insert `text` as typed input (the page sees input events)."""
        js = json.dumps(selector)
        self.wait_for(f"!!document.querySelector({js})", 10, f"{selector} to exist")
        self.evaluate(f"(() => {{ const e = document.querySelector({js}); e.focus(); "
                      f"{'e.select && e.select();' if clear else ''} }})()")
        if clear:
            self.press("Backspace")
        self.call("Input.insertText", {"text": text})

    def press(self, key: str) -> None:
        codes = {"Enter": 13, "Backspace": 8, "Escape": 27, "Tab": 9}
        params = {"key": key, "code": key, "windowsVirtualKeyCode": codes.get(key, 0)}
        if key == "Enter":
            params["text"] = "\r"
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", **params})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", **params})

    def set_files(self, selector: str, paths: list[str | Path]) -> None:
        """Hand files to an `<input type=file>` as if the user had picked them (its change event fires)."""
        self.wait_for(f"!!document.querySelector({json.dumps(selector)})", 10, f"{selector} to exist")
        root = self.call("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.call("DOM.setFileInputFiles", {"files": [str(Path(p).resolve()) for p in paths], "nodeId": node})

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def screenshot(self, path: str | Path, full_page: bool = True) -> Path:
        """A PNG of the page (all of it with `full_page`)."""
        params = {"format": "png"}
        if full_page:
            height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
            width = int(self.evaluate("window.innerWidth"))
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        """What this page's console showed: exceptions, console errors and warnings, failed loads."""
        errors = []
        for message in self.browser.events:
            if message.get("sessionId") != self.session:
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                errors.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                                    for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}".strip())
        return errors


def load_page(url: str, expression: str | None = None, user_dir: Path | None = None,
              timeout: float = 60.0) -> tuple[list[str], object]:
    """Open `url`; return (console errors, value of `expression` evaluated after the load event)."""
    with Browser(user_dir, timeout) as browser:
        page = browser.open(url)
        value = page.evaluate(expression) if expression is not None else None
        return page.errors(), value
