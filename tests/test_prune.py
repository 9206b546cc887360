"""Process-boundary tests of pruning: a pruned checkpoint reloads in a fresh process that never imports the pruning
code and gives the same outputs; the run_prune template end to end (`pqk run-prune`) on a tiny setting; a bad ratio
ends in a clear error and a failed log."""
import json

import pytest
import torch

from conftest import ROOT, run_pqk, run_python, tiny_checkpoint, tiny_contracts, yaml_copy

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A tiny DPT DUSt3R (2 heads of 16, MLP 128, 2 encoder and 2 decoder blocks), saved as a pqk checkpoint."
    return tiny_checkpoint(tmp_path_factory.mktemp('tiny') / 'tiny.pt',
                           dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=2,
                                dec_num_heads=2, head_type='dpt', dpt_feature_dim=16, dpt_layer_dims=(8, 16, 16, 32),
                                img_size=(64, 64)))

@pytest.mark.slow
def test_pruned_checkpoint_reloads_without_pruning_code(tmp_path, tiny):
    from pqk.models.checkpoints import load_checkpoint, save_checkpoint
    from pqk.compress.prune import prune_run
    from pqk.core.contracts import method_config
    m = load_checkpoint(tiny)
    pc = method_config('prune', {'targets': {'heads': 0.5, 'mlp': 0.5, 'dpt': 0.5}, 'finetune': {'steps': 0}})
    r = prune_run(m, m, pc, tmp_path / 'p', progress=False)
    p = save_checkpoint(r['model'], tmp_path / 'pruned_best.pt')
    assert r['model'].cfg.enc_heads is None and r['model'].cfg.enc_num_heads == 1      # the config carries the widths
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 3, 64, 64, generator=g) * 2 - 1
    torch.save(x, tmp_path / 'x.pt')
    threads = torch.get_num_threads(); torch.set_num_threads(1)   # as in the child (pqk_env): bit-equal outputs
    try:
        with torch.no_grad(): want = r['model'].eval().forward_features({'img': x[0]}, {'img': x[1]})['head1']
    finally: torch.set_num_threads(threads)
    code = f"""
import sys, torch
from pqk.models.checkpoints import load_checkpoint
m = load_checkpoint({str(p)!r})
x = torch.load({str(tmp_path / 'x.pt')!r})
with torch.no_grad(): y = m.forward_features({{'img': x[0]}}, {{'img': x[1]}})['head1']
torch.save(y, {str(tmp_path / 'y.pt')!r})
bad = [k for k in sys.modules if k.startswith(('pqk.compress', 'torch_pruning'))]
assert not bad, bad
"""
    q = run_python(code)
    assert q.returncode == 0, q.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / 'y.pt'), want)

def _configs(tmp_path, prune_edit, ev=None):
    def pc(d):
        d['finetune'].update(batch_pairs=1, warmup_steps=1, lr=1e-3,
                             train_data={'seed': 0, 'n_scenes': 2, 'views_per_scene': 2},
                             val_data={'seed': 900, 'n_scenes': 1, 'views_per_scene': 2})
        d['checkpoint'] = {'every_steps': 1, 'eval_every_steps': 2, 'keep_last': 1}
        prune_edit(d)
    w, e = tiny_contracts(tmp_path, {'data.eval.synthetic': {'n_scenes': 5, 'n_pairs': 10}}, ev)   # 5: an interval
    return w, e, yaml_copy(ROOT / 'configs/prune.yaml', tmp_path / 'prune.yaml', pc)

def _run_prune(tmp_path, tiny, prune_edit, *params, ev=None):
    w, e, c = _configs(tmp_path, prune_edit, ev)
    log = tmp_path / 'log.json'
    p = run_pqk('run-prune', '--workload', w, '--eval', e, '--cfg', c, '--ckpt', tiny, '--log', log,
                '--runs-dir', tmp_path / 'runs', '--no-aggregate', '--param', 'progress=false', *params, timeout=600)
    assert log.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    return p, json.loads(log.read_text()), next((tmp_path / 'runs').iterdir())

@pytest.mark.slow
def test_run_prune_template_end_to_end(tmp_path, tiny):
    """`pqk run-prune`: 2 rounds of prune -> fine-tune, pruned_best.pt, evaluation, side-by-side costs; a valid log.
    Drops are measured against the teacher (the unpruned model) with a threshold of 0.001 %: a model with half its
    heads, MLP and DPT channels removed differs from it, so the run fails (exit 1) naming the threshold."""
    def edit(d): d.update(targets={'heads': 0.5, 'mlp': 0.5, 'dpt': 0.5}, rounds=2)
    p, rec, run_dir = _run_prune(tmp_path, tiny, edit, '--param', 'steps=2', '--param', 'train_res=64',
                                 ev={'quality.reference': 'teacher', 'thresholds.quality_drop_mainline_pct': 0.001})
    from pqk.core.logschema import log_problems
    assert log_problems(rec) == [], log_problems(rec)
    assert (rec['kind'], rec['status'], p.returncode) == ('P', 'failed', 1), rec['reason']
    assert rec['quality']['quality_drop_pct'] > 0 and '> 0.001%' in rec['reason'], rec['reason']
    pr = rec['pruning']
    assert [r['round'] for r in pr['rounds_done']] == [1, 2] and all(r['steps_done'] == 2 for r in pr['rounds_done'])
    assert pr['exactness']['max_rel_err'] <= 1e-5 and len(pr['exactness']['per_round']) == 2
    assert set(pr['removed']) == {'heads', 'mlp', 'dpt'}
    h = pr['removed']['heads']['enc_blocks.0.attn']
    assert (h['before'], h['after'], len(h['removed'])) == (2, 1, 1) and h['removed'][0] in (0, 1)
    assert pr['params_after'] < pr['params_before'] and abs(sum(pr['share'].values()) - 1) < 1e-9
    sbs = pr['side_by_side']
    assert sbs['params']['after'] == pr['params_after'] == rec['model']['params']
    assert sbs['gflops']['after'] < sbs['gflops']['before'] and sbs['latency_p50_ms']['before'] > 0
    q = rec['quality']
    assert q['quality_drop_pct'] is not None
    assert q['quality_drop_lo_pct'] <= q['quality_drop_pct'] <= q['quality_drop_hi_pct']
    assert rec['training']['steps_done'] == 4 and rec['artifacts']['pruned_checkpoint'] == 'pruned_best.pt'
    from pqk.models.checkpoints import load_checkpoint
    m = load_checkpoint(run_dir / 'pruned_best.pt')
    assert sum(t.numel() for t in m.parameters()) == pr['params_after']
    # a few pointmaps of the pruned model beside the teacher's, for the explorer: its own predictions, not a copy
    import numpy as np
    from pqk.eval.pointmaps import load_pointmaps
    p0 = load_pointmaps(run_dir / rec['artifacts']['pointmaps'])['pairs'][0]
    assert p0['model'] is not None and not np.allclose(p0['model']['pts1'], p0['teacher']['pts1'])

@pytest.mark.slow
def test_run_prune_bad_ratio_fails_with_a_clear_error(tmp_path, tiny):
    "A ratio that would remove every head: the run fails before pruning, the log says which field and value."
    def edit(d): d['targets'] = {'heads': 0.9}
    p, rec, run_dir = _run_prune(tmp_path, tiny, edit)
    assert p.returncode == 1 and rec['status'] == 'failed'
    assert 'PruneError' in rec['error'] and 'targets.heads' in rec['error'] and '0.9' in rec['error'], rec['error']
    assert 'every head' in rec['reason']
    assert not (run_dir / 'pruned_best.pt').exists() and not (run_dir / 'prune').exists()

@pytest.mark.slow
def test_run_prune_template_stopped_by_sigterm_keeps_its_numbers(tmp_path, tiny):
    """SIGTERM during step 1 of round 1's fine-tune (the test hook, in the kernel): the fine-tune stops there with its
    checkpoint; nothing is saved or evaluated; the `stopped` log keeps the pruning and training blocks."""
    def edit(d): d.update(targets={'heads': 0.5, 'mlp': 0.5}, rounds=2)
    p, rec, run_dir = _run_prune(tmp_path, tiny, edit, '--param', 'steps=2', '--param', 'train_res=64',
                                 '--param', 'debug_sigterm_at_step=1')
    from pqk.core.logschema import log_problems
    assert log_problems(rec) == [] and rec['error'] is None, (log_problems(rec), rec['error'])
    assert rec['status'] == 'stopped' and p.returncode != 0
    assert rec['reason'].startswith('round 1: SIGTERM received: stopped at step 1 of 2; resumable checkpoint '
                                    'ckpt_000001.pt'), rec['reason']
    t, pr = rec['training'], rec['pruning']
    assert (t['status'], t['signal'], t['steps_done'], t['steps']) == ('stopped', 'SIGTERM', 1, 4), t
    assert t['last_checkpoint'] == 'prune/round1/checkpoints/ckpt_000001.pt' == rec['artifacts']['train_checkpoint']
    assert torch.load(run_dir / t['last_checkpoint'], weights_only=True)['step'] == 1
    assert len(pr['rounds_done']) == 1 and pr['params_after'] < pr['params_before']
    assert rec['model']['params'] == pr['params_after']
    assert not (run_dir / 'pruned_best.pt').exists() and rec['quality']['quality_drop_pct'] is None
