"""SIGTERM and resume across process boundaries: a K run killed by SIGTERM (what schedulers and `timeout` send) ends
with a `stopped` log (exit status 4); `pqk run <card> --resume RUN_ID` finishes it in the same folder, and its final
metrics and weights equal those of an uninterrupted run. A draft card runs only with --force.

The card, its edited configs and its tiny teacher live in a small project of their own (PQK_ROOT): what a card names
must lie inside the project."""
import json, signal, subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (ROOT, make_project, pqk_argv, pqk_env, run_pqk, tiny_checkpoint, tiny_contracts, wait_until,
                      yaml_copy)

@pytest.fixture(scope='module')
def card(tmp_path_factory):
    "A K card on a tiny teacher and tiny data: 60 steps at 64 px, a checkpoint every 10 steps, 2 evaluation pairs."
    d = make_project(tmp_path_factory.mktemp('proj') / 'proj')
    teacher = tiny_checkpoint(d / 'teacher.pt', dict(enc_embed_dim=32, enc_depth=3, enc_num_heads=2, dec_embed_dim=32,
                                                     dec_depth=3, dec_num_heads=2, head_type='linear'))
    def dc(x):
        x['train'].update(steps=60, batch_pairs=1, warmup_steps=2, lr=1e-3, res=64,
                          train_data={'seed': 0, 'n_scenes': 2, 'views_per_scene': 2},
                          val_data={'seed': 900, 'n_scenes': 1, 'views_per_scene': 2})
        x['checkpoint'] = {'every_steps': 10, 'eval_every_steps': 30, 'keep_last': 2}
        x['student'].update(reduction=0.3, reduce='depth', init='teacher')
    w, e = tiny_contracts(d / 'configs')
    c = yaml_copy(ROOT / 'configs/distill.yaml', d / 'configs' / 'distill.yaml', dc)
    front = {'id': 'R1_resume', 'kind': 'K', 'goal': 'test resume', 'status': 'ready', 'seed': 0,
             'configs': {'workload': str(w), 'eval': str(e), 'method': str(c)},
             'thresholds': {'quality_drop_pct': 'eval.thresholds.quality_drop_mainline_pct'},
             'stop_loss': 'eval.stop_loss.gpu_hours_over_budget_ratio', 'early_stop': 'eval.early_stop.no_improve_ckpt',
             'gpu_hours_budget': 5.0, 'expected_duration': '1 min', 'checkpoint': str(teacher)}
    p = d / 'taskcards' / 'R1_resume.md'
    p.write_text('---\n' + yaml.safe_dump(front, sort_keys=False) + '---\nResume test card.\n')
    return p

def _run(card, *args, timeout=600):
    "`pqk run CARD ARGS` in the card's project."
    return run_pqk('run', card, *args, project=Path(card).parents[1], timeout=timeout)

def _log(runs: Path) -> tuple[Path, dict]:
    (d,) = [p for p in runs.iterdir() if p.is_dir()]
    return d, json.loads((d / 'log.json').read_text())

@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted(card, tmp_path):
    common = ['--no-aggregate', '--param', 'train_res=64', '--param', 'progress=false']
    full = _run(card, '--runs-dir', tmp_path / 'full', *common)
    d_full, r_full = _log(tmp_path / 'full')
    assert r_full['training']['status'] == 'completed', full.stdout[-2000:] + full.stderr[-2000:]

    runs = tmp_path / 'cut'
    p = subprocess.Popen(pqk_argv('run', card, '--runs-dir', runs, *common), cwd=ROOT,
                         env=pqk_env(Path(card).parents[1]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: list(runs.glob('*/train/checkpoints/ckpt_000010.pt')), 'the first checkpoint', p, limit=300)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    d_cut, r_cut = _log(runs)
    last = out.splitlines()[-2:]                          # the verdict, then where the record is; no kernel noise
    assert p.returncode == 4 and 'STOPPED' in last[0] and last[1].startswith('  record: '), out[-3000:]
    assert not [w for w in ('Traceback', 'ZMQError', 'without encryption') if w in out], out[-3000:]
    assert r_cut['status'] == 'stopped' and 'SIGTERM' in r_cut['reason'] and '--resume' in r_cut['reason'], r_cut['reason']

    res = _run(card, '--runs-dir', runs, '--resume', d_cut.name, *common)
    d_res, r_res = _log(runs)
    assert d_res == d_cut, 'resumed in the same folder'
    assert r_res['training']['status'] == 'completed', res.stdout[-2000:] + res.stderr[-2000:]
    assert r_res['resume']['count'] == 1 and r_res['resume']['previous'][0]['status'] == 'stopped'
    assert (d_res / r_res['resume']['previous'][0]['notebook']).is_file()
    assert r_res['quality']['metrics'] == r_full['quality']['metrics']
    assert r_res['training']['final_loss'] == r_full['training']['final_loss']
    a, b = (torch.load(d / 'student_best.pt', weights_only=True)['model'] for d in (d_full, d_res))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert r_res['resource']['device_hours'] >= r_cut['resource']['device_hours']   # both attempts are counted

def test_resume_refuses_other_runs_and_passed_runs(card, tmp_path):
    (tmp_path / 'runs' / 'E0_eval_teacher-20260101T000000Z-abcdef').mkdir(parents=True)
    r = _run(card, '--runs-dir', tmp_path / 'runs', '--resume', 'E0_eval_teacher-20260101T000000Z-abcdef')
    assert r.returncode == 2 and "a run of card 'R1_resume'" in r.stderr and 'Traceback' not in r.stderr, r.stderr
    r = _run(card, '--runs-dir', tmp_path / 'runs', '--resume', 'nope')
    assert r.returncode == 2 and 'the folder of an earlier run' in r.stderr, r.stderr

def test_draft_card_needs_force(card, tmp_path):
    draft = card.parent / 'R1_draft.md'
    draft.write_text(card.read_text().replace('status: ready', 'status: draft').replace('id: R1_resume', 'id: R1_draft'))
    r = _run(draft, '--runs-dir', tmp_path / 'runs', '--no-aggregate')
    draft.unlink()
    assert r.returncode == 2 and "status: got 'draft'; expected 'ready' (or run it anyway with --force)" in r.stderr, r.stderr
    assert not (tmp_path / 'runs').exists() or not any((tmp_path / 'runs').iterdir())
