import os, sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('PQK_ROOT', str(ROOT))
# One intra-op thread for every test process (notebooks run in this process; papermill kernels and torchrun workers
# inherit it): the tests use tiny models, and on a shared 2-core machine two spinning OpenMP threads per process made
# a prediction 10-20x slower (measured: 12.9 s against 0.67 s for 4 pairs of a tiny model at load ~8).
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')
