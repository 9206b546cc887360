"""`pqk run` / `pqk aggregate` / `pqk review` across process boundaries, with the tiny templates in tests/templates/.

Every test works in tmp_path (its own runs/ and reports/), never in the project's runs/ or reports/.
"""
import json, os, signal, subprocess, time
from pathlib import Path

import pytest

from conftest import ROOT, pqk_argv as pqk_args, run_pqk as pqk, run_python

TPL = ROOT / 'tests' / 'templates'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def make_card(tmp: Path, card_id: str, kind: str = 'eval', template: str = 'fake_run.ipynb', budget: float = 0.05) -> Path:
    "A task card in tmp whose configs are the project's and whose template is one of tests/templates/."
    method = {'K': 'distill', 'Q': 'quant', 'KQ': 'quant', 'P': 'prune'}.get(kind)
    rule = 'quality_drop_q_only_pct' if kind == 'Q' else 'quality_drop_mainline_pct'
    tpl = template if template.startswith('no_such') else str(TPL / template)
    method_line = f"  method: {ROOT / 'configs' / (method + '.yaml')}\n" if method else ''
    text = f"""---
id: {card_id}
kind: {kind}
goal: Exercise the runner with a fake template.
configs:
  workload: {ROOT / 'configs' / 'workload.yaml'}
  eval: {ROOT / 'configs' / 'eval.yaml'}
{method_line}thresholds:
  quality_drop_pct: eval.thresholds.{rule}
exceptions: []
stop_loss: eval.stop_loss.gpu_hours_over_budget_ratio
gpu_hours_budget: {budget}
expected_duration: 5 s
status: ready
seed: 7
template: {tpl}
---
# {card_id} — test card
"""
    p = tmp / f'{card_id}.md'; p.write_text(text); return p


def run_dirs(runs: Path, card_id: str):
    return sorted(p for p in runs.glob(f'{card_id}-*') if p.is_dir())


def check_reports(reps: Path, n_runs: int, kinds: list[str]) -> dict:
    "Open every report and check its contents; return summary.json."
    import openpyxl
    from PIL import Image
    from pqk.core.logschema import log_columns
    sj = json.loads((reps / 'summary.json').read_text())
    assert sj['n_runs'] == n_runs, sj['n_runs']
    [g] = [g['key'] for g in sj['groups']]                       # the project's contracts: one version group
    wb = openpyxl.load_workbook(reps / 'result_table.xlsx')
    assert wb.sheetnames == ['versions', g, f'{g} all', *[f'{g} {k}' for k in kinds]], wb.sheetnames
    from pqk.run.aggregate import MAIN_HEADERS
    assert [c.value for c in wb[g][1]] == MAIN_HEADERS and wb[g].max_row == n_runs + 1     # the main sheet
    ws = wb[f'{g} all']
    hdr = [c.value for c in ws[1]]
    assert hdr == sj['columns'] and hdr[0] == 'run_id' and set(log_columns()) <= set(hdr), hdr[:5]
    assert ws.freeze_panes == 'B2' and ws['A1'].font.bold
    assert ws.max_row == n_runs + 1
    assert sorted(ws.cell(r, 1).value for r in range(2, n_runs + 2)) == sorted(r['run_id'] for r in sj['runs'])
    assert (reps / 'summary.csv').read_text().splitlines()[0].split(',')[:3] == hdr[:3]
    for name in ('tradeoff', 'ablation', 'latency'):
        p = reps / 'plots' / f'{name}.png'
        assert p.read_bytes()[:8] == PNG_SIGNATURE, p
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == 'PNG' and im.size[0] >= 300 and im.size[1] >= 200, (p, im.size)
    assert not list(reps.glob('.tmp-*')) and not list((reps / 'plots').glob('.tmp-*'))
    return sj


@pytest.mark.slow
def test_run_card_end_to_end(tmp_path):
    from pqk.core.logschema import validate_log
    from pqk.run.scraps import read_scraps
    from pqk.run.runner import remote_resources
    runs, reps = tmp_path / 'runs', tmp_path / 'reports'
    card = make_card(tmp_path, 'E9_fake')
    r = pqk('run', card, '--runs-dir', runs, '--reports-dir', reps)
    assert r.returncode == 0, r.stdout + r.stderr
    [rd] = run_dirs(runs, 'E9_fake')
    # executed notebook, offline HTML, config snapshot, artefact, log
    nb, html = rd / 'E9_fake.ipynb', rd / 'E9_fake.html'
    assert read_scraps(nb)['model']['name'] == 'fake-E9_fake'
    h = html.read_text()
    assert remote_resources(h) == [] and 'fake-E9_fake' in h
    assert sorted(p.name for p in (rd / 'config').iterdir()) == ['E9_fake.md', 'eval.yaml', 'fake_run.ipynb', 'workload.yaml']
    rec = validate_log(json.loads((rd / 'log.json').read_text()))
    assert rec['run_id'] == rd.name and rec['task_card'] == 'E9_fake' and rec['kind'] == 'eval' and rec['seed'] == 7
    assert rec['status'] == 'passed' and rec['thresholds']['rule'] == 'none' and rec['thresholds']['gpu_hours_budget'] == 0.05
    assert set(rec['contracts']) == {'workload', 'eval'} and len(rec['contracts']['eval']['sha256']) == 64
    assert rec['artifacts']['notebook'] == 'E9_fake.ipynb' and rec['artifacts']['html'] == 'E9_fake.html'
    assert (rd / rec['artifacts']['student']).is_file()
    sj = check_reports(reps, 1, ['eval'])
    assert sj['runs'][0]['run_id'] == rd.name and sj['runs'][0]['quality.metrics.delta_1.25'] is not None
    # the milestone review sees the run
    r = pqk('review', '--runs-dir', runs, '--reports-dir', reps)
    assert r.returncode == 0, r.stderr
    md = (reps / 'milestones.md').read_text()
    assert '| E9_fake | eval | 1 | 1 | 0 | 0 |' in md, md


@pytest.mark.slow
def test_failing_template_gives_failed_log_and_keeps_notebook(tmp_path):
    from pqk.core.logschema import validate_log
    runs, reps = tmp_path / 'runs', tmp_path / 'reports'
    card = make_card(tmp_path, 'F1_fail', kind='K', template='fake_fail.ipynb')
    r = pqk('run', card, '--runs-dir', runs, '--reports-dir', reps)
    assert r.returncode == 1, r.stdout + r.stderr
    [rd] = run_dirs(runs, 'F1_fail')
    rec = validate_log(json.loads((rd / 'log.json').read_text()))
    assert rec['status'] == 'failed'
    assert 'RuntimeError: template exploded on purpose (seed=7)' in rec['reason'], rec['reason']
    assert 'RuntimeError' in rec['error'] and 'raise RuntimeError' in rec['error'], rec['error']
    assert rec['model']['name'] == 'half-built'                      # scraps recorded before the error are kept
    assert rec['quality']['quality_drop_pct'] is None and rec['thresholds']['rule'] == 'mainline'
    nb = json.loads((rd / 'F1_fail.ipynb').read_text())             # the partial notebook, as papermill left it
    assert nb['metadata']['papermill']['exception'] is True
    failed = [c for c in nb['cells'] if c.get('metadata', {}).get('papermill', {}).get('status') == 'failed']
    assert len(failed) == 1 and 'RuntimeError' in json.dumps(failed[0]['outputs'])
    assert (rd / 'F1_fail.html').is_file()
    sj = check_reports(reps, 1, ['K'])
    assert sj['runs'][0]['status'] == 'failed'


@pytest.mark.slow
def test_missing_template_and_bad_card(tmp_path):
    from pqk.core.logschema import validate_log
    runs, reps = tmp_path / 'runs', tmp_path / 'reports'
    r = pqk('run', make_card(tmp_path, 'M1_missing', template='no_such_template'), '--runs-dir', runs, '--reports-dir', reps)
    assert r.returncode == 1
    [rd] = run_dirs(runs, 'M1_missing')
    rec = validate_log(json.loads((rd / 'log.json').read_text()))
    assert rec['status'] == 'failed' and "TemplateNotFound: template 'no_such_template'" in rec['reason'], rec['reason']
    # a card that fails devcheck runs nothing and names the field and value
    bad = make_card(tmp_path, 'B9_bad', budget=0.05)
    bad.write_text(bad.read_text().replace('gpu_hours_budget: 0.05', 'gpu_hours_budget: -2'))
    r = pqk('run', bad, '--runs-dir', runs, '--reports-dir', reps)
    assert r.returncode == 2 and "gpu_hours_budget: got -2" in r.stderr, r.stderr     # bad input: nothing ran
    assert run_dirs(runs, 'B9_bad') == []


def _children(pid: int) -> list[int]:
    "Direct child processes of `pid` (read from /proc)."
    kids = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try: fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError: continue
        if int(fields[1]) == pid: kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
def test_killed_run_leaves_no_log_and_aggregate_still_works(tmp_path):
    runs, reps = tmp_path / 'runs', tmp_path / 'reports'
    r = pqk('run', make_card(tmp_path, 'E9_fake'), '--runs-dir', runs, '--reports-dir', reps)
    assert r.returncode == 0, r.stderr
    before = (reps / 'summary.json').read_text()
    card = make_card(tmp_path, 'S1_sleep')
    with open(tmp_path / 'out.txt', 'w') as out:
        p = subprocess.Popen(pqk_args('run', card, '--runs-dir', runs, '--reports-dir', reps, '--param', 'sleep_s=120'),
                             cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        kids = []
        try:
            deadline = time.monotonic() + 90
            while not list(runs.glob('S1_sleep-*/started.marker')):      # the template is running
                assert p.poll() is None, (tmp_path / 'out.txt').read_text()
                assert time.monotonic() < deadline, 'template did not start'
                time.sleep(0.2)
            kids = _children(p.pid)                                      # the kernel (its own session)
            os.kill(p.pid, signal.SIGKILL); p.wait(10)
        finally:
            for k in [p.pid] + kids:
                try: os.kill(k, signal.SIGKILL)
                except ProcessLookupError: pass
    [rd] = run_dirs(runs, 'S1_sleep')
    assert not (rd / 'log.json').exists() and not list(rd.glob('.*log.json*'))
    assert (reps / 'summary.json').read_text() == before                # reports untouched and whole
    check_reports(reps, 1, ['eval'])
    r = pqk('aggregate', '--runs-dir', runs, '--reports-dir', reps)
    assert r.returncode == 0, r.stderr
    sj = check_reports(reps, 1, ['eval'])
    assert [x['task_card'] for x in sj['runs']] == ['E9_fake'] and sj['skipped'] == []


@pytest.mark.slow
def test_two_cards_at_once_both_land_in_reports(tmp_path):
    runs, reps = tmp_path / 'runs', tmp_path / 'reports'
    cards = [make_card(tmp_path, 'C1_conc', kind='K'), make_card(tmp_path, 'C2_conc', kind='Q')]
    procs = [subprocess.Popen(pqk_args('run', c, '--runs-dir', runs, '--reports-dir', reps, '--param', f'drop={d}'),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c, d in zip(cards, (0.5, 1.0))]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    sj = check_reports(reps, 2, ['K', 'Q'])
    assert sorted(r['task_card'] for r in sj['runs']) == ['C1_conc', 'C2_conc']
    q = next(r for r in sj['runs'] if r['kind'] == 'Q')
    assert q['thresholds.rule'] == 'q_only' and q['thresholds.quality_drop_max_pct'] == 2.0 and len(q['calibration_set_hash']) == 64


def test_invalid_logs_are_reported_and_skipped(tmp_path):
    from pqk.core.logschema import synthetic_log
    runs, reps = tmp_path / 'runs', tmp_path / 'reports'
    def put(name, text):
        (runs / name).mkdir(parents=True); (runs / name / 'log.json').write_text(text)
    put('good', json.dumps(synthetic_log(run_id='good')))
    put('truncated', json.dumps(synthetic_log(run_id='truncated'))[:200])
    put('bad_status', json.dumps(synthetic_log(run_id='bad_status', status='ok')))
    put('future', json.dumps({**synthetic_log(run_id='future'), 'schema_version': '9.0'}))
    (runs / 'in_progress').mkdir()                                        # a run folder without a log is ignored
    r = pqk('aggregate', '--runs-dir', runs, '--reports-dir', reps)
    assert r.returncode == 0, r.stderr
    for name, words in [('truncated', 'not valid JSON'), ('bad_status', "status: got 'ok'"),
                        ('future', "schema_version: got '9.0'")]:
        assert f'{name}/log.json' in r.stderr and words in r.stderr, r.stderr
    sj = check_reports(reps, 1, ['eval'])
    assert sj['runs'][0]['run_id'] == 'good'
    assert sorted(Path(s['file']).parent.name for s in sj['skipped']) == ['bad_status', 'future', 'truncated']


@pytest.mark.slow
def test_run_method_adhoc_copies_log(tmp_path):
    "The per-method path (pqk run-eval …) with an explicit template: task_card adhoc-eval, log copied to --log."
    from pqk.core.logschema import validate_log
    runs, reps, log = tmp_path / 'runs', tmp_path / 'reports', tmp_path / 'copy' / 'eval_log.json'
    code = ('from pqk.run.runner import run_method; import sys; '
            f"r = run_method('eval', workload={str(ROOT / 'configs' / 'workload.yaml')!r}, eval={str(ROOT / 'configs' / 'eval.yaml')!r}, "
            f"log={str(log)!r}, runs_dir={str(runs)!r}, reports_dir={str(reps)!r}, template={str(TPL / 'fake_run.ipynb')!r}, "
            "progress=False); sys.exit(0 if r['status'] == 'passed' else 1)")
    r = run_python(code, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    rec = validate_log(json.loads(log.read_text()))
    [rd] = run_dirs(runs, 'adhoc-eval')
    assert rec['task_card'] == 'adhoc-eval' and rec['run_id'] == rd.name and rec['thresholds']['gpu_hours_budget'] == 1.0
    assert json.loads((rd / 'log.json').read_text()) == rec
    r = pqk('run-eval', '--workload', tmp_path / 'nope.yaml', '--runs-dir', runs)     # bad input: clear error, no run
    assert r.returncode == 2 and 'nope.yaml' in r.stderr and 'an existing file' in r.stderr, r.stderr
    assert len(run_dirs(runs, 'adhoc-eval')) == 1
