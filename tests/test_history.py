"""The pass history a run keeps until its split (utils/history.py): on the host, slot by slot, averaged and read back
as the training script reads it, saved and restored with a state, and in float16 where float32 would be too large."""
import numpy as np
import torch

import utils.history
from utils.history import PassHistory


def filled(slots=3, n=4, classes=2, epochs=(5, 6, 7)):
    """A history whose slot e % slots holds the pass of epoch e: agreements epoch / 10 on class 0, the rest on 1."""
    history = PassHistory(slots, n, classes)
    for epoch in epochs:
        probs = torch.tensor([[epoch / 10, 1 - epoch / 10]] * n)
        history.add(epoch % slots, epoch, probs[:, 0], probs, torch.full((n,), epoch % 2))
    return history


def test_passes_are_kept_on_the_host_and_averaged():
    history = filled()
    assert history.probs.device.type == "cpu" and history.probs.dtype == torch.float32
    recent, teacher = history.recent()
    assert np.allclose(recent[0], [0.6, 0.4]) and recent.dtype == np.float32  # epochs 5, 6, 7
    assert teacher.shape == (3, 4) and sorted(teacher[:, 0].tolist()) == [0, 1, 1]
    assert history.epochs() == [5, 6, 7]
    assert np.allclose(history.on_label[7 % 3], 0.7)
    history.add(8 % 3, 8, torch.zeros(4), torch.tensor([[0.0, 1.0]] * 4), torch.zeros(4, dtype=torch.long))
    assert history.epochs() == [6, 7, 8]  # the oldest pass made room


def test_only_the_passes_made_are_averaged():
    history = filled(epochs=(0, 1))  # a third slot still empty
    recent, teacher = history.recent()
    assert np.allclose(recent[0], [0.05, 0.95]) and teacher.shape == (2, 4) and history.epochs() == [0, 1]


def test_a_saved_history_restores_exactly():
    history, restored = filled(), PassHistory(3, 4, 2)
    restored.load({k: v.clone() for k, v in history.state().items()})
    for name, tensor in history.state().items():
        assert torch.equal(getattr(restored, name), tensor), name
    assert restored.epochs() == history.epochs()


def test_a_history_too_large_for_float32_keeps_its_agreements_in_float16(monkeypatch):
    """The per-class agreements only: the agreement on the label (the ranking) stays float32."""
    monkeypatch.setattr(utils.history, "FLOAT32_LIMIT", 3 * 4 * 2 * 4 - 1)
    history = filled()
    assert history.probs.dtype == torch.float16 and history.on_label.dtype == torch.float32
    assert history.nbytes() == 3 * 4 * (2 * 2 + 4 + 8) + 3 * 8
    assert "(float16)" in history.describe() and np.allclose(history.recent()[0][0], [0.6, 0.4], atol=1e-3)
