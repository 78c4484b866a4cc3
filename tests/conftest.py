import os
import pickle
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_CIFAR_N = os.path.join(ROOT, "..", "shared", "cifar-n")


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def fake_cifar(tmp_path):
    """A small CIFAR-10 and CIFAR-100 in the real on-disk layout (bytes keys, (N, 3072) uint8 rows, label
    lists), 5 x 20 training and 20 test images for CIFAR-10, 100 + 20 for CIFAR-100."""
    rng = np.random.default_rng(0)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    labels10 = []
    for i in range(1, 6):
        labels = rng.integers(0, 10, 20).tolist()
        labels10 += labels
        write_pickle(c10 / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": labels,
                                               b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8)})
    write_pickle(c10 / "test_batch", {b"labels": rng.integers(0, 10, 20).tolist(),
                                      b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8)})
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    labels100 = rng.integers(0, 100, 100).tolist()
    write_pickle(c100 / "train", {b"fine_labels": labels100, b"coarse_labels": [0] * 100,
                                  b"data": rng.integers(0, 256, (100, 3072), dtype=np.uint8)})
    write_pickle(c100 / "test", {b"fine_labels": rng.integers(0, 100, 20).tolist(), b"coarse_labels": [0] * 20,
                                 b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8)})
    return dict(dir=str(tmp_path), labels10=np.array(labels10), labels100=np.array(labels100))
