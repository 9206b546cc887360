"""The real eval template (nbs/templates/run_eval.ipynb) through `pqk run-eval`, on a manifest of real-format files
(PNG images, .npy depth, intrinsics, poses) written by the test: the log validates against the schema."""
import json
from pathlib import Path
import numpy as np, pytest
from PIL import Image

from conftest import FAST_LATENCY, ROOT, run_pqk, yaml_copy

pytestmark = pytest.mark.slow

def _manifest(tmp: Path, res=384):
    from pqk.data.scenes import synthetic_dataset
    scenes = synthetic_dataset(1500, 2, 2, res, cache_dir=False)
    out = {'version': 1, 'scenes': []}
    for s, sc in enumerate(scenes):
        views = []
        for v, view in enumerate(sc['views']):
            img, dep = tmp / f's{s}_v{v}.png', tmp / f's{s}_v{v}_depth.npy'
            Image.fromarray(view['img']).save(img); np.save(dep, view['depth'])
            views.append({'image': img.name, 'depth': dep.name, 'intrinsics': np.asarray(view['K']).tolist(),
                          'cam2world': np.asarray(view['cam2world']).tolist()})
        out['scenes'].append({'name': f'scene{s}', 'views': views})
    p = tmp / 'manifest.json'; p.write_text(json.dumps(out)); return p

def test_run_eval_on_manifest(tmp_path):
    m = _manifest(tmp_path)
    def wl(d): d['data']['eval'] = {'source': 'manifest', 'paths': [str(m)]}; d['pair_graph']['symmetrize'] = False
    w = yaml_copy(ROOT / 'configs' / 'workload.yaml', tmp_path / 'workload.yaml', wl)
    e = yaml_copy(ROOT / 'configs' / 'eval.yaml', tmp_path / 'eval.yaml', FAST_LATENCY)
    log = tmp_path / 'out' / 'log.json'
    r = run_pqk('run-eval', '--workload', w, '--eval', e, '--log', log, '--runs-dir', tmp_path / 'runs',
                '--reports-dir', tmp_path / 'reports', timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from pqk.core.logschema import log_problems
    rec = json.loads(log.read_text())
    assert log_problems(rec) == []
    assert rec['status'] == 'passed' and rec['kind'] == 'eval'
    q = rec['quality']
    assert q['n_pairs'] == 2 and q['reference'] == 'ground_truth' and q['quality_drop_pct'] == 0.0
    # two pairs are too few for an interval: it is unknown, not a zero-width guess
    assert q['quality_drop_lo_pct'] is None and q['interval']['n_pairs'] == 2
    # the per-pair artefact: one row per pair, the teacher's values, and the log's means computed from it
    import pandas as pd
    df = pd.read_csv(tmp_path / 'runs' / rec['run_id'] / rec['artifacts']['per_pair'])
    assert len(df) == 2 and abs(df['teacher.delta_1.25'].mean() - q['teacher']['delta_1.25']) < 1e-9
    eff = rec['efficiency']
    assert eff['params'] > 0 and eff['latency_n'] >= 2 and eff['latency_protocol']['repeats'] == 2
    assert eff['latency_p50_ms'] <= eff['latency_p90_ms'] <= eff['latency_p95_ms']
    assert rec['resource']['device_hours'] > 0 and rec['resource']['device_kind'] in ('cpu', 'cuda')
    assert rec['contracts']['workload']['sha256'] != json.loads(json.dumps(rec))['contracts']['eval']['sha256']
    # the explorer's pointmaps: the teacher alone (it evaluated itself), for the first pairs
    from pqk.run.explore import load_pointmaps
    [rd] = (tmp_path / 'runs').glob('adhoc-eval-*')
    pm = load_pointmaps(rd / rec['artifacts']['pointmaps'])
    p0 = pm['pairs'][0]
    assert p0['model'] is None and p0['teacher']['pts1'].shape == p0['img1'].shape and p0['img1'].shape[0] <= 192
    assert np.isfinite(p0['teacher']['pts1']).all() and (p0['teacher']['conf1'] >= 1).all()
