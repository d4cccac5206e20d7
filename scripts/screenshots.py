"""`make screenshots`: the Dagster UI photographed for the docs (docs/img/*.png).

Serves the UI of the project-local instance (DAGSTER_HOME=.dagster_home, where `make demo`
recorded its runs) on a free port, or uses a UI that is already running (`--url`), finds the
latest successful `replay_clickstream` run through GraphQL, and drives a headless Chromium over
the Chrome DevTools Protocol (stdlib only: a small websocket client is included below) to take:

  docs/img/asset-graph.png   the global asset lineage: clickstream_csv -> events/rejects -> click_data
  docs/img/replay-run.png    that finished replay run's page: status and progress log lines
  docs/img/replay-asset.png  click_data's events for that day: the run's materialization metadata

The UI is `dagster dev` without its daemon (the webserver alone, so that taking pictures launches
no sensor runs); `--dagster-dev` starts the whole `dagster dev`. Each page is photographed once
the single-page app shows what it is taken for (polled in the page; every wait is bounded by
--timeout). Everything started here (the webserver with its code server, Chromium) is stopped on
the way out, by process group, whatever happened.

Needs Chromium (`apt-get install -y chromium`, or CHROMIUM=/path/to/chrome) and a successful
replay run in the instance (`make demo`). Nothing is installed or downloaded by this script.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "docs" / "img"
JOB = "replay_clickstream"
ASSET = "click_data"
# The graph's asset groups (clickstream_dagster/assets), shown expanded so that every asset shows.
GROUPS = ("prepare", "replay")
ASSETS = ("clickstream_csv", "clickstream_events", "clickstream_rejects", ASSET)
SHOT_NAMES = ("asset-graph", "replay-run", "replay-asset")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # runs as root in containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    # no calls home (update checks, field trials, component downloads, sync)
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
)
# Run in every page before the app: the "Join the Dagster community" dialog counts as dismissed
# (in this throwaway browser profile only; nothing is recorded in the instance).
INIT_SCRIPT = "try { localStorage.setItem('communityNux', JSON.stringify('1')); } catch (e) {}"


class ScreenshotError(RuntimeError):
    """A step failed; the message says which, and what to do about it."""


# --------------------------------------------------------------------------- websocket + CDP


class WebSocket:
    """The client side of RFC 6455, just enough for the DevTools protocol (text frames, no TLS)."""

    def __init__(self, url: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws":
            raise ScreenshotError(f"unsupported websocket URL {url}")
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ScreenshotError(f"websocket handshake with {url}: connection closed")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if status.split()[1:2] != ["101"]:
            raise ScreenshotError(f"websocket handshake with {url} refused: {status}")

    def send_text(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        header = bytes([0x80 | opcode])  # FIN + opcode; client frames are masked (0x80)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + _xor(payload, mask))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                raise ScreenshotError("the browser closed the DevTools connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv_text(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = _xor(payload, mask)
            if opcode == 0x8:
                raise ScreenshotError("the browser closed the DevTools connection")
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
            elif opcode in (0x0, 0x1, 0x2):
                message += payload
                if fin:
                    return message.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._send_frame(0x8, b"")
        with contextlib.suppress(OSError):
            self.sock.close()


def _xor(data: bytes, mask: bytes) -> bytes:
    if not data:
        return data
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


class DevTools:
    """Commands to one page target over its DevTools websocket; events are read and dropped."""

    def __init__(self, ws_url: str, timeout: float):
        self.ws = WebSocket(ws_url, timeout)
        self.timeout = timeout
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        call_id = self.next_id
        self.ws.send_text(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv_text())
            if message.get("id") == call_id:
                if "error" in message:
                    raise ScreenshotError(f"DevTools {method}: {message['error'].get('message')}")
                return message.get("result", {})
        raise ScreenshotError(f"DevTools {method}: no answer in {self.timeout:.0f} s")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            detail = result["exceptionDetails"]
            raise ScreenshotError(f"in the page: {detail.get('exception', {}).get('description') or detail}")
        return result.get("result", {}).get("value")

    def close(self) -> None:
        self.ws.close()


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_new_session() -> dict:
    """Popen arguments: a session (so a process group) of its own, with SIGINT and SIGTERM at their
    defaults even if this script was started with them ignored (a background job of a
    non-interactive shell ignores SIGINT, and dagster's CLIs then ignore SIGTERM as well)."""

    def reset_signals() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return {"start_new_session": True, "preexec_fn": reset_signals}


def stop_group(proc: subprocess.Popen, name: str, grace_s: float = 20.0) -> None:
    """Stop a process started in its own session, then whatever is left of its process group."""
    if proc.poll() is None:
        # The leader first: dagster's CLIs and Chromium shut their own children down on SIGTERM.
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            print(f"  {name} did not stop in {grace_s:.0f} s: killing its process group", file=sys.stderr)
    # Then the rest of the group (a code server winding down, a renderer): time to go, then told to.
    for sig, wait_s in ((None, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(proc.pid):
            break
        if sig is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait_s
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log_tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@contextlib.contextmanager
def dagster_ui(dagster_home: Path, with_daemon: bool, timeout: float, log_path: Path):
    """The Dagster UI on a free port, yielding its URL once the code location has loaded.

    By default the webserver alone (`dagster-webserver`: `dagster dev` minus the daemon), so that
    taking pictures launches nothing: a daemon would evaluate the sensors that are on
    (clickstream_log_changed launches a prepare run whenever the CSV changed). `with_daemon`
    starts the whole `dagster dev` instead.
    """
    port = free_port()
    bin_dir = Path(sys.executable).parent
    if with_daemon:
        name, cmd = "dagster dev", [str(bin_dir / "dagster"), "dev"]
    else:
        name, cmd = "dagster-webserver", [str(bin_dir / "dagster-webserver")]
    if not Path(cmd[0]).exists():
        cmd[0] = Path(cmd[0]).name  # from PATH
    cmd += ["-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    print(f"Starting {name} on 127.0.0.1:{port} (DAGSTER_HOME={dagster_home}) ...")
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                **_in_new_session(),
            )
    except FileNotFoundError as exc:
        raise ScreenshotError(f"{cmd[0]} not found: `make setup` installs it in .venv") from exc
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_loaded(url, timeout, lambda: proc.poll() is None or f"{name} exited with code "
                          f"{proc.returncode}:\n{_log_tail(log_path)}")
        yield url
    finally:
        print(f"Stopping {name} ...")
        stop_group(proc, name)


def wait_until_loaded(url: str, timeout: float, alive=lambda: True) -> None:
    """Until the UI at `url` answers GraphQL with every code location loaded."""
    query = (
        "{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus"
        " locationOrLoadError { __typename ... on PythonError { message } } } } } }"
    )
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if (state := alive()) is not True:
            raise ScreenshotError(state)
        try:
            entries = graphql(url, query, timeout=5)["workspaceOrError"].get("locationEntries") or []
        except (OSError, ScreenshotError) as exc:
            last = str(exc)
        else:
            for entry in entries:
                error = entry.get("locationOrLoadError") or {}
                if error.get("__typename") == "PythonError":
                    raise ScreenshotError(f"code location {entry['name']} failed to load: {error['message']}")
            states = {e["name"]: e["loadStatus"] for e in entries}
            if states and all(s == "LOADED" for s in states.values()):
                return
            last = f"code locations: {states or 'none yet'}"
        time.sleep(0.5)
    raise ScreenshotError(f"the Dagster UI at {url} was not ready in {timeout:.0f} s ({last})")


def find_chromium(explicit: str | None) -> str:
    asked = explicit or os.environ.get("CHROMIUM")
    if asked:
        if path := shutil.which(asked):
            return path
        raise ScreenshotError(f"no Chromium at {asked!r} (from --chromium or CHROMIUM)")
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    raise ScreenshotError(
        "Chromium was not found. Install it (Debian/Ubuntu, as root):\n"
        "    apt-get update && apt-get install -y chromium\n"
        "or point CHROMIUM=/path/to/chrome (or --chromium) at a Chrome or Chromium binary."
    )


@contextlib.contextmanager
def chromium(binary: str, timeout: float, log_path: Path):
    """A headless Chromium with a new, empty profile, yielding its DevTools HTTP endpoint."""
    profile = Path(tempfile.mkdtemp(prefix="screenshots-chromium-"))
    cmd = [
        binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,800",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **_in_new_session()
        )
    try:
        # Chromium writes the port it chose (and the browser target's path) into the profile.
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise ScreenshotError(f"{binary} exited ({proc.returncode}):\n{_log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise ScreenshotError(f"{binary}: no DevTools port in {timeout:.0f} s\n{_log_tail(log_path)}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{int(port_file.read_text().split()[0])}"
    finally:
        stop_group(proc, "chromium", grace_s=5)
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------- Dagster


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        raise ScreenshotError(f"GraphQL at {url}: HTTP {exc.code} {exc.read()[:500]!r}") from exc
    if answer.get("errors"):
        raise ScreenshotError(f"GraphQL at {url}: {answer['errors'][0].get('message')}")
    return answer["data"]


@dataclass
class ReplayRun:
    run_id: str
    day: str | None  # its partition
    materialized_at: str | None  # the timestamp (epoch ms) of its click_data materialization


RUNS_QUERY = """
query ($filter: RunsFilter, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { message }
  }
}"""

MATERIALIZATIONS_QUERY = """
query ($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset { assetMaterializations(limit: 200) { runId timestamp partition } }
  }
}"""


def find_replay(url: str, run_id: str | None) -> ReplayRun:
    """The newest successful replay run that materialized click_data (a dry run records none),
    else the newest successful one; or the run asked for."""
    run_filter = {"runIds": [run_id]} if run_id else {"pipelineName": JOB, "statuses": ["SUCCESS"]}
    runs = graphql(url, RUNS_QUERY, {"filter": run_filter, "limit": 50})["runsOrError"]
    if runs["__typename"] != "Runs":
        raise ScreenshotError(f"listing runs: {runs.get('message', runs['__typename'])}")
    if not runs["results"]:
        what = f"run {run_id}" if run_id else f"successful {JOB} run"
        raise ScreenshotError(f"no {what} in this instance (`make demo` records one)")
    asset = graphql(url, MATERIALIZATIONS_QUERY, {"key": {"path": [ASSET]}})["assetOrError"]
    materialized = {}  # run id -> its newest materialization's timestamp (newest first)
    for event in asset.get("assetMaterializations") or []:
        materialized.setdefault(event["runId"], event["timestamp"])
    run = next((r for r in runs["results"] if r["runId"] in materialized), runs["results"][0])
    if run["status"] != "SUCCESS":
        print(f"  note: run {run['runId']} is {run['status']}", file=sys.stderr)
    tags = {t["key"]: t["value"] for t in run["tags"]}
    return ReplayRun(run["runId"], tags.get("dagster/partition"), materialized.get(run["runId"]))


# --------------------------------------------------------------------------- pages

# In-page helpers: the page's visible text, where it is, and whether something is still loading.
JS_HELPERS = """
const __text = () => document.body ? document.body.innerText : '';
const __has = (...words) => words.every((w) => __text().includes(w));
const __at = (path) => window.location.pathname === path;
const __loading = () => [...document.querySelectorAll(
    '[class*="Spinner"], [class*="spinner"], [aria-busy="true"], [class*="skeleton"], [class*="Skeleton"]')]
  .some((el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; });
"""


def in_page(expression: str) -> str:
    """The expression, evaluated with the helpers above in scope (a fresh scope each time)."""
    return "(() => {" + JS_HELPERS + "return (" + expression + ");})()"


def js(value) -> str:
    return json.dumps(value)


@dataclass
class Shot:
    name: str
    path: str  # URL path in the UI
    query: str  # its query string
    ready: str  # JS expression: true once the page shows what the shot is taken for
    what: str  # what `ready` waits for, said if it never comes
    height: int  # viewport height in CSS pixels (the width is --width)
    loaded: str = ""  # JS expression: true once `prepare` can run
    prepare: str = ""  # JS run once `loaded` (e.g. to close a side panel); then `ready` is awaited


def shots(run: ReplayRun) -> list[Shot]:
    # The global lineage with its groups expanded (the explorer reads them from ?expanded=).
    graph_path = "/asset-groups"
    graph = Shot(
        "asset-graph",
        graph_path,
        urllib.parse.urlencode({"expanded": ",".join(f"global@global:{g}" for g in GROUPS)}, safe=",:@"),
        # every asset drawn as a full node of the graph (SVG foreignObjects), with its whole name
        f"__at({js(graph_path)}) && !__loading() && (() => {{ const drawn = "
        "[...document.querySelectorAll('svg foreignObject')].map((n) => n.textContent).join(' ');"
        f" return {js(ASSETS)}.every((a) => drawn.includes(a)); }})()",
        "the nodes " + ", ".join(ASSETS),
        height=760,
        # drawn, if maybe zoomed out to bare boxes with shortened names beside the asset tree
        loaded=f"__at({js(graph_path)}) && !__loading()"
        f" && document.querySelectorAll('svg foreignObject').length >= {len(ASSETS)}",
        # Hide the asset tree (the icon-only "panel" toggle in the toolbar), then fit the graph to the
        # wider viewport: a double click on the background re-centers it.
        prepare="(() => { const toggle = [...document.querySelectorAll('button')]"
        ".find((b) => !b.innerText.trim() && b.innerHTML.includes('panel_show_right'));"
        " if (toggle) toggle.click();"
        " return new Promise((resolve) => setTimeout(() => {"
        " const svg = [...document.querySelectorAll('svg')].find((s) => s.querySelector('foreignObject'));"
        " if (svg) svg.dispatchEvent(new MouseEvent('dblclick', {bubbles: true, cancelable: true}));"
        " resolve(true); }, 500)); })()",
    )
    # The run, its log showing messages (INFO and up) only: the replay's progress lines rather than
    # dozens of framework events (the header shows the status).
    run_path = f"/runs/{run.run_id}"
    run_page = Shot(
        "replay-run",
        run_path,
        urllib.parse.urlencode({"levels": "critical|error|info|warning"}),
        f"__at({js(run_path)}) && !__loading() && __has('Success', {js(ASSET)})"
        " && (__text().match(/\\nINFO\\n/g) || []).length >= 2",
        "the status Success and the replay's progress lines (INFO) in the log",
        height=800,
    )
    # click_data's events, this run's materialization selected (?time= is its timestamp).
    asset_path = f"/assets/{ASSET}"
    params = {"view": "events", "partition": run.day, "time": run.materialized_at}
    asset_page = Shot(
        "replay-asset",
        asset_path,
        urllib.parse.urlencode({k: v for k, v in params.items() if v}),
        f"__at({js(asset_path)}) && !__loading()"
        f" && __has('materialized in run {run.run_id[:8]}', 'Metadata', 'messages', 'rate_msgs_per_s')",
        f"run {run.run_id[:8]}'s materialization and its metadata (messages, rate_msgs_per_s, ...)",
        height=1100,
    )
    return [graph, run_page, asset_page]


def take(devtools: DevTools, base_url: str, shot: Shot, out: Path, args) -> None:
    url = f"{base_url}{shot.path}?{shot.query}" if shot.query else base_url + shot.path
    print(f"  {shot.name}: {url}")
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        width=args.width, height=shot.height, deviceScaleFactor=args.scale, mobile=False,
    )
    devtools.call("Page.navigate", url=url)
    failure = f"{shot.name}: {url} did not show {shot.what}"
    if shot.prepare:
        _wait(devtools, shot.loaded or shot.ready, args.timeout, failure)
        devtools.evaluate(in_page(shot.prepare))
    _wait(devtools, shot.ready, args.timeout, failure)
    time.sleep(args.settle)  # animations (the graph's fit, fades) come to rest
    _wait(devtools, shot.ready, args.timeout, failure)
    data = base64.b64decode(devtools.call("Page.captureScreenshot", format="png")["data"])
    out.write_bytes(data)
    width, height = struct.unpack("!II", data[16:24])  # from the PNG's IHDR chunk
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    print(f"    -> {shown} ({width}x{height}, {len(data) // 1024} KB)")


def _wait(devtools: DevTools, ready: str, timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if devtools.evaluate(in_page(ready)):
            return
        time.sleep(0.5)
    seen = devtools.evaluate("document.body ? document.body.innerText.slice(0, 1000) : ''") or ""
    seen = " | ".join(line.strip() for line in seen.splitlines() if line.strip())
    raise ScreenshotError(f"{failure} within {timeout:.0f} s. The page showed: {seen[:800]}")


def photograph(base_url: str, run: ReplayRun, args, workdir: Path) -> list[Path]:
    wanted = [s for s in shots(run) if s.name in args.only]
    if not run.materialized_at and any(s.name == "replay-asset" for s in wanted):
        print(f"  skipping replay-asset: run {run.run_id} materialized no {ASSET}", file=sys.stderr)
        wanted = [s for s in wanted if s.name != "replay-asset"]
    taken = []
    with chromium(find_chromium(args.chromium), args.timeout, workdir / "chromium.log") as endpoint:
        with urllib.request.urlopen(f"{endpoint}/json/list", timeout=10) as response:
            pages = [t for t in json.load(response) if t.get("type") == "page"]
        if not pages:
            raise ScreenshotError("Chromium has no page open to drive")
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"], timeout=args.timeout)
        try:
            devtools.call("Page.enable")
            devtools.call("Page.addScriptToEvaluateOnNewDocument", source=INIT_SCRIPT)
            for shot in wanted:
                out = args.out / f"{shot.name}.png"
                take(devtools, base_url, shot, out, args)
                taken.append(out)
        finally:
            devtools.close()
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--url", help="use this running Dagster UI (e.g. http://127.0.0.1:3000) instead of starting one")
    add("--dagster-dev", action="store_true", help="start the whole `dagster dev` (webserver and daemon: "
        "sensors that are on may launch runs) rather than the webserver alone")
    add("--dagster-home", type=Path, default=REPO / ".dagster_home",
        help="the instance to serve (default: .dagster_home)")
    add("--run-id", help=f"photograph this {JOB} run rather than the latest successful one")
    add("--out", type=Path, default=OUT_DIR, help="where the PNGs go (default: docs/img)")
    add("--only", nargs="+", choices=SHOT_NAMES, default=list(SHOT_NAMES), help="take only these")
    add("--chromium", help="the Chrome/Chromium binary (default: $CHROMIUM, else chromium on PATH)")
    add("--width", type=int, default=1280, help="viewport width in CSS pixels (default: 1280)")
    add("--scale", type=float, default=1.25,
        help="device pixel ratio: PNGs are width x scale pixels wide (default: 1.25, so 1600)")
    add("--timeout", type=float, default=90.0, help="seconds allowed for each wait (default: 90)")
    add("--settle", type=float, default=1.5, help="seconds left for animations before a shot (default: 1.5)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()

    workdir = Path(tempfile.mkdtemp(prefix="screenshots-"))  # the UI's and Chromium's logs
    status = 1
    try:
        find_chromium(args.chromium)  # before starting anything
        args.out.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            if args.url:
                base_url = args.url.rstrip("/")
                print(f"Using the Dagster UI at {base_url} ...")
                wait_until_loaded(base_url, args.timeout)
            else:
                home = args.dagster_home.resolve()
                if not (home / "dagster.yaml").exists():
                    raise ScreenshotError(f"{home} is not a Dagster instance (no dagster.yaml)")
                base_url = stack.enter_context(
                    dagster_ui(home, args.dagster_dev, max(args.timeout, 120.0), workdir / "dagster.log")
                )
            run = find_replay(base_url, args.run_id)
            print(f"Run {run.run_id} ({JOB}, day {run.day or '?'}) -> {args.out}")
            taken = photograph(base_url, run, args, workdir)
        print(f"Done: {len(taken)} screenshot(s).")
        status = 0
    except (ScreenshotError, OSError) as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("screenshots: interrupted", file=sys.stderr)
        status = 130
    finally:
        logs = sorted(p.name for p in workdir.iterdir() if p.stat().st_size)
        if status and logs:
            print(f"screenshots: logs kept in {workdir} ({', '.join(logs)})", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
