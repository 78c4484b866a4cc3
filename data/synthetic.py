"""Offline, procedurally generated stand-in for CIFAR-10N.

The real CIFAR-10N benchmark needs a download (CIFAR-10 images plus the human
label file).  For tests, smoke runs and quick experiments we instead draw a
small 10-class data set of 32x32 colour images in memory, with numpy only and
deterministically from a seed, together with the six CIFAR-10N label sets
(``clean``, ``aggre``, ``worst``, ``rand1..3``) at CIFAR-10N's noise rates.

Why it looks the way it does:
* The classes come in confusable pairs (disk/ring, square/frame, horizontal/
  vertical stripes, plus/cross, triangle up/down), because human label noise
  in CIFAR-10N mostly confuses similar classes (cat/dog, automobile/truck).
* Each image gets random position, size, rotation, colours, contrast, a
  smooth background texture, pixel noise and occasional clutter, so a small
  CNN needs a few epochs to learn it instead of solving it in one.
* The noise is class- and instance-dependent: harder images (low contrast,
  small, noisy) and some classes are mislabelled more often, and a wrong
  label usually names the confusable partner class.  Exactly
  ``round(rate * n_train)`` labels are flipped per set.
"""
import hashlib
import os
import zipfile

import numpy as np

NOISE_RATES = {"aggre": 0.0901, "rand1": 0.1723, "rand2": 0.1812, "rand3": 0.1764, "worst": 0.4021}
LABEL_KEYS = {"clean": "clean_label", "aggre": "aggre_label", "worst": "worse_label",
              "rand1": "random_label1", "rand2": "random_label2", "rand3": "random_label3"}
CLASSES = ("disk", "ring", "square", "frame", "hstripe",
           "vstripe", "plus", "cross", "tri_up", "tri_down")
NUM_CLASSES = len(CLASSES)
SIZE = 32

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _partner(c):
    """Confusable partner of class c: classes are laid out in pairs (0,1), (2,3), ..."""
    return c ^ 1


def _soft(d):
    """Signed distance (negative inside) -> coverage in [0,1], ~1 px anti-aliasing."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _shape_masks(cls, u, v, r, t, period, phase):
    """Coverage masks (m, 32, 32) of class `cls`; u, v are shape-centred rotated coords.

    r, t, period, phase have shape (m, 1, 1).  `v` grows downwards, as in images.
    """
    cheb = np.maximum(np.abs(u), np.abs(v))
    if cls in (0, 1):
        dist = np.hypot(u, v)
        return _soft(dist - r) if cls == 0 else _soft(np.abs(dist - r + t / 2) - t / 2)
    if cls in (2, 3):
        r = r * 0.85  # squares of the same r look bigger than disks
        return _soft(cheb - r) if cls == 2 else _soft(np.abs(cheb - r + t / 2) - t / 2)
    if cls in (4, 5):
        coord = v if cls == 4 else u
        stripes = np.clip(0.5 + 2.0 * np.sin(2 * np.pi * coord / period + phase), 0.0, 1.0)
        return stripes * _soft(cheb - r)
    if cls in (6, 7):
        if cls == 7:  # an X is a plus turned by 45 degrees
            u, v = (u + v) / np.sqrt(2), (v - u) / np.sqrt(2)
        arms = np.minimum(np.abs(u), np.abs(v)) - t / 2
        return _soft(np.maximum(arms, np.maximum(np.abs(u), np.abs(v)) - r))
    up = -v if cls == 8 else v  # triangle with apex at +up, base at up = -r/2
    d = np.maximum(-r / 2 - up, (np.sqrt(3) * np.abs(u) + up) / 2 - r / 2)
    return _soft(d * 1.2)


def _col(a, idx):
    """Per-image scalars a[idx] shaped (m, 1, 1) to broadcast over pixels."""
    return a[idx, None, None]


def _smooth_field(rng, n, amp):
    """Low-frequency colour texture: 5x5 noise bilinearly upsampled to 32x32."""
    coarse = rng.standard_normal((n, 3, 5, 5), dtype=np.float32)
    # Bilinear upsampling as a matrix product on each axis (fast, no gathers).
    pos = np.linspace(0, 4, SIZE, dtype=np.float32)
    interp = np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(5, dtype=np.float32)))
    field = interp @ coarse @ interp.T  # (n, 3, 32, 32)
    return field.transpose(0, 2, 3, 1) * amp[:, None, None, None]


def _draw_images(rng, labels):
    """Render one image per label; returns (uint8 images (n,32,32,3), difficulty (n,))."""
    n = len(labels)
    f32 = np.float32
    # One latent difficulty per image drives all nuisances together, so a few
    # images are genuinely hard (faint, small, noisy) while most are clear.
    hard = rng.beta(1.3, 2.6, n).astype(f32)
    r = (rng.uniform(9.0, 13.0, n) - 4.0 * hard).astype(f32)
    contrast = (rng.uniform(0.6, 0.95, n) - 0.5 * hard).astype(f32)
    sigma = 0.01 + 0.15 * hard * rng.uniform(0.5, 1.0, n).astype(f32)
    tex_amp = 0.2 * hard * rng.uniform(0.5, 1.0, n).astype(f32)
    n_clutter = rng.binomial(3, 0.1 + 0.3 * hard)
    # Nuisances independent of difficulty.
    cx = rng.uniform(0.75 * r, SIZE - 1 - 0.75 * r).astype(f32)
    cy = rng.uniform(0.75 * r, SIZE - 1 - 0.75 * r).astype(f32)
    theta = rng.uniform(-0.25, 0.25, n).astype(f32)  # < 22.5 deg keeps plus/cross apart
    t = rng.uniform(2.5, 4.5, n).astype(f32)
    period = rng.uniform(4.0, 7.0, n).astype(f32)
    phase = rng.uniform(0, 2 * np.pi, n).astype(f32)

    # Foreground = background moved by `contrast`, mostly along brightness (as
    # edges in natural images are) with a random colour tint and polarity.
    bg = rng.uniform(0.15, 0.85, (n, 3)).astype(f32)
    direction = 1.0 + 0.6 * rng.standard_normal((n, 3)).astype(f32)
    direction *= rng.choice(np.array([-1, 1], f32), n)[:, None]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    # Flip polarity where the chosen one would leave the colour cube.
    moved = bg + direction * contrast[:, None]
    direction[((moved > 1) | (moved < 0)).any(1)] *= -1
    fg = np.clip(bg + direction * contrast[:, None], 0, 1)

    # Shape coverage, drawn class by class so every call is one vectorised batch.
    mask = np.empty((n, SIZE, SIZE), f32)
    dx, dy = _XX - cx[:, None, None], _YY - cy[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    for k in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == k)
        mask[idx] = _shape_masks(k, u[idx], v[idx], _col(r, idx), _col(t, idx),
                                 _col(period, idx), _col(phase, idx))

    img = bg[:, None, None, :] + _smooth_field(rng, n, tex_amp)
    img += mask[..., None] * (fg - bg)[:, None, None, :]

    # Clutter: up to 3 small blobs of random colour, same for all classes.
    for j in range(3):
        bx, by = rng.uniform(0, SIZE, (2, n)).astype(f32)
        br = rng.uniform(1.0, 2.5, n).astype(f32)
        colour = rng.uniform(0, 1, (n, 3)).astype(f32)
        idx = np.flatnonzero(n_clutter > j)
        blob = _soft(np.hypot(_XX - _col(bx, idx), _YY - _col(by, idx)) - _col(br, idx))
        img[idx] += blob[..., None] * (colour[idx, None, None, :] - img[idx])

    img += rng.standard_normal(img.shape, dtype=f32) * sigma[:, None, None, None]
    images = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return images, hard.astype(np.float64)


def _balanced_labels(rng, n):
    """Equal class counts (up to n % 10), in random order."""
    return rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)


def _noise_structure(rng):
    """Shared class structure of human confusion: per-class error weights and
    transition rows (most mass on the partner class, never on the true class)."""
    class_weight = rng.uniform(0.6, 1.4, NUM_CLASSES)
    class_weight /= class_weight.mean()
    trans = np.zeros((NUM_CLASSES, NUM_CLASSES))
    for c in range(NUM_CLASSES):
        rest = rng.dirichlet(np.ones(NUM_CLASSES - 2))
        others = [k for k in range(NUM_CLASSES) if k not in (c, _partner(c))]
        p_partner = rng.uniform(0.6, 0.7)
        trans[c, _partner(c)] = p_partner
        trans[c, others] = (1 - p_partner) * rest
    return class_weight, trans


def _noisy_labels(rng, clean, difficulty, rate, class_weight, trans):
    """Flip exactly round(rate*n) labels; who gets flipped and to what is class-
    and difficulty-dependent."""
    n = len(clean)
    n_flip = int(round(rate * n))
    weight = class_weight[clean] * np.exp(2.5 * difficulty)  # hard images flip more
    # Gumbel top-k == weighted sampling without replacement, in one vectorised step.
    keys = np.log(weight) + rng.gumbel(size=n)
    flip = np.argsort(-keys, kind="stable")[:n_flip]
    noisy = clean.copy()
    # Inverse-CDF draw from each flipped sample's transition row.
    cdf = np.cumsum(trans[clean[flip]], axis=1)
    draw = rng.uniform(size=(n_flip, 1)) * cdf[:, -1:]
    noisy[flip] = np.minimum((draw > cdf).sum(1), NUM_CLASSES - 1)
    return noisy


def make_synthetic(seed: int = 0, n_train: int = 4000, n_test: int = 1000) -> dict:
    """Build the synthetic CIFAR-10N stand-in; same seed -> identical arrays.

    Returns {"train_images": uint8 (n_train,32,32,3), "train_labels": int64,
    "test_images": uint8 (n_test,32,32,3), "test_labels": int64,
    "noisy_labels": {LABEL_KEYS[name]: int64 (n_train,) for every label set}}.
    """
    # Independent child streams: changing one part never shifts the others.
    names = ["train", "test", "structure", *NOISE_RATES]
    streams = {name: np.random.default_rng(child)
               for name, child in zip(names, np.random.SeedSequence(seed).spawn(len(names)))}
    train_labels = _balanced_labels(streams["train"], n_train)
    train_images, difficulty = _draw_images(streams["train"], train_labels)
    test_labels = _balanced_labels(streams["test"], n_test)
    test_images, _ = _draw_images(streams["test"], test_labels)

    class_weight, trans = _noise_structure(streams["structure"])
    noisy = {LABEL_KEYS["clean"]: train_labels.copy()}
    for name, rate in NOISE_RATES.items():
        noisy[LABEL_KEYS[name]] = _noisy_labels(streams[name], train_labels, difficulty,
                                                rate, class_weight, trans)
    return {"train_images": train_images, "train_labels": train_labels,
            "test_images": test_images, "test_labels": test_labels,
            "noisy_labels": noisy}


def cache_path():
    """Where load_synthetic keeps the arrays: ~/.cache/bkd (or $XDG_CACHE_HOME/bkd), in a file named by a hash of
    this module's source and numpy's version (its generators draw the images), so that no stale cache is read."""
    with open(__file__, "rb") as f:
        key = hashlib.sha256(f.read() + np.__version__.encode()).hexdigest()[:16]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "bkd", f"synthetic_{key}.npz")


def load_synthetic() -> dict:
    """make_synthetic() with its defaults, drawn once per user: drawing takes seconds and every script of a run needs
    it. The arrays are cached at cache_path(); a cache that cannot be read is drawn again, one that cannot be
    written (a read-only home) is not kept."""
    path = cache_path()
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
            d["noisy_labels"] = {key: z[f"noisy_{key}"] for key in LABEL_KEYS.values()}
        if d["train_images"].shape == (4000, SIZE, SIZE, 3) and d["test_images"].shape == (1000, SIZE, SIZE, 3):
            return d
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass
    d = make_synthetic()
    from utils import RunError, atomic_write  # here: the generator itself needs numpy only
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        arrays = {k: v for k, v in d.items() if k != "noisy_labels"}
        arrays.update({f"noisy_{key}": v for key, v in d["noisy_labels"].items()})
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except (OSError, RunError):
        pass
    return d
