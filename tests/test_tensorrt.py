"""TensorRT engines of a tiny DUSt3R (pqk.export.tensorrt): fp32 and fp16 builds with metadata and the inspector's
per-layer precision, outputs against ONNX Runtime, the timing cache, an engine that cannot be loaded, and an edge
measurement through the tensorrt backend with GPU compute time. Runs only where `tensorrt` imports and a CUDA GPU
exists; everywhere else every test is reported as skipped with that reason."""
import json
from pathlib import Path
import pytest, torch
from pqk.export.tensorrt import tensorrt_status

OK, WHY = tensorrt_status()
pytestmark = [pytest.mark.skipif(not OK, reason=WHY), pytest.mark.slow]


@pytest.fixture(scope='module')
def onnx_file(tmp_path_factory):
    from pqk.models.dust3r import make_model
    from pqk.export.onnx import export_graph
    d = tmp_path_factory.mktemp('trt')
    torch.manual_seed(0)
    m = make_model('tiny_dpt').eval()
    return export_graph(m, d / 'tiny.onnx', [1, 3, 64, 64]), m


@pytest.mark.parametrize('precision,tol', [('fp32', 1e-3), ('fp16', 3e-2)])
def test_build_run_against_ort(onnx_file, tmp_path, precision, tol):
    from pqk.export.tensorrt import build_engine, TensorRTPredictor, read_engine_meta
    from pqk.export.ort import OrtPredictor
    from pqk.eval.protocol import compare_models
    from pqk.data.pairs import probe_pair
    onnx, _ = onnx_file
    eng = tmp_path / f'tiny_{precision}.engine'
    meta = build_engine(onnx, eng, {'precision': precision, 'trt_workspace_mb': 512})
    assert read_engine_meta(eng) == meta and eng.stat().st_size > 0
    assert meta['precision'] == precision and meta['tensorrt_version'] and meta['build_s'] > 0 and meta['layers'] > 0
    # TensorRT may fuse the transformer into a few Myelin layers, so only the count is pinned, not which precision
    assert sum(meta['layer_precision'].values()) == meta['layers'], meta['layer_precision']
    layers = json.loads(Path(str(eng) + '.layers.json').read_text())
    assert all(l['precision'] in (None, 'fp32', 'fp16', 'int32', 'int64', 'bool', 'int8', 'bf16') for l in layers)
    err = compare_models(TensorRTPredictor(eng).check_shape([1, 3, 64, 64]),
                         OrtPredictor(onnx, providers=['CPUExecutionProvider']), probe_pair(64, 1))
    assert err['max'] < tol, (precision, err)                      # relative L2 of every output (eval.protocol)


def test_timing_cache_and_shape(onnx_file, tmp_path):
    from pqk.export.tensorrt import build_engine, TensorRTPredictor
    onnx, _ = onnx_file
    cache = tmp_path / 'timing.cache'
    build_engine(onnx, tmp_path / 'a.engine', {'precision': 'fp16', 'trt_workspace_mb': 512}, timing_cache=cache)
    assert cache.stat().st_size > 0
    meta = build_engine(onnx, tmp_path / 'b.engine', {'precision': 'fp16', 'trt_workspace_mb': 512}, timing_cache=cache)
    assert meta['timing_cache'] == str(cache)
    with pytest.raises(ValueError, match='the workload contract feeds'):
        TensorRTPredictor(tmp_path / 'b.engine').check_shape([1, 3, 384, 384])


def test_engine_that_cannot_load(onnx_file, tmp_path):
    from pqk.export.tensorrt import build_engine, TensorRTPredictor, engine_meta_path
    onnx, _ = onnx_file
    eng = tmp_path / 'c.engine'
    build_engine(onnx, eng, {'precision': 'fp32', 'trt_workspace_mb': 512})
    data = eng.read_bytes(); eng.write_bytes(data[:len(data) // 3])           # a damaged / foreign plan
    meta = json.loads(engine_meta_path(eng).read_text()); meta['tensorrt_version'] = '8.5.2'
    engine_meta_path(eng).write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match='could not load this engine') as e:
        TensorRTPredictor(eng)
    assert 'built with TensorRT 8.5.2' in str(e.value) and 'rebuild it here' in str(e.value)


def test_edge_measure_tensorrt(onnx_file, tmp_path):
    from pqk.export.tensorrt import build_engine
    from pqk.edge.edge_eval import load_predictor, edge_measure, edge_protocol
    from pqk.edge.power import select_sampler
    from pqk.core.contracts import load_workload, load_eval
    onnx, model = onnx_file
    eng = tmp_path / 'd.engine'
    build_engine(onnx, eng, {'precision': 'fp16', 'trt_workspace_mb': 512})
    pr = {**edge_protocol(load_workload(), load_eval(), min_pairs=20, min_seconds=0.2), 'shape': [1, 3, 64, 64]}
    pred, info = load_predictor(None, engine=eng, shape=pr['shape'])
    sampler, _ = select_sampler('auto', interval_ms=20)
    blk, trace, window = edge_measure(pred, info, pr, sampler, reference=model, state={'notes': []})
    assert blk['backend'] == 'tensorrt' and blk['error'] is None and blk['timed_pairs'] >= 20
    assert 0 < blk['gpu_compute_p50_ms'] <= blk['latency_p50_ms'], blk          # compute inside end to end
    assert blk['peak_mem_kind'] == 'cuda_allocated' and blk['fidelity_rel_err'] < 3e-2
    print({k: blk[k] for k in ('name', 'latency_p50_ms', 'gpu_compute_p50_ms', 'power_sampler', 'power_avg_W')})
