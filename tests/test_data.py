"""Reading CIFAR and CIFAR-N safely, label validation, the validation split, and the device batch pipeline."""
import os
import pickle

import numpy as np
import pytest
import torch

import data.cifar as cifar
from data import NOISE_TYPES, load_dataset, split_indices, validate_labels
from data import safe_pickle
from data.pipeline import DeviceBatches, padding, to_device_images, unpadded_size
from tests.conftest import SHARED_CIFAR_N, write_pickle
from utils import InputError


class RunsCode:
    """A pickle payload that would create a marker file if it were ever unpickled unsafely."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def label_file(path, n, clean, **overrides):
    labels = {"clean_label": np.asarray(clean, dtype=np.int64), "worse_label": np.asarray(clean, dtype=np.int64)}
    labels.update(overrides)
    write_pickle(path, labels)
    return str(path)


# ---------------------------------------------------------------------------- CIFAR pickles
def test_reads_the_cifar_layout(fake_cifar):
    train_x, train_y, test_x, test_y = cifar.load_cifar("cifar10", fake_cifar["dir"], download_missing=False)
    assert train_x.shape == (100, 32, 32, 3) and train_x.dtype == np.uint8 and test_x.shape == (20, 32, 32, 3)
    assert np.array_equal(train_y, fake_cifar["labels10"])  # data_batch_1..5 in order
    raw = pickle.load(open(os.path.join(fake_cifar["dir"], "cifar-10-batches-py", "data_batch_1"), "rb"))
    first = raw[b"data"][0]
    assert np.array_equal(train_x[0, :, :, 0].ravel(), first[:1024])  # rows are R, G, B planes
    assert np.array_equal(train_x[0, :, :, 2].ravel(), first[2048:])
    train_x, train_y, _, _ = cifar.load_cifar("cifar100", fake_cifar["dir"], download_missing=False)
    assert train_x.shape == (100, 32, 32, 3) and np.array_equal(train_y, fake_cifar["labels100"])


def test_missing_cifar_without_network_names_folder_and_url(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")
    monkeypatch.setattr(cifar.urllib.request, "urlopen", offline)
    with pytest.raises(InputError) as e:
        cifar.load_cifar("cifar10", str(tmp_path))
    assert str(tmp_path) in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)
    assert os.listdir(tmp_path) == []  # no partial download left behind


def test_download_keeps_nothing_on_checksum_mismatch(tmp_path, monkeypatch):
    class Response:
        def __init__(self):
            self.chunks = [b"not the archive", b""]
        def read(self, n):
            return self.chunks.pop(0)
        def __enter__(self):
            return self
        def __exit__(self, *a):
            return False
    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda *a, **k: Response())
    with pytest.raises(OSError, match="checksum"):
        cifar.download("http://example.invalid/x", str(tmp_path / "x.tar.gz"), "0" * 32)
    assert os.listdir(tmp_path) == []


def test_corrupt_cifar_batch_is_one_clear_error(fake_cifar):
    path = os.path.join(fake_cifar["dir"], "cifar-10-batches-py", "data_batch_3")
    with open(path, "wb") as f:
        f.write(b"\x80\x02}q\x00(X")  # truncated pickle
    with pytest.raises(InputError, match="data_batch_3"):
        cifar.load_cifar("cifar10", fake_cifar["dir"], download_missing=False)


def test_cifar_batch_that_would_run_code_is_refused(fake_cifar, tmp_path):
    marker = tmp_path / "pwned"
    path = os.path.join(fake_cifar["dir"], "cifar-10-batches-py", "test_batch")
    write_pickle(path, {b"data": RunsCode(marker), b"labels": [0]})
    with pytest.raises(InputError, match="refusing"):
        cifar.load_cifar("cifar10", fake_cifar["dir"], download_missing=False)
    assert not marker.exists()


# ---------------------------------------------------------------------------- CIFAR-N labels
def test_label_file_and_dataset(fake_cifar, tmp_path):
    clean = fake_cifar["labels10"]
    noisy = (clean + 1) % 10
    noisy[::2] = clean[::2]
    path = label_file(tmp_path / "labels.pt", 100, clean, worse_label=noisy)
    data = load_dataset("cifar10", "worst", fake_cifar["dir"], noise_path=path)
    assert np.array_equal(data.noisy_labels, noisy) and np.array_equal(data.clean_labels, clean)
    assert data.noise_or_not.mean() == pytest.approx(0.5)


def test_label_file_in_torch_save_format(fake_cifar, tmp_path):
    clean = fake_cifar["labels10"]
    path = str(tmp_path / "labels.pt")
    torch.save({"clean_label": clean.astype(np.int64), "worse_label": clean.astype(np.int64)}, path)
    assert load_dataset("cifar10", "worst", fake_cifar["dir"], noise_path=path).noise_or_not.sum() == 0


@pytest.mark.parametrize("problem, overrides, message", [
    ("wrong length", lambda c: {"worse_label": c[:99]}, "100 integer labels"),
    ("missing key", lambda c: {"worse_label": None}, "no 'worse_label'"),
    ("out of range", lambda c: {"worse_label": np.where(np.arange(100) == 5, 10, c)}, "outside 0..9"),
    ("negative", lambda c: {"worse_label": np.where(np.arange(100) == 5, -1, c)}, "outside 0..9"),
    ("floats", lambda c: {"worse_label": c.astype(np.float32)}, "integer labels"),
    ("clean mismatch", lambda c: {"clean_label": (c + 1) % 10}, "does not belong to this dataset"),
])
def test_malformed_label_files_are_refused(fake_cifar, tmp_path, problem, overrides, message):
    clean = fake_cifar["labels10"]
    changes = overrides(clean)
    labels = {"clean_label": clean.astype(np.int64), "worse_label": clean.astype(np.int64), **changes}
    labels = {k: v for k, v in labels.items() if v is not None}
    path = str(tmp_path / "labels.pt")
    write_pickle(path, labels)
    with pytest.raises(InputError, match=message):
        load_dataset("cifar10", "worst", fake_cifar["dir"], noise_path=path)


@pytest.mark.parametrize("torch_format", [False, True])
def test_label_file_that_would_run_code_is_refused(fake_cifar, tmp_path, torch_format):
    marker = tmp_path / "pwned"
    payload = {"clean_label": fake_cifar["labels10"], "worse_label": RunsCode(marker)}
    path = str(tmp_path / "evil.pt")
    if torch_format:
        torch.save(payload, path)
    else:
        write_pickle(path, payload)
    with pytest.raises(InputError, match="refusing to load posix.system|refusing to load nt.system"):
        load_dataset("cifar10", "worst", fake_cifar["dir"], noise_path=path)
    assert not marker.exists()


def test_not_a_pickle_and_missing_noise_path(fake_cifar, tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"hello")
    with pytest.raises(InputError, match="not a readable CIFAR-N label file"):
        load_dataset("cifar10", "worst", fake_cifar["dir"], noise_path=str(path))
    with pytest.raises(InputError, match="no such file"):
        load_dataset("cifar10", "worst", fake_cifar["dir"], noise_path=str(tmp_path / "absent.pt"))


def test_missing_label_file_without_network(fake_cifar, monkeypatch):
    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(InputError, match="CIFAR-10_human.pt.*--noise_path"):
        load_dataset("cifar10", "worst", fake_cifar["dir"])


def test_cifar100_noise_types(fake_cifar, tmp_path):
    clean = fake_cifar["labels100"]
    path = str(tmp_path / "labels.pt")
    write_pickle(path, {"clean_label": clean, "noisy_label": (clean + 3) % 100, "clean_coarse_label": [0] * 100})
    data = load_dataset("cifar100", "noisy100", fake_cifar["dir"], noise_path=path)
    assert data.noise_or_not.all()
    assert data.augment == ("constant", False) and data.mean_std == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


@pytest.mark.skipif(not os.path.isdir(SHARED_CIFAR_N), reason="the CIFAR-N copies in ../shared are not here")
def test_real_cifar_n_files_noise_rates_through_the_safe_path(monkeypatch):
    rates = {}
    for name, file in (("cifar10", "CIFAR-10_human.pt"), ("cifar100", "CIFAR-100_human.pt")):
        path = os.path.join(SHARED_CIFAR_N, file)
        labels = cifar.load_label_file(path)
        for noise_type, key in NOISE_TYPES[name].items():
            noisy = validate_labels(labels, key, labels["clean_label"], 10 if name == "cifar10" else 100, path)
            rates[noise_type] = round(float(np.mean(noisy != labels["clean_label"])) * 100, 2)
    assert rates == {"clean": 0.0, "aggre": 9.01, "rand1": 17.23, "rand2": 18.12, "rand3": 17.64, "worst": 40.21,
                     "clean100": 0.0, "noisy100": 40.2}
    monkeypatch.setattr(safe_pickle, "ALLOWED_GLOBALS", {})  # the files load only through the restricted unpickler
    with pytest.raises(InputError, match="refusing"):
        cifar.load_label_file(os.path.join(SHARED_CIFAR_N, "CIFAR-10_human.pt"))


# ---------------------------------------------------------------------------- split and synthetic data
def test_split_is_the_reference_permutation():
    train, val = split_indices(50000, 0.1, 42)
    assert val[:3].tolist() == [33553, 9427, 199]
    assert len(val) == 5000 and len(train) == 45000
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(50000))
    np.random.seed(42)
    shuffled = np.arange(50000)
    np.random.shuffle(shuffled)  # the reference's way
    assert np.array_equal(np.concatenate([val, train]), shuffled)
    train, val = split_indices(50000, 0.0, 42)
    assert len(val) == 0 and train[0] == 33553


def test_synthetic_dataset():
    data = load_dataset("synthetic", "worst", data_dir="/nonexistent")
    assert data.train_images.dtype == np.uint8 and data.train_images.shape[1:] == (32, 32, 3)
    assert 0.39 < data.noise_or_not.mean() < 0.41
    again = load_dataset("synthetic", "worst", data_dir="/nonexistent")
    assert np.array_equal(data.train_images, again.train_images) and np.array_equal(data.noisy_labels, again.noisy_labels)
    rates = {n: load_dataset("synthetic", n, "/x").noise_or_not.mean() for n in ("aggre", "rand1", "clean")}
    assert rates["clean"] == 0 and abs(rates["aggre"] - 0.0901) < 0.002 and abs(rates["rand1"] - 0.1723) < 0.002
    confusion = np.zeros((10, 10))
    np.add.at(confusion, (data.clean_labels, data.noisy_labels), 1)
    off = confusion - np.diag(np.diag(confusion))
    assert off.max(axis=1).sum() > 0.4 * off.sum()  # class-dependent: most flips go to one partner class


@pytest.mark.slow  # draws the synthetic data set from scratch, three times
def test_synthetic_data_set_is_drawn_once_and_cached(tmp_path, monkeypatch):
    from data import synthetic
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = synthetic.cache_path()
    assert path.startswith(str(tmp_path / "cache" / "bkd")) and not os.path.exists(path)
    drawn = synthetic.make_synthetic()
    same = lambda d: all(np.array_equal(d[k], drawn[k]) and d[k].dtype == drawn[k].dtype  # noqa: E731
                         for k in ("train_images", "train_labels", "test_images", "test_labels")) and all(
        np.array_equal(d["noisy_labels"][k], v) for k, v in drawn["noisy_labels"].items())
    assert same(synthetic.load_synthetic()) and os.path.isfile(path)  # drawn, then kept
    drawn_again = []
    monkeypatch.setattr(synthetic, "make_synthetic", lambda: drawn_again.append(1) or drawn)
    assert same(synthetic.load_synthetic()) and drawn_again == []  # read from the cache
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 not a zip")  # a cache cut short: drawn again, and written again
    assert same(synthetic.load_synthetic()) and drawn_again == [1]
    assert same(synthetic.load_synthetic()) and drawn_again == [1]
    os.remove(path)
    # a cache that cannot be written (a read-only folder: made to fail here, since root writes anywhere): drawn every
    # time, no error, nothing written
    import utils

    def refused(path, write):
        raise utils.RunError(f"cannot write {path}: Read-only file system")
    monkeypatch.setattr(utils, "atomic_write", refused)
    assert same(synthetic.load_synthetic()) and drawn_again == [1, 1] and not os.path.exists(path)
    monkeypatch.undo()  # and a cache folder that cannot be made
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    monkeypatch.setattr(synthetic, "make_synthetic", lambda: drawn_again.append(1) or drawn)

    def no_folder(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "makedirs", no_folder)
    assert same(synthetic.load_synthetic()) and drawn_again == [1, 1, 1]
    monkeypatch.undo()
    assert not os.path.exists(tmp_path / "other")


# ---------------------------------------------------------------------------- device batches
def make_batches(n=300, pad_mode="reflect", flip_first=True, augment=True, shuffle=True, seed=0, batch_size=64,
                 size=32):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    g = torch.Generator().manual_seed(seed)
    padded = to_device_images(images, pad_mode, torch.device("cpu"))
    batches = DeviceBatches(padded, torch.arange(n), None, ((0.0,) * 3, (1 / 255,) * 3), batch_size,
                            augment=augment, flip_first=flip_first, shuffle=shuffle, generator=g)
    return images, padded, batches  # mean 0, std 1/255: batches hold the raw pixel values


def test_every_sample_once_per_epoch_with_its_label():
    _, _, batches = make_batches(n=300, batch_size=64)
    for _ in range(2):
        seen = torch.cat([pos for _, y, pos in batches])
        assert sorted(seen.tolist()) == list(range(300))
    orders = [torch.cat([pos for _, _, pos in batches]).tolist() for _ in range(2)]
    assert orders[0] != orders[1]  # reshuffled every epoch
    for x, y, pos in batches:
        assert torch.equal(y, pos)  # labels here are arange: the label follows its image


def test_subset_batches_report_positions_in_the_split():
    images, padded, _ = make_batches(n=50)
    subset = np.array([7, 3, 41])
    b = DeviceBatches(padded, torch.arange(50) * 10, subset, ((0.0,) * 3, (1 / 255,) * 3), 2)
    x, y, pos = next(iter(b))
    assert pos.tolist() == [0, 1] and y.tolist() == [70, 30]
    assert torch.equal(x[0].round().to(torch.uint8), torch.from_numpy(images[7]).permute(2, 0, 1))


@pytest.mark.parametrize("size", [32, 20])
def test_crops_lie_inside_the_padded_image_and_differ(size):
    images, padded, batches = make_batches(n=256, batch_size=256, size=size)
    pad = size // 8  # 4 at CIFAR's 32, 2 at 20
    assert padded.shape == (256, 3, size + 2 * pad, size + 2 * pad)
    x, _, pos = next(iter(batches))
    assert x.shape == (256, 3, size, size)
    x = x.round().to(torch.uint8)
    offsets = set()
    for i in range(len(pos)):
        full = padded[pos[i]]
        found = [(dy, dx, flip) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (False, True)
                 if torch.equal(x[i], (full.flip(-1) if flip else full)[:, dy:dy + size, dx:dx + size])]
        assert found, "every crop is a size x size window of the (possibly flipped) padded image"
        offsets.add(found[0][:2])
    assert len(offsets) > 0.8 * (2 * pad + 1) ** 2  # offsets are drawn per image: nearly all of them occur


def test_flip_rate_is_about_one_half():
    images, padded, batches = make_batches(n=2000, batch_size=2000)
    batches.augment = True
    g = batches.generator
    from data.pipeline import crop_flip_indices
    _, cols = crop_flip_indices(20000, True, g, torch.device("cpu"))
    flipped = (cols[:, 1] < cols[:, 0]).float().mean().item()
    assert 0.48 < flipped < 0.52


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_padding_mode(pad_mode):
    images, padded, _ = make_batches(n=4, pad_mode=pad_mode)
    img = torch.from_numpy(images[0]).permute(2, 0, 1)
    assert torch.equal(padded[0, :, 4:36, 4:36], img)
    if pad_mode == "constant":
        assert padded[0, :, :4].eq(0).all() and padded[0, :, :, 36:].eq(0).all()
    else:  # reflection without repeating the edge, as torchvision's padding_mode="reflect"
        assert torch.equal(padded[0, :, 3, 4:36], img[:, 1]) and torch.equal(padded[0, :, :, 0], padded[0, :, :, 8])


def test_datasets_use_their_own_padding_and_order():
    from data import AUGMENT, MEAN_STD
    assert AUGMENT["cifar10"] == ("reflect", True) and AUGMENT["cifar100"] == ("constant", False)
    data = load_dataset("synthetic", "worst", "/nonexistent")
    assert data.augment == AUGMENT["synthetic"] and data.mean_std == MEAN_STD["synthetic"]  # constants, not computed


def test_flip_first_and_crop_first_index_the_same_window_mirrored():
    from data.pipeline import crop_flip_indices
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    rows1, cols1 = crop_flip_indices(500, True, g1, torch.device("cpu"))
    rows2, cols2 = crop_flip_indices(500, False, g2, torch.device("cpu"))
    assert torch.equal(rows1, rows2)
    unflipped = cols1[:, 1] > cols1[:, 0]
    assert torch.equal(cols1[unflipped], cols2[unflipped])
    # flip then crop at dx = crop at 8 - dx, then flip
    assert torch.equal(cols1[~unflipped], (8 - (cols2[~unflipped][:, -1:])) + torch.arange(31, -1, -1))


def test_padding_is_an_eighth_and_recovered_from_the_padded_size():
    assert [padding(s) for s in (8, 20, 32, 64, 224)] == [1, 2, 4, 8, 28]
    for size in range(8, 600):
        assert unpadded_size(size + 2 * padding(size)) == (size, padding(size))


@pytest.mark.parametrize("size", [32, 20])
def test_eval_batches_are_the_unaugmented_images_normalised(size):
    images, padded, _ = make_batches(n=10, size=size)
    b = DeviceBatches(padded, torch.zeros(10, dtype=torch.long), None, ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), 10)
    x, _, _ = next(iter(b))
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-5)
