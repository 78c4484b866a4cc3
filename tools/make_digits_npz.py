"""A second, real image source for the studies: scikit-learn's handwritten digits as an .npz with wrong labels.

    pip install -r requirements-study.txt
    python tools/make_digits_npz.py --out ~/data/digits           # digits_0.npz, digits_5.npz, digits_25.npz
    python blind_knowledge_dist_training.py --dataset npz --data_dir ~/data/digits/digits_25.npz --arch small_cnn

The 1,797 8x8 grey images of scikit-learn (real scans, bundled with it: no download), enlarged to 16x16 (bilinear)
and made RGB; a stratified fifth is the clean test set, the rest trains. A given share of the training labels is
made wrong the way people get them wrong: each image flipped names its look-alike class (the most likely wrong
class of a logistic regression fit out of fold on the clean labels), and ambiguous images (a likely look-alike) are
flipped more often than clear ones. The true labels are kept as clean_labels, to score detection with; exactly
round(rate * N) labels are wrong. Deterministic for a --seed."""
import argparse
import os

import numpy as np
from scipy import ndimage

SIZE = 16


def digits_images():
    """(images uint8 (N, 16, 16, 3), labels int64 (N,)) of scikit-learn's digits."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    small = digits.images / 16.0  # 0..16 grey levels
    big = np.stack([ndimage.zoom(im, SIZE / 8, order=1) for im in small]).clip(0, 1)
    images = np.repeat((big * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    return images, digits.target.astype(np.int64)


def look_alike_noise(images, labels, rate, seed):
    """Labels with round(rate * N) of them flipped to each image's look-alike class, ambiguous images first in
    probability (drawn without replacement, weighted by the look-alike's out-of-fold probability)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    n = len(labels)
    features = images[..., 0].reshape(n, -1) / 255.0
    probs = cross_val_predict(LogisticRegression(max_iter=2000, C=0.05), features, labels, cv=5, method="predict_proba")
    probs[np.arange(n), labels] = 0  # the look-alike is the most likely *other* class
    look_alike, weight = probs.argmax(axis=1), probs.max(axis=1) + 1e-3
    rng = np.random.RandomState(seed)
    flipped = rng.choice(n, size=int(round(rate * n)), replace=False, p=weight / weight.sum())
    noisy = labels.copy()
    noisy[flipped] = look_alike[flipped]
    return noisy


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--out", required=True, help="folder for digits_<percent>.npz")
    p.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.05, 0.25], help="shares of wrong labels")
    p.add_argument("--seed", type=int, default=0, help="seeds the test split and the wrong labels")
    args = p.parse_args()
    try:
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit("make_digits_npz.py needs scikit-learn: pip install -r requirements-study.txt") from None
    images, labels = digits_images()
    train, test = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=args.seed)
    os.makedirs(args.out, exist_ok=True)
    for rate in args.rates:
        noisy = look_alike_noise(images[train], labels[train], rate, args.seed)
        path = os.path.join(args.out, f"digits_{rate * 100:g}.npz")
        np.savez(path, train_images=images[train], train_labels=noisy, clean_labels=labels[train],
                 test_images=images[test], test_labels=labels[test], class_names=np.array([str(d) for d in range(10)]))
        print(f"{path}: {len(train)} training images ({np.mean(noisy != labels[train]) * 100:.1f} % wrong labels), "
              f"{len(test)} test images")


if __name__ == "__main__":
    main()
