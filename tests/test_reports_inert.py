"""Reports are inert (issue 20, class 5) and a log's names are not trusted (class 4, the readers' half), through the
`pqk aggregate` and `pqk review` commands in a child process, on synthetic logs (tests/synthetic_runs.py) in tmp_path.

A log may be hand-edited: its reason can be a spreadsheet formula or markup, its model name mathtext, its run id a
path or another run's. The reports must show such text as text (summary.csv, milestones.md, the plots) and skip the
logs whose names cannot be trusted, naming them.
"""
import csv, json, random
from pathlib import Path

import pytest
from conftest import run_pqk
from synthetic_runs import synthetic_run_log, write_run

FORMULA = '=HYPERLINK("http://x","y")'
MARKUP = '-1 <script>alert(1)</script> & a|b \\| [x](http://e) ![i](http://e/i.png) `c` $x$\nline2'
MARKUP_MD = ('-1 &lt;script&gt;alert(1)&lt;/script&gt; &amp; a\\|b \\\\\\| \\[x\\](http://e) !\\[i\\](http://e/i.png) '
             '\\`c\\` $x$ line2')
MATH = r'$\notacommand{x}$ <b>|`'
EVIL_CARD = '<script>|`x`$x$'


def _log(i: int, rid: str, **over) -> dict:
    "The i-th synthetic log as a passed K run with a latency and a drop, run id `rid`, fields replaced by `over`."
    rec = synthetic_run_log(1 + 11 * i, random.Random(i))                 # 1 + 11 i: the A1_K_only card, kind K
    rec.update(run_id=rid, status='passed', **over)
    rec['efficiency'].update(latency_p50_ms=40.0 + i, latency_p95_ms=44.0 + i)
    return rec


@pytest.fixture(scope='module')
def reports(tmp_path_factory):
    "A runs folder with two hostile-but-valid logs, a plain one and three whose names are bad; aggregate and review."
    tmp = tmp_path_factory.mktemp('inert')
    runs, reps = tmp / 'runs', tmp / 'reports'
    h1 = _log(0, 'H1-formula', reason=FORMULA)
    h1['model']['name'] = MATH; h1['efficiency']['device'] = '$x$'           # plot labels: mathtext if not escaped
    h1['environment']['host'] = '@SUM(1+1)'; h1['quality']['quality_drop_pct'] = -1.64
    h1['quality']['metrics'][EVIL_CARD] = 0.5                                # a metric name is text too
    h2 = _log(1, 'H2-markup', reason=MARKUP)
    h2['resource']['device_kind'] = 'cpu|<i>'
    n1 = _log(2, 'N1-plain', reason='passed: quality drop -0.50% (synthetic)')
    n1['quality']['quality_drop_pct'] = -0.5                                 # negative control: a plain run
    for rec in (h1, h2, n1): write_run(runs, rec)
    write_run(runs, _log(3, 'M1-elsewhere'), folder='M1-moved')             # run_id is not its folder's name
    write_run(runs, _log(4, 'bad run'))                                      # not a name (a space)
    write_run(runs, _log(5, 'C1-evil', task_card=EVIL_CARD))                 # a card id that is markup
    agg = run_pqk('aggregate', '--runs-dir', runs, '--reports-dir', reps, timeout=300)
    rev = run_pqk('review', '--runs-dir', runs, '--reports-dir', reps, '--since', '2026-01-01', '--until', '2026-01-31',
                  timeout=300)
    return {'runs': runs, 'reps': reps, 'agg': agg, 'rev': rev}


SKIPPED = {'M1-moved': "run_id: got 'M1-elsewhere'; expected the name of its run folder ('M1-moved')",
           'bad run': "run_id: got 'bad run'; expected a string matching ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
           'C1-evil': "task_card: got '<script>|`x`$x$'; expected a string matching ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"}


def test_aggregate_names_the_logs_whose_names_are_bad(reports):
    r = reports['agg']
    assert r.returncode == 0, r.stderr
    for folder, why in SKIPPED.items():
        assert f'skipped {reports["runs"].resolve() / folder / "log.json"}:' in r.stderr, r.stderr
        assert why in r.stderr, (why, r.stderr)
    assert '3 run(s) in 1 version group(s)' in r.stdout and '3 invalid log(s) skipped' in r.stdout, r.stdout
    sj = json.loads((reports['reps'] / 'summary.json').read_text())
    assert sorted(r['run_id'] for r in sj['runs']) == ['H1-formula', 'H2-markup', 'N1-plain']
    assert sorted(Path(s['file']).parent.name for s in sj['skipped']) == sorted(SKIPPED)


def test_summary_csv_neutralises_formulas_and_keeps_numbers(reports):
    path = reports['reps'] / 'summary.csv'
    with open(path, newline='', encoding='utf-8') as f: rows = {r['run_id']: r for r in csv.DictReader(f)}
    h1, h2, n1 = rows['H1-formula'], rows['H2-markup'], rows['N1-plain']
    assert h1['reason'] == '\'=HYPERLINK("http://x","y")'                          # the exact cell: a leading '
    assert h1['environment.host'] == "'@SUM(1+1)" and h2['reason'] == "'" + MARKUP
    assert h1['model.name'] == MATH and h1[f'quality.metrics.{EVIL_CARD}'] == '0.5'   # no formula lead: unchanged
    assert (h1['quality.quality_drop_pct'], n1['quality.quality_drop_pct']) == ('-1.64', '-0.5')    # numbers stay
    assert n1['reason'] == 'passed: quality drop -0.50% (synthetic)'                                  # plain text too
    raw = path.read_bytes().decode()
    assert ',"\'=HYPERLINK(""http://x"",""y"")",' in raw and ',-1.64,' in raw and ",'-1.64," not in raw
    assert len(rows) == 3 and raw.count('\r\n') == 4, raw      # header + 3 rows, CRLF each; the reason's LF in its cell


def test_workbook_holds_text_never_formulas(reports):
    import openpyxl
    wb = openpyxl.load_workbook(reports['reps'] / 'result_table.xlsx')
    ws = wb['w1.0 e1.0']
    hdr = [c.value for c in ws[1]]
    cells = {ws.cell(r, 1).value: ws.cell(r, hdr.index('reason') + 1) for r in range(2, ws.max_row + 1)}
    assert cells['H1-formula'].value == FORMULA and cells['H1-formula'].data_type == 's'   # text, not 'f'


def test_plots_render_with_mathtext_in_log_text(reports):
    from PIL import Image
    plots = reports['reps'] / 'plots'
    assert sorted(p.name for p in plots.iterdir()) == ['ablation.png', 'latency.png', 'stages.png', 'tradeoff.png']
    for p in plots.iterdir():
        with Image.open(p) as im: im.verify(); assert im.format == 'PNG' and im.size[0] > 300, p


def test_milestones_markdown_is_escaped(reports):
    r = reports['rev']
    assert r.returncode == 0, r.stderr
    md = (reports['reps'] / 'milestones.md').read_text()
    lines = md.splitlines()
    h2 = next(l for l in lines if l.startswith('| H2-markup |'))
    assert h2.startswith('| H2-markup | passed | ') and h2.endswith(f' | cpu\\|&lt;i&gt; | {MARKUP_MD} |'), h2
    h1 = next(l for l in lines if l.startswith('| H1-formula |'))
    assert h1.endswith(' | =HYPERLINK("http://x","y") |'), h1                      # Markdown has no formulas
    for row in (h1, h2): assert row.replace('\\|', '').count('|') == 6, row        # 5 cells, as the header
    assert '<' not in md and '`' not in md.replace('\\`', ''), md
    assert '3 run(s) of 1 card(s)' in md, md
    skipped = md.split('## Invalid logs (skipped)\n\n')[1].splitlines()
    assert len(skipped) == 3, skipped
    evil = next(l for l in skipped if '/C1-evil/log.json' in l)
    assert "task_card: got '&lt;script&gt;\\|\\`x\\`$x$'; expected a string matching" in evil, evil
    assert any("/M1-moved/log.json: run_id: got 'M1-elsewhere'; expected the name of its run folder" in l
               for l in skipped), skipped
    assert any('/bad run/log.json: run_id: got ' in l for l in skipped), skipped
