"""`pqk run` of a study card (kind S) end to end through papermill: every stage an ordinary run of a card the study
writes, chained by verified upstream hashes; the recommended recipe run again as a normal card gives its numbers; a
resumed study reuses every finished stage. The stages run a fake template (numbers from the stage's method config),
so that this tests the study's plumbing, not a model."""
import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import run_pqk, run_python

PARAMS = '''workload = None
eval = None
cfg = None
card = None
ckpt = None
card_id = ''
kind = ''
run_id = ''
out_dir = ''
seed = 0
gpu_hours_budget = None
thresholds = None
nproc = None
progress = True
resume = False'''

BODY = '''import pathlib, yaml
from pqk.core.io import write_text_atomic
from pqk.run.scraps import record
c = yaml.safe_load(pathlib.Path(cfg).read_text())
n = int(yaml.safe_load(pathlib.Path(workload).read_text())['data']['eval']['synthetic']['n_pairs'])
drop = 0.3 if kind == 'K' else 0.2 if c.get('keep_float') else 1.0     # heads kept in float: better, slower
sp = {'K': 1.3, 'KQ': 2.0, 'KP': 1.8, 'KPQ': 2.5}[kind] - (0.1 if c.get('keep_float') else 0.0)
for a in ('student_best.pt', 'pruned_best.pt'): write_text_atomic(pathlib.Path(out_dir, a), f'{run_id} from {ckpt}')
record('model', {'name': f'fake-{card_id}', 'params': 1000, 'size_mb': 0.004})
record('quality', {'primary': 'delta_1.25', 'higher_is_better': True, 'reference': 'ground_truth',
                   'metrics': {'delta_1.25': 0.9}, 'teacher': {'delta_1.25': 0.9}, 'quality_drop_pct': drop,
                   'quality_drop_lo_pct': drop - 0.3, 'quality_drop_hi_pct': drop + 0.3, 'n_pairs': n})
record('efficiency', {'latency_p50_ms': 100.0 / sp, 'latency_p95_ms': 110.0 / sp, 'pairs_per_s': sp, 'params': 1000,
                      'size_mb': 0.004, 'gflops': 0.01, 'device': 'cpu',
                      'teacher': {'latency_p50_ms': 100.0, 'device': 'cpu'}})
if kind in ('Q', 'KQ', 'KPQ'): record('calibration_set_hash', 'b' * 64)'''

CARD = '''---
id: S9_fake
kind: S
goal: A study over fake stages.
configs:
  workload: configs/workload.yaml
  eval: configs/eval.yaml
thresholds:
  quality_drop_pct: eval.thresholds.quality_drop_mainline_pct
exceptions: []
stop_loss: eval.stop_loss.gpu_hours_over_budget_ratio
early_stop: eval.early_stop.no_improve_ckpt
gpu_hours_budget: 0.5
expected_duration: 1 min
status: ready
seed: 0
search:
  orders: [[K, Q], [P, K, Q]]
  space:
    Q: [{}, {keep_float: [heads]}]
  halving:
    eta: 2
    rungs:
      - pairs: 96
        overrides: {K: {train: {steps: 10}}, Q: {qat: {enabled: false}}}
---
# S9 fake study
'''


@pytest.mark.slow
def test_study_end_to_end(tmp_project):
    proj = tmp_project
    nb = new_notebook(cells=[new_code_cell(PARAMS, metadata={'tags': ['parameters']}), new_code_cell(BODY)])
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, proj / 'tests' / 'templates' / 'fake_study.ipynb')
    card = proj / 'taskcards' / 'S9_fake.md'
    card.write_text(CARD)
    runs = proj / 'runs'
    # `pqk run` sends a study card to run_study: its seed is the card's (refused before anything runs)
    p = run_pqk('run', card, '--seed', '3', '--runs-dir', runs, project=proj, cwd=proj)
    assert p.returncode == 2 and "--seed: got 3; expected none for a study card" in p.stderr, p.stderr[-2000:]
    assert not runs.exists() or not any(runs.iterdir())
    # every stage card names the fake template (the study's `template`, for tests)
    code = ('import sys; from pqk.run.study import run_study; r = run_study(sys.argv[1], sys.argv[2], '
            "template='tests/templates/fake_study.ipynb', progress=False, stream_output=False); "
            "print('STATUS', r['status'])")
    p = run_python(code, card, runs, project=proj, timeout=600)
    assert p.returncode == 0 and 'STATUS passed' in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    study = next(d for d in runs.iterdir() if d.name.startswith('S9_fake-'))
    rec = json.loads((study / 'study.json').read_text())
    states = {c['cid']: (c['state'], c['why'][:40]) for c in rec['candidates']}
    assert [s for s, _ in states.values()] == ['finished', 'pruned', 'cannot run'], states
    best = rec['recommended']
    assert (best['tag'], best['n_pairs'], best['status']) == ('K0-Q0', 288, 'passed'), best
    # cheap runs in the study folder, last-rung runs in runs/ with a verified upstream pinned to the K run
    r0 = sorted(json.loads((d / 'log.json').read_text())['task_card'] for d in (study / 'rung0').iterdir())
    assert r0 == ['S9_fake.r0.K0', 'S9_fake.r0.K0-Q0', 'S9_fake.r0.K0-Q1'], r0
    full = {json.loads((d / 'log.json').read_text())['task_card']: json.loads((d / 'log.json').read_text())
            for d in runs.iterdir() if (d / 'log.json').is_file()}
    assert sorted(full) == ['S9_fake.K0', 'S9_fake.K0-Q0'], sorted(full)
    q = full['S9_fake.K0-Q0']
    assert q['run_id'] == best['run_id'] and q['kind'] == 'KQ' and q['quality']['n_pairs'] == 288
    assert q['upstream'][0]['run_id'] == full['S9_fake.K0']['run_id'] and q['upstream'][0]['verified'] is True
    assert not (study / 'log.json').exists()                  # a study is no run of one kind: study.json is its record
    assert (study / 'front.png').is_file() and 'Recommended' in (study / 'study.md').read_text()
    # the recommended recipe run again as a normal card gives its numbers
    assert best['reproduce'].startswith('pqk run runs/')
    p = run_pqk('run', best['reproduce'].split(' ', 2)[2], '--runs-dir', runs, '--no-aggregate', project=proj,
                cwd=proj, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    again = [json.loads((d / 'log.json').read_text()) for d in runs.iterdir()
             if (d / 'log.json').is_file() and d.name != q['run_id'] and d.name.startswith('S9_fake.K0-Q0-')]
    assert len(again) == 1 and again[0]['quality'] == q['quality'] and again[0]['status'] == q['status']
    # resumed: every stage finished, so nothing runs again and no run folder is added
    before = sorted(d.name for d in runs.iterdir())
    code2 = code.replace("progress=False", f"resume='{study.name}', progress=False")
    p = run_python(code2, card, runs, project=proj, timeout=300)
    assert p.returncode == 0 and 'STATUS passed' in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    assert sorted(d.name for d in runs.iterdir()) == before
    rec2 = json.loads((study / 'study.json').read_text())
    assert rec2['recommended']['run_id'] == best['run_id'] and rec2['log'][0].endswith('finished stage runs reused)')


def _tiny_project(proj: Path, tiny_ckpt: Path) -> Path:
    """`proj` with tiny contracts and method configs in configs/ (4 evaluation pairs of 2 scenes, the tiny checkpoint
    as the workload's teacher, a few training steps at 64 px)."""
    import shutil
    from conftest import tiny_contracts, yaml_copy, ROOT
    shutil.copy(tiny_ckpt, proj / 'tiny.pt')
    tiny_contracts(proj / 'configs', {'data.eval.synthetic': {'n_scenes': 2, 'n_pairs': 4},
                                      'calibration.count': 2, 'calibration.synthetic': {'n_scenes': 1},
                                      'teacher.checkpoint': str(proj / 'tiny.pt')})
    def dc(d):
        d['train'].update(steps=4, batch_pairs=1, warmup_steps=1, lr=1e-3, res=64,
                          train_data={'seed': 0, 'n_scenes': 2, 'views_per_scene': 2})
        d['checkpoint'] = {'every_steps': 2, 'eval_every_steps': 0, 'keep_last': 2}
    def qc(d):
        d['qat'].update(steps=2, res=64, train_data={'seed': 0, 'n_scenes': 1, 'views_per_scene': 2})
        d['sensitivity']['pairs'] = 1
    yaml_copy(ROOT / 'configs/distill.yaml', proj / 'configs/distill.yaml', dc)
    yaml_copy(ROOT / 'configs/quant.yaml', proj / 'configs/quant.yaml', qc)
    return proj


@pytest.mark.slow
def test_study_real_templates(tmp_project, tiny_ckpt):
    """A K→Q study on the real templates with a tiny model: the K stage's student_best.pt is what Q quantizes (its
    hash verified), the speed-up and the drop come from the real logs, the last rung evaluates the contract's pairs."""
    proj = _tiny_project(tmp_project, tiny_ckpt)
    card = proj / 'taskcards' / 'S9_real.md'
    card.write_text(CARD.replace('id: S9_fake', 'id: S9_real').replace("[[K, Q], [P, K, Q]]", "[[K, Q]]")
                    .replace('pairs: 96', 'pairs: 2').replace('steps: 10', 'steps: 2')
                    .replace('{qat: {enabled: false}}', '{qat: {enabled: false}, sensitivity: {enabled: false}}'))
    runs = proj / 'runs'
    p = run_pqk('run', card, '--runs-dir', runs, '--reports-dir', proj / 'reports', project=proj, cwd=proj,
                timeout=900)
    # exit 0 with a recommendation, 1 without (4 pairs of 2 scenes give no interval: nothing passes decisively)
    assert p.returncode in (0, 1), p.stdout[-4000:] + p.stderr[-4000:]
    study = next(d for d in runs.iterdir() if d.name.startswith('S9_real-'))
    rec = json.loads((study / 'study.json').read_text())
    assert sorted(c['state'] for c in rec['candidates']) == ['finished', 'pruned'], rec['candidates']
    pts = rec['front']['points']
    assert len(pts) == 1 and pts[0]['n_pairs'] == 4 and pts[0]['speedup_source'] == 'interleaved', pts
    assert pts[0]['drop_pct'] is not None and pts[0]['status'] in ('passed', 'failed', 'inconclusive'), pts
    r0 = [c['scores']['0'] for c in rec['candidates']]
    assert all(s['n_pairs'] == 2 and s['speedup'] is not None for s in r0), r0
    q = json.loads((runs / pts[0]['run_id'] / 'log.json').read_text())
    k = q['upstream'][0]
    assert (k['card'], k['artifact'], k['verified']) == ('S9_real.K0', 'student_best.pt', True), k
    assert (runs / k['run_id'] / 'log.json').is_file() and q['kind'] == 'KQ'
    assert (proj / 'reports' / 'studies' / f'{study.name}.md').is_file()
    idx = proj / 'reports' / 'studies' / 'index.md'
    assert study.name in idx.read_text(), idx.read_text()
    idx.unlink()                                   # `pqk aggregate` rebuilds the studies' pages with the reports
    p = run_pqk('aggregate', '--runs-dir', runs, '--reports-dir', proj / 'reports', project=proj, cwd=proj, timeout=300)
    assert p.returncode == 0 and study.name in idx.read_text(), p.stdout[-2000:] + p.stderr[-2000:]
    # the recipe run again as normal cards (its K stage, then its Q stage, pinned to the study's K run) gives the
    # same quality numbers on this CPU
    cards = study / 'cards'
    for stage_card, run_id in ((cards / 'S9_real.K0.md', k['run_id']), (cards / f"{pts[0]['card']}.md", q['run_id'])):
        p = run_pqk('run', stage_card, '--runs-dir', runs, '--no-aggregate', project=proj, cwd=proj, timeout=600)
        assert p.returncode in (0, 1, 3), p.stdout[-3000:] + p.stderr[-3000:]
        card_id = stage_card.stem
        again = [json.loads((d / 'log.json').read_text()) for d in runs.iterdir()
                 if d.name.startswith(card_id + '-2') and d.name != run_id and (d / 'log.json').is_file()]
        first = json.loads((runs / run_id / 'log.json').read_text())
        nums = lambda q: {k: v for k, v in q.items() if k != 'teacher_cache'}    # provenance (a read time): no number
        assert len(again) == 1 and nums(again[0]['quality']) == nums(first['quality']), (card_id, again, first)
