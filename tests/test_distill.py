"Process-boundary tests of pqk.compress.distill: the `python -m pqk.compress.distill` entry point, resume, torchrun DDP (gloo), stop rules."
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = {'train': {'steps': 4, 'batch_pairs': 1, 'warmup_steps': 1, 'lr': 1e-3,
                  'train_data': {'seed': 0, 'n_scenes': 2, 'views_per_scene': 2},
                  'val_data': {'seed': 900, 'n_scenes': 1, 'views_per_scene': 2}},
        'checkpoint': {'every_steps': 2, 'eval_every_steps': 0, 'keep_last': 3},
        'student': {'reduction': 0.3, 'reduce': 'depth', 'init': 'teacher'}}

@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    from pqk.models.dust3r import make_model
    from pqk.models.config import DUSt3RConfig
    from pqk.models.checkpoints import save_checkpoint
    torch.manual_seed(0)
    m = make_model(DUSt3RConfig(enc_embed_dim=32, enc_depth=3, enc_num_heads=2, dec_embed_dim=32, dec_depth=3,
                                dec_num_heads=2, head_type='linear', img_size=(64, 64)))
    return save_checkpoint(m, tmp_path_factory.mktemp('teacher') / 'tiny_teacher.pt')

def _args(out, teacher, cfg=TINY, *extra):
    return ['--config', str(ROOT / 'configs/distill.yaml'), '--workload', str(ROOT / 'configs/workload.yaml'),
            '--eval', str(ROOT / 'configs/eval.yaml'), '--out', str(out), '--teacher', str(teacher), '--res', '64',
            '--quiet', '--overrides', json.dumps(cfg), *map(str, extra)]

def _run(args, timeout=300):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    p = subprocess.run([sys.executable, '-m', 'pqk.compress.distill', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p

def _result(out): return json.loads((Path(out) / 'result.json').read_text())

def test_resume_bit_exact(tmp_path, teacher):
    _run(_args(tmp_path / 'full', teacher))
    _run(_args(tmp_path / 'cut', teacher, TINY, '--stop-after', 2))
    assert _result(tmp_path / 'cut')['status'] == 'interrupted'
    _run(_args(tmp_path / 'cut', teacher, TINY, '--resume', tmp_path / 'cut' / 'checkpoints' / 'ckpt_000002.pt'))
    a, b = _result(tmp_path / 'full'), _result(tmp_path / 'cut')
    assert a['status'] == b['status'] == 'completed' and a['step'] == b['step'] == 4
    assert [h['loss'] for h in a['history']] == [h['loss'] for h in b['history']]
    sa = torch.load(tmp_path / 'full' / 'checkpoints' / 'ckpt_000004.pt', weights_only=True)
    sb = torch.load(tmp_path / 'cut' / 'checkpoints' / 'ckpt_000004.pt', weights_only=True)
    for k in sa['model']: assert torch.equal(sa['model'][k], sb['model'][k]), k
    for k in sa['projections']: assert torch.equal(sa['projections'][k], sb['projections'][k]), k

def test_torchrun_two_processes_gloo(tmp_path, teacher):
    from pqk.compress.distill import launch
    cfg = {**TINY, 'train': {**TINY['train'], 'steps': 2}, 'checkpoint': {'every_steps': 2, 'eval_every_steps': 0, 'keep_last': 2}}
    launch(2, _args(tmp_path / 'ddp', teacher, cfg), env={'PYTHONPATH': str(ROOT)}, timeout=300)
    files = sorted(str(p.relative_to(tmp_path / 'ddp')) for p in (tmp_path / 'ddp').rglob('*') if p.is_file())
    assert files == ['checkpoints/ckpt_000002.pt', 'result.json'], files
    r = _result(tmp_path / 'ddp')
    assert r['status'] == 'completed' and r['world'] == 2 and r['step'] == 2

def test_forced_nan_stops(tmp_path, teacher):
    _run(_args(tmp_path / 'nan', teacher, TINY, '--debug-nan-at-step', 1))
    r = _result(tmp_path / 'nan')
    assert r['status'] == 'stopped' and 'non-finite loss' in r['reason'] and 'step 1' in r['reason'] and r['step'] == 1

def test_over_budget_stops(tmp_path, teacher):
    _run(_args(tmp_path / 'budget', teacher, TINY, '--gpu-hours-budget', 1e-9))
    r = _result(tmp_path / 'budget')
    assert r['status'] == 'stopped' and 'stop-loss' in r['reason'] and r['step'] < 4

def test_bad_resume_path_is_clear(tmp_path, teacher):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    p = subprocess.run([sys.executable, '-m', 'pqk.compress.distill', *_args(tmp_path / 'x', teacher, TINY, '--resume', tmp_path / 'missing.pt')],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and 'missing.pt not found' in p.stderr
