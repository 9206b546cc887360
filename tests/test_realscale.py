"""The release-size DUSt3R-L/512 DPT (571 M parameters, W = 2.28 GB of fp32 weights) through evaluation, a
distillation step, int8 PTQ with both int8 exports, the fp32 export and one pruning round, each in its own process
whose peak resident memory (the whole process tree, `pqk.eval.efficiency.run_measured`) is held to issue 21's bounds,
and the release checkpoint's outputs against pqk's reload of its own exports.

The checkpoint is a random-weight file in the release format built once per session (`release_setup` in conftest);
the contracts are at 512² with 2 evaluation pairs, 2 calibration pairs and a one-call latency protocol. About 12 min
and up to ~11 GB (the distillation step) on 2 cores, 2026-12-07; `pytest -m "not realscale"` leaves them out.
Measured on the project machine (2-core EPYC, 24 GB) every bound of issue 21 holds (none is xfail)."""
import json, os, sys
from pathlib import Path

import pytest

from pqk.eval.efficiency import run_measured, MB

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.realscale]
TIMEOUT = float(os.environ.get('PQK_REALSCALE_TIMEOUT', 2400))   # seconds per measured child


def _mem_total_gb() -> float:
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemTotal:'): return int(line.split()[1]) * 1024 / 1e9
    except OSError: pass
    return 0.0


@pytest.fixture(scope='module')
def rs(release_setup):
    if _mem_total_gb() < 20:
        pytest.skip(f'the real-scale tests need a machine with >= 20 GB of memory; this one has {_mem_total_gb():.1f}')
    return release_setup


def _run(rs, args, timeout=TIMEOUT) -> dict:
    r = run_measured([sys.executable, *map(str, args)], timeout=timeout, env=rs.env, cwd=ROOT)
    r['peak_w'] = r['peak_mb'] * MB / rs.W if r['peak_mb'] is not None else None
    what = ' '.join(map(str, args[:4])) if args[0] != '-c' else 'python -c <script>'
    print(f"{what}: peak {r['peak_mb'] * MB / 1e9:.2f} GB = {r['peak_w']:.2f} W, {r['wall_s']:.0f} s, "
          f"load {os.getloadavg()[0]:.1f}")
    assert not r['timed_out'], f'did not finish within {timeout} s'
    assert r['rc'] == 0, r['stderr'][-3000:]
    return r


def _doctor_stage(rs, stage, **spec) -> tuple[dict, dict]:
    "A `pqk.run.doctor` stage in a measured child: (its result, the measurement)."
    work = rs.dir / f'work-{stage}'; work.mkdir(exist_ok=True)
    f = work / 'spec.json'
    f.write_text(json.dumps({'ckpt': str(rs.ckpt), 'res': 512, 'work': str(work), 'device': 'cpu', **spec}))
    r = _run(rs, ['-m', 'pqk.run.doctor', '--stage', stage, '--spec', f])
    line = [l for l in r['stdout'].splitlines() if l.startswith('PQK_DOCTOR ')][-1]
    return json.loads(line[len('PQK_DOCTOR '):]), r


def test_eval(rs, tmp_path):
    "`pqk run-eval` of the release checkpoint as the workload's teacher (2 pairs at 512²): <= 2 W."
    r = _run(rs, ['-m', 'pqk.run.cli', 'run-eval', '--workload', rs.workload, '--eval', rs.eval, '--runs-dir',
                  tmp_path / 'runs', '--no-aggregate', '--log', tmp_path / 'log.json'])
    log = json.loads((tmp_path / 'log.json').read_text())
    assert log['quality']['n_pairs'] == 2 and log['model']['params'] == 571_171_208, log['model']
    assert log['efficiency']['size_mb'] == pytest.approx(rs.W / MB, rel=1e-3)    # the weights, not a re-serialised file
    assert r['peak_w'] <= 2.0, f"evaluation peaked at {r['peak_w']:.2f} W (bound 2 W)"


@pytest.fixture(scope='module')
def distill(rs):
    return _doctor_stage(rs, 'distill', train_res=224, steps=2, distill_cfg=str(ROOT / 'configs/distill.yaml'))


def test_distill_step_runs(distill, rs):
    "Two steps of a -30% student at 224² with the frozen teacher through pqk's loop, ending with its checkpoint."
    res, r = distill
    assert res['status'] == 'completed' and res['steps'] == 2 and res['loss'] == res['loss'], res   # finite loss
    assert 0.65 < res['student_params'] / res['teacher_params'] < 0.75, res
    assert r['peak_w'] <= 5.5, f"distillation peaked at {r['peak_w']:.2f} W: worse than measured when written (4.7 W)"


def test_distill_step_within_5w(distill):
    """Teacher W, the student (0.7 W), its AdamW state (1.4 W), its gradients during the update (0.7 W) and the
    activations of a 224² step: 4.7 W measured (10.8 GB; 6.4 W before the training checkpoint was saved without
    copies, the gradients dropped after each step and AdamW run per tensor on the CPU, pqk/train/loop.py)."""
    res, r = distill
    assert r['peak_w'] <= 5.0, f"distillation step peaked at {r['peak_w']:.2f} W (bound 5 W)"


@pytest.fixture(scope='module')
def ptq(rs):
    "export_int8 of the ORT-CPU int8 file and the TensorRT-style Q/DQ file (one fp32 export, one calibration)."
    out = rs.dir / 'ptq'; out.mkdir(exist_ok=True)
    code = ('import json, sys; from pqk.core.contracts import load_workload; '
            'from pqk.compress.quant import export_int8; '
            "r = export_int8(sys.argv[1], f'{sys.argv[3]}/ort.onnx', load_workload(sys.argv[2]), "
            "trt_out=f'{sys.argv[3]}/tensorrt.onnx'); "
            "open(f'{sys.argv[3]}/report.json', 'w').write(json.dumps(r, default=str))")
    r = _run(rs, ['-c', code, rs.ckpt, rs.workload, out])
    return json.loads((out / 'report.json').read_text()), r, out


def test_ptq_and_both_int8_exports(ptq):
    "Static int8 PTQ on 2 calibration pairs, the ORT-CPU file and the TensorRT-style Q/DQ file: <= 4 W, no leftovers."
    rep, r, out = ptq
    assert r['peak_w'] <= 4.0, f"PTQ + both int8 exports peaked at {r['peak_w']:.2f} W (bound 4 W)"
    assert sorted(p.name for p in out.iterdir()) == ['ort.onnx', 'report.json', 'tensorrt.onnx']   # no intermediate
    assert rep['fp32']['ort_vs_torch']['ok'] and not rep['fp32']['kept'], rep['fp32']
    assert rep['int8']['quantized_nodes'] > 0 and rep['int8']['size_mb'] < 0.3 * 571_171_208 * 4 / MB, rep['int8']
    assert rep['trt']['qdq']['trt_style'] and rep['trt']['producer'] == 'onnxruntime', rep['trt']   # 2.28 GB > 1 GB
    assert rep['trt']['calibration_s'] is None, 'the TensorRT file reuses the calibration of the CPU file'


def test_fp32_export_within_3w(fp32_export):
    """`pqk export --precision fp32` with its checks: <= 3 W (it was 4.3 W before the weights went to external data
    tensor by tensor and the model was released before ORT's session; see pqk/export/onnx.py)."""
    rep, r, _ = fp32_export
    assert r['peak_w'] <= 3.0, f"fp32 export peaked at {r['peak_w']:.2f} W (bound 3 W)"


@pytest.fixture(scope='module')
def fp32_export(rs):
    out = rs.dir / 'fp32'; out.mkdir(exist_ok=True)
    r = _run(rs, ['-m', 'pqk.run.cli', 'export', '--ckpt', rs.ckpt, '--precision', 'fp32', '--workload', rs.workload,
                  '--out', out / 'model.onnx', '--json'])
    return json.loads(r['stdout'][r['stdout'].index('{'):]), r, out


def test_fp32_export_checked(fp32_export):
    rep, r, out = fp32_export
    assert rep['ort_vs_torch']['ok'] and rep['ort_vs_torch']['max'] < 1e-4, rep['ort_vs_torch']
    assert rep['external_data'] == 'model.onnx.data' and (out / 'model.onnx.data').is_file(), rep
    assert r['peak_w'] <= 2.5, f"fp32 export peaked at {r['peak_w']:.2f} W: worse than measured when written (1.8 W)"


def test_release_outputs_vs_reloaded_exports(rs, fp32_export, ptq):
    """In a fresh process: the release checkpoint loaded by pqk (torch) against ONNX Runtime on pqk's fp32, int8 and
    TensorRT-style exports of it, on a pair none of the exports saw; the same model's outputs on another pair are the
    scale the errors are held against (the negative control)."""
    _, _, f32 = fp32_export
    _, _, q = ptq
    code = """
import json, sys, torch
from pqk.models.checkpoints import load_checkpoint
from pqk.export.ort import OrtPredictor
from pqk.eval.protocol import rel_l2
g = torch.Generator().manual_seed(123)
x = [torch.rand(1, 3, 512, 512, generator=g) * 2 - 1 for _ in range(3)]
m = load_checkpoint(sys.argv[1])
with torch.no_grad(): t, other = m({'img': x[0]}, {'img': x[1]}), m({'img': x[2]}, {'img': x[1]})
del m
e = {'other_pair': rel_l2(other[0]['pts3d'], t[0]['pts3d'])}
for k, f in zip(('fp32', 'int8', 'qdq'), sys.argv[2:5]):
    o = OrtPredictor(f, providers=['CPUExecutionProvider'])(x[0], x[1])
    e[k] = rel_l2(o[0]['pts3d'], t[0]['pts3d'])
print(json.dumps(e))
"""
    r = _run(rs, ['-c', code, rs.ckpt, f32 / 'model.onnx', q / 'ort.onnx', q / 'tensorrt.onnx'])
    e = json.loads(r['stdout'].strip().splitlines()[-1])
    # measured: fp32 6.6e-7, int8 0.019, Q/DQ 0.016; the random-weight model's outputs move little with the input
    # (another pair's outputs differ by 0.099), so each export must be well closer to its own pair than that
    assert e['fp32'] < 1e-4 and e['fp32'] < e['other_pair'] / 1000, e
    assert e['int8'] < e['other_pair'] / 3 and e['qdq'] < e['other_pair'] / 3, e


def test_prune_round(rs):
    "One pruning round of configs/prune.yaml (Torch-Pruning trace, scores, the cut, its exactness check): <= 3 W."
    res, r = _doctor_stage(rs, 'prune', prune_cfg=str(ROOT / 'configs/prune.yaml'))
    assert res['exact_rel_err'] <= 1e-5 and 0.5 < res['params_ratio'] < 0.95, res
    assert r['peak_w'] <= 3.0, f"one prune round peaked at {r['peak_w']:.2f} W (bound 3 W)"
