"""CIFAR-10/100 images from the standard "python version" pickles, and CIFAR-N noisy labels.

Both are downloaded on first use and checked against their published md5; every pickle is read through
`safe_pickle`, so a tampered file cannot run code."""
import hashlib
import os
import tarfile
import tempfile
import urllib.request

import numpy as np

from utils import InputError
from . import safe_pickle

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain
plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
turtle wardrobe whale willow_tree wolf woman worm""".split())  # fine labels, in label order
CIFAR = {
    "cifar10": dict(url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    md5="c58f30108f718f92721af3b95e74349a", folder="cifar-10-batches-py",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], label_key="labels",
                    classes=CIFAR10_CLASSES),
    "cifar100": dict(url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     md5="eb9058c3a382ffc7106e4002c42a8d85", folder="cifar-100-python",
                     train=["train"], test=["test"], label_key="fine_labels",
                     classes=CIFAR100_CLASSES),
}
CIFAR_N = {
    "cifar10": dict(file="CIFAR-10_human.pt", md5="96644db5574813cae939af5f7f2a0aec"),
    "cifar100": dict(file="CIFAR-100_human.pt", md5="a67b45c1d7992051865b5c755bd68bb1"),
}
CIFAR_N_URL = "https://github.com/UCSC-REAL/cifar-10-100n/raw/main/data/{file}"


def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url, path, md5):
    """Fetch url to path through a temporary file in the same folder; the file appears only if its md5 is right."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
        if md5sum(tmp) != md5:
            raise OSError(f"checksum mismatch (expected md5 {md5})")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_batch(path, label_key):
    try:
        batch = safe_pickle.load_file(path)
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        images = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except safe_pickle.UnsafePickle as e:
        raise InputError(f"{path}: {e}") from None
    except Exception as e:  # truncated, not a pickle, wrong layout
        raise InputError(f"{path} is not a readable CIFAR batch ({type(e).__name__}: {e}); "
                         f"delete its folder to download it again") from None
    if images.ndim != 2 or images.shape[1] != 3072 or labels.shape != (images.shape[0],):
        raise InputError(f"{path}: expected 'data' of shape (N, 3072) and N labels, "
                         f"got {images.shape} and {labels.shape}")
    # rows are 1024 red, 1024 green, 1024 blue values; keep images as (N, 32, 32, 3) like torchvision
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar(name, data_dir, download_missing=True):
    """Training and test images (uint8, N x 32 x 32 x 3) and labels, in file order."""
    spec = CIFAR[name]
    folder = os.path.join(data_dir, spec["folder"])
    files = [os.path.join(folder, f) for f in spec["train"] + spec["test"]]
    if not all(os.path.isfile(f) for f in files):
        if not download_missing:
            raise InputError(f"{name} not found in {folder}; download {spec['url']} and extract it into {data_dir}")
        archive = os.path.join(data_dir, os.path.basename(spec["url"]))
        try:
            if not (os.path.isfile(archive) and md5sum(archive) == spec["md5"]):
                print(f"downloading {spec['url']} to {data_dir}", flush=True)
                download(spec["url"], archive, spec["md5"])
            with tarfile.open(archive) as tar:
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(data_dir, **kwargs)
        except (OSError, tarfile.TarError) as e:
            raise InputError(f"{name} not found in {folder} and the download failed ({e}); "
                             f"download {spec['url']} by hand and extract it into {data_dir}") from None
    train = [_read_batch(f, spec["label_key"]) for f in files[:len(spec["train"])]]
    test = [_read_batch(f, spec["label_key"]) for f in files[len(spec["train"]):]]
    return (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]),
            np.concatenate([b[0] for b in test]), np.concatenate([b[1] for b in test]))


def cifar_n_path(name, data_dir, noise_path=None):
    """Path of the CIFAR-N label file: --noise_path as given, else the data dir's copy, downloaded if missing."""
    if noise_path:
        if not os.path.isfile(noise_path):
            raise InputError(f"--noise_path {noise_path}: no such file")
        return noise_path
    spec = CIFAR_N[name]
    path = os.path.join(data_dir, spec["file"])
    if not os.path.isfile(path):
        url = CIFAR_N_URL.format(file=spec["file"])
        try:
            print(f"downloading {url} to {data_dir}", flush=True)
            download(url, path, spec["md5"])
        except OSError as e:
            raise InputError(f"CIFAR-N labels not found at {path} and the download failed ({e}); "
                             f"download {url} into {data_dir} or pass --noise_path FILE") from None
    return path


def load_label_file(path):
    """The dict of label arrays in a CIFAR-N file, read without arbitrary unpickling."""
    try:
        labels = safe_pickle.load_file(path)
    except safe_pickle.UnsafePickle as e:
        raise InputError(f"{path}: {e}") from None
    except Exception as e:
        raise InputError(f"{path} is not a readable CIFAR-N label file ({type(e).__name__}: {e})") from None
    if not isinstance(labels, dict):
        raise InputError(f"{path}: expected a dict of label arrays, got {type(labels).__name__}")
    return labels
