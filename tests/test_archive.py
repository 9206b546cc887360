"""An archived run notebook reads cleanly and can be moved: `pqk run` through tests/templates/fake_run.ipynb with a
300-step progress bar, then the record is moved elsewhere and its notebook re-executed there."""
import json, shutil

import pytest
from conftest import ROOT, run_pqk, run_python
from test_runner import make_card, run_dirs

pytestmark = pytest.mark.slow


def _outputs(nb: dict, name: str) -> list[str]:
    return [''.join(o.get('text', '')) for c in nb['cells'] for o in c.get('outputs', []) if o.get('name') == name]


def test_archived_notebook_is_clean_and_movable(tmp_path):
    runs, reps = tmp_path / 'runs', tmp_path / 'reports'
    r = run_pqk('run', make_card(tmp_path, 'P1_progress'), '--runs-dir', runs, '--reports-dir', reps, '--param', 'steps=300')
    assert r.returncode == 0, r.stdout + r.stderr
    [rd] = run_dirs(runs, 'P1_progress')
    nb = json.loads((rd / 'P1_progress.ipynb').read_text())
    # the progress bar: one final line on stdout, no stderr output at all, no tqdm warning
    assert _outputs(nb, 'stderr') == [], _outputs(nb, 'stderr')[:3]
    out = ''.join(_outputs(nb, 'stdout'))
    lines = [l for l in out.splitlines() if l.startswith('pairs:')]
    assert len(lines) == 1 and '300/300' in lines[0] and '100%' in lines[0], out
    assert 'IProgress' not in json.dumps(nb) and '\r' not in out
    # the console: the template's final bar line once (indented), no kernel warning, no papermill cell bar
    console = r.stdout + r.stderr
    assert [l for l in r.stdout.splitlines() if 'pairs:' in l] == ['  ' + lines[0]], r.stdout
    assert 'without encryption' not in console and 'Executing' not in console, console
    # the record names no absolute folder of this machine (metadata included), nor does its HTML copy
    for f in (rd / 'P1_progress.ipynb', rd / 'P1_progress.html'):
        text = f.read_text()
        assert not [d for d in (tmp_path, tmp_path.resolve(), ROOT) if str(d) in text], (f, text[:3000])
    assert (nb['metadata']['papermill']['input_path'], nb['metadata']['papermill']['output_path']) == \
        ('config/fake_run.ipynb', 'P1_progress.ipynb'), nb['metadata']['papermill']
    # injected parameters name files relative to the run folder
    params = nb['metadata']['papermill']['parameters']
    assert (params['workload'], params['eval'], params['card'], params['out_dir']) == \
        ('config/workload.yaml', 'config/eval.yaml', 'config/P1_progress.md', '.'), params
    # (resume_command is not a file: it is the advice a stop prints, the card as the user named it)
    assert not any(isinstance(v, str) and str(tmp_path) in v for k, v in params.items() if k != 'resume_command'), params
    # move the record and re-run its notebook where it now lies: it finds its inputs and writes next to itself
    moved = tmp_path / 'elsewhere' / rd.name
    shutil.move(str(rd), str(moved)); (moved / 'student.txt').unlink()
    code = ("import papermill as pm, sys; pm.execute_notebook(sys.argv[1], sys.argv[2], cwd=sys.argv[3], "
            "kernel_name='python3', progress_bar=False)")
    p = run_python(code, moved / 'P1_progress.ipynb', moved / 'rerun.ipynb', moved, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (moved / 'student.txt').read_text() == 'fake weights'
