"""Process-boundary tests of pqk.compress.distill: the `python -m pqk.compress.distill` entry point, resume, torchrun
DDP (gloo) through `pqk.train.loop.torchrun`, stop rules, and the run_distill template end to end
(`pqk run-distill`)."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, pqk_argv, pqk_env, run_pqk, tiny_checkpoint, tiny_contracts, wait_until, yaml_copy

TINY = {'train': {'steps': 4, 'batch_pairs': 1, 'warmup_steps': 1, 'lr': 1e-3,
                  'train_data': {'seed': 0, 'n_scenes': 2, 'views_per_scene': 2},
                  'val_data': {'seed': 900, 'n_scenes': 1, 'views_per_scene': 2}},
        'checkpoint': {'every_steps': 2, 'eval_every_steps': 0, 'keep_last': 3},
        'student': {'reduction': 0.3, 'reduce': 'depth', 'init': 'teacher'}}

TEACHER = dict(enc_embed_dim=32, enc_depth=3, enc_num_heads=2, dec_embed_dim=32, dec_depth=3, dec_num_heads=2,
               head_type='linear', img_size=(64, 64))

@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp('teacher') / 'tiny_teacher.pt', TEACHER)

def _args(out, teacher, cfg=TINY, *extra):
    return ['--config', str(ROOT / 'configs/distill.yaml'), '--workload', str(ROOT / 'configs/workload.yaml'),
            '--eval', str(ROOT / 'configs/eval.yaml'), '--out', str(out), '--teacher', str(teacher), '--res', '64',
            '--quiet', '--overrides', json.dumps(cfg), *map(str, extra)]

def _run(args, timeout=300, ok=True):
    p = run_pqk(*args, module='pqk.compress.distill', timeout=timeout)
    if ok: assert p.returncode == 0, p.stderr[-3000:]
    return p

def _result(out): return json.loads((Path(out) / 'result.json').read_text())

@pytest.mark.slow
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
    pa, pb = sa['extra']['projections'], sb['extra']['projections']
    for k in pa: assert torch.equal(pa[k], pb[k]), k

@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path, teacher):
    from pqk.train.loop import torchrun
    cfg = {**TINY, 'train': {**TINY['train'], 'steps': 2},
           'checkpoint': {'every_steps': 2, 'eval_every_steps': 0, 'keep_last': 2}}
    torchrun('pqk.compress.distill', 2, _args(tmp_path / 'ddp', teacher, cfg), env={'PYTHONPATH': str(ROOT)},
             timeout=300)
    files = sorted(str(p.relative_to(tmp_path / 'ddp')) for p in (tmp_path / 'ddp').rglob('*') if p.is_file())
    assert files == ['checkpoints/ckpt_000002.pt', 'result.json'], files
    r = _result(tmp_path / 'ddp')
    assert r['status'] == 'completed' and r['world'] == 2 and r['step'] == 2

@pytest.mark.slow
def test_torchrun_stop_loss_on_every_rank(tmp_path, teacher):
    """Under DDP the stop-loss decision is shared: both ranks stop at the same step and leave the process group. The
    stop rules reach the workers as one JSON value (what `train_student` passes), ratio included."""
    from pqk.train.loop import torchrun
    rules = json.dumps({'patience': 3, 'budget_hours': 1e-9, 'over_budget_ratio': 1.5})
    torchrun('pqk.compress.distill', 2, _args(tmp_path / 'ddp', teacher, TINY, '--stop-rules', rules),
             env={'PYTHONPATH': str(ROOT)}, timeout=300)
    r = _result(tmp_path / 'ddp')
    assert (r['status'], r['step'], r['world']) == ('stopped', 0, 2) and r['reason'].startswith('stop-loss at step 0')
    assert '(2 devices)' in r['reason'] and '> 1.5 x budget 1e-09' in r['reason'] and r['device_kind'] == 'cpu'

def test_bad_stop_rules_are_clear(tmp_path, teacher):
    for rules, said in (('{"patience": 0}', 'no_improve_ckpt: got 0'), ('{"budget": 1}', 'budget'), ('[1', 'JSON')):
        p = _run(_args(tmp_path / 'x', teacher, TINY, '--stop-rules', rules), ok=False)
        assert p.returncode == 2 and '--stop-rules' in p.stderr and said in p.stderr, p.stderr[-2000:]
        assert 'Traceback' not in p.stderr and not (tmp_path / 'x').exists()

@pytest.mark.slow
def test_forced_nan_stops(tmp_path, teacher):
    _run(_args(tmp_path / 'nan', teacher, TINY, '--debug-nan-at-step', 1))
    r = _result(tmp_path / 'nan')
    assert r['status'] == 'stopped' and 'non-finite loss' in r['reason'] and 'step 1' in r['reason'] and r['step'] == 1

@pytest.mark.slow
def test_over_budget_stops(tmp_path, teacher):
    _run(_args(tmp_path / 'budget', teacher, TINY, '--gpu-hours-budget', 1e-9))
    r = _result(tmp_path / 'budget')
    assert r['status'] == 'stopped' and 'stop-loss' in r['reason'] and r['step'] < 4

@pytest.mark.slow
def test_bad_resume_path_is_clear(tmp_path, teacher):
    p = _run(_args(tmp_path / 'x', teacher, TINY, '--resume', tmp_path / 'missing.pt'), ok=False)
    assert p.returncode != 0 and 'missing.pt not found' in p.stderr

@pytest.mark.slow
def test_run_distill_template_end_to_end(tmp_path, teacher):
    """`pqk run-distill` on a tiny config: the template trains, exports and evaluates; the log validates. Drops are
    measured against the teacher with a threshold of 0.001 %: a student with fewer blocks differs from it after 4
    steps, so the run fails (exit 1) naming the threshold."""
    def dc(d):
        d['train'].update(TINY['train'], res=64)
        d['checkpoint'] = {'every_steps': 2, 'eval_every_steps': 2, 'keep_last': 1}
        d['student'] = TINY['student']
    w, e = tiny_contracts(tmp_path, eval={'quality.reference': 'teacher',
                                          'thresholds.quality_drop_mainline_pct': 0.001})
    c = yaml_copy(ROOT / 'configs/distill.yaml', tmp_path / 'distill.yaml', dc)
    log = tmp_path / 'log.json'
    p = run_pqk('run-distill', '--workload', w, '--eval', e, '--cfg', c, '--ckpt', teacher, '--log', log,
                '--runs-dir', tmp_path / 'runs', '--no-aggregate',
                '--param', 'steps=4', '--param', 'train_res=64', '--param', 'progress=false', timeout=600)
    assert log.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    from pqk.core.logschema import log_problems
    rec = json.loads(log.read_text())
    assert log_problems(rec) == [], log_problems(rec)
    assert (rec['kind'], rec['status'], p.returncode) == ('K', 'failed', 1), rec['reason']
    assert rec['quality']['quality_drop_pct'] > 0 and '> 0.001%' in rec['reason'], rec['reason']
    t = rec['training']
    assert (t['status'], t['steps_done'], t['steps']) == ('completed', 4, 4), t
    assert [x['step'] for x in t['evals']] == [2, 4] and t['best']['checkpoint'].startswith('checkpoints/ckpt_0000')
    run_dir = next((tmp_path / 'runs').iterdir())
    a = rec['artifacts']
    assert a['train_result'] == 'train/result.json' and a['best_checkpoint'] == 'student_best.pt'
    assert a['per_pair'] == 'per_pair.csv' and len((run_dir / a['per_pair']).read_text().splitlines()) == 1 + 2
    res = json.loads((run_dir / a['train_result']).read_text())
    assert res['status'] == 'completed' and res['best'] == t['best'] and res['resolution'] == 64
    exported = torch.load(run_dir / a['best_checkpoint'], weights_only=True)
    assert exported['meta']['kind'] == 'distill_student' and 'extra' not in exported
    assert exported['meta']['source'] == f"train/{t['best']['checkpoint']}"
    assert rec['quality']['metrics'] and rec['model']['params'] == t['student']['student_params']
    eff = rec['efficiency']                          # the cost profile per stage of student and teacher, same run
    assert all(eff['stages_ms'][s] > 0 for s in ('encoder', 'decoder', 'heads')), eff
    assert all(eff['teacher']['stages_ms'][s] > 0 for s in ('encoder', 'decoder', 'heads')), eff['teacher']
    assert t['teacher_cache']['n_pairs'] > 0 and len(t['teacher_cache']['key']) == 24, t['teacher_cache']
    sb = t['side_by_side']                           # teacher and student timed in alternation
    want = sb['teacher']['p50_ms'] / sb['student']['p50_ms']
    assert sb['rounds'] == 3 and abs(t['speedup_p50_side_by_side'] - want) < 1e-9, sb

# --- a stop is a checkpoint: SIGTERM across process boundaries -------------------------------------------------------

def _no_cadence(steps, **ckpt):
    "TINY with `steps` steps, no evaluation and checkpoints only on a stop (or as `ckpt` says)."
    return {**TINY, 'train': {**TINY['train'], 'steps': steps},
            'checkpoint': {'every_steps': 0, 'every_seconds': 0, 'eval_every_steps': 0, 'keep_last': 2, **ckpt}}

@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_at_the_step_reached_and_resume_finishes(tmp_path, teacher):
    """A real SIGTERM to `python -m pqk.compress.distill` while it trains (no checkpoint cadence): a stopped result and
    a resumable checkpoint of the step it reached; resuming from it finishes the run."""
    import re, signal, threading
    out = tmp_path / 'run'
    env = pqk_env(PQK_PROGRESS='text', PQK_CACHE=str(tmp_path / 'cache'))
    args = [a for a in _args(out, teacher, _no_cadence(100_000)) if a != '--quiet']
    p = subprocess.Popen(pqk_argv(*args, module='pqk.compress.distill'), cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = []
    threading.Thread(target=lambda: err.extend(iter(lambda: p.stderr.read(1).decode(errors='replace'), '')),
                     daemon=True).start()
    def steps_shown():                                  # the progress bar exists once fit's handlers are installed
        got = re.findall(r'(\d+)/100000', ''.join(err))
        return got and int(got[-1]) >= 2
    wait_until(steps_shown, 'two training steps', p)
    p.send_signal(signal.SIGTERM)
    out_txt = p.stdout.read().decode(); assert p.wait(timeout=120) == 0, ''.join(err)[-3000:]
    r = _result(out)
    k = r['step']
    assert (r['status'], r['signal']) == ('stopped', 'SIGTERM') and k >= 2, r['reason']
    assert r['reason'] == f'SIGTERM received: stopped at step {k} of 100000; resumable checkpoint ckpt_{k:06d}.pt'
    assert f"stopped: {r['reason']}" in out_txt
    assert r['last_checkpoint'] == f'checkpoints/ckpt_{k:06d}.pt'
    assert sorted(x.name for x in (out / 'checkpoints').iterdir()) == [f'ckpt_{k:06d}.pt']   # no cadence: only this
    ck = torch.load(out / r['last_checkpoint'], weights_only=True)
    assert ck['step'] == k and len(ck['train']['history']) == k
    first = r['history']
    _run(_args(out, teacher, _no_cadence(k + 2), '--resume', out / r['last_checkpoint']))
    b = _result(out)
    assert (b['status'], b['step'], b['signal']) == ('completed', k + 2, None)
    assert b['history'][:k] == first and len(b['history']) == k + 2

@pytest.mark.slow
def test_torchrun_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path, teacher):
    """Under DDP only rank 1 gets SIGTERM (the test hook, during step 2): both ranks stop after step 2, rank 0 writes
    that step's checkpoint and a stopped result naming another rank."""
    from pqk.train.loop import torchrun
    args = _args(tmp_path / 'ddp', teacher, _no_cadence(6), '--debug-sigterm-at-step', 2)
    p = torchrun('pqk.compress.distill', 2, args, env={'PYTHONPATH': str(ROOT), 'PQK_CACHE': str(tmp_path / 'cache')},
                 timeout=300)
    assert p.signal is None and p.returncode == 0
    r = _result(tmp_path / 'ddp')
    assert (r['status'], r['step'], r['world'], r['signal']) == ('stopped', 2, 2, 'SIGTERM'), r
    assert r['reason'] == ('SIGTERM received by another rank: stopped at step 2 of 6; '
                           'resumable checkpoint ckpt_000002.pt')
    files = sorted(str(x.relative_to(tmp_path / 'ddp')) for x in (tmp_path / 'ddp').rglob('*') if x.is_file())
    assert files == ['checkpoints/ckpt_000002.pt', 'result.json'], files
    ck = torch.load(tmp_path / 'ddp' / 'checkpoints' / 'ckpt_000002.pt', weights_only=True)
    assert ck['step'] == 2 and ck['train']['world'] == 2

@pytest.mark.slow
def test_sigterm_to_the_kernels_process_group_stops_torchrun_workers(tmp_path, teacher):
    """What `pqk run` does on a stop: SIGTERM to the process group of the kernel that runs `train_student(nproc=2)`.
    The kernel stands in here as a Python process in its own session; it survives, torchrun's agent passes the signal
    to its workers (they run in sessions of their own), they stop at one step with its checkpoint, and the kernel
    gets their stopped result."""
    import signal
    cfg = yaml_copy(ROOT / 'configs/distill.yaml', tmp_path / 'distill.yaml',
                    {'checkpoint': {'every_steps': 1, 'every_seconds': 0, 'eval_every_steps': 100000, 'keep_last': 1}})
    out = tmp_path / 'train'
    code = f"""
import json
from pqk.compress.distill import train_student
from pqk.core.contracts import method_config
dc = method_config('distill', {str(cfg)!r}, train={{**{TINY['train']!r}, 'steps': 100000}}, student={TINY['student']!r})
r = train_student(dc, {str(out)!r}, {str(ROOT / 'configs/workload.yaml')!r}, {str(ROOT / 'configs/eval.yaml')!r},
                  None, cfg={str(cfg)!r}, teacher_spec={str(teacher)!r}, nproc=2, res=64, progress=False)
print(json.dumps({{k: r[k] for k in ('status', 'reason', 'step', 'world', 'signal', 'last_checkpoint')}}))
"""
    p = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, start_new_session=True, text=True,
                         env=pqk_env(PQK_CACHE=str(tmp_path / 'cache')),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: (out / 'checkpoints' / 'ckpt_000001.pt').is_file(), 'the first checkpoint', p)
    os.killpg(p.pid, signal.SIGTERM)
    o, e = p.communicate(timeout=180)
    assert p.returncode == 0, e[-3000:]
    r = json.loads(o.strip().splitlines()[-1])
    k = r['step']
    assert (r['status'], r['signal'], r['world']) == ('stopped', 'SIGTERM', 2) and k >= 1, r
    assert r['reason'].startswith(f'SIGTERM received') and r['reason'].endswith(f'ckpt_{k:06d}.pt'), r['reason']
    assert r['last_checkpoint'] == f'checkpoints/ckpt_{k:06d}.pt' and (out / r['last_checkpoint']).is_file()
    assert torch.load(out / r['last_checkpoint'], weights_only=True)['step'] == k

@pytest.mark.slow
def test_run_distill_template_stopped_by_sigterm_keeps_its_numbers(tmp_path, teacher):
    """`pqk run-distill` whose training gets SIGTERM during step 2 (the test hook, in the kernel): no evaluation, a
    `stopped` log that keeps the training block, the resumable checkpoint and the reason."""
    def dc(d):
        d['train'].update(TINY['train'], res=64)
        d['checkpoint'] = {'every_steps': 100, 'every_seconds': 0, 'eval_every_steps': 100, 'keep_last': 1}
        d['student'] = TINY['student']
    w, _ = tiny_contracts(tmp_path)
    c = yaml_copy(ROOT / 'configs/distill.yaml', tmp_path / 'distill.yaml', dc)
    log = tmp_path / 'log.json'
    p = run_pqk('run-distill', '--workload', w, '--cfg', c, '--ckpt', teacher, '--log', log,
                '--runs-dir', tmp_path / 'runs', '--no-aggregate', '--param', 'steps=4', '--param', 'train_res=64',
                '--param', 'progress=false', '--param', 'debug_sigterm_at_step=2',
                env={'PQK_CACHE': str(tmp_path / 'cache')}, timeout=600)
    assert log.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    from pqk.core.logschema import log_problems
    rec = json.loads(log.read_text())
    assert log_problems(rec) == [] and rec['error'] is None, (log_problems(rec), rec['error'])
    assert rec['status'] == 'stopped' and p.returncode != 0, rec['reason']
    assert rec['reason'].startswith('SIGTERM received: stopped at step 2 of 4; resumable checkpoint ckpt_000002.pt'), \
        rec['reason']
    t = rec['training']
    assert (t['status'], t['signal'], t['steps_done'], t['steps']) == ('stopped', 'SIGTERM', 2, 4), t
    assert t['last_checkpoint'] == 'train/checkpoints/ckpt_000002.pt' and isinstance(t['final_loss'], float)
    assert rec['artifacts']['train_checkpoint'] == t['last_checkpoint']
    run_dir = next((tmp_path / 'runs').iterdir())
    assert torch.load(run_dir / t['last_checkpoint'], weights_only=True)['step'] == 2
    assert not (run_dir / 'student_best.pt').exists() and not (run_dir / 'per_pair.csv').exists()   # not evaluated
    assert rec['quality']['quality_drop_pct'] is None and rec['model']['params'] == t['student']['student_params']
