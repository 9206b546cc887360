"""A generator of synthetic run folders for the aggregation benchmark and the explorer tests (test code, not data).

`make_runs(runs_dir, n)` writes `n` schema-valid `runs/<run_id>/log.json` files shaped like real logs (every block
the runner writes, ten quality metrics plus `vs_teacher_*`, the teacher's efficiency, a training block for K runs, an
edge block for edge runs), spread over cards, kinds, statuses, days and contract versions. With `notebooks=True` each
run also gets an archived notebook and an HTML copy; with `pointmaps=True` a small pointmap artefact as the templates
write it. Nothing here is committed output: every test builds its own runs in a temporary folder.

Each log also carries what the runner logs beside its numbers: the drop's 95% interval, the load and `noisy` flag of
each timing, and the speed-up against the teacher timed side by side in the run (K: `training.side_by_side`, Q kinds:
`quantization.latency_side_by_side` and `ratios`, P: `pruning.side_by_side`); they are drawn from a second generator
seeded by the run id, so the main series is the same as before they existed. `day_of_cards(runs_dir)` writes a
doctored day (E0, A1, A2, B1, C1, KQ_D1; some timed under load) whose front is known (see its docstring).
`make_study(runs_dir, card_dir)` runs a small study card (`pqk.run.study`) with a stand-in executor: a study folder.

    python tests/synthetic_runs.py RUNS_DIR N [--versions 1.0:1.0,1.1:1.0]
"""
from __future__ import annotations
import json, random, sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

METRICS = ['abs_rel', 'delta_1.25', 'maa30', 'pts_inlier', 'regr3d', 'rot_err_deg', 'rra15', 'rta15', 'tau_1.03',
           'trans_err_deg']
CARDS = [('E0_eval_teacher', 'eval'), ('A1_K_only', 'K'), ('A2_K_depth', 'K'), ('B1_Q_only', 'Q'), ('B2_Q_fp8', 'Q'),
         ('C1_P_only', 'P'), ('C2_P_heads', 'P'), ('KQ_D1', 'KQ'), ('KP_E1', 'KP'), ('KPQ_F1', 'KPQ'),
         ('EDGE1_orin', 'edge')]
METHOD = {'K': 'distill', 'Q': 'quant', 'KQ': 'quant', 'KPQ': 'quant', 'P': 'prune', 'KP': 'prune'}
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


def _utc(t: datetime) -> str: return t.strftime('%Y-%m-%dT%H:%M:%SZ')


def synthetic_run_log(i: int, rng: random.Random, workload_version: str = '1.0', eval_version: str = '1.0') -> dict:
    "One realistic, schema-valid run log (the i-th of a series)."
    card, kind = CARDS[i % len(CARDS)]
    start = T0 + timedelta(minutes=7 * i + rng.randint(0, 5))
    dur = rng.uniform(20, 4000)
    rid = f"{card}-{start.strftime('%Y%m%dT%H%M%SZ')}-{rng.getrandbits(24):06x}"
    teacher = {m: rng.uniform(0.1, 0.9) for m in METRICS}
    shrink = 1.0 if kind == 'eval' else rng.uniform(0.25, 0.95)
    drop = 0.0 if kind == 'eval' else round(abs(rng.gauss(1.2, 1.0)), 4)
    metrics = {m: v * (1 - drop / 100) for m, v in teacher.items()} | {f'vs_teacher_{m}': rng.uniform(0, 1) for m in METRICS}
    max_drop = {'Q': 1.0, 'eval': None, 'edge': None}.get(kind, 1.5)
    status = rng.choice(['passed', 'passed', 'failed', 'stopped']) if kind != 'eval' else 'passed'
    if max_drop is not None and status == 'passed' and drop > max_drop: status = 'failed'
    lat_t = rng.uniform(80, 120)
    lat = None if status == 'stopped' and rng.random() < 0.3 else lat_t * shrink
    z = 'ab' * 32
    contracts = {'workload': {'path': 'configs/workload.yaml', 'version': workload_version, 'sha256': z},
                 'eval': {'path': 'configs/eval.yaml', 'version': eval_version, 'sha256': z}}
    if kind in METHOD: contracts[METHOD[kind]] = {'path': f'configs/{METHOD[kind]}.yaml', 'version': '1.0', 'sha256': z}
    eff = {'latency_p50_ms': lat, 'latency_p95_ms': None if lat is None else lat * 1.1,
           'pairs_per_s': None if lat is None else 1000 / lat, 'params': int(3857544 * shrink),
           'size_mb': 14.85 * shrink, 'gflops': 8.9 * shrink, 'device': 'cpu', 'resolution': 384}
    if kind != 'eval':
        eff['teacher'] = {'latency_p50_ms': lat_t, 'latency_p95_ms': lat_t * 1.1, 'pairs_per_s': 1000 / lat_t,
                          'params': 3857544, 'size_mb': 14.85, 'gflops': 8.9, 'device': 'cpu', 'resolution': 384}
    rec = {
        'schema_version': '1.0', 'run_id': rid, 'task_card': card, 'kind': kind, 'status': status,
        'reason': f'{status}: quality drop {drop:.2f}% (synthetic)', 'started_utc': _utc(start),
        'finished_utc': _utc(start + timedelta(seconds=dur)), 'duration_s': round(dur, 3), 'seed': i % 3,
        'contracts': contracts, 'git_commit': f'{rng.getrandbits(160):040x}',
        'environment': {'python': '3.11.7', 'torch': '2.13.0+cpu', 'device': 'cpu x2', 'pqk': '0.0.1', 'host': 'vm'},
        'model': {'name': 'teacher' if kind == 'eval' else f'{card}-student', 'params': eff['params'],
                  'size_mb': eff['size_mb'], 'checkpoint': 'demo' if kind == 'eval' else 'student_best.pt',
                  'teacher': 'demo', 'teacher_params': 3857544},
        'quality': {'primary': 'delta_1.25', 'higher_is_better': True, 'reference': 'ground_truth',
                    'metrics': metrics, 'teacher': teacher, 'quality_drop_pct': drop, 'n_pairs': 12},
        'efficiency': eff,
        'resource': {'gpu_hours': round(dur / 3600, 6), 'peak_mem_mb': rng.uniform(300, 900),
                     'device_hours': round(dur / 3600, 6)},
        'thresholds': {'rule': 'none' if max_drop is None else ('q_only' if kind == 'Q' else 'mainline'),
                       'quality_drop_max_pct': max_drop, 'gpu_hours_budget': 0.2, 'gpu_hours_over_budget_ratio': 1.2,
                       'no_improve_ckpt': 3, 'exception': None},
        'artifacts': {'config_workload': 'config/workload.yaml', 'config_eval': 'config/eval.yaml',
                      'notebook': f'{card}.ipynb', 'html': f'{card}.html'},
        'error': None,
    }
    if kind in ('Q', 'KQ', 'KPQ'): rec['calibration_set_hash'] = 'cd' * 32
    if kind in ('K', 'KQ', 'KP', 'KPQ'):
        rec['training'] = {'status': 'completed', 'reason': 'completed all steps', 'steps_done': 60, 'steps': 60,
                           'final_loss': rng.uniform(0.1, 0.5), 'nproc': 1, 'train_seconds': dur * 0.6,
                           'best': {'step': 20, 'metric': 'delta_1.25', 'value': rng.uniform(0.3, 0.6)},
                           'evals': [{'step': s, 'value': rng.uniform(0.3, 0.6), 'metric': 'delta_1.25',
                                      'improved': s == 20} for s in (20, 40, 60)],
                           'student': {'reduce': 'width', 'reduction_target': 0.3, 'reduction_actual': 1 - shrink}}
    _timing_fields(rec, random.Random(rid))
    if kind == 'edge':
        rec['edge_device'] = {'name': 'jetson-agx-orin-64gb', 'power_avg_W': rng.uniform(15, 40),
                              'power_peak_W': rng.uniform(40, 60), 'throttle': rng.random() < 0.1}
    return rec


LOADS = (0.7, 1.0, 1.2, 1.4, 6.4, 6.9)      # 1-minute loads: a quiet 2-core machine, and one under a test suite


def _sbs(kind: str, t_ms: float, speedup: float, load: float, noisy: bool) -> dict:
    "The blocks a run of `kind` logs for its side-by-side timing (model `speedup`× faster than the teacher at `t_ms`)."
    m_ms = t_ms / speedup
    one = lambda ms, r: {'p50_ms': ms, 'p90_ms': ms * 1.05, 'p95_ms': ms * 1.1, 'cpu_p50_ms': ms, 'n_timed': 30,
                         'noisy': noisy, 'ratio_p50': r}
    if kind == 'K':
        return {'training': {'side_by_side': {'teacher': one(t_ms, 1.0), 'student': one(m_ms, m_ms / t_ms), 'rounds': 3,
                                              'load_avg': load},
                             'speedup_p50_side_by_side': t_ms / m_ms}}
    if kind in ('Q', 'KQ', 'KPQ'):
        f_ms = m_ms * 1.4
        return {'quantization': {'backend': 'onnxruntime', 'final': 'ptq', 'ptq': {'status': 'ok'},
                                 'qat': {'ran': False, 'reason': 'PTQ within the threshold (synthetic)'},
                                 'latency_side_by_side': {'ort_fp32': one(f_ms, 1.0),
                                                          'ort_int8': one(m_ms, m_ms / f_ms),
                                                          'teacher_eager': one(t_ms, t_ms / f_ms), 'rounds': 3,
                                                          'load_avg': load},
                                 'ratios': {'int8_vs_fp32_ort_p50': m_ms / f_ms,
                                            'teacher_eager_vs_int8_p50': t_ms / m_ms, 'int8_vs_fp32_size': 0.27}}}
    if kind == 'P':
        return {'pruning': {'side_by_side': {'latency_p50_ms': {'before': t_ms, 'after': m_ms, 'ratio': m_ms / t_ms},
                                             'latency': {'before': one(t_ms, 1.0), 'after': one(m_ms, m_ms / t_ms)},
                                             'resolution': 384, 'load_avg': load}}}
    return {}


def _merge(rec: dict, blocks: dict):
    for k, v in blocks.items(): rec[k] = {**(rec.get(k) or {}), **v}


def _timing_fields(rec: dict, aux: random.Random):
    "The drop's interval, each timing's load and noisy flag, the side-by-side speed-up (from `aux`, see above)."
    q, eff, kind = rec['quality'], rec['efficiency'], rec['kind']
    rec['thresholds']['verdict_rule'] = 'point'
    if kind != 'eval':
        h, d = aux.uniform(0.3, 2.0), q['quality_drop_pct']
        q.update(quality_drop_lo_pct=round(d - h, 4), quality_drop_hi_pct=round(d + h, 4),
                 interval={'method': 'paired_bootstrap', 'level': 0.95, 'n_boot': 2000, 'seed': 0, 'n_pairs': 12})
    load = aux.choice(LOADS); noisy = load > 2 and aux.random() < 0.8
    if eff['latency_p50_ms'] is None: return
    eff.update(load_avg=load, latency_noisy=noisy)
    if 'teacher' in eff: eff['teacher'].update(load_avg=load, latency_noisy=noisy)
    if 'teacher' in eff and kind in ('K', 'Q', 'KQ', 'KPQ', 'P'):
        sp = eff['teacher']['latency_p50_ms'] / eff['latency_p50_ms'] * aux.uniform(0.9, 1.1)
        load2 = aux.choice(LOADS)
        _merge(rec, _sbs(kind, eff['teacher']['latency_p50_ms'], sp, load2, load2 > 2 and aux.random() < 0.8))


# the doctored day: card → (index in CARDS, status, drop, lo, hi, speed-up side by side, load, noisy, teacher ms)
DAY = {'E0': (0, 'passed', 0.0, None, None, None, 6.7, True, 2430.0),
       'A2': (2, 'passed', 0.20, -0.40, 0.80, 1.25, 1.0, False, 100.0),
       'A1-fast': (1, 'passed', 0.40, -0.30, 1.10, 1.65, 1.0, False, 100.0),
       'A1-early': (1, 'passed', 0.90, 0.20, 1.60, 1.07, 6.3, True, 2300.0),
       'B1': (3, 'inconclusive', 0.60, 0.10, 1.10, 1.30, 1.1, False, 364.0),
       'C1': (5, 'failed', 3.40, 2.60, 4.20, 1.20, 1.2, False, 110.0),
       'KQ_D1': (7, 'inconclusive', 1.20, 0.30, 2.10, 3.10, 6.8, True, 2400.0),
       'A1-unpaired': (1, 'passed', 0.50, -0.20, 1.20, None, 1.0, False, 100.0)}
DAY_FRONT = {'E0': 'frontier', 'A2': 'frontier', 'A1-fast': 'frontier', 'KQ_D1': 'frontier', 'A1-early': 'ambiguous',
             'B1': 'ambiguous', 'C1': 'dominated', 'A1-unpaired': 'unplaced'}


def day_of_cards(runs_dir, intervals: bool = True) -> dict:
    """Write the doctored day `DAY` into `runs_dir`; {name: run_id}. Mainline threshold 1.5%, Q 1.0%. Its front
    (`DAY_FRONT`): E0 (the teacher, 1x, timed at load 6.7, 2,430 ms), A2 (1.25x, 0.2%), A1-fast (1.65x, 0.4%) and
    KQ_D1 (3.1x, 1.2%, at load 6.8) are the front; A1-early and B1 are slower and worse than A1-fast but their
    intervals overlap its interval (ambiguous); C1's interval lies above A1-fast's (dominated); A1-unpaired has no
    teacher timed in its run (unplaced). Passed decisively: A2 and A1-fast, so A1-fast is recommended (KQ_D1 is faster
    but inconclusive). `intervals=False` logs no interval (then A1-early and B1 are dominated)."""
    ids = {}
    for n, (name, (ci, st, d, lo, hi, sp, load, noisy, t_ms)) in enumerate(DAY.items()):
        rec = synthetic_run_log(ci, random.Random(n))
        start = T0 + timedelta(hours=n)
        rec.update(run_id=f"{CARDS[ci][0]}-{start.strftime('%Y%m%dT%H%M%SZ')}-{name.replace('_', '')}", status=st,
                   started_utc=_utc(start), finished_utc=_utc(start + timedelta(minutes=20)), duration_s=1200.0,
                   reason=f'{st}: quality drop {d:.2f}% (doctored day)')
        for k in ('training', 'quantization', 'pruning'):
            for sub in ('side_by_side', 'speedup_p50_side_by_side', 'latency_side_by_side', 'ratios'):
                (rec.get(k) or {}).pop(sub, None)
        if rec['kind'] in ('Q', 'KQ', 'KPQ'): rec.pop('quantization', None)
        q, eff = rec['quality'], rec['efficiency']
        q.update(quality_drop_pct=d, quality_drop_lo_pct=lo if intervals else None,
                 quality_drop_hi_pct=hi if intervals else None)
        m_ms = t_ms / sp if sp else t_ms if rec['kind'] == 'eval' else t_ms * 0.6
        eff.update(latency_p50_ms=m_ms, latency_p95_ms=m_ms * 1.1, pairs_per_s=1000 / m_ms, load_avg=load,
                   latency_noisy=noisy)
        if rec['kind'] == 'eval': eff.pop('teacher', None); rec['model']['name'] = 'teacher'
        elif sp is None: eff.pop('teacher', None)
        else:
            eff['teacher'].update(latency_p50_ms=t_ms, latency_p95_ms=t_ms * 1.1, load_avg=load, latency_noisy=noisy)
            _merge(rec, _sbs(rec['kind'], t_ms, sp, load, noisy))
        write_run(runs_dir, rec)
        ids[name] = rec['run_id']
    return ids


def _notebook(rec: dict) -> dict:
    "A small archived notebook: a parameters cell, a printed line and a figure scrap."
    import base64
    png = base64.b64encode(_tiny_png()).decode()
    return {'nbformat': 4, 'nbformat_minor': 5, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3',
                                                                            'language': 'python'}},
            'cells': [{'cell_type': 'code', 'id': 'p', 'metadata': {'tags': ['injected-parameters']}, 'execution_count': 1,
                       'source': f"run_id = {rec['run_id']!r}\nout_dir = '.'", 'outputs': []},
                      {'cell_type': 'code', 'id': 'f', 'metadata': {}, 'execution_count': 2, 'source': 'plot()',
                       'outputs': [{'output_type': 'display_data', 'metadata': {'scrapbook': {'name': 'predictions',
                                                                                             'data': False, 'display': True}},
                                    'data': {'image/png': png, 'text/plain': '<Figure>'}}]}]}


def _tiny_png() -> bytes:
    import io
    from PIL import Image
    b = io.BytesIO(); Image.new('RGB', (8, 8), (200, 30, 30)).save(b, format='PNG'); return b.getvalue()


def write_run(runs_dir, rec: dict, notebooks: bool = False, pointmaps: bool = False,
              folder: str | None = None) -> Path:
    """Write one run folder: log.json (+ notebook, HTML, config snapshot, pointmaps when asked). The folder is named by
    the run id, as the runner names it; `folder` names it otherwise (a moved or edited log, for the readers' tests)."""
    d = Path(runs_dir) / (rec['run_id'] if folder is None else folder); d.mkdir(parents=True, exist_ok=True)
    if notebooks:
        nb = d / rec['artifacts']['notebook']; nb.write_text(json.dumps(_notebook(rec)))
        (d / rec['artifacts']['html']).write_text(f"<html><body>{rec['run_id']}</body></html>")
        (d / 'config').mkdir(exist_ok=True)
        (d / 'config' / 'workload.yaml').write_text(f"version: \"{rec['contracts']['workload']['version']}\"\n"
                                                     f"input:\n  shape: [1, 3, 384, 384]\n")
        (d / 'config' / 'eval.yaml').write_text(f"version: \"{rec['contracts']['eval']['version']}\"\n")
        if 'training' in rec:
            (d / 'config' / 'distill.yaml').write_text(
                f"version: \"1.0\"\ntrain:\n  steps: 60\n  lr: {0.001 * (1 + hash(rec['run_id']) % 3)}\n"
                f"student:\n  reduction: 0.3\n")
            rec['artifacts']['config_cfg'] = 'config/distill.yaml'
    if pointmaps:
        import numpy as np
        from types import SimpleNamespace as NS
        from pqk.eval.pointmaps import save_pointmaps
        rng = np.random.default_rng(len(rec['run_id']))
        res = 48
        yy, xx = np.mgrid[0:res, 0:res].astype('float32') / res
        def pts(z): return np.stack([xx - 0.5, yy - 0.5, z + 0.05 * rng.standard_normal((res, res))], -1)[None].astype('float32')
        def conf(): return (1 + rng.random((1, res, res))).astype('float32')
        def pair(z): return ({'pts3d': pts(z), 'conf': conf()}, {'pts3d_in_other_view': pts(z + 0.2), 'conf': conf()})
        imgs = [NS(img=(rng.random((res, res, 3)) * 255).astype('uint8')) for _ in range(2)]
        save_pointmaps(d / 'pointmaps.npz', [pair(2.0)], [pair(2.1)], [NS(name='scene0', views=imgs)], [(0, 0, 1)],
                       model_name=rec['model']['name'])
        rec['artifacts']['pointmaps'] = 'pointmaps.npz'
    (d / 'log.json').write_text(json.dumps(rec))
    return d


def make_runs(runs_dir, n: int, seed: int = 0, versions=(('1.0', '1.0'),), notebooks: bool = False,
              pointmaps: bool = False) -> list[Path]:
    "Write `n` synthetic runs into `runs_dir`, cycling through `versions` = [(workload, eval), ...]; their folders."
    rng = random.Random(seed)
    out = []
    for i in range(n):
        wv, ev = versions[i % len(versions)]
        out.append(write_run(runs_dir, synthetic_run_log(i, rng, wv, ev), notebooks, pointmaps))
    return out



STUDY_CARD = """---
id: S9_view
kind: S
goal: A small study for the explorer tests.
configs: {workload: configs/workload.yaml, eval: configs/eval.yaml}
thresholds: {quality_drop_pct: eval.thresholds.quality_drop_mainline_pct}
exceptions: []
stop_loss: eval.stop_loss.gpu_hours_over_budget_ratio
early_stop: eval.early_stop.no_improve_ckpt
gpu_hours_budget: 0.75
expected_duration: a second
status: ready
seed: 0
search:
  orders: [[K, Q], [P, K, Q], [Q]]
---
# S9_view
"""
STUDY_NUMBERS = {'K0': (1.3, 0.5, 0.0, 1.0), 'K0-Q0': (2.0, 0.4, 0.1, 0.8), 'Q0': (3.0, 2.5, 2.0, 3.0)}


def make_study(runs_dir, card_dir, numbers=None) -> Path:
    """Run the small study card `STUDY_CARD` (K→Q, P→K→Q which cannot run, Q; this checkout's configs) into `runs_dir`
    with a stand-in for its executor: each stage's log has the (speed-up, drop, low, high) that `numbers` (default
    `STUDY_NUMBERS`: K→Q passes decisively at 2×, Q fails at 3×) gives its prefix, and writes no run folder. The
    study's folder (study.json, study.md, front.png)."""
    from pqk.run.study import run_study
    card = Path(card_dir) / 'S9_view.md'; card.write_text(STUDY_CARD)
    nums = numbers or STUDY_NUMBERS
    def stage(spec) -> dict:
        sp, d, lo, hi = nums[spec.card_id.rsplit('.', 1)[-1]]
        return {'run_id': f'{spec.card_id}-20260105T080000Z-abcdef', 'task_card': spec.card_id, 'kind': spec.kind,
                'status': 'failed' if d > 1.5 else 'passed' if hi <= 1.5 else 'inconclusive', 'reason': 'synthetic',
                'error': None, 'started_utc': '2026-01-05T08:00:00Z',
                'contracts': {'workload': {'version': '1.0'}, 'eval': {'version': '1.0'}},
                'quality': {'quality_drop_pct': d, 'quality_drop_lo_pct': lo, 'quality_drop_hi_pct': hi,
                            'n_pairs': 288},
                'efficiency': {'latency_p50_ms': 100.0 / sp, 'device': 'cpu',
                               'teacher': {'latency_p50_ms': 100.0, 'device': 'cpu'}},
                'thresholds': {'rule': 'mainline', 'quality_drop_max_pct': 1.5}, 'resource': {'device_hours': 0.1}}
    return run_study(card, runs_dir=runs_dir, executor=stage, say=lambda *a: None)['run_dir']


if __name__ == '__main__':
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('runs_dir'); ap.add_argument('n', type=int)
    ap.add_argument('--versions', default='1.0:1.0', help='comma-separated workload:eval version pairs')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    vs = [tuple(v.split(':')) for v in a.versions.split(',')]
    make_runs(a.runs_dir, a.n, a.seed, vs)
    print(f'{a.n} synthetic runs in {a.runs_dir}', file=sys.stderr)
