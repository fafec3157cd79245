"""The tutorials' slider panels in a real browser: headless Chromium, driven by Playwright,
against the JupyterLab that ``./dev tutorials`` serves.

For each notebook (01 and 04 unless named on the command line), on a temporary copy of
``tutorials/`` so that the committed notebooks never change:

1. opened as saved, before anything runs: the slider cell shows the line "Run the notebook from
   the top down to this cell (...), then this cell, to use the controls (...)" and the figure,
   never the widget's text form ``VBox(children=...``;
2. Run > Run All Cells: every code cell runs, in order, and none ends in an error;
3. the panel: exactly one figure, every slider label shown whole;
4. the named slider moved with the arrow keys, a few times: each move changes the figure within
   2 seconds, exactly one figure stays, the slider's readout follows, the kernel raises nothing.

Before the panels, every notebook in ``tutorials/`` is opened as saved and its maths read as the
reader sees it (MathJax in JupyterLab): no formula typeset as an error (a red undefined macro such
as ``\\midw``, an ``merror``), no TeX left as raw text (an unbalanced ``$``), and one typeset
formula for every ``$...$`` and ``$$...$$`` of its markdown cells.

Screenshots of each panel (before running, after running, after the moves) go to ``--shots``.
Run it with ``./dev browser-test``, which installs Playwright and Chromium when they are missing.
Exits with status 1 if any check fails, and prints one summary line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTE = "then this cell, to use the controls"
REDRAW_LIMIT_S = 2.0


@dataclass
class Case:
    """A notebook, the slider to move (by its label) and the keys that move it."""

    file: str
    slider: str
    keys: tuple = ("ArrowRight", "ArrowRight", "ArrowLeft", "ArrowLeft")


CASES = {
    "01": Case("01_fedavg_is_hard_em.ipynb", slider="lam"),
    "03": Case("03_fedpa_posterior_averaging.ipynb", slider="local steps K"),
    "04": Case("04_fedsparse_from_spike_and_slab.ipynb", slider="lambda0"),
}


class Checks:
    """Counts checks, keeps the failures, says each one as it goes."""

    def __init__(self):
        self.passed = 0
        self.failed: list[str] = []

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"  ok    {what}" + (f" ({detail})" if detail else ""), flush=True)
        else:
            self.failed.append(f"{what}: {detail}")
            print(f"  FAIL  {what}" + (f": {detail}" if detail else ""), flush=True)
        return ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_jupyterlab(root: Path, home: Path, port: int, token: str, log: Path) -> subprocess.Popen:
    """JupyterLab as ``./dev tutorials`` starts it, on ``root``, with its own settings, workspace
    and trust database under ``home`` (a fresh user: no notebook is trusted yet)."""
    env = dict(os.environ)
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
               EMFL_FIGURES_DIR=str(home / "figures"))  # the notebooks' PNGs, not the repository's
    env.pop("MPLBACKEND", None)  # the kernel's own (inline) backend, as for a reader
    news = home / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text('{"fetchNews": "false"}')  # no "get notified about news?" toast over the panels
    tracker = news.parents[1] / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text('{"windowingMode": "none"}')  # every cell rendered, not only those in view
    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", "--port-retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"browser-test: JupyterLab exited at start; its log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"browser-test: JupyterLab did not answer within {timeout:.0f} s; its log:\n{log.read_text()[-3000:]}")


def shut_down_kernels(base: str, token: str):
    """End every kernel the server runs (the notebook is closed without saving)."""
    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{base}/api/sessions", headers=headers), timeout=10) as r:
        sessions = json.load(r)
    for session in sessions:
        request = urllib.request.Request(f"{base}/api/sessions/{session['id']}", headers=headers, method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()


def stop(server: subprocess.Popen):
    """End JupyterLab and its kernels (its own process group)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)


# JavaScript run in the page, where one notebook is open (a workspace of its own).  A "panel
# cell" is the code cell whose source builds a SliderPanel.
JS_PANEL_CELL = """() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const i = cells.findIndex(c => (c.querySelector('.jp-InputArea-editor')?.textContent || '').includes('panels.SliderPanel('));
  if (i < 0) return -1;
  cells.forEach(c => c.removeAttribute('data-emfl-panel'));
  cells[i].setAttribute('data-emfl-panel', '1');
  return i;
}"""

JS_PROMPTS = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].map(
  c => (c.querySelector('.jp-InputArea-prompt')?.textContent || '').trim())"""

JS_ERRORS = """() => [...document.querySelectorAll('.jp-Notebook [data-mime-type="application/vnd.jupyter.stderr"]')]
  .map(e => e.textContent).filter(t => /Traceback|\\b\\w*Error\\b/.test(t)).map(t => t.slice(0, 400))"""

JS_PANEL_STATE = """(slider) => {
  const cell = document.querySelector('[data-emfl-panel]');
  const out = cell.querySelector('.jp-Cell-outputArea');
  const imgs = [...out.querySelectorAll('img')];
  const labels = [...out.querySelectorAll('.widget-label')].filter(l => l.textContent.trim())
    .map(l => ({text: l.textContent.trim(), cut: l.scrollWidth > l.clientWidth + 1}));
  const box = [...out.querySelectorAll('.widget-slider, .jupyter-widget-slider')]
    .find(s => s.querySelector('.widget-label')?.textContent.trim() === slider);
  const readout = box?.querySelector('.widget-readout, .widget-text')?.textContent?.trim()
    ?? box?.querySelector('.widget-readout')?.value ?? null;
  return {n_img: imgs.length, src: imgs.length ? imgs[imgs.length - 1].src : '', text: out.innerText,
          labels, has_slider: !!box, readout, errors: out.innerText.includes('Error displaying widget')};
}"""

JS_SRC_CHANGED = """([old]) => {
  const imgs = document.querySelector('[data-emfl-panel] .jp-Cell-outputArea').querySelectorAll('img');
  return imgs.length === 1 && imgs[0].src !== old && imgs[0].complete && imgs[0].naturalWidth > 0;
}"""


def maths_segments(source: str) -> int:
    """How many formulas a markdown cell holds: ``$$...$$`` and ``$...$`` outside code (fenced
    blocks and backtick spans), the way JupyterLab finds them before MathJax typesets them."""
    text = re.sub(r"```.*?```", "", source, flags=re.S)
    text = re.sub(r"(`+).*?\1", "", text, flags=re.S)
    text = text.replace(r"\$", "")
    display = len(re.findall(r"\$\$.+?\$\$", text, flags=re.S))
    text = re.sub(r"\$\$.+?\$\$", "", text, flags=re.S)
    return display + len(re.findall(r"\$[^$]+?\$", text, flags=re.S))


# The maths of the open notebook as the reader sees it: formulas typeset, errors MathJax shows
# (an merror, or the red text of an undefined macro), and TeX left in the text around them.
JS_MATHS = """() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-MarkdownCell .jp-RenderedMarkdown')];
  const bad = [], raw = [];
  let typeset = 0;
  for (const r of cells) {
    const found = r.querySelectorAll('mjx-container');
    typeset += found.length;
    for (const m of found) {
      const mml = m.querySelector('mjx-assistive-mml');
      const red = mml ? [...mml.querySelectorAll('[mathcolor="red"], merror')].map(e => e.textContent) : [];
      if (m.querySelector('mjx-merror') || red.length) bad.push(red.join(' ') || 'merror');
    }
    const copy = r.cloneNode(true);
    copy.querySelectorAll('mjx-container, code, pre').forEach(e => e.remove());
    const text = copy.textContent;
    const tex = text.match(/\\\\[A-Za-z]+|\\$/g);
    if (tex) raw.push(text.slice(Math.max(0, text.search(/\\\\[A-Za-z]+|\\$/) - 40)).slice(0, 120));
  }
  return {cells: cells.length, typeset, bad, raw};
}"""


def maths_case(page, base: str, token: str, path: Path, checks: Checks) -> None:
    """Open ``path`` as saved and check that its maths renders (see the module's docstring)."""
    nb = json.loads(path.read_text())
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    expected = sum(maths_segments(s) for s in sources)
    key = path.name.split("_")[0]
    page.goto(f"{base}/lab/workspaces/emfl-maths-{key}/tree/{path.name}?reset&token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    state, last, stable_since = None, None, time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until every markdown cell is rendered and typesetting stops
        state = page.evaluate(JS_MATHS)
        now = (state["cells"], state["typeset"])
        if now != last:
            last, stable_since = now, time.monotonic()
        elif state["cells"] == len(sources) and state["typeset"] >= expected and time.monotonic() - stable_since > 1.5:
            break
        page.wait_for_timeout(250)
    checks.check(state["cells"] == len(sources), f"{key}: all {len(sources)} markdown cells rendered", f"{state['cells']}")
    checks.check(state["typeset"] == expected, f"{key}: every formula typeset",
                 f"{state['typeset']} typeset of {expected} in the source")
    checks.check(not state["bad"], f"{key}: no formula shown as an error", "; ".join(state["bad"])[:400])
    checks.check(not state["raw"], f"{key}: no TeX left as raw text", " | ".join(state["raw"])[:400])


def run_case(page, base: str, token: str, key: str, case: Case, checks: Checks, shots: Path) -> list[float]:
    print(f"notebook {case.file}", flush=True)
    page.goto(f"{base}/lab/workspaces/emfl-{key}/tree/{case.file}?reset&token={token}")
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    try:  # the cells below the fold get their editors a moment later
        page.wait_for_function(f"() => ({JS_PANEL_CELL})() >= 0", timeout=30_000)
        found = True
    except Exception:
        found = False
    if not checks.check(found, f"{key}: the notebook has a slider panel cell"):
        return []
    panel = page.locator("[data-emfl-panel]")

    # 1. As saved, before running: readable.
    panel.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    state = page.evaluate(JS_PANEL_STATE, case.slider)
    page_text = page.locator(".jp-Notebook").inner_text()
    checks.check(NOTE in state["text"], f"{key}: before running, the panel cell says '{NOTE} (...)'",
                 next((line for line in state["text"].splitlines() if NOTE in line), state["text"])[:120])
    checks.check(state["n_img"] == 1, f"{key}: before running, the panel cell shows its figure",
                 f"{state['n_img']} images")
    checks.check("VBox(children" not in page_text, f"{key}: no widget shown as text (VBox(children=...) in the notebook")
    panel.screenshot(path=str(shots / f"{key}_1_before_run.png"))

    # 2. Run > Run All Cells, then wait for every cell.
    start = time.perf_counter()
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    page.wait_for_function(f"""() => {{
        const p = ({JS_PROMPTS})();
        return p.length > 0 && p.every(t => /^\\[\\d+\\]:$/.test(t)) &&
               document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle';
      }}""", timeout=300_000, polling=250)
    run_s = time.perf_counter() - start
    prompts = page.evaluate(JS_PROMPTS)
    counts = [int(p[1:-2]) for p in prompts]
    checks.check(counts == list(range(counts[0], counts[0] + len(counts))),
                 f"{key}: Run All Cells ran all {len(counts)} code cells in order", f"{run_s:.1f} s")
    errors = page.evaluate(JS_ERRORS)
    checks.check(not errors, f"{key}: no cell raised an error", "; ".join(errors)[:600])

    # 3. The live panel.
    page.wait_for_function("() => document.querySelector('[data-emfl-panel] .jp-Cell-outputArea .widget-slider, "
                           "[data-emfl-panel] .jp-Cell-outputArea .jupyter-widget-slider')", timeout=30_000)
    panel.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    state = page.evaluate(JS_PANEL_STATE, case.slider)
    checks.check(state["n_img"] == 1, f"{key}: after running, the panel shows exactly one figure", f"{state['n_img']} images")
    checks.check(NOTE not in state["text"] and not state["errors"], f"{key}: after running, the live widget replaces the static form")
    cut = [l["text"] for l in state["labels"] if l["cut"]]
    checks.check(state["labels"] and not cut, f"{key}: every slider label shown whole",
                 ", ".join(l["text"] for l in state["labels"]) + (f"; cut: {cut}" if cut else ""))
    if not checks.check(state["has_slider"], f"{key}: the panel has the slider '{case.slider}'"):
        return []
    panel.screenshot(path=str(shots / f"{key}_2_after_run.png"))

    # 4. Move the slider from the keyboard: its handle takes the focus, as after a click.
    handle = panel.locator(".widget-slider, .jupyter-widget-slider").filter(
        has=page.locator(".widget-label", has_text=re.compile(f"^{re.escape(case.slider)}$"))).locator(".noUi-handle")
    times = []
    for n, press in enumerate(case.keys, 1):
        before = page.evaluate(JS_PANEL_STATE, case.slider)
        handle.focus()
        start = time.perf_counter()
        page.keyboard.press(press)
        try:
            page.wait_for_function(JS_SRC_CHANGED, arg=[before["src"]], timeout=15_000, polling="raf")
            dt = time.perf_counter() - start
        except Exception:  # Playwright's TimeoutError: the figure never changed
            dt = float("inf")
        times.append(dt)
        page.wait_for_timeout(400)  # anything a late message would add shows up by now
        after = page.evaluate(JS_PANEL_STATE, case.slider)
        checks.check(dt < REDRAW_LIMIT_S, f"{key}: move {n} ({press}) of '{case.slider}' changes the figure within "
                     f"{REDRAW_LIMIT_S:.0f} s", f"{dt:.2f} s, readout {before['readout']} -> {after['readout']}")
        checks.check(after["n_img"] == 1, f"{key}: move {n}: exactly one figure stays", f"{after['n_img']} images")
        checks.check(after["readout"] != before["readout"], f"{key}: move {n}: the slider's readout follows")
    errors = page.evaluate(JS_ERRORS)
    checks.check(not errors and page.locator(".jp-Dialog").count() == 0,
                 f"{key}: no error from the kernel after the moves", "; ".join(errors)[:600])
    checks.check(page.evaluate("() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status") == "idle",
                 f"{key}: the kernel is alive and idle")
    panel.screenshot(path=str(shots / f"{key}_3_after_moves.png"))
    return times


def digest(paths) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help=f"which notebooks, of {' '.join(CASES)} (default: 01 04)")
    parser.add_argument("--chromium", default=os.environ.get("EMFL_CHROMIUM") or shutil.which("chromium"),
                        help="the Chromium binary (default: $EMFL_CHROMIUM, else chromium on the PATH)")
    parser.add_argument("--shots", type=Path, default=None, help="folder for the screenshots (default: a temporary one)")
    parser.add_argument("--no-maths", action="store_true", help="skip the maths of every notebook (panels only)")
    parser.add_argument("--no-panels", action="store_true", help="only the maths of every notebook")
    parser.add_argument("--tutorials", type=Path, default=REPO / "tutorials", help="the notebooks' folder (default: tutorials/)")
    args = parser.parse_args(argv)
    args.notebooks = [] if args.no_panels else (args.notebooks or ["01", "04"])
    unknown = [key for key in args.notebooks if key not in CASES]
    if unknown:
        parser.error(f"no slider panel to test in notebook {' '.join(unknown)}: name some of {' '.join(CASES)}")
    if not args.chromium:
        print("browser-test: no Chromium found: install Debian's chromium package (apt-get install chromium) "
              "or pass --chromium PATH", file=sys.stderr)
        return 2
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print(f"browser-test: Playwright is missing: {sys.executable} -m pip install playwright", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # a time limit still ends JupyterLab (finally)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="emfl-browser-test-"))
    shots = args.shots or work / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    root = work / "tutorials"
    shutil.copytree(args.tutorials, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    committed = sorted(args.tutorials.glob("*.ipynb"))
    before = digest(committed)
    port, token = free_port(), os.urandom(12).hex()
    base = f"http://127.0.0.1:{port}"
    log = work / "jupyterlab.log"
    server = start_jupyterlab(root, work, port, token, log)
    checks, times = Checks(), {}
    try:
        wait_until_serving(f"{base}/api/status?token={token}", server, log)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage"])
            if not args.no_maths:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                for path in committed:
                    try:
                        maths_case(page, base, token, root / path.name, checks)
                    except Exception as error:
                        checks.check(False, f"{path.name}: its maths could be read", f"{type(error).__name__}: {error}"[:400])
                page.close()
            for key in args.notebooks:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(30_000)
                try:
                    times[key] = run_case(page, base, token, key, CASES[key], checks, shots)
                except Exception as error:  # a step that never came: say which, go on with the next notebook
                    checks.check(False, f"{key}: the steps ran to the end", f"{type(error).__name__}: {error}"[:600])
                    page.screenshot(path=str(shots / f"{key}_failed.png"))
                page.close()
                shut_down_kernels(base, token)  # the next notebook has both cores
            browser.close()
    finally:
        stop(server)
        shutil.rmtree(root, ignore_errors=True)  # the copy; the screenshots and JupyterLab's log stay
    checks.check(digest(committed) == before, "the committed notebooks in tutorials/ are unchanged")
    moves = [t for ts in times.values() for t in ts]
    redraws = ", ".join(f"{k}: " + " ".join(f"{t:.2f}" for t in ts) for k, ts in times.items())
    print(f"redraw seconds per move ({redraws}); screenshots in {shots}")
    summary = (f"browser-test: maths of {0 if args.no_maths else len(committed)} notebooks, panels of "
               f"{len(args.notebooks)}, {checks.passed} checks passed, "
               f"{len(checks.failed)} failed, slowest redraw {max(moves, default=float('nan')):.2f} s, "
               f"{time.perf_counter() - started:.0f} s in all")
    print(summary)
    if checks.failed:
        print("failed:\n  " + "\n  ".join(checks.failed), file=sys.stderr)
        print(f"JupyterLab's log: {log}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
