"""JupyterLab on the notebooks: it starts on 127.0.0.1 with a token (as root too) and serves /lab, and in a real browser
(headless Chromium, driven over the DevTools protocol with websocket-client) it renders a library notebook's committed
PNG outputs and its markdown math (MathJax). Everything started here (JupyterLab, its kernels, Chromium) is stopped at
the end, pass or fail. Chromium comes from `make setup` (scripts/ensure_chromium.sh); without it the browser test fails."""
import json, os, re, secrets, shutil, signal, socket, subprocess, sys, time, types, urllib.error, urllib.request
from pathlib import Path
import pytest
from conftest import ROOT

NOTEBOOKS = ROOT / "nbs"
TIMEOUT = 120  # seconds for a notebook to show everything (about 4 s measured on 2 busy cores)

def free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _tail(path: Path, n=2000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""

def _stop(proc: subprocess.Popen, marker: str | None = None):
    "SIGTERM `proc`'s process group, SIGKILL it after 20 s; then SIGKILL our processes whose command line has `marker`."
    try: os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError: pass
    try: proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    try: os.killpg(proc.pid, signal.SIGKILL)  # children left in the group
    except ProcessLookupError: pass
    if marker:  # e.g. kernels: jupyter_client starts each in a session of its own
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) == os.getpid(): continue
            try:
                if p.stat().st_uid == os.getuid() and marker.encode() in (p / "cmdline").read_bytes():
                    os.kill(int(p.name), signal.SIGKILL)
            except (OSError, ProcessLookupError): pass

def _api(lab, path, method="GET"):
    req = urllib.request.Request(f"{lab.url}{path}", method=method, headers={"Authorization": f"token {lab.token}"})
    with urllib.request.urlopen(req, timeout=10) as r: return json.loads(r.read() or b"null")

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "JupyterLab on nbs/, its runtime, config, settings and workspaces under a temporary folder; stopped with its kernels."
    jupyter = Path(sys.executable).parent / "jupyter"
    assert jupyter.exists(), f"jupyter not installed next to {sys.executable}"
    tmp = tmp_path_factory.mktemp("lab")
    settings = tmp / "settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    # every cell in the DOM (the default windowing leaves cells out of view unrendered); no news or update checks
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    (settings / "apputils-extension").mkdir()
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"checkForUpdates": False, "fetchNews": "false"}))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp / "rt"), "JUPYTER_CONFIG_DIR": str(tmp / "cfg"),
           "JUPYTER_DATA_DIR": str(tmp / "data"), "IPYTHONDIR": str(tmp / "ipython")}  # nothing written to ~
    log = tmp / "lab.log"
    with open(log, "wb") as err:  # a file, not a pipe nobody reads: the server logs every request
        proc = subprocess.Popen([str(jupyter), "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                                 f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={NOTEBOOKS}",
                                 f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'ws'}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    lab = types.SimpleNamespace(url=f"http://127.0.0.1:{port}", token=token, proc=proc, log=log)
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None: pytest.fail(f"jupyter lab exited with {proc.returncode}: {_tail(log)}")
            try:
                with urllib.request.urlopen(f"{lab.url}/lab?token={token}", timeout=5): break
            except (urllib.error.URLError, ConnectionError): pass
            if time.time() > deadline: pytest.fail(f"jupyter lab did not answer within 90 s: {_tail(log)}")
            time.sleep(0.5)
        yield lab
    finally:
        try:
            for k in _api(lab, "/api/kernels") or []: _api(lab, f"/api/kernels/{k['id']}", "DELETE")
        except (OSError, ValueError): pass  # not up, or already gone; the kill below still applies
        _stop(proc, marker=str(tmp))
        assert proc.poll() is not None

def test_jupyterlab_serves_lab(lab):
    with urllib.request.urlopen(f"{lab.url}/lab?token={lab.token}", timeout=10) as r:
        status, body = r.status, r.read().decode()
    assert status == 200 and "JupyterLab" in body
    with pytest.raises(urllib.error.HTTPError) as e:  # the token is required
        urllib.request.urlopen(f"{lab.url}/api/contents", timeout=5)
    assert e.value.code == 403

class Chromium:
    "Headless Chromium in its own process group, with one page driven over the Chrome DevTools Protocol."
    def __init__(self, tmp: Path):
        exe = shutil.which("chromium")
        if exe is None:
            pytest.fail("chromium is not on PATH: run `make setup` (as root it installs it with apt-get; see "
                        "scripts/ensure_chromium.sh), or `apt-get install -y --no-install-recommends chromium fonts-dejavu-core`")
        import websocket  # websocket-client, a dependency of jupyter_server
        self.tmp, self.log, udd = tmp, tmp / "chromium.log", tmp / "chromium-profile"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                                          f"--user-data-dir={udd}", "--window-size=1280,1600", "--no-first-run",
                                          "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                                          "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
                                          "about:blank"],
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self.ws = None
        try:
            port_file, deadline = udd / "DevToolsActivePort", time.time() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                assert self.proc.poll() is None, f"chromium exited with {self.proc.returncode}: {_tail(self.log)}"
                assert time.time() < deadline, f"chromium wrote no {port_file} within 30 s: {_tail(self.log)}"
                time.sleep(0.2)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            assert pages, f"chromium has no page target: {_tail(self.log)}"
            self.ws, self.n = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60,
                                                          suppress_origin=True), 0
        except BaseException:
            self.close(); raise

    def __call__(self, method, **params):
        "Send one command and return its result (events are not enabled, so whatever else arrives is skipped)."
        self.n += 1; self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expr):
        r = self("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r: raise RuntimeError(f"{expr[:80]}...: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path: Path) -> str:
        try:
            import base64
            path.write_bytes(base64.b64decode(self("Page.captureScreenshot", format="png")["data"]))
            return f"screenshot {path}"
        except Exception as e: return f"no screenshot ({e})"

    def close(self):
        if self.ws is not None:
            try: self.ws.close()
            except Exception: pass
        _stop(self.proc, marker=str(self.tmp / "chromium-profile"))

    def __enter__(self): return self
    def __exit__(self, *exc): self.close()

# What is on the page: the notebook's rendered PNG outputs (loaded, non-empty) and its typeset math (MathJax 3).
PAGE_STATE = """(() => {
  const panel = [...document.querySelectorAll('.jp-NotebookPanel')].filter(p => !p.classList.contains('lm-mod-hidden'));
  const q = s => panel.flatMap(p => [...p.querySelectorAll(s)]);
  const imgs = q('.jp-OutputArea-output.jp-RenderedImage img');
  return {panels: panel.length, cells: q('.jp-Cell').length, img: document.querySelectorAll('img').length,
          rendered_img: imgs.length,
          png: imgs.filter(i => i.complete && i.naturalWidth > 0 && /^(data:image\\/png;base64,.|blob:.)/.test(i.src)).length,
          mjx: q('.jp-RenderedMarkdown mjx-container').length,
          math_cells: q('.jp-MarkdownCell').filter(c => c.querySelector('.jp-RenderedMarkdown mjx-container')).length,
          mjx_errors: q('mjx-merror').length};
})()"""

def _expected(nb: Path) -> tuple[int, int]:
    "PNG outputs and markdown cells with inline or display math (`$...$`) in the committed notebook."
    cells = json.loads(nb.read_text())["cells"]
    png = sum("image/png" in o.get("data", {}) for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []))
    math = sum(bool(re.search(r"\$[^$\s][^$]*\$", "".join(c["source"]))) for c in cells if c["cell_type"] == "markdown")
    return png, math

# No library notebook has both: 01_data has PNG outputs, 04_losses the loss equations.
@pytest.mark.parametrize("name,want", [("01_data.ipynb", "png"), ("04_losses.ipynb", "math")])
def test_lab_renders_notebook(lab, tmp_path, name, want):
    n_png, n_math = _expected(NOTEBOOKS / name)
    assert (n_png if want == "png" else n_math) > 0, f"{name} has no {want} left to check: pick another notebook"
    timeout, t0 = TIMEOUT, time.time()
    with Chromium(tmp_path) as page:
        # a workspace of its own, reset: only this notebook is open
        page("Page.navigate", url=f"{lab.url}/lab/workspaces/t{secrets.token_hex(4)}/tree/{name}?reset&token={lab.token}")
        while True:
            s = page.evaluate(PAGE_STATE) or {}
            done = s.get("png", 0) >= n_png and s.get("math_cells", 0) >= n_math
            if done or time.time() - t0 > timeout: break
            time.sleep(1)
        page.evaluate("document.querySelector('%s')?.scrollIntoView({block: 'center'})"  # what was checked, in the picture
                      % (".jp-RenderedImage img" if want == "png" else "mjx-container"))
        shot = page.screenshot(tmp_path / f"{Path(name).stem}.png")
    found = (f"found {s.get('panels', 0)} notebook panel(s), {s.get('cells', 0)} cells, {s.get('img', 0)} img elements ({s.get('rendered_img', 0)} in image "
             f"outputs, {s.get('png', 0)} loaded PNGs of {n_png}), {s.get('mjx', 0)} mjx-container in "
             f"{s.get('math_cells', 0)} of {n_math} markdown cells with math; {shot}; lab log {lab.log}")
    assert s.get("png", 0) >= n_png, f"not every rendered PNG image in {name} after {timeout} s: {found}"
    assert s.get("math_cells", 0) >= n_math, f"math not typeset in every markdown cell of {name} after {timeout} s: {found}"
    assert s.get("mjx_errors", 0) == 0, f"MathJax errors in {name}: {found}"
    print(f"{name}: {time.time() - t0:.1f} s; {found}")
