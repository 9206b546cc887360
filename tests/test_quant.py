"""Process-boundary tests of Q (pqk.compress.quant through the run_quant template): a B1-like card on a tiny setting
whose tight threshold exception makes PTQ miss so QAT runs (both results in the log), the TensorRT-flavour ONNX graph,
chains (`upstream:` resolved by the runner: latest, named run, missing, a three-run chain), bad inputs that end in a
failed log naming the field, and `pqk export`.

Tiny setting: a 355k-parameter random DUSt3R as model and teacher, 2 eval pairs, 2 calibration pairs, 2 QAT steps at
64 px, 1 pair per sensitivity group, one latency round."""
import json, os, re, shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, make_project, run_pqk, tiny_contracts, yaml_copy

TPL = ROOT / 'tests' / 'templates'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory, tiny_ckpt):
    "A tiny DUSt3R checkpoint (model and workload teacher) and tiny copies of the contracts and quant.yaml."
    d = tmp_path_factory.mktemp('quant')
    shutil.copy(tiny_ckpt, d / 'tiny.pt')
    tiny_contracts(d, {'calibration.synthetic': {'n_scenes': 1}, 'teacher.checkpoint': str(d / 'tiny.pt')})
    def qc(x):
        x['qat'].update(steps=2, res=64, train_data={'seed': 0, 'n_scenes': 1, 'views_per_scene': 2})
        x['sensitivity']['pairs'] = 1
    yaml_copy(ROOT / 'configs/quant.yaml', d / 'quant.yaml', qc)
    return d


TINY_PARAMS = ('--param', 'calib_count=2', '--param', 'progress=false', '--param', 'latency_rounds=1')


def _card_from(src: Path, dst: Path, d: Path, **front) -> Path:
    "A copy of a real card with its configs pointing at the tiny ones and `front` fields replaced."
    fm, body = src.read_text().split('---\n', 2)[1:]
    f = yaml.safe_load(fm)
    f['configs'] = {'workload': str(d / 'workload.yaml'), 'eval': str(d / 'eval.yaml'), 'method': str(d / 'quant.yaml')}
    f.update(front)
    dst.write_text('---\n' + yaml.safe_dump(f, sort_keys=False) + '---\n' + body)
    return dst


def _onnx_qdq_facts(path):
    "Independent read of a Q/DQ graph: zero-point dtypes and values, and the scale sizes of weight DequantizeLinear."
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    vals = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == 'Constant': vals[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    made_by = {o: n for n in m.graph.node for o in n.output}
    zps, w_scales = [], []
    for n in m.graph.node:
        if n.op_type not in ('QuantizeLinear', 'DequantizeLinear'): continue
        zps.append(vals[n.input[2]])
        q = made_by.get(n.input[0])
        if n.op_type == 'DequantizeLinear' and q is not None and q.op_type == 'QuantizeLinear' and q.input[0] in vals:
            w = vals[q.input[0]]
            if w.ndim >= 2: w_scales.append((vals[n.input[1]].size, w.shape[0]))
    return zps, w_scales


def _b1_card(tiny: Path, proj: Path, cid: str, quant=None) -> Path:
    """A copy of the B1 card in the project `proj` (a card's paths lie inside its project) on copies of the tiny
    configs, with drops against the teacher (the model itself: any quantization error is a drop > 0) and a threshold
    exception of 0 % that PTQ therefore misses."""
    d = proj / 'configs' / 'tiny'; d.mkdir(parents=True)
    yaml_copy(tiny / 'quant.yaml', d / 'quant.yaml', quant)
    yaml_copy(tiny / 'eval.yaml', d / 'eval.yaml', {'quality.reference': 'teacher'})
    shutil.copy(tiny / 'workload.yaml', d / 'workload.yaml')
    return _card_from(ROOT / 'taskcards/B1_Q_only.md', proj / 'taskcards' / f'{cid}.md', d, id=cid,
                      exceptions=[{'field': 'quality_drop_pct', 'value': 0.0,
                                   'reason': 'test: a threshold PTQ cannot meet, so QAT must run'}])


@pytest.mark.slow
def test_b1_tight_threshold_runs_qat_and_logs_both(tiny, tmp_path):
    "B1 on the tiny setting with a threshold no PTQ can meet: QAT runs; PTQ and QAT, exports, sizes in one log."
    proj = make_project(tmp_path / 'proj')
    card = _b1_card(tiny, proj, 'B1t', {'ptq': {'calibration': 'percentile', 'percentile': 55.0}})  # PTQ clips hard
    p = run_pqk('run', card, '--runs-dir', tmp_path / 'runs', '--no-aggregate', *TINY_PARAMS, project=proj,
                timeout=600)
    logs = list((tmp_path / 'runs').glob('B1t-*/log.json'))
    assert logs, p.stdout[-3000:] + p.stderr[-3000:]
    rec = json.loads(logs[0].read_text())
    from pqk.core.logschema import log_problems
    assert log_problems(rec) == [], log_problems(rec)
    assert rec['error'] is None, rec['error']
    q = rec['quantization']
    assert q['qat']['ran'] and q['qat']['reason'].startswith('PTQ drop') and '> threshold 0%' in q['qat']['reason']
    assert q['qat']['status'] == 'completed' and q['qat']['steps_done'] == 2
    assert isinstance(q['ptq']['quality_drop_pct'], float) and isinstance(q['qat']['quality_drop_pct'], float)
    assert rec['thresholds']['quality_drop_max_pct'] == 0.0 and q['ptq']['quality_drop_pct'] > 0
    assert q['final'] == ('qat' if q['qat']['quality_drop_pct'] <= q['ptq']['quality_drop_pct'] else 'ptq')
    assert rec['training']['kind'] == 'qat'
    # the calibration set: the workload's rule with the count overridden to 2, its hash recomputed here
    from pqk.core.contracts import load_workload
    from pqk.data.manifests import load_dataset
    from pqk.data.pairs import calibration_set, calibration_set_hash
    wl = load_workload(tiny / 'workload.yaml')
    sc = load_dataset({'source': 'synthetic', 'synthetic': wl.data['calibration']['synthetic']}, wl.resolution)
    assert rec['calibration_set_hash'] == calibration_set_hash(calibration_set(sc, 2, 0, 'complete', 1, True))
    assert q['calibration_set']['count_override'] is True
    ex, rd = q['exports'], logs[0].parent
    for k, f in (('fp32', 'model_fp32.onnx'), ('ort_int8', ex['ort_int8']['file']), ('trt_qdq', 'model_qdq_trt.onnx')):
        assert (rd / f).is_file() and (k == 'fp32' or ex[k]['size_mb'] > 0), k
    assert ex['fp32']['checker']['ok'] and ex['fp32']['ort_vs_torch']['ok']
    assert {'ort_fp32', 'ort_int8', 'teacher_eager'} <= set(q['latency_side_by_side'])
    assert all(q['latency_side_by_side'][k]['n_timed'] >= 1 for k in ('ort_fp32', 'ort_int8', 'teacher_eager'))
    # a few pointmaps of the final (int8) model beside the teacher's, for the explorer: its own predictions, not a copy
    from pqk.eval.pointmaps import load_pointmaps
    pm = load_pointmaps(rd / rec['artifacts']['pointmaps'])
    p0 = pm['pairs'][0]
    assert pm['meta']['model'] == rec['model']['name'] and p0['model'] is not None and p0['teacher'] is not None
    assert not np.allclose(p0['model']['pts1'], p0['teacher']['pts1'])
    rows = (rd / 'sensitivity.csv').read_text().splitlines()
    assert rows[0].startswith('group,')
    assert [r.split(',')[0] for r in rows[1:]] == ['embeddings', 'encoder', 'decoder', 'heads']
    # graph test: the TensorRT flavour has int8 zero-point-0 Q/DQ only, per-channel weight scales
    zps, w = _onnx_qdq_facts(rd / 'model_qdq_trt.onnx')
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    assert w and all(n == oc and n > 1 for n, oc in w), w[:5]
    from pqk.compress.quant import QDQ_ERROR_BUDGET
    fq = ex['trt_qdq']['ort_vs_fake_quant']                    # ORT on the Q/DQ graph agrees with the fake-quant model
    assert ex['trt_qdq']['qdq']['trt_style'] and fq['ok'] and 0 <= fq['rel_l2_pts3d'] <= QDQ_ERROR_BUDGET, fq
    # precision ledger: one row per MatMul/Gemm/Conv node of each export (counted here from the graph itself)
    import csv, onnx
    for k, f in (('trt_qdq', 'model_qdq_trt.onnx'), ('ort_int8', ex['ort_int8']['file'])):
        ops = ('MatMul', 'Gemm', 'Conv', 'ConvTranspose', 'MatMulInteger', 'ConvInteger', 'QLinearMatMul', 'QLinearConv')
        nodes = sorted(n.name for n in onnx.load(str(rd / f)).graph.node if n.op_type in ops)
        with open(rd / rec['artifacts'][f'ledger_{k}']) as fh: led = list(csv.DictReader(fh))
        assert nodes and sorted(r['name'] for r in led) == nodes, k
        assert q['ledger'][k]['n_layers'] == len(nodes) and {r['graph_precision'] for r in led} & {'int8'}, k
    # negative control of the graph check: one zero point set to 1 is caught
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(rd / 'model_qdq_trt.onnx'))
    zname = next(n.input[2] for n in m.graph.node if n.op_type == 'QuantizeLinear')
    for n in m.graph.node:
        if n.op_type == 'Constant' and n.output[0] == zname:
            one = np.ones_like(numpy_helper.to_array(n.attribute[0].t))
            n.attribute[0].t.CopyFrom(numpy_helper.from_array(one, zname))
    for i in m.graph.initializer:
        if i.name == zname: i.CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(i)), zname))
    onnx.save(m, str(tmp_path / 'doctored.onnx'))
    zps_bad, _ = _onnx_qdq_facts(tmp_path / 'doctored.onnx')
    assert any(z.any() for z in zps_bad)
    from pqk.compress.quant import qdq_report
    assert not qdq_report(tmp_path / 'doctored.onnx')['trt_style']
    assert p.returncode == {'passed': 0, 'failed': 1, 'inconclusive': 3, 'stopped': 4}[rec['status']]



@pytest.mark.slow
def test_b1_qat_stopped_by_sigterm_keeps_the_ptq_numbers(tiny, tmp_path):
    """B1 with a threshold PTQ misses, QAT stopped by SIGTERM during step 1 (the test hook, in the kernel): QAT leaves
    its checkpoint, nothing after QAT runs, and the `stopped` log keeps PTQ's quality and quantization numbers, the
    QAT training block, and a reason that names the step, the checkpoint and the command that continues the run (the
    template parameter `resume_command`, which the runner passes)."""
    proj = make_project(tmp_path / 'proj')
    card = _b1_card(tiny, proj, 'B1s')
    runs = tmp_path / 'runs'
    p = run_pqk('run', card, '--runs-dir', runs, '--no-aggregate', *TINY_PARAMS, '--param', 'debug_sigterm_at_step=1',
                project=proj, timeout=600)
    logs = list((tmp_path / 'runs').glob('B1s-*/log.json'))
    assert logs, p.stdout[-3000:] + p.stderr[-3000:]
    rec, rd = json.loads(logs[0].read_text()), logs[0].parent
    from pqk.core.logschema import log_problems
    assert log_problems(rec) == [] and rec['error'] is None, (log_problems(rec), rec['error'])
    assert rec['status'] == 'stopped' and p.returncode != 0
    assert rec['reason'] == ('SIGTERM received: stopped at step 1 of 2; resumable checkpoint ckpt_000001.pt; '
                             f'continue it with `pqk run {card} --resume {rd.name} --runs-dir {runs}`'), rec['reason']
    q, t = rec['quantization'], rec['training']
    assert q['final'] == 'ptq' and q['qat']['ran']
    assert (q['qat']['status'], q['qat']['signal']) == ('stopped', 'SIGTERM'), q['qat']
    assert isinstance(q['ptq']['quality_drop_pct'], float) and q['ptq']['quality_drop_pct'] > 0
    assert rec['quality']['quality_drop_pct'] == q['ptq']['quality_drop_pct']          # PTQ's numbers are kept
    assert q['qat']['quality_drop_pct'] is None and 'exports' not in q                  # nothing after QAT ran
    assert (t['kind'], t['status'], t['steps_done'], t['steps']) == ('qat', 'stopped', 1, 2), t
    assert t['last_checkpoint'] == 'qat/checkpoints/ckpt_000001.pt' == rec['artifacts']['qat_checkpoint']
    import torch
    assert torch.load(rd / t['last_checkpoint'], weights_only=True)['step'] == 1
    assert not (rd / 'model_qdq_trt.onnx').exists() and (rd / 'model_int8.onnx').is_file()
    assert rec['calibration_set_hash'] and rec['model']['size_mb'] > 0

def _chain_card(d: Path, cid: str, kind: str, upstream=None, folder=None) -> Path:
    folder = folder or d
    method = '' if kind == 'K' else f"  method: {ROOT / 'configs' / 'quant.yaml'}\n"
    if kind == 'K': method = f"  method: {ROOT / 'configs' / 'distill.yaml'}\n"
    if kind == 'KP': method = f"  method: {ROOT / 'configs' / 'prune.yaml'}\n"
    up = f'upstream: {json.dumps(upstream)}\n' if upstream else ''
    rule = 'quality_drop_mainline_pct'
    p = folder / f'{cid}.md'
    p.write_text(f"""---
id: {cid}
kind: {kind}
goal: Exercise chains with a fake template.
configs:
  workload: {ROOT / 'configs' / 'workload.yaml'}
  eval: {ROOT / 'configs' / 'eval.yaml'}
{method}thresholds:
  quality_drop_pct: eval.thresholds.{rule}
exceptions: []
stop_loss: eval.stop_loss.gpu_hours_over_budget_ratio
gpu_hours_budget: 0.05
expected_duration: 5 s
status: ready
template: {TPL / 'fake_chain.ipynb'}
{up}---
# {cid}
""")
    return p


def _run_card(card, runs):
    p = run_pqk('run', card, '--runs-dir', runs, '--no-aggregate')
    logs = sorted(Path(runs).glob(f'{Path(card).stem}-*/log.json'))
    assert logs, p.stdout[-2000:] + p.stderr[-2000:]
    return json.loads(logs[-1].read_text()), logs[-1].parent


@pytest.mark.slow
def test_chains_latest_named_missing(tmp_path):
    "K → P → Q through `upstream:`: latest, a named run, the three-run list in the last log, a missing upstream."
    import hashlib
    runs = tmp_path / 'runs'
    k, p_, q = (_chain_card(tmp_path, 'Kc', 'K'), _chain_card(tmp_path, 'Pc', 'KP', {'card': 'Kc'}),
                _chain_card(tmp_path, 'Qc', 'KQ', {'card': 'Pc'}))
    miss, _ = _run_card(q, runs)                      # no Pc run yet: a failed log that says what to run first
    assert miss['status'] == 'failed' and 'upstream.card' in miss['error'] and "'Pc'" in miss['error']
    assert 'pqk run taskcards/Pc.md' in miss['error'] and 'upstream' not in miss
    k1, k1d = _run_card(k, runs)
    k2, k2d = _run_card(k, runs)                      # the newest K run is the one a chain picks
    pr, prd = _run_card(p_, runs)
    assert pr['upstream'][0]['run_id'] == k2d.name and pr['model']['checkpoint'] == str(k2d / 'student_best.pt')
    assert pr['upstream'][0]['sha256'] == hashlib.sha256((k2d / 'student_best.pt').read_bytes()).hexdigest()
    qr, _ = _run_card(q, runs)
    assert [(u['card'], u['run_id']) for u in qr['upstream']] == [('Pc', prd.name), ('Kc', k2d.name)]
    named = _chain_card(tmp_path, 'Pn', 'KP', {'card': 'Kc', 'run': k1d.name})
    pn, _ = _run_card(named, runs)
    assert pn['upstream'][0]['run_id'] == k1d.name and pn['model']['checkpoint'] == str(k1d / 'student_best.pt')
    gone = _chain_card(tmp_path, 'Pg', 'KP', {'card': 'Kc', 'run': 'Kc-20200101T000000Z-000000'})
    pg, _ = _run_card(gone, runs)
    assert pg['status'] == 'failed' and 'upstream.run' in pg['error']


def test_devcheck_unknown_upstream_card(tmp_path):
    from pqk.core.devcheck import devcheck
    card = _chain_card(tmp_path, 'Qx', 'KQ', {'card': 'NoSuchCard'})
    ps = devcheck(cards=[card])
    assert [p.path for p in ps] == ['upstream.card'] and 'NoSuchCard' in str(ps[0]), ps
    _chain_card(tmp_path, 'NoSuchCard', 'K')
    assert devcheck(cards=[card]) == []
    assert devcheck(cards=[ROOT / 'taskcards' / 'KQ_D1.md']) == []


def _fake_modelopt(d: Path) -> Path:
    (d / 'fake_site' / 'modelopt').mkdir(parents=True, exist_ok=True)
    init = d / 'fake_site' / 'modelopt' / '__init__.py'
    init.write_text("raise ImportError('simulated: modelopt not installed')\n")
    return d / 'fake_site'


@pytest.mark.parametrize('case', ['weight_bits', 'op_types', 'modelopt_minmax'])
def test_bad_quant_config_is_refused_before_running(tiny, tmp_path, case):
    """A quant.yaml the loader refuses is refused by the runner's devcheck before anything runs (the schema and the
    quant hook are the one check), naming the file, the field and the value."""
    edit, want = {'weight_bits': (lambda x: x['ptq'].update(weight_bits=4), ['ptq.weight_bits', '4']),
                  'op_types': (lambda x: x['ptq'].update(op_types=['Conv', 'Softmax']), ['ptq.op_types[1]', 'Softmax']),
                  'modelopt_minmax': (lambda x: x['ptq'].update(backend='modelopt', calibration='percentile'),
                                      ['ptq.calibration', 'percentile', 'minmax with backend modelopt'])}[case]
    cfg = yaml_copy(tiny / 'quant.yaml', tmp_path / 'quant.yaml', edit)
    p = run_pqk('run-quant', '--workload', tiny / 'workload.yaml', '--eval', tiny / 'eval.yaml', '--cfg', cfg,
                '--log', tmp_path / 'log.json', '--runs-dir', tmp_path / 'runs', '--no-aggregate', timeout=600)
    assert p.returncode != 0 and 'Traceback' not in p.stderr and not (tmp_path / 'runs').exists(), p.stderr[-3000:]
    assert any('quant.yaml' in l and all(w in l for w in want) for l in p.stderr.splitlines()), p.stderr[-3000:]


@pytest.mark.parametrize('case', ['empty_calibration', 'not_dust3r', 'modelopt_missing'])
@pytest.mark.slow
def test_bad_input_fails_with_a_log(tiny, tmp_path, case):
    "Each bad input ends in a failed log whose error names the field and the value."
    cfg, extra, env, ckpt = tiny / 'quant.yaml', [], None, None
    if case == 'empty_calibration':
        extra, want = ['--param', 'calib_count=0'], ['calibration.count', '0']
    elif case == 'not_dust3r':
        import torch
        torch.save({'weights': torch.zeros(3)}, tmp_path / 'other.pt')
        ckpt, want = tmp_path / 'other.pt', ['ckpt', 'other.pt', 'not a DUSt3R']
    else:
        cfg = yaml_copy(tiny / 'quant.yaml', tmp_path / 'quant.yaml', {'ptq.backend': 'modelopt'})
        env = {'PYTHONPATH': os.pathsep.join([str(_fake_modelopt(tmp_path)), str(ROOT)])}
        want = ['ptq.backend', 'modelopt', 'simulated']
    args = ['run-quant', '--workload', tiny / 'workload.yaml', '--eval', tiny / 'eval.yaml', '--cfg', cfg,
            '--log', tmp_path / 'log.json', '--runs-dir', tmp_path / 'runs', '--no-aggregate',
            '--param', 'progress=false',
            *(['--ckpt', ckpt] if ckpt else []), *extra]
    p = run_pqk(*args, env=env, timeout=600)
    assert (tmp_path / 'log.json').is_file(), p.stderr[-3000:]
    rec = json.loads((tmp_path / 'log.json').read_text())
    assert p.returncode == 1 and rec['status'] == 'failed' and rec['kind'] == 'Q'
    assert all(w in rec['error'] for w in want), rec['error']


@pytest.mark.slow
def test_export_cli(tiny, tmp_path):
    """`pqk export` writes a checked ONNX at the contract shape and says so in one line (`--json`: the whole report);
    a bad precision is a usage error."""
    p = run_pqk('export', '--ckpt', tiny / 'tiny.pt', '--precision', 'fp32', '--out', tmp_path / 'm.onnx',
                '--workload', tiny / 'workload.yaml', '--json', timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads(p.stdout)
    assert rep['shape'] == [1, 3, 384, 384] and rep['checker']['ok'] and rep['ort_vs_torch']['ok']
    assert (tmp_path / 'm.onnx').is_file() and (tmp_path / 'm.onnx.polygraphy.txt').is_file()
    p = run_pqk('export', '--ckpt', tiny / 'tiny.pt', '--precision', 'fp32', '--out', tmp_path / 'm2.onnx',
                '--workload', tiny / 'workload.yaml', timeout=600)
    assert p.returncode == 0 and p.stdout.count('\n') == 1 and re.fullmatch(
        rf'exported fp32 ONNX {re.escape(str(tmp_path / "m2.onnx"))} \([0-9.]+ [kMG]?B \+ 0 B data\), ORT vs torch '
        r'rel err \S+ ≤ 0\.0001: ok\n', p.stdout), p.stdout + p.stderr[-2000:]
    p = run_pqk('export', '--ckpt', tiny / 'tiny.pt', '--precision', 'int4', '--out', tmp_path / 'x.onnx')
    assert p.returncode == 2 and 'int4' in p.stderr
