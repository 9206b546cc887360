"""`pqk devcheck` across a process boundary: PASS on the shipped contracts, and exit 1 naming field and value for each
kind of broken contract. A hostile contract under 1 MB may cost at most 2 CPU s, or 8× a plain devcheck on a machine
slow enough that 2 s is not that (a 150,000-item list took 2.1 s beside 0.45 s for the plain one on an AVX2 EPYC)."""
import re
import pytest, yaml

from conftest import ROOT, run_pqk as pqk, run_python

CFG = ROOT / 'configs'

_MEASURED = ('import resource, re, sys; from pqk.run.cli import main; rc = main(sys.argv[1:]); u = resource.getrusage('
             'resource.RUSAGE_SELF); hwm = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)); '
             'print(f"COST {u.ru_utime + u.ru_stime} {hwm / 1024}", file=sys.stderr); sys.exit(rc)')
# peak RSS from VmHWM (reset when the child execs); ru_maxrss can carry the forking parent's peak over

def _cost(*args):
    "Run pqk in a child that reports its own CPU seconds and peak RSS (MiB): CPU time, not wall time (a shared machine)."
    r = run_python(_MEASURED, *args)
    cpu, rss = map(float, re.search(r'COST (\S+) (\S+)', r.stderr).groups())
    return r, cpu, rss

def test_pass_on_shipped_configs_fast():
    r, cpu, _ = _cost('devcheck')
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith('PASS')
    assert cpu < 2.0, f'devcheck took {cpu:.2f} CPU s'

_BASE = []

def _base_cpu() -> float:
    "CPU seconds of `pqk devcheck` on the shipped contracts on this machine (machines differ ~3× in speed here)."
    if not _BASE: _BASE.append(min(_cost('devcheck')[1] for _ in range(2)))
    return _BASE[0]

HOSTILE = {
    'alias bomb': '# eval v1.0 — x\nversion: "1.0"\na: &a [x, x, x, x, x, x, x, x, x, x]\n' + ''.join(
        f'{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n' for p, c in zip('abcdefgh', 'bcdefghi')),
    'huge list': '# eval v1.0 — x\nversion: "1.0"\nquality:\n  metrics: [' + ', '.join(['7'] * 150_000) + ']\n',
    'deep nesting': '# eval v1.0 — x\nversion: "1.0"\nx: ' + '[' * 400_000 + ']' * 400_000 + '\n',
    'long string': '# eval v1.0 — x\nversion: "1.0"\nreports: "' + 'x' * 1_000_000 + '"\n',
}

@pytest.mark.parametrize('case', sorted(HOSTILE))
def test_hostile_contract_under_1mb_is_cheap(tmp_path, case):
    text = HOSTILE[case]; assert len(text.encode()) < 1 << 20
    r, cpu, rss = _cost('devcheck', '--eval', _write(tmp_path, 'eval', text), '--cfg', CFG / 'distill.yaml', '--card', ROOT / 'taskcards' / 'E0_eval_teacher.md')
    assert r.returncode == 1 and 'Traceback' not in r.stdout + r.stderr, r.stdout + r.stderr
    assert 'eval.yaml' in r.stdout, r.stdout
    assert cpu < max(2.0, 8 * _base_cpu()) and rss < 300, (case, cpu, rss, _base_cpu())
    assert max(map(len, r.stdout.splitlines())) < 400, 'values are truncated in messages'

def test_devcheck_imports_no_torch():
    code = 'import sys; from pqk.run.cli import main; main(["devcheck"]); assert "torch" not in sys.modules, "torch imported"'
    r = run_python(code)
    assert r.returncode == 0, r.stderr

def _write(tmp, name, text): p = tmp / f'{name}.yaml'; p.write_text(text); return p

def _edit(name, fn):
    "Return the file text of configs/<name>.yaml with its data edited by fn (first line kept)."
    src = (CFG / f'{name}.yaml').read_text(); data = yaml.safe_load(src); fn(data)
    return src.splitlines()[0] + '\n' + yaml.safe_dump(data, sort_keys=False)

def setk(path, value):
    def f(d):
        *head, last = path.split('.'); cur = d
        for h in head: cur = cur[h]
        cur[last] = value
    return f

def delk(path):
    def f(d):
        *head, last = path.split('.'); cur = d
        for h in head: cur = cur[h]
        del cur[last]
    return f

# (id, contract, file text, expected field path, expected value text in the message)
CASES = [
    ('H_ne_W', 'workload', lambda: _edit('workload', setk('input.shape', [1, 3, 384, 512])), 'input.shape', '384, 512'),
    ('H_500', 'workload', lambda: _edit('workload', setk('input.shape', [1, 3, 500, 500])), 'input.shape[2]', '500'),
    ('batch_2', 'workload', lambda: _edit('workload', setk('input.shape', [2, 3, 384, 384])), 'input.shape[0]', '2'),
    ('shape_len3', 'workload', lambda: _edit('workload', setk('input.shape', [3, 384, 384])), 'input.shape', '384'),
    ('k_0', 'workload', lambda: _edit('workload', setk('pair_graph.k', 0)), 'pair_graph.k', '0'),
    ('bad_strategy', 'workload', lambda: _edit('workload', setk('pair_graph.strategy', 'ring')), 'pair_graph.strategy', 'ring'),
    ('k_wrong_type', 'workload', lambda: _edit('workload', setk('pair_graph.k', 'three')), 'pair_graph.k', 'three'),
    ('unknown_key', 'workload', lambda: _edit('workload', setk('pair_graph.radius', 3)), 'pair_graph.radius', '3'),
    ('missing_required', 'workload', lambda: _edit('workload', delk('teacher')), 'teacher', 'missing'),
    ('manifest_no_paths', 'workload', lambda: _edit('workload', setk('data.eval.source', 'manifest')), 'data.eval.paths', '[]'),
    ('missing_version_line', 'workload', lambda: '\n'.join((CFG / 'workload.yaml').read_text().splitlines()[1:]), 'line 1', 'version'),
    ('version_mismatch', 'eval', lambda: _edit('eval', setk('version', '1.2')), 'version', '1.2'),
    ('bad_verdict_rule', 'eval', lambda: _edit('eval', setk('thresholds.verdict_rule', 'median')), 'thresholds.verdict_rule', 'median'),
    ('no_min_seconds', 'eval', lambda: _edit('eval', delk('efficiency.latency.min_seconds')), 'efficiency.latency.min_seconds', 'missing'),
    ('n_boot_0', 'eval', lambda: _edit('eval', setk('quality.interval.n_boot', 0)), 'quality.interval.n_boot', '0'),
    ('no_n_pairs', 'workload', lambda: _edit('workload', delk('data.eval.synthetic.n_pairs')), 'data.eval.synthetic.n_pairs', 'missing'),
    ('missing_version_field', 'eval', lambda: _edit('eval', delk('version')), 'version', 'missing'),
    ('negative_threshold', 'eval', lambda: _edit('eval', setk('thresholds.quality_drop_mainline_pct', -1.0)), 'thresholds.quality_drop_mainline_pct', '-1.0'),
    ('huge_threshold', 'eval', lambda: _edit('eval', setk('thresholds.quality_drop_q_only_pct', 500)), 'thresholds.quality_drop_q_only_pct', '500'),
    ('ratio_below_1', 'eval', lambda: _edit('eval', setk('stop_loss.gpu_hours_over_budget_ratio', 0.5)), 'stop_loss.gpu_hours_over_budget_ratio', '0.5'),
    ('early_stop_0', 'eval', lambda: _edit('eval', setk('early_stop.no_improve_ckpt', 0)), 'early_stop.no_improve_ckpt', '0'),
    ('primary_not_listed', 'eval', lambda: _edit('eval', setk('quality.primary', 'psnr')), 'quality.primary', 'psnr'),
    ('mainline_looser', 'eval', lambda: _edit('eval', setk('thresholds.quality_drop_mainline_pct', 3.0)), 'thresholds.quality_drop_mainline_pct', '3.0'),
    ('bad_yaml', 'eval', lambda: (CFG / 'eval.yaml').read_text() + '\n  : [unclosed\n', 'line', 'YAML'),
    ('distill_reduction_1', 'distill', lambda: _edit('distill', setk('student.reduction', 1.0)), 'student.reduction', '1.0'),
    ('distill_lr_type', 'distill', lambda: _edit('distill', setk('train.lr', 'fast')), 'train.lr', 'fast'),
    ('quant_bits', 'quant', lambda: _edit('quant', setk('ptq.weight_bits', 3)), 'ptq.weight_bits', '3'),
    ('prune_target', 'prune', lambda: _edit('prune', setk('targets.neurons', 0.2)), 'targets.neurons', '0.2'),
    ('distill_feat_layer', 'distill', lambda: _edit('distill', setk('loss.feat_layers', ['enc_mid'])), 'loss.feat_layers[0]', 'enc_mid'),
    ('quant_modelopt_entropy', 'quant', lambda: _edit('quant', lambda d: d['ptq'].update(backend='modelopt', calibration='entropy')), 'ptq.calibration', 'entropy'),
    ('distill_warmup_default', 'distill', lambda: _edit('distill', lambda d: (d['train'].pop('warmup_steps'), d['train'].update(steps=5))), 'train.warmup_steps', '6'),
]

@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_broken_contract(case, tmp_path):
    cid, name, text, field, value = case
    p = _write(tmp_path, name, text())
    if name in ('workload', 'eval'): r = pqk('devcheck', f'--{name}', p, '--card', ROOT / 'taskcards' / 'E0_eval_teacher.md')
    else: r = pqk('devcheck', '--cfg', p, '--card', ROOT / 'taskcards' / 'E0_eval_teacher.md')
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith('FAIL')]
    assert lines, r.stdout
    assert any(str(p.name) in l and field in l and value in l for l in lines), f'{field} / {value} not named in:\n{r.stdout}'
    assert 'Traceback' not in r.stdout + r.stderr

def test_method_config_leaving_knobs_out_passes(tmp_path):
    "A method config that sets only what differs from the schema's defaults passes (its knobs take the defaults)."
    for name, ver in (('distill', '1.2'), ('prune', '2.1'), ('quant', '1.3')):
        p = _write(tmp_path, name, f'# {name} v{ver} — only what differs\nversion: "{ver}"\nmethod: {name}\n')
        r = pqk('devcheck', '--cfg', p, '--card', ROOT / 'taskcards' / 'E0_eval_teacher.md')
        assert r.returncode == 0 and r.stdout.startswith('PASS'), r.stdout + r.stderr

CARD_CASES = [
    ('missing_config', lambda t: t.replace('configs/distill.yaml', 'configs/missing.yaml'), 'configs.method', 'configs/missing.yaml'),
    ('bad_kind', lambda t: t.replace('kind: K\n', 'kind: KK\n'), 'kind', 'KK'),
    ('literal_threshold', lambda t: t.replace('quality_drop_pct: eval.thresholds.quality_drop_mainline_pct', 'quality_drop_pct: 3.0'), 'thresholds.quality_drop_pct', '3.0'),
    ('dangling_reference', lambda t: t.replace('eval.thresholds.quality_drop_mainline_pct', 'eval.thresholds.quality_drop_max_pct'), 'thresholds.quality_drop_pct', 'quality_drop_max_pct'),
    ('exception_without_reason', lambda t: t.replace('exceptions: []', 'exceptions: [{field: quality_drop_pct, value: 3.0}]'), 'exceptions[0].reason', 'missing'),
    ('no_budget', lambda t: re.sub(r'gpu_hours_budget: [0-9.]+\n', '', t), 'gpu_hours_budget', 'missing'),
    ('no_front_matter', lambda t: t.split('---', 2)[2], 'front matter', 'YAML'),
]

@pytest.mark.parametrize('case', CARD_CASES, ids=[c[0] for c in CARD_CASES])
def test_broken_card(case, tmp_path):
    cid, edit, field, value = case
    p = tmp_path / 'card.md'; p.write_text(edit((ROOT / 'taskcards' / 'A1_K_only.md').read_text()))
    r = pqk('devcheck', '--card', p)
    assert r.returncode == 1, r.stdout + r.stderr
    assert any('card.md' in l and field in l and value in l for l in r.stdout.splitlines()), r.stdout

def test_card_exception_with_reason_passes(tmp_path):
    t = (ROOT / 'taskcards' / 'A1_K_only.md').read_text().replace(
        'exceptions: []', 'exceptions: [{field: quality_drop_pct, value: 3.0, reason: "exploratory run on a tiny student"}]')
    p = tmp_path / 'card.md'; p.write_text(t)
    r = pqk('devcheck', '--card', p)
    assert r.returncode == 0, r.stdout

# NaN and infinity: JSON Schema's "number" accepts them and they pass every range check; the loader refuses them
NONFINITE = [('nan', '.nan'), ('inf', '.inf'), ('minus_inf', '-.inf'), ('overflow', '1.0e+999')]

@pytest.mark.parametrize('token', [t for _, t in NONFINITE], ids=[i for i, _ in NONFINITE])
def test_nonfinite_threshold_is_refused(tmp_path, token):
    src = (CFG / 'eval.yaml').read_text()
    assert 'quality_drop_mainline_pct: 1.5 ' in src
    p = _write(tmp_path, 'eval', src.replace('quality_drop_mainline_pct: 1.5 ', f'quality_drop_mainline_pct: {token} '))
    r = pqk('devcheck', '--eval', p, '--card', ROOT / 'taskcards' / 'E0_eval_teacher.md')
    shown = '.nan' if token == '.nan' else '-.inf' if token == '-.inf' else '.inf'
    assert (r.returncode, r.stdout.splitlines()) == (1, [
        f'FAIL {p}: thresholds.quality_drop_mainline_pct: got {shown}; expected a finite number',
        '1 problem(s) found']), r.stdout + r.stderr
    assert r.stderr == ''

def test_nonfinite_in_a_method_config_and_a_card(tmp_path):
    cfg = _write(tmp_path, 'distill', (CFG / 'distill.yaml').read_text().replace('lr: 3.0e-4', 'lr: .NaN'))
    card = tmp_path / 'card.md'
    card.write_text(re.sub(r'gpu_hours_budget: [0-9.]+', 'gpu_hours_budget: -.inf',
                           (ROOT / 'taskcards' / 'A1_K_only.md').read_text()))
    r = pqk('devcheck', '--cfg', cfg, '--card', card)
    assert r.returncode == 1 and r.stdout.splitlines() == [
        f'FAIL {cfg}: train.lr: got .nan; expected a finite number',
        f'FAIL {card}: gpu_hours_budget: got -.inf; expected a finite number', '2 problem(s) found'], r.stdout
