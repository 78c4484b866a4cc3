"""--dataset folder: an image folder in torchvision's layout, DIR/train/<class name>/<images> and optionally
DIR/test/<class name>/<images>. Class indices follow the sorted training class folders (the same on test).

Every image is decoded once with PIL, converted to RGB, its centre square resized to --image_size and kept as
uint8, like CIFAR; the result is cached in DIR/.bkd_cache_<size>px.npz, which is used as long as no file under
train/ and test/ was added, removed, renamed or changed (size or modification time)."""
import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils import InputError, RunError, atomic_write
from .dataset import AUGMENT, Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
CACHE_VERSION = 1  # part of the cache key: bump it when decoding changes, so that no old cache is used


def class_folders(folder):
    """Sorted names of the visible sub-folders of folder."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def image_files(folder, walked=None):
    """The image files under folder, at any depth, in sorted order; hidden files and folders are skipped. Linked
    folders are followed, except a link back to a folder it lies in (which would never end). The resolved path of
    every folder walked is added to the set `walked`, when given."""
    files, above = [], {os.path.normpath(folder): {os.path.realpath(folder)}}  # each folder's own and its parents'
    for parent, dirs, names in os.walk(folder, followlinks=True):
        chain = above.pop(os.path.normpath(parent))
        if walked is not None:
            walked |= chain
        dirs[:] = [d for d in sorted(dirs) if not d.startswith(".")
                   and os.path.realpath(os.path.join(parent, d)) not in chain]
        for d in dirs:
            above[os.path.normpath(os.path.join(parent, d))] = chain | {os.path.realpath(os.path.join(parent, d))}
        files += [os.path.join(parent, n) for n in sorted(names)
                  if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)]
    return files


def list_split(split_dir, class_names=None, walked=None):
    """(class folder names, image files, labels) of split_dir/<class name>/...; the labels index class_names
    when given (the training classes, for the test set), else the sorted class folders themselves. The resolved path
    of every folder walked is added to `walked`, when given."""
    if walked is not None:
        walked.add(os.path.realpath(split_dir))
    found = class_folders(split_dir)
    if not found:
        raise InputError(f"{split_dir} has no class folders: expected {split_dir}/<class name>/<images>")
    index = {name: i for i, name in enumerate(class_names or found)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise InputError(f"{split_dir} has classes the training set lacks: {', '.join(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''}; every test class needs a training folder")
    files, labels = [], []
    for name in found:
        class_files = image_files(os.path.join(split_dir, name), walked)
        if not class_files:
            raise InputError(f"{os.path.join(split_dir, name)} has no images ({' '.join(IMAGE_EXTENSIONS)}); "
                             f"add some or remove the folder")
        files += class_files
        labels += [index[name]] * len(class_files)
    return tuple(found), files, np.array(labels, dtype=np.int64)


def read_image(path, size):
    """uint8 (size, size, 3): the image in RGB, its centre square resized to size x size."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at the smallest scale still >= size (several times faster)
            if img.mode == "P":  # a palette may carry transparency, which PIL wants to go through RGBA
                img = img.convert("RGBA")
            img = img.convert("RGB")
            w, h = img.size
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            return np.asarray(img.resize((size, size), Image.BILINEAR, box=box))
    except Exception as e:  # unreadable, truncated, not an image, a decompression bomb
        raise InputError(f"{path} is not a readable image ({type(e).__name__}: {e}); repair or remove it") from None


def decode_images(files, size, desc):
    """uint8 (N, size, size, 3) of all files, decoded by a few threads (PIL releases the GIL while decoding)."""
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        decoded = pool.map(read_image, files, [size] * len(files))
        for i, image in enumerate(tqdm(decoded, desc=desc, total=len(files), unit="img", file=sys.stderr,
                                       disable=None, leave=False)):
            images[i] = image
    finally:
        pool.shutdown(cancel_futures=True)  # a bad image stops the rest at once
    return images


def fingerprint(root, files, size):
    """Changes when a file is added, removed, renamed or modified (size, modification time), or the size does."""
    digest = hashlib.sha256(f"bkd folder cache v{CACHE_VERSION}, {size}px\n".encode())
    for path in files:  # paths relative to root (they all start with it), so that moving the folder keeps the cache
        try:
            st = os.stat(path)
        except OSError as e:  # a dangling link, a file removed while we read
            raise InputError(f"{path}: cannot read it ({e.strerror}); repair or remove it") from None
        # bytes of the name as on disk: a name that is not UTF-8 (scraped from the web) is hashed as it is
        digest.update(os.fsencode(path[len(root):]) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_cache(path, key, counts):
    """The cached image arrays if the cache at path matches key and the image counts, else None."""
    try:
        with np.load(path, allow_pickle=False) as cache:
            if str(cache["key"]) != key:
                return None
            arrays = {name: cache[name] for name in counts}
    except Exception:  # absent, an older layout, damaged: decode again and rewrite it
        return None
    return arrays if all(len(arrays[name]) == n for name, n in counts.items()) else None


def write_cache(path, key, arrays):
    """Keep the decoded images for the next run; a folder we cannot write into only costs that run a decode."""
    try:
        atomic_write(path, lambda f: np.savez(f, key=np.array(key), **arrays))
    except RunError as e:
        print(f"note: {e}; the next run decodes the images again", file=sys.stderr)
        return False
    return True


def list_folder(root, walked=None):
    """(class names, training files, training labels, test files, test labels or None) of an image folder, checked,
    without decoding an image: what load_folder reads, and what export_fixed_data.py copies. The resolved path of
    every folder the listing walks (root, train/, test/ and every folder below them, linked ones included) is added
    to the set `walked`, when given."""
    root = os.path.normpath(root)
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if not os.path.isdir(root):
        raise InputError(f"--data_dir {root}: no such folder (--dataset folder takes DIR with "
                         f"DIR/train/<class name>/<images>)")
    if not os.path.isdir(train_dir):
        raise InputError(f"{root} has no train/ folder: expected {train_dir}/<class name>/<images> "
                         f"(and optionally {test_dir}/<class name>/<images>)")
    if walked is not None:
        walked.add(os.path.realpath(root))
    class_names, train_files, train_labels = list_split(train_dir, walked=walked)
    if len(class_names) < 2:
        raise InputError(f"{train_dir} has a single class folder ({class_names[0]}); BKD needs at least two classes")
    test_files, test_labels = [], None
    if os.path.isdir(test_dir):
        _, test_files, test_labels = list_split(test_dir, class_names, walked)
    return class_names, train_files, train_labels, test_files, test_labels


def load_folder(root, size):
    """The Dataset of an image folder: images (N, size, size, 3) uint8 decoded once and cached, labels from the
    class folders, no ground truth; mean and std are computed from the training images."""
    root = os.path.normpath(root)  # "pets/" and "pets" share one cache
    class_names, train_files, train_labels, test_files, test_labels = list_folder(root)
    cache_path = os.path.join(root, f".bkd_cache_{size}px.npz")
    key = fingerprint(root, train_files + test_files, size)
    counts = {"train_images": len(train_files), **({"test_images": len(test_files)} if test_files else {})}
    arrays = read_cache(cache_path, key, counts)
    if arrays is None:
        t0 = time.time()
        arrays = {"train_images": decode_images(train_files, size, "decoding train/")}
        if test_files:
            arrays["test_images"] = decode_images(test_files, size, "decoding test/")
        cached = write_cache(cache_path, key, arrays)
        print(f"decoded {sum(counts.values())} images of {root} to {size}x{size} in {time.time() - t0:.1f} s"
              + (f"; cached in {cache_path}" if cached else ""), flush=True)
    return Dataset("folder", len(class_names), arrays["train_images"], train_labels, None,
                   arrays.get("test_images"), test_labels, class_names=class_names, train_files=train_files,
                   augment=AUGMENT["cifar10"], files_root=root)
