"""Shared test setup.

* Makes ``tests/`` importable, so tests can ``from tiny_models import tiny_teacher``.
* Runs torch on one thread: the tiny test models are far too small to gain from intra-op
  parallelism, and on a busy 2-core machine OpenMP threads waiting on each other make a forward
  call of a 2-layer model take ~0.5 s instead of ~2 ms.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

torch.set_num_threads(1)
