"""Shared scaffolding of the process-boundary tests: the `pqk` command in a child process, tiny copies of the contracts,
a tiny checkpoint and its pair export, a small project, a sentinel folder, and waiting on a child process.

Marker `slow`: a test that runs a template notebook or trains, evaluates or exports a model in a child process, and
the heaviest notebooks (tests/test_notebooks.py, SLOW): each over ~5 s on the shared 2-core machine. `pytest -m "not
slow"` is the inner loop; real timing belongs in benchmarks, never in an assertion (inject a clock)."""
import os, shutil, subprocess, sys, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('PQK_ROOT', str(ROOT))
# One intra-op thread for every test process (notebooks run in this process; papermill kernels and torchrun workers
# inherit it): the tests use tiny models, and on a shared 2-core machine two spinning OpenMP threads per process made
# a prediction 10-20x slower (measured: 12.9 s against 0.67 s for 4 pairs of a tiny model at load ~8).
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')


# ---------------------------------------------------------------------------------------------------- two workers
# `python -m pytest` runs on two worker processes (pytest-xdist; `-n 2 --dist loadgroup` in pyproject's addopts; `-n 0`
# runs in this process). Every test is its own unit of work except the files below, whose tests all run on one worker
# in file order: the real-scale tests (up to ~14 GB each: one at a time; one release checkpoint and its module
# fixtures per session) and the 10,000 logs of test_aggregate_scale (built once). xdist's own `xdist_group` marker
# does not group under pytest >= 9.2 (it renames `item._nodeid`, which pytest no longer reads), so the groups are
# named here by file. xdist hands out the largest group first (its `--loadscope-reorder` default): the real-scale
# tests start at once instead of last.
XDIST_GROUPS = {'tests/test_realscale.py': 'realscale', 'tests/test_aggregate_scale.py': 'aggregate_scale'}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    "With `--dist loadgroup`: xdist's LoadGroupScheduling whose groups also come from XDIST_GROUPS (by file)."
    if config.getvalue('dist') != 'loadgroup': return None
    from xdist.scheduler import LoadGroupScheduling

    class FileGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return XDIST_GROUPS.get(nodeid.split('::')[0]) or super()._split_scope(nodeid)
    return FileGroups(config, log)


def pytest_collection_modifyitems(config, items):
    """On xdist workers the `slow` tests come first (order kept otherwise): xdist hands single tests out in collection
    order, and a 2-3 min notebook that starts last leaves the other core idle until it ends."""
    if hasattr(config, 'workerinput'): items.sort(key=lambda it: it.get_closest_marker('slow') is None)


# ---------------------------------------------------------------------------------------------------- child processes
def pqk_env(project: Path | None = None, **extra) -> dict:
    """The environment of a `pqk` subprocess: this checkout's pqk, one thread, `project` as PQK_ROOT, `extra` on top
    (a variable whose value is None is left out)."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    if project is not None: env['PQK_ROOT'] = str(project)
    env.update(extra)
    return {k: str(v) for k, v in env.items() if v is not None}


def pqk_argv(*args, module: str = 'pqk.run.cli') -> list:
    "The command line of `pqk ARGS` (or of `python -m MODULE ARGS`) with this interpreter."
    return [sys.executable, '-m', module, *map(str, args)]


def run_pqk(*args, project=None, cwd=ROOT, timeout: float = 240, env: dict | None = None,
            module: str = 'pqk.run.cli') -> subprocess.CompletedProcess:
    """Run `pqk ARGS` (or `python -m MODULE ARGS`) in a child process and return its CompletedProcess (text stdout and
    stderr). cwd: the checkout; `project`: its PQK_ROOT; `env`: variables added to `pqk_env`."""
    return subprocess.run(pqk_argv(*args, module=module), cwd=cwd, env=pqk_env(project, **(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def run_python(code: str, *args, cwd=ROOT, timeout: float = 120, env: dict | None = None,
               project=None) -> subprocess.CompletedProcess:
    "Run `python -c CODE ARGS` in a child process with `pqk_env` (plus `env`); the CompletedProcess."
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], cwd=cwd, env=pqk_env(project, **(env or {})),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='session')
def pqk_cmd():
    "`run_pqk`: run `pqk ARGS` in a subprocess (cwd: the checkout; `project=`: its PQK_ROOT); the CompletedProcess."
    return run_pqk


def wait_until(cond, what: str, proc=None, limit: float = 240, log: Path | None = None, poll: float = 0.05):
    """Poll `cond()` until it returns something true and return that; fail naming `what` when `proc` exits first or
    after `limit` seconds. The limit only bounds a wait (so that a hung child fails the test): nothing is timed."""
    end = time.monotonic() + limit
    tail = lambda: ('\n' + log.read_text()[-3000:]) if log and Path(log).is_file() else ''
    while True:
        v = cond()
        if v: return v
        if proc is not None and proc.poll() is not None:
            pytest.fail(f'{what}: the process ended first (exit {proc.returncode}){tail()}')
        if time.monotonic() > end: pytest.fail(f'{what}: not within {limit:.0f} s{tail()}')
        time.sleep(poll)


# ---------------------------------------------------------------------------------------------------- contracts
def edit_dict(d: dict, edit) -> dict:
    """Apply `edit` to the dict `d` in place: a function of the dict, or {'dotted.key': value} (a dict value updates
    the mapping there, any other value replaces it), or None."""
    if callable(edit): edit(d)
    else:
        for key, value in (edit or {}).items():
            *parents, last = key.split('.')
            cur = d
            for k in parents: cur = cur.setdefault(k, {})
            if isinstance(value, dict) and isinstance(cur.get(last), dict): cur[last].update(value)
            else: cur[last] = value
    return d


def yaml_copy(src: Path, dst: Path, *edits) -> Path:
    "Copy the YAML config `src` to `dst` with `edits` applied in turn (see `edit_dict`), keeping its first line."
    import yaml
    text = Path(src).read_text()
    d = yaml.safe_load(text)
    for e in edits: edit_dict(d, e)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_text(text.splitlines()[0] + '\n' + yaml.safe_dump(d, sort_keys=False))
    return Path(dst)


TINY_WORKLOAD = {'data.eval.synthetic': {'n_scenes': 1, 'views_per_scene': 2, 'n_pairs': 2}}
FAST_LATENCY = {'efficiency.latency': {'warmup': 1, 'repeats': 2, 'min_seconds': 0.0}}


def tiny_contracts(folder: Path, workload=None, eval=None) -> tuple[Path, Path]:
    """`folder/workload.yaml` and `folder/eval.yaml`: the project's contracts with 2 evaluation pairs (1 scene of 2
    views) and a latency protocol of 1 warm-up and 2 timed calls, then the edits `workload` and `eval` (`edit_dict`)."""
    return (yaml_copy(ROOT / 'configs' / 'workload.yaml', Path(folder) / 'workload.yaml', TINY_WORKLOAD, workload),
            yaml_copy(ROOT / 'configs' / 'eval.yaml', Path(folder) / 'eval.yaml', FAST_LATENCY, eval))


@pytest.fixture
def contracts(tmp_path):
    "(workload, eval): `tiny_contracts(tmp_path / 'contracts')`."
    return tiny_contracts(tmp_path / 'contracts')


def make_project(proj: Path) -> Path:
    """A small pqk project in `proj`: this checkout's pyproject.toml, configs, schemas and templates (the real ones
    and tests/templates), and an empty taskcards/. A `pqk` process works in it with PQK_ROOT (`pqk_env`): what its
    cards name must lie inside it."""
    for d in ('configs', 'schemas', 'nbs/templates', 'tests/templates'):
        shutil.copytree(ROOT / d, proj / d)
    shutil.copy(ROOT / 'pyproject.toml', proj)
    (proj / 'taskcards').mkdir()
    return proj


@pytest.fixture
def tmp_project(tmp_path):
    "`make_project(tmp_path / 'proj')`."
    return make_project(tmp_path / 'proj')


# ---------------------------------------------------------------------------------------------------- models
def tiny_checkpoint(path: Path, model='tiny_linear', seed: int = 0, **fields) -> Path:
    """A randomly initialised DUSt3R (a preset name, a config or its dict; `fields` replace config fields), built after
    `torch.manual_seed(seed)` and saved as a pqk checkpoint at `path`."""
    import torch
    from pqk.models.dust3r import make_model
    from pqk.models.checkpoints import save_checkpoint
    torch.manual_seed(seed)
    return save_checkpoint(make_model(model, **fields).eval(), path)


@pytest.fixture(scope='session')
def tiny_ckpt(tmp_path_factory) -> Path:
    "The 'tiny_linear' preset (seed 0) as a pqk checkpoint, built once per session: do not modify it."
    return tiny_checkpoint(tmp_path_factory.mktemp('tiny_ckpt') / 'tiny.pt')


@pytest.fixture(scope='session')
def pair_onnx(tiny_ckpt, tmp_path_factory) -> Path:
    "`tiny_ckpt` exported to ONNX as a pair model (img1, img2 -> four outputs) at the workload's input shape."
    from pqk.core.contracts import load_workload
    from pqk.models.checkpoints import load_checkpoint
    from pqk.export.onnx import export_graph
    out = tmp_path_factory.mktemp('pair_onnx') / 'tiny.onnx'
    return export_graph(load_checkpoint(tiny_ckpt), out, load_workload().shape)


# ---------------------------------------------------------------------------------------------------- confinement
class Sentinel:
    """A folder outside the project and the runs folder whose files must be neither read nor written: `check()`
    compares names, sizes, modification and access times with the snapshot taken at creation (the access time only
    where this filesystem updates it on a read; `reads_detected` says whether it does)."""
    def __init__(self, folder: Path):
        self.folder = folder
        probe = folder / '.probe'; probe.write_text('x'); st = probe.stat()
        os.utime(probe, ns=(st.st_mtime_ns - 2 * 86400 * 10**9, st.st_mtime_ns)); a0 = probe.stat().st_atime_ns
        probe.read_text(); self.reads_detected = probe.stat().st_atime_ns != a0; probe.unlink()
        self.age()
    def age(self):
        "Set every access time two days before its modification time (so that any read moves it) and snapshot."
        for p in self.folder.rglob('*'):
            if p.is_file() and not p.is_symlink():
                st = p.stat(); os.utime(p, ns=(st.st_mtime_ns - 2 * 86400 * 10**9, st.st_mtime_ns))
        self.snap = self._snap()
    def _snap(self):
        return {str(p.relative_to(self.folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_atime_ns)
                for p in sorted(self.folder.rglob('*')) if p.is_file() and not p.is_symlink()}
    def check(self):
        now = self._snap()
        assert sorted(now) == sorted(self.snap), f'created or removed outside: {sorted(set(now) ^ set(self.snap))}'
        for k, (size, mtime, atime) in self.snap.items():
            assert now[k][:2] == (size, mtime), f'{k} outside the project was written'
            if self.reads_detected: assert now[k][2] == atime, f'{k} outside the project was read'


@pytest.fixture
def sentinel(tmp_path):
    "An `outside/` folder (see `Sentinel`): put files in it, call `.age()`, run, then `.check()`."
    d = tmp_path / 'outside'; d.mkdir()
    return Sentinel(d)


# ---------------------------------------------------------------------------------------------------- real scale
@pytest.fixture(scope='session')
def release_setup(tmp_path_factory):
    """The real-scale setting shared by tests/test_realscale.py: a release-format DUSt3R-L/512 DPT checkpoint with
    random weights ({'args': Namespace(model=<official string>), 'model': state_dict}, 571 M parameters, built by
    pqk's own model class in a child process, ~20 s and 2.5 GB), contracts at 512² with 2 evaluation pairs, 2
    calibration pairs and a one-call latency protocol, W (its fp32 weight bytes) and the environment of the measured
    child processes (all cores: single-thread GEMMs at this size only double the wall time)."""
    import subprocess
    from types import SimpleNamespace
    import torch
    from pqk.models.dust3r import make_model
    from pqk.eval.efficiency import count_params
    d = tmp_path_factory.mktemp('realscale')
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': str(min(2, os.cpu_count() or 1)),
           'MKL_NUM_THREADS': str(min(2, os.cpu_count() or 1))}
    ck = d / 'DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth'
    code = 'import sys; from pqk.models.checkpoints import save_random_release_checkpoint as s; s(sys.argv[1])'
    subprocess.run([sys.executable, '-c', code, str(ck)], check=True, timeout=1800, env=env, capture_output=True)
    with torch.device('meta'): W = count_params(make_model('dust3r_512_dpt')) * 4
    def wl(x):
        x['input']['shape'] = [1, 3, 512, 512]
        x['data']['eval']['synthetic'].update(n_scenes=1, views_per_scene=2, n_pairs=2)
        x['calibration']['synthetic'].update(n_scenes=1)
        x['calibration']['count'] = 2
        x['teacher']['checkpoint'] = str(ck)
    def ev(x): x['efficiency']['latency'] |= {'warmup': 0, 'repeats': 1, 'min_seconds': 0.0}
    return SimpleNamespace(dir=d, ckpt=ck, W=W, env=env,
                           workload=yaml_copy(ROOT / 'configs/workload.yaml', d / 'workload.yaml', wl),
                           eval=yaml_copy(ROOT / 'configs/eval.yaml', d / 'eval.yaml', ev))
