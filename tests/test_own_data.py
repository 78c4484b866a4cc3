"""Your own data: image folders and .npz files (layout, RGB conversion and resizing, the cache, every bad input),
their flags, and BKD end to end on a folder in which a known fraction of the labels was flipped."""
import csv
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import data.folder as folder
from data import load_dataset
from tests.conftest import run
from utils import InputError, RunError
from flags import check_args, get_args_parser, run_dir


def save_image(path, pixels, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)


def write_folder(root, classes, split="train", n=2, width=12, height=10, seed=0):
    """n random RGB PNGs of width x height per class in root/split/<class>/0.png, 1.png, ..."""
    rng = np.random.default_rng(seed)
    for name in classes:
        for i in range(n):
            save_image(f"{root}/{split}/{name}/{i}.png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def assert_one_line_error(result, *fragments):
    """Bad input: exit code 2, no traceback, one error line naming the problem (argparse adds a usage line)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# ---------------------------------------------------------------------------- folders
def test_folder_classes_labels_and_files(tmp_path):
    root = tmp_path / "pets"
    write_folder(root, ["dog", "cat", "bird"])
    write_folder(root, ["cat"], n=1, seed=1, split="train/cat/nested")  # images at any depth belong to their class
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # other files and hidden ones are skipped
    (root / "train" / "cat" / ".thumb.png").write_bytes(b"junk")
    (root / "train" / ".hidden").mkdir()  # not a class
    write_folder(root, ["dog", "cat"], split="test", n=1)  # a test set may lack a class; indices are the training ones
    data = load_dataset("folder", "given", str(root), image_size=8)
    assert data.name == "folder" and data.num_classes == 3 and data.class_names == ("bird", "cat", "dog")
    assert [os.path.relpath(f, root) for f in data.train_files] == [
        "train/bird/0.png", "train/bird/1.png", "train/cat/0.png", "train/cat/1.png", "train/cat/nested/cat/0.png",
        "train/dog/0.png", "train/dog/1.png"]
    assert data.noisy_labels.tolist() == [0, 0, 1, 1, 1, 2, 2] and data.noisy_labels.dtype == np.int64
    assert data.train_images.shape == (7, 8, 8, 3) and data.train_images.dtype == np.uint8
    assert data.test_labels.tolist() == [1, 2] and data.test_images.shape == (2, 8, 8, 3)
    assert data.clean_labels is None and data.noise_or_not is None  # the truth of a folder is unknown
    assert data.augment == ("reflect", True)  # CIFAR-10's: flip, then crop with reflect padding
    pixels = data.train_images.reshape(-1, 3) / 255  # normalisation constants come from the training images
    assert np.allclose(data.mean_std, (pixels.mean(0), pixels.std(0)))


def test_images_become_rgb_centre_squares(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high: red | a green centre square | blue
    wide[:, :10, 0], wide[:, 10:30, 1], wide[:, 30:, 2] = 255, 255, 255
    save_image(f"{tmp_path}/train/a/wide.png", wide)
    save_image(f"{tmp_path}/train/a/gray.png", np.full((8, 8), 100, np.uint8))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200  # transparent red: the colour is kept, the alpha channel dropped
    save_image(f"{tmp_path}/train/b/rgba.png", rgba)
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30])
    palette.save(f"{tmp_path}/train/b/palette.png", transparency=0)
    save_image(f"{tmp_path}/train/b/photo.jpg", np.full((64, 48, 3), (10, 200, 50), np.uint8), quality=95)
    data = load_dataset("folder", "given", str(tmp_path), image_size=8)
    images = dict(zip(map(os.path.basename, data.train_files), data.train_images))
    assert images.keys() == {"wide.png", "gray.png", "rgba.png", "palette.png", "photo.jpg"}
    assert (images["wide.png"][..., 1] > 200).all() and (images["wide.png"][..., [0, 2]] < 60).all()  # not squashed
    assert (images["gray.png"] == 100).all() and (images["rgba.png"] == (200, 0, 0)).all()
    assert (images["palette.png"] == (10, 20, 30)).all()
    assert np.abs(images["photo.jpg"].astype(int) - (10, 200, 50)).max() < 8


def test_second_read_comes_from_the_cache_until_the_folder_changes(tmp_path, monkeypatch, capsys):
    write_folder(tmp_path, ["a", "b"])
    first = load_dataset("folder", "given", str(tmp_path))
    assert f"decoded 4 images of {tmp_path} to 32x32" in capsys.readouterr().out
    assert (tmp_path / ".bkd_cache_32px.npz").is_file()
    decoded, read_image = [], folder.read_image
    monkeypatch.setattr(folder, "read_image", lambda path, size: decoded.append(path) or read_image(path, size))

    again = load_dataset("folder", "given", f"{tmp_path}/")  # the same folder, spelled differently
    assert decoded == [] and capsys.readouterr().out == ""
    assert np.array_equal(again.train_images, first.train_images) and again.train_files == first.train_files

    write_folder(tmp_path, ["b"], n=3, seed=5)  # b/2.png is new, b/0.png and b/1.png are rewritten
    changed = load_dataset("folder", "given", str(tmp_path))
    assert len(decoded) == 5 and changed.noisy_labels.tolist() == [0, 0, 1, 1, 1]
    assert np.array_equal(changed.train_images[:2], first.train_images[:2])
    assert not np.array_equal(changed.train_images[2:4], first.train_images[2:4])
    decoded.clear()
    path = tmp_path / "train" / "a" / "0.png"
    stat = path.stat()
    save_image(str(path), np.zeros((10, 12, 3), np.uint8))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a modified file, even within the same second
    assert (load_dataset("folder", "given", str(tmp_path)).train_images[0] == 0).all() and len(decoded) == 5
    decoded.clear()
    small = load_dataset("folder", "given", str(tmp_path), image_size=16)  # another size: its own cache
    assert small.train_images.shape == (5, 16, 16, 3) and len(decoded) == 5
    assert {p.name for p in tmp_path.iterdir()} == {"train", ".bkd_cache_32px.npz", ".bkd_cache_16px.npz"}

    decoded.clear()
    (tmp_path / ".bkd_cache_16px.npz").write_bytes(b"damaged")  # a damaged cache is decoded again and rewritten
    assert np.array_equal(load_dataset("folder", "given", str(tmp_path), image_size=16).train_images,
                          small.train_images) and len(decoded) == 5

    def unwritable(path, write):
        raise RunError(f"cannot write {path}: Read-only file system")
    monkeypatch.setattr(folder, "atomic_write", unwritable)  # a read-only data folder: the data still loads
    os.remove(tmp_path / ".bkd_cache_16px.npz")
    assert len(load_dataset("folder", "given", str(tmp_path), image_size=16).train_images) == 5
    assert "Read-only file system; the next run decodes the images again" in capsys.readouterr().err


def truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])
    return path


def bad_folder(root, problem):
    """Lay out one kind of bad folder under root; returns (--data_dir, what the error must say)."""
    if problem == "missing folder":
        return root / "absent", f"--data_dir {root}/absent: no such folder"
    if problem == "empty folder":
        return root, f"{root} has no train/ folder: expected {root}/train/<class name>/<images>"
    if problem == "no class folders":
        (root / "train").mkdir()
        return root, f"{root}/train has no class folders"
    write_folder(root, ["a", "b"])
    if problem == "class folder without images":
        (root / "train" / "c").mkdir()
        (root / "train" / "c" / "readme.txt").write_text("no images here")
        return root, f"{root}/train/c has no images"
    if problem == "single class":
        shutil.rmtree(root / "train" / "b")
        return root, f"{root}/train has a single class folder (a); BKD needs at least two classes"
    if problem == "not an image":
        (root / "train" / "b" / "1.png").write_text("hello")
        return root, f"{root}/train/b/1.png is not a readable image"
    if problem == "truncated png":
        return root, f"{truncate(root / 'train' / 'b' / '1.png', 60)} is not a readable image"
    if problem == "truncated jpeg":
        save_image(f"{root}/train/a/photo.jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
        return root, f"{truncate(root / 'train' / 'a' / 'photo.jpg', 2000)} is not a readable image"
    if problem == "dangling link":
        os.symlink(root / "gone.png", root / "train" / "b" / "link.png")
        return root, f"{root}/train/b/link.png: cannot read it (No such file or directory)"
    if problem == "test class the training set lacks":
        write_folder(root, ["a", "zebra"], split="test", n=1)
        return root, f"{root}/test has classes the training set lacks: zebra"
    if problem == "test class folder without images":
        (root / "test" / "a").mkdir(parents=True)
        return root, f"{root}/test/a has no images"
    raise ValueError(problem)


@pytest.mark.parametrize("problem", ["missing folder", "empty folder", "no class folders",
                                     "class folder without images", "single class", "not an image", "truncated png",
                                     "truncated jpeg", "dangling link", "test class the training set lacks",
                                     "test class folder without images"])
def test_bad_folders_are_one_clear_error(tmp_path, problem):
    root, message = bad_folder(tmp_path, problem)
    with pytest.raises(InputError) as e:
        load_dataset("folder", "given", str(root))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.glob(".bkd_cache*"))  # nothing half-done is left behind


# ---------------------------------------------------------------------------- .npz files
def arrays(n=20, size=12, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return dict(train_images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                train_labels=np.arange(n) % num_classes)


def test_npz_with_every_array(tmp_path):
    a = arrays()
    clean = a["train_labels"].copy()
    clean[:5] = (clean[:5] + 1) % 4
    path = str(tmp_path / "mine.npz")
    np.savez(path, train_images=a["train_images"], train_labels=a["train_labels"].astype(np.int32), clean_labels=clean,
             test_images=a["train_images"][:6], test_labels=np.arange(6) % 4,
             class_names=np.array(["ant", "bee", "cow", "dog"]))
    data = load_dataset("npz", "given", path, image_size=12)
    assert data.name == "npz" and data.num_classes == 4 and data.class_names == ("ant", "bee", "cow", "dog")
    assert data.noisy_labels.dtype == np.int64 and np.array_equal(data.noisy_labels, a["train_labels"])
    assert data.noise_or_not.sum() == 5 and data.noise_or_not[:5].all()  # ground truth from clean_labels
    assert data.test_images.shape == (6, 12, 12, 3) and data.test_labels.tolist() == [0, 1, 2, 3, 0, 1]
    assert data.augment == ("reflect", True) and data.train_files is None
    pixels = a["train_images"].reshape(-1, 3) / 255
    assert np.allclose(data.mean_std, (pixels.mean(0), pixels.std(0)))
    np.savez(path, **arrays(size=20, num_classes=3))  # the least a file needs; any size, the stored one
    data = load_dataset("npz", "given", path)
    assert data.num_classes == 3 and data.train_images.shape == (20, 20, 20, 3)
    assert data.clean_labels is None and data.test_images is None and data.class_names is None


def bad_npz(path, problem):
    """Write one kind of bad .npz to path; returns what the error must say."""
    a = arrays()
    images, labels = a["train_images"], a["train_labels"]
    changes = {
        "no labels": (dict(train_labels=None), "no train_labels array"),
        "a misspelt array": (dict(train_label=labels), "unknown array(s) train_label"),
        "an object array": (dict(class_names=np.array(["a", 1, None, 2.0], dtype=object)), "would need pickle"),
        "float images": (dict(train_images=images / 255.0), "must be uint8 RGB images of shape (N, S, S, 3)"),
        "grey images": (dict(train_images=images[..., 0]), "must be uint8 RGB images of shape (N, S, S, 3)"),
        "no images": (dict(train_images=images[:0], train_labels=labels[:0]), "with N > 0"),
        "not square": (dict(train_images=images[:, :, :10]), "are 12x10 images; they must be square"),
        "smaller than the smallest crop": (dict(train_images=images[:, :4, :4]), "smaller than the smallest crop"),
        "labels of another length": (dict(train_labels=labels[:-1]), "'train_labels' must be 20 integer labels"),
        "float labels": (dict(train_labels=labels.astype(np.float32)), "'train_labels' must be 20 integer labels"),
        "negative labels": (dict(train_labels=labels - 1), "'train_labels' has labels outside 0..2"),
        "a class without images": (dict(train_labels=labels // 2 * 2), "no training image of class 1"),
        "a single class": (dict(train_labels=labels * 0), "a single class"),
        "clean labels out of range": (dict(clean_labels=labels + 1), "'clean_labels' has labels out of range"),
        "test classes the training set lacks": (dict(test_images=images[:3], test_labels=np.array([0, 4, 1])),
                                                "'test_labels' has classes the training set lacks"),
        "test images without labels": (dict(test_images=images[:3]), "come together"),
        "test images of another size": (dict(test_images=images[:3, :8, :8], test_labels=labels[:3]),
                                        "both must have the same size"),
        "class names that are not strings": (dict(class_names=np.arange(4)), "'class_names' must be a 1-d array"),
        "labels beyond the class names": (dict(class_names=np.array(["x", "y", "z"])), "(one per class name)"),
    }
    if problem == "missing file":
        return "--data_dir " + str(path) + ": no such file"
    if problem == "not an npz file":
        path.write_bytes(b"PK\x03\x04 not really a zip")
        return f"{path} is not a readable .npz file"
    if problem == "a truncated file":
        np.savez(path, **a)
        truncate(path, path.stat().st_size // 2)
        return f"{path} is not a readable .npz file"
    if problem == "a single .npy array":
        with open(path, "wb") as f:
            np.save(f, images)
        return "holds a single array"
    if problem == "images off --image_size":
        np.savez(path, **a)
        return "the images are 12x12, smaller than the 32x32 crop of --image_size 32"
    overrides, message = changes[problem]
    np.savez(path, **{k: v for k, v in {**a, **overrides}.items() if v is not None})
    return message


NPZ_PROBLEMS = [
    "missing file", "not an npz file", "a truncated file", "a single .npy array", "no labels", "a misspelt array",
    "an object array", "float images", "grey images", "no images", "not square", "smaller than the smallest crop",
    "images off --image_size", "labels of another length", "float labels", "negative labels", "a class without images",
    "a single class", "clean labels out of range", "test classes the training set lacks", "test images without labels",
    "test images of another size", "class names that are not strings", "labels beyond the class names"]


@pytest.mark.parametrize("problem", NPZ_PROBLEMS)
def test_bad_npz_files_are_one_clear_error(tmp_path, problem):
    path = tmp_path / "mine.npz"
    message = bad_npz(path, problem)
    with pytest.raises(InputError) as e:
        load_dataset("npz", "given", str(path), image_size=32 if problem == "images off --image_size" else None)
    assert message in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- flags
def parse(*argv):
    parser = get_args_parser("test")
    return check_args(parser, parser.parse_args(list(argv)))


def test_own_data_defaults():
    args = parse("--dataset", "folder", "--data_dir", "~/pets")
    assert (args.noise_type, args.arch, args.image_size) == ("given", "preresnet18", 32)
    assert args.data_dir == os.path.expanduser("~/pets") and run_dir(args) == "results/folder_given_seed_0"
    args = parse("--dataset", "npz", "--data_dir", "pets.npz")
    assert args.image_size is None  # the stored size
    args = parse()
    assert (args.dataset, args.data_dir, args.image_size) == ("cifar10", os.path.expanduser("~/data"), 32)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "folder"], "--dataset folder needs --data_dir DIR"),
    (["--dataset", "npz"], "--dataset npz needs --data_dir FILE.npz"),
    (["--dataset", "folder", "--data_dir", "x", "--noise_path", "y.pt"], "CIFAR-N label files are for cifar10"),
    (["--dataset", "npz", "--data_dir", "x", "--noise_type", "worst"], "choose from given"),
    (["--dataset", "folder", "--data_dir", "x", "--image_size", "4"], "--image_size: must be at least 8"),
    (["--image_size", "64"], "cifar10 images are 32x32"),
])
def test_bad_data_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_scripts_report_bad_data_in_one_line(tmp_path):
    assert_one_line_error(run("detection.py", "--dataset", "folder"), "--data_dir DIR")
    root, message = bad_folder(tmp_path, "truncated png")
    run_dir = tmp_path / "results" / "folder_given_seed_0"  # a run, so that learning.py goes on to read the data
    run_dir.mkdir(parents=True)
    for role in ("teacher", "student"):
        (run_dir / f"{role}.pth.tar").touch()
    assert_one_line_error(run("learning.py", "--dataset", "folder", "--data_dir", root, "--results_dir",
                              tmp_path / "results"), message)


# ---------------------------------------------------------------------------- end to end
def write_noisy_folder(root, n=600, n_test=120, num_classes=6, flip_rate=0.2, size=16, seed=0):
    """An easy folder task: each class is a coarse random colour pattern, each image a dimmed and noisy copy of its
    class's pattern. A flip_rate fraction of the training images lie in another class's folder; returns the set of
    those files."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0, 1, (num_classes, 4, 4, 3)).repeat(size // 4, 1).repeat(size // 4, 2)
    flipped = set()
    for split, count in (("train", n), ("test", n_test)):
        labels = np.arange(count) % num_classes
        images = patterns[labels] * rng.uniform(0.6, 1, (count, 1, 1, 1)) + rng.normal(0, 0.15, (count, size, size, 3))
        folders = labels.copy()
        if split == "train":
            flip = rng.permutation(count)[:int(flip_rate * count)]
            folders[flip] = (labels[flip] + rng.integers(1, num_classes, len(flip))) % num_classes
        for i, (image, name) in enumerate(zip(images, folders)):
            path = f"{root}/{split}/class{name}/{i:04d}.png"
            save_image(path, (np.clip(image, 0, 1) * 255).astype(np.uint8))
            if name != labels[i]:
                flipped.add(path)
    return flipped


@pytest.mark.slow
def test_bkd_on_a_folder_finds_the_flipped_labels(tmp_path):
    root = tmp_path / "data"
    flipped = write_noisy_folder(root)
    flags = ["--dataset", "folder", "--data_dir", root, "--image_size", 16, "--results_dir", tmp_path / "results"]
    train = run("blind_knowledge_dist_training.py", *flags, "--arch", "small_cnn", "--n_epoch", 16, "--lr", 0.1,
                "--lr_decay_every", 5, "--batch_size", 64, "--noisy_val_freq", 6, "--clean_test_freq", 6)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    out = tmp_path / "results" / "folder_given_seed_0"
    data = load_dataset("folder", "given", str(root), image_size=16)
    truly_noisy = np.array([f in flipped for f in data.train_files])
    assert truly_noisy.sum() == 120
    detected = np.load(out / "detection.npy", allow_pickle=False)
    true_positives = (detected & truly_noisy).sum()
    precision, recall = true_positives / detected.sum(), true_positives / truly_noisy.sum()
    f1 = 2 * precision * recall / (precision + recall)
    assert f1 > 0.6 and precision > 0.6, (detected.sum(), precision, recall)  # flagging every label: F1 0.33
    with open(out / "label_issues.csv", newline="") as f:  # the table names the files of group 4 and the flagged ones
        rows = list(csv.DictReader(f))
    assert {r["file"] for r in rows if r["group"] == "4"} == {data.train_files[i] for i in np.flatnonzero(detected)}
    flagged = np.array([f in {r["file"] for r in rows if r["flagged"] == "True"} for f in data.train_files])
    precision, recall = (flagged & truly_noisy).sum() / flagged.sum(), (flagged & truly_noisy).sum() / 120
    assert 2 * precision * recall / (precision + recall) > 0.6, (flagged.sum(), precision, recall)

    learning = run("learning.py", *flags)
    assert learning.returncode == 0, learning.stderr
    assert float(learning.stdout.split("test accuracy: ")[1].split(" %")[0]) > 50  # 6 classes: chance is 17 %
    detection = run("detection.py", *flags)
    assert detection.returncode == 0, detection.stderr
    assert f"flagged as noisy: {detected.sum()} of 600" in detection.stdout and "no ground truth" in detection.stdout
    shutil.rmtree(root / "test")
    learning = run("learning.py", *flags)
    assert learning.returncode == 0  # its last line: the first is "decoded ...", since the folder changed
    assert learning.stdout.splitlines()[-1] == (
        f"{root} has no test set: no test accuracy to report (add a test/ folder beside train/ to get one)")


@pytest.mark.slow
def test_detection_on_npz_is_scored_against_its_clean_labels(tmp_path):
    a = arrays(n=40)
    clean = a["train_labels"]
    noisy = np.where(np.arange(40) < 10, (clean + 1) % 4, clean)
    path = tmp_path / "mine.npz"
    np.savez(path, train_images=a["train_images"], train_labels=noisy, clean_labels=clean)
    out = tmp_path / "results" / "npz_given_seed_0"
    out.mkdir(parents=True)
    np.save(out / "detection.npy", np.arange(40) < 20)  # flags the 10 flipped labels and 10 others
    flags = ["--dataset", "npz", "--data_dir", path, "--results_dir", tmp_path / "results"]
    detection = run("detection.py", *flags)
    assert detection.returncode == 0, detection.stderr
    assert "precision is 0.5\nrecall is 1.0\n" in detection.stdout
    learning = run("learning.py", *flags)  # the run is looked for first: without its checkpoints, one line
    assert learning.returncode == 2 and "no checkpoint at" in learning.stderr and "train first" in learning.stderr
    for name in ("teacher.pth.tar", "student.pth.tar"):
        (out / name).touch()
    learning = run("learning.py", *flags)
    assert learning.returncode == 0 and "has no test set" in learning.stdout
