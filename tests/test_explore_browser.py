"""The explorer in a real browser: JupyterLab on 127.0.0.1 with a token, headless Chromium driven by Selenium.

A temporary workbook (the schemas and configs of this checkout, synthetic runs of two workload versions with notebooks
and pointmaps, a study's folder, and the explorer notebook that `pqk lab` writes into a project without one) is served
by JupyterLab; the test opens what `pqk lab` opens (`lab_command`'s URL: explore.ipynb at the project root,
`EXPLORER_NB`) as a researcher does, checks that it shows no library code (no exported or test cell: `LIBRARY_ONLY`,
which the library notebook nbs/run/74_explore.ipynb does show) and that no dialog asks for a kernel (the notebook names
its kernelspec), runs every cell, then visits each tab, saves a screenshot of it and checks its visible text (the
DOM's, not pixels) against a short list of what it must and must not show (`TAB_TEXTS`, `NOT_SHOWN`); on the way: the
comparison fits the page without sideways scrolling, its figures are at least 320 px wide, the Pareto tab links the
recommended run's notebook, the 3D view is shown near its own 1120 px, the run table fits its box (wrapped, never
scrolled sideways), the Studies tab shows the study's recommendation, tables and front plot (at its own size), and a
filter widget changes the run table. The screenshots (explorer-<tab>.png) and the visible texts (explorer-texts.txt)
are left in the test's temporary folder.

Needs Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver) and the dev dependency
`selenium`; without them the test is skipped with the reason, except under CI (`CI` or `PQK_CI` set), where it fails.
"""
import json, os, shutil, signal, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest
from synthetic_runs import make_runs, make_study

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
IN_CI = bool(os.environ.get('CI') or os.environ.get('PQK_CI'))


def _need(what: str, why: str):
    msg = f'{what} is not installed: {why}'
    if IN_CI: pytest.fail(msg + ' (required under CI)')
    pytest.skip(msg)


def _browser():
    try:
        import selenium  # noqa: F401
    except ImportError:
        _need('selenium', 'pip install selenium (a dev dependency: pip install -e ".[dev]")')
    chrome = shutil.which('chromium') or shutil.which('chromium-browser')
    driver = shutil.which('chromedriver')
    if not chrome or not driver:
        _need('Chromium' if not chrome else 'chromedriver',
              'apt-get update && apt-get install -y chromium chromium-driver (Debian packages)')
    return chrome, driver


def _workbook(tmp: Path) -> Path:
    """A small workbook: this checkout's schemas, configs and library notebook (the negative control of
    `LIBRARY_ONLY`), the explorer notebook `pqk lab` writes, a copy of it without a kernelspec, 12 synthetic runs and
    a study (`make_study`: its folder has no log.json, and the Runs tab still counts 12 runs)."""
    from pqk.run.explore import write_explorer, EXPLORER_NB
    root = tmp / 'workbook'
    for d in ('schemas', 'configs'): shutil.copytree(ROOT / d, root / d)
    (root / 'nbs' / 'run').mkdir(parents=True)
    shutil.copy(ROOT / 'nbs' / 'run' / '74_explore.ipynb', root / 'nbs' / 'run')
    assert write_explorer(root) == root / EXPLORER_NB                  # as `pqk lab` does in a project without one
    nb = json.loads((root / EXPLORER_NB).read_text())
    (root / 'bare.ipynb').write_text(json.dumps({**nb, 'metadata': {}}))   # no kernelspec
    make_runs(root / 'runs', 12, versions=[('1.0', '1.0'), ('1.1', '1.0')], notebooks=True, pointmaps=True)
    for f in sorted((root / 'runs').glob('*/log.json')):     # one run of the newest group passes decisively
        r = json.loads(f.read_text()); q, t = r['quality'], r['thresholds'].get('quality_drop_max_pct')
        if (r['status'], r['contracts']['workload']['version']) == ('passed', '1.1') and t and q['quality_drop_pct'] < t - .2:
            q.update(quality_drop_lo_pct=q['quality_drop_pct'] - .1, quality_drop_hi_pct=q['quality_drop_pct'] + .1)
            f.write_text(json.dumps(r)); break
    make_study(root / 'runs', root)
    return root


@pytest.fixture
def lab(tmp_path):
    from pqk.run.explore import lab_command
    chrome, driver = _browser()
    root = _workbook(tmp_path)
    token = 'pqk-test-' + os.urandom(12).hex()
    cmd, lab_env, url = lab_command(root, token=token)            # lab_env: the token (JUPYTER_TOKEN), PQK_ROOT
    env = {**os.environ, **lab_env, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep),
           'PQK_ROOT': str(root), **{f'JUPYTER_{k}_DIR': str(tmp_path / 'jupyter' / k.lower()) for k in ('RUNTIME', 'CONFIG')}}
    log = open(tmp_path / 'lab.log', 'w')
    p = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = url.split('/lab/')[0]
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=5) as r:
                    if r.status == 200: break
            except OSError: pass
            assert p.poll() is None, (tmp_path / 'lab.log').read_text()[-3000:]
            assert time.monotonic() < deadline, 'JupyterLab did not answer within 90 s'
            time.sleep(0.5)
        with urllib.request.urlopen(f'{base}/api/status', timeout=5) as r: pass
    except urllib.error.HTTPError as e:                          # without the token: refused
        assert e.code in (401, 403), e.code
    try: yield {'url': url, 'root': root, 'chrome': chrome, 'driver': driver, 'tmp': tmp_path,
                'api': f"{url.split('/lab/')[0]}/api/kernels?token={token}"}
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try: p.wait(20)
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); p.wait(10)
        log.close()


def settled(api: str, timeout: float):
    "Wait until the server's kernels have been idle for 5 s in a row (Run All has finished)."
    import json
    t0, quiet = time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        with urllib.request.urlopen(api, timeout=10) as r: ks = json.loads(r.read())
        busy = any(k.get('execution_state') != 'idle' for k in ks) or not ks
        quiet = None if busy else (quiet or time.monotonic())
        if quiet and time.monotonic() - quiet >= 5: return
        time.sleep(0.5)
    raise AssertionError(f'the notebook was still running after {timeout:.0f} s')


# What each tab must show (visible DOM text of the explorer's tab widget, not pixels) and must not show. The synthetic
# workbook: 12 runs in two version groups; the first group (w1.1) has 2 passed, 3 failed and 1 stopped runs.
TAB_TEXTS = {
    'Runs': ['12 of 12 run(s) in runs, by started, newest first', 'newest first', 'oldest first', 'sort by',
             'quality drop (%)', 'card', 'status'],
    'Compare': ['runs listed newest first', 'the latest passed run of each card', 'key numbers', 'run_id',
                'quality.quality_drop_pct', ' · passed'],
    'Pareto': ['Recommended:', 'of 1 run(s) that passed decisively', 'open its archived notebook', 'runs of w1.1 e1.0 on the plot: 2 passed, 3 failed, '
               '1 stopped', 'hollow: over a limit, or not passed', 'passed runs only'],
    'Pointmaps': ['run(s) with pointmaps, newest first', 'pair', 'points', 'azimuth', 'elevation', 'colour'],
    'Studies': ['1 stud(ies), newest first', 'Study S9_view-', 'Recommended: c01 K→Q (K0-Q0)', 'reproduce: pqk run',
                '/cards/S9_view.K0-Q0.md', 'Best hand-written chain card', "The last rung's candidates", 'c01 ★',
                '0.4 [0.1, 0.8]', 'Stage orders', 'no run kind for the chain P→K', 'Candidates', 'cannot run'],
}
NOT_SHOWN = {'Runs': ['ascending'], 'Pareto': ['outside thresholds', 'within thresholds']}
EVERYWHERE_NOT = ['Select Kernel', 'Traceback']
# Only the library notebook's code cells show these (an nbdev directive, a test call): the explorer shows none of them.
LIBRARY_ONLY = ('#| export', '#| default_exp', 'test_eq(')


def test_explorer_in_jupyterlab(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from selenium.common.exceptions import StaleElementReferenceException
    o = webdriver.ChromeOptions(); o.binary_location = lab['chrome']
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1400,1000'):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(lab['driver']), options=o)
    shots = lab['tmp']
    wait = lambda secs, fn, what: WebDriverWait(d, secs, 0.5, ignored_exceptions=(StaleElementReferenceException,)
                                                ).until(lambda _: fn(), message=what)   # a re-render: ask again
    def css(sel):            # the shown elements; one that Lab re-rendered between finding and asking is not shown
        out = []
        for e in d.find_elements(By.CSS_SELECTOR, sel):
            try:
                if e.is_displayed(): out.append(e)
            except StaleElementReferenceException: pass
        return out
    dialogs = lambda: [e.text for e in css('.jp-Dialog')]
    js = lambda code, *a: d.execute_script(code, *a)
    page = lambda: ' '.join(e.text for e in css('.jp-Notebook'))
    library_code = lambda: [t for t in LIBRARY_ONLY if t in page()]
    try:
        from pqk.run.explore import EXPLORER_NB, explorer_notebook
        assert f'/lab/tree/{EXPLORER_NB}?' in lab['url'], lab['url']       # what `pqk lab` prints and opens
        # negative control: the same notebook without a kernelspec makes Lab ask (in a workspace of its own)
        d.get(lab['url'].replace(f'/lab/tree/{EXPLORER_NB}', '/lab/workspaces/bare/tree/bare.ipynb'))
        wait(180, lambda: any('Select Kernel' in t for t in dialogs()), 'no kernel dialog for a notebook without one')
        d.save_screenshot(str(shots / 'bare-select-kernel.png'))
        # negative control: the library notebook shows its exported and test cells (what the explorer must not)
        d.get(lab['url'].replace(f'/lab/tree/{EXPLORER_NB}', '/lab/workspaces/library/tree/nbs/run/74_explore.ipynb'))
        wait(120, lambda: css('.jp-Notebook .jp-Cell'), 'the library notebook did not open')
        wait(60, library_code, 'the library notebook shows none of LIBRARY_ONLY')
        d.get(lab['url'])
        wait(120, lambda: css('.jp-Notebook .jp-Cell'), 'the notebook did not open')
        # the explorer a researcher opens is an explorer: its own few cells, no library code
        wait(60, lambda: 'Explorer(' in page(), 'the explorer notebook shows no Explorer cell')
        assert not library_code(), (library_code(), page()[:2000])
        assert len(css('.jp-Notebook .jp-Cell')) == len(explorer_notebook()['cells']), page()[:2000]
        # the notebook names its kernel: Lab starts it without asking (no "Select Kernel" dialog while it starts)
        seen, t0 = [], time.monotonic()
        while time.monotonic() - t0 < 20: seen += dialogs(); time.sleep(0.5)
        settled(lab['api'], 180)                                        # the kernel has started
        seen += dialogs()
        assert not any('Select Kernel' in t or 'kernel' in t.lower() for t in seen), seen
        d.save_screenshot(str(shots / 'explorer-opened.png'))
        for b in css('.jp-toast-button'):                               # the 'Jupyter news?' toast
            if b.text == 'No': b.click()
        # Run > Run All Cells
        next(e for e in css('.lm-MenuBar-itemLabel') if e.text == 'Run').click()
        wait(20, lambda: [e for e in css('.lm-Menu-itemLabel') if e.text == 'Run All Cells'], 'no Run All Cells item')
        next(e for e in css('.lm-Menu-itemLabel') if e.text == 'Run All Cells').click()
        wait(300, lambda: css('table.pqk-runs'), 'the run table never rendered')
        # the kernel handles widget events only between cells: wait until every cell has run (idle for 5 s)
        settled(lab['api'], 600)
        assert not dialogs(), dialogs()
        show = lambda el: js('arguments[0].scrollIntoView({block: "start"})', el)
        tabs = lambda: css('.widget-tab')[0]
        plot = lambda: [e for e in css('img.widget-image') if js('return arguments[0].naturalWidth', e) > 200]
        texts = {}
        def visit(name, ready, what):
            next(e for e in css('.lm-TabBar-tabLabel') if e.text == name).click()
            wait(60, ready, what)
            try: wait(30, lambda: all(t in tabs().text for t in TAB_TEXTS[name]), f'tab {name}')
            except Exception:
                d.save_screenshot(str(shots / f'explorer-{name.lower()}.png'))
                raise AssertionError(f'tab {name}: missing {[t for t in TAB_TEXTS[name] if t not in tabs().text]}; '
                                     f'it shows: {tabs().text[:2000]}') from None
            texts[name] = tabs().text
            show(tabs()); d.save_screenshot(str(shots / f'explorer-{name.lower()}.png'))
            wide = js('''return [...arguments[0].querySelectorAll('.widget-box')].filter(b => b.offsetParent
                         && b.scrollWidth > b.clientWidth + 1).map(b => [b.className, b.scrollWidth, b.clientWidth,
                         [...b.querySelectorAll('*')].filter(x => x.getBoundingClientRect().right >
                         b.getBoundingClientRect().right + 0.5).map(x => x.tagName + '.' + x.className)[0]]);''', tabs())
            assert not wide, f'tab {name} scrolls sideways: {wide}'
            for t in NOT_SHOWN.get(name, []) + EVERYWHERE_NOT: assert t not in texts[name], (name, t)
        visit('Runs', lambda: css('table.pqk-runs'), 'no run table')
        box = css('table.pqk-runs')[0].find_element(By.XPATH, '..')         # the run table's box: wraps, no sideways
        assert js('return arguments[0].scrollWidth <= arguments[0].clientWidth + 1', box), \
            js('return [arguments[0].scrollWidth, arguments[0].clientWidth]', box)
        count = lambda: next(e.text for e in css('.widget-html-content') if 'run(s) in' in e.text and 'of' in e.text)
        visit('Compare', lambda: css('table.pqk-diff'), 'no comparison table')
        diff = css('table.pqk-diff')[0].find_element(By.XPATH, '..')        # its scrolling box: no sideways scroll
        assert js('return arguments[0].scrollWidth <= arguments[0].clientWidth + 1', diff), \
            js('return [arguments[0].scrollWidth, arguments[0].clientWidth]', diff)
        figs = css('img.widget-image')                           # on the Compare tab: the two runs' figures
        widths = [js('return arguments[0].getBoundingClientRect().width', e) for e in figs]
        assert len(widths) == 2 and min(widths) >= 320, widths
        visit('Pareto', lambda: plot() and css('.pqk-recommended'), 'no Pareto plot or recommended run')
        pw = js('return [arguments[0].naturalWidth, arguments[0].getBoundingClientRect().width]', plot()[0])
        assert pw[0] >= 700 and abs(pw[1] - pw[0]) <= 1, pw                  # shown at its own size, not stretched
        links = css('a.pqk-notebook')
        assert links and '/runs/' in links[0].get_attribute('href') and links[0].get_attribute('href').endswith('.ipynb')
        visit('Pointmaps', lambda: len(plot()) >= 2, 'no pointmap images')
        cloud = plot()[-1]
        assert js('return arguments[0].naturalWidth', cloud) == 1120
        assert js('return arguments[0].getBoundingClientRect().width', cloud) >= 700   # near its own size
        assert js('return arguments[0].getBoundingClientRect().width', cloud) <= 1121  # never stretched
        show(cloud); d.save_screenshot(str(shots / 'explorer-pointmaps-3d.png'))
        visit('Studies', lambda: css('table.pqk-study') and plot(), 'no study tables or front plot')
        fw = js('return [arguments[0].naturalWidth, arguments[0].getBoundingClientRect().width]', plot()[-1])
        assert fw[0] >= 500 and abs(fw[1] - fw[0]) <= 1, fw                  # the front plot at its own size
        # a filter changes the run table (back on the Runs tab)
        next(e for e in css('.lm-TabBar-tabLabel') if e.text == 'Runs').click()
        assert count().startswith('12 of 12'), count()
        kind = next(e for e in css('.widget-select-multiple') if e.find_elements(By.XPATH, ".//label[text()='kind']"))
        Select(kind.find_element(By.TAG_NAME, 'select')).select_by_visible_text('K')
        wait(60, lambda: count().startswith(('1 of', '2 of', '3 of')), 'the kind filter did not change the table')
        assert not css('.pqk-error'), [e.text for e in css('.pqk-error')]
        errs = [e.text for e in css('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
                if 'Traceback' in e.text or 'Error' in e.text]
        assert not errs, errs[:2]
        (shots / 'explorer-texts.txt').write_text('\n\n'.join(f'== {k}\n{v}' for k, v in texts.items()))
        print(f'\nscreenshots: {shots}/explorer-*.png; visible texts: {shots}/explorer-texts.txt')
    except Exception:
        d.save_screenshot(str(shots / 'explorer-failure.png'))
        raise
    finally:
        d.quit()
