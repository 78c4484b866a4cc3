"""The full-set passes a run keeps until it splits: for each of the last few epochs (utils.tipping.history_slots), the
agreement on each sample's label, the agreement of every class and the class the teacher alone predicts. At the
split, detection reads the tipping epoch's agreement on the label (the ranking and G4, as the reference) and the
average and the teacher's predictions of the last passes (the flagged column and the suggestions); then the history
is freed.

It lives in host memory, not on the training device (a pass is copied out once per epoch, while the loop waits for
the epoch's statistics anyway), and only in the process that writes the outputs. Its size is
slots x N x (C x 4 + 12) bytes: 98 MiB for CIFAR-100 (5 passes of 50,000 images of 100 classes); where the
agreements of every class would take more than FLOAT32_LIMIT, they are kept in float16 (about 3 significant digits;
the agreement on the label, the ranking, stays float32), which halves it. torch only."""
import torch

FLOAT32_LIMIT = 2 ** 30  # bytes of the per-class agreements above which they are kept in float16


class PassHistory:
    """`slots` passes of n samples and num_classes classes, slot k holding the pass of an epoch e with e % slots == k."""

    def __init__(self, slots, n, num_classes):
        per_class = torch.float32 if slots * n * num_classes * 4 <= FLOAT32_LIMIT else torch.float16
        self.on_label = torch.zeros(slots, n)
        self.probs = torch.zeros(slots, n, num_classes, dtype=per_class)
        self.teacher = torch.zeros(slots, n, dtype=torch.long)
        self.epoch = torch.full((slots,), -1, dtype=torch.long)  # the epoch of each slot's pass; -1: none yet

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in self.state().values())

    def describe(self):
        slots, n, c = self.probs.shape
        return (f"{slots} full-set passes of {n} x {c} agreements ({str(self.probs.dtype).replace('torch.', '')}) kept "
                f"in host memory until the split: {self.nbytes() / 2 ** 20:.1f} MiB")

    def add(self, slot, epoch, on_label, probs, teacher_predicted):
        """Keep the pass of `epoch` (device or host tensors, as utils.engine.agreement_pass returns them) in `slot`."""
        self.epoch[slot] = epoch
        self.on_label[slot] = on_label.cpu()
        self.probs[slot] = probs.cpu().to(self.probs.dtype)
        self.teacher[slot] = teacher_predicted.cpu()

    def recent(self):
        """(the agreement of every class averaged over the passes kept, float32 (N, C); the teacher's predicted
        classes of each, (passes, N)), as numpy arrays. (Every rule splits once all slots hold a pass.)"""
        kept = [slot for slot, epoch in enumerate(self.epoch.tolist()) if epoch >= 0]
        total = torch.zeros(self.probs.shape[1:])
        for slot in kept:  # one float32 slot at a time: no float32 copy of a float16 history
            total += self.probs[slot]
        return (total / len(kept)).numpy(), self.teacher[kept].numpy()

    def epochs(self):
        """The epochs of the passes kept, oldest first."""
        return sorted(e for e in self.epoch.tolist() if e >= 0)

    def state(self):
        return dict(on_label=self.on_label, probs=self.probs, teacher=self.teacher, epoch=self.epoch)

    def load(self, state):
        for name, tensor in state.items():
            setattr(self, name, tensor.cpu())
