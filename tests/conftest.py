import os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('PQK_ROOT', str(ROOT))
# One intra-op thread for every test process (notebooks run in this process; papermill kernels and torchrun workers
# inherit it): the tests use tiny models, and on a shared 2-core machine two spinning OpenMP threads per process made
# a prediction 10-20x slower (measured: 12.9 s against 0.67 s for 4 pairs of a tiny model at load ~8).
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')


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


def pqk_env(project: Path | None = None, **extra) -> dict:
    "The environment of a `pqk` subprocess: this checkout's pqk, one thread, `project` as PQK_ROOT."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT), **extra}
    if project is not None: env['PQK_ROOT'] = str(project)
    return env


def pqk_argv(*args) -> list:
    return [sys.executable, '-m', 'pqk.run.cli', *map(str, args)]


@pytest.fixture
def pqk_cmd():
    "Run `pqk ARGS` in a subprocess (cwd: the checkout; `project=`: its PQK_ROOT); returns the CompletedProcess."
    def run(*args, project=None, cwd=ROOT, timeout=240, env=None):
        return subprocess.run(pqk_argv(*args), cwd=cwd, env=env or pqk_env(project), capture_output=True, text=True,
                              timeout=timeout)
    return run


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
