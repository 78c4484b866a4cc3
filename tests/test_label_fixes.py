"""Label fixes (data/fixes.py, --label_fixes): reading and checking a fixes file, applying it, the rows the fix-policy
study's candidates make (on top of a run's own fixes), file names that are not UTF-8, and a run trained with fixes end to end (its own run directory, dropped
images out of training and detection, what every script reports on it, the seed summary, run.sh)."""
import csv
import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data import Dataset, load_dataset
from data.fixes import COLUMNS, apply_label_fixes, read_label_fixes, run_dir_suffix, write_label_fixes
from tests.conftest import ROOT, run
from tests.test_own_data import write_folder
from utils import InputError, printable_path
from flags import check_args, get_args_parser, run_dir
from utils.label_issues import in_dataset_order, ranking_column, read_label_issues, write_label_issues
from utils.summary import collect

sys.path.insert(0, os.path.join(ROOT, "studies"))
from fix_policy_study import relabel_and_drop  # noqa: E402

CLASSES = ("cat", "dog", "frog")


def small_data(with_files=True):
    """Six images of three classes; images 2 and 4 are mislabelled (clean 1 and 2)."""
    root = "/data/pets"
    files = [f"{root}/train/{CLASSES[c]}/{i}.png" for i, c in enumerate([0, 1, 2, 0, 1, 2])]
    return Dataset("folder", 3, np.zeros((6, 8, 8, 3), np.uint8), np.array([0, 1, 2, 0, 1, 2]),
                   np.array([0, 1, 1, 0, 2, 2]), None, None, class_names=CLASSES,
                   train_files=files if with_files else None, files_root=root if with_files else None)


def fixes_file(path, *rows, header=",".join(COLUMNS)):
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def test_apply_relabels_drops_and_keeps(tmp_path):
    path = fixes_file(tmp_path / "fixes.csv", "2,/data/pets/train/frog/2.png,2,relabel,1",
                      "4,train/dog/4.png,1,drop,", "0,pets/train/cat/0.png,0,keep,", "5,,2,relabel,2")
    data = small_data()
    fixed = apply_label_fixes(data, path)
    assert fixed.noisy_labels.tolist() == [0, 1, 1, 0, 1, 2] and fixed.original_labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert fixed.dropped.tolist() == [False, False, False, False, True, False]
    assert fixed.kept.tolist() == [True, True, True, True, False, True] and data.kept.all()
    content = open(path, "rb").read()
    assert fixed.label_fixes.info == dict(path=path, sha256=hashlib.sha256(content).hexdigest(), rows=4,
                                          relabelled=1, dropped=1, kept=2,  # a relabel to the same label keeps it
                                          wrong_before=2 / 6, wrong_after=0.0)  # of the 5 images kept
    assert fixed.label_fixes.content == content and [fix.index for fix in fixed.label_fixes.rows] == [2, 4, 0, 5]
    assert fixed.labels_on_disk.tolist() == [0, 1, 2, 0, 1, 2] and data.labels_on_disk is data.noisy_labels
    assert fixed.noise_or_not[fixed.kept].sum() == 0 and data.noisy_labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_spreadsheet_exports_are_read(tmp_path):
    """A byte-order mark, CRLF line ends, quoted cells and blank lines at the end, as spreadsheets write them."""
    path = tmp_path / "fixes.csv"
    path.write_bytes(b'\xef\xbb\xbfindex,file,given_label,action,new_label\r\n"2","",2,relabel,1\r\n\r\n\r\n')
    rows, content = read_label_fixes(str(path))
    assert [fix[1:] for fix in rows] == [(2, "", 2, "relabel", 1)] and content == path.read_bytes()


@pytest.mark.parametrize("rows, header, message", [
    (["2,,2,relabel,1"], "index,file,label,action,new_label", "the header must be index,file,given_label,action,new_label"),
    (["2,,2,fix,1"], None, "line 2: unknown action 'fix'; use keep, relabel or drop"),
    (["2,,2,relabel,"], None, "line 2: relabel needs a new_label"),
    (["2,,2,keep,1"], None, "line 2: new_label is for relabel only; leave it empty for keep"),
    (["2,,2,relabel,1", "3,,0,drop,", "2,,2,drop,"], None, "line 4: index 2 again (first on line 2)"),
    (["two,,2,relabel,1"], None, "line 2: index must be a whole number, got 'two'"),
    (["2,,2,relabel,1.5"], None, "line 2: new_label must be a whole number, got '1.5'"),
    (["2,,2,relabel"], None, "line 2: expected 5 cells"),
    (["3,,0,keep,", "6,,0,drop,"], None, "line 3: index 6 is not an image of this data set (0..5)"),
    (["2,/data/pets/train/frog/5.png,2,drop,"], None,
     "line 2: image 2 is /data/pets/train/frog/2.png in this data set, not /data/pets/train/frog/5.png"),
    (["2,rain/frog/2.png,2,drop,"], None, "not rain/frog/2.png"),  # the end of a name is not the name
    (["2,,1,relabel,0"], None, "line 2: given_label 1, but image 2 is labelled 2 in this data set; the fixes were "
                               "made for another label set"),
    (["2,,2,relabel,3"], None, "line 2: new_label 3 is not a class of this data set (0..2)"),
    ([f"{i},,{i % 3},drop," for i in range(6)], None, "the fixes drop every image"),
])
def test_bad_fixes_name_their_line(tmp_path, rows, header, message):
    path = fixes_file(tmp_path / "fixes.csv", *rows, header=header or ",".join(COLUMNS))
    with pytest.raises(InputError) as e:
        apply_label_fixes(small_data(), path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_data_without_files_takes_rows_without_files(tmp_path):
    fixed = apply_label_fixes(small_data(with_files=False), fixes_file(tmp_path / "f.csv", "2,,2,relabel,1"))
    assert fixed.noisy_labels[2] == 1
    with pytest.raises(InputError, match="image 2 is an image without a file in this data set, not x.png"):
        apply_label_fixes(small_data(with_files=False), fixes_file(tmp_path / "g.csv", "2,x.png,2,relabel,1"))


def relabel_flagged(data, flagged, suggested):
    """Fixes that relabel every flagged image to its suggestion (studies/fix_policy_study.py makes its candidates'
    fixes this way)."""
    return relabel_and_drop(data, np.asarray(suggested), np.asarray(flagged), np.zeros(len(flagged), bool))


def test_relabel_fixes_alone_and_on_top_of_the_fixes_a_run_was_trained_with(tmp_path):
    data = small_data()
    flagged = np.array([False, True, True, False, True, False])
    suggested = np.array([0, 1, 1, 0, 0, 2])  # image 1: suggestion = its label, no row
    assert relabel_flagged(data, flagged, suggested) == [
        (2, "/data/pets/train/frog/2.png", 2, "relabel", 1), (4, "/data/pets/train/dog/4.png", 1, "relabel", 0)]
    # trained with: image 0 kept (a reviewer's keep), 2 relabelled to 0, 3 dropped; then flagged again: image 2, now
    # labelled 0, is suggested 2, its label on disk (a keep); image 5 is suggested 1 (a relabel)
    fixed = apply_label_fixes(data, fixes_file(tmp_path / "f.csv", "0,,0,keep,", "2,,2,relabel,0", "3,,0,drop,"))
    flagged = np.array([False, False, True, False, False, True])
    rows = relabel_flagged(fixed, flagged, np.array([0, 1, 2, 0, 1, 1]))
    assert rows == [(0, "", 0, "keep", ""), (2, "/data/pets/train/frog/2.png", 2, "keep", ""), (3, "", 0, "drop", ""),
                    (5, "/data/pets/train/frog/5.png", 2, "relabel", 1)]
    write_label_fixes(tmp_path / "again.csv", rows)  # and the result applies to the data set on disk again
    again = apply_label_fixes(data, str(tmp_path / "again.csv"))
    assert again.noisy_labels.tolist() == [0, 1, 2, 0, 1, 1] and again.dropped.tolist() == [0, 0, 0, 1, 0, 0]


def test_file_names_that_are_not_utf8_round_trip(tmp_path):
    """Scraped folders hold names whose bytes are not UTF-8: the folder loads, the table and the fixes name them
    as \\xNN escapes, and fixes with that name apply."""
    write_folder(tmp_path, ["a", "b"], n=2)
    folder = os.path.join(os.fsencode(tmp_path), b"train", b"a")
    os.rename(os.path.join(folder, b"1.png"), os.path.join(folder, b"caf\xe9 <b>.png"))
    data = load_dataset("folder", "given", str(tmp_path), image_size=8)
    assert data.train_files[1].endswith("caf\udce9 <b>.png")  # Python's name for the byte 0xe9, sorted after 0.png
    assert load_dataset("folder", "given", str(tmp_path), image_size=8).train_files == data.train_files  # cached
    labels = data.noisy_labels
    write_label_issues(tmp_path / "label_issues.csv", labels, 1 - labels, np.linspace(0, 1, 4), np.ones(4), None,
                       np.zeros(4, bool), files=data.train_files)
    table = read_label_issues(tmp_path / "label_issues.csv", 4)
    name = table["file"][list(table["index"]).index(1)]
    assert name == f"{tmp_path}/train/a/caf\\xe9 <b>.png" == printable_path(data.train_files[1])
    write_label_fixes(tmp_path / "fixes.csv", [(1, name, 0, "relabel", 1)])
    assert apply_label_fixes(data, str(tmp_path / "fixes.csv")).noisy_labels.tolist() == [0, 1, 1, 1]


def test_run_directory_of_a_run_with_fixes(tmp_path):
    path = fixes_file(tmp_path / "fixes.csv", "2,,2,relabel,1")
    parser = get_args_parser("")
    args = check_args(parser, parser.parse_args(["--dataset", "synthetic", "--label_fixes", path]))
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert run_dir(args) == f"results/synthetic_worst_seed_0_fixes_{sha[:8]}" and run_dir_suffix(path) == f"_fixes_{sha[:8]}"
    dry = subprocess.run(["bash", "run.sh", "--label_fixes", path], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, DATASET="synthetic", NOISE_TYPES="worst", DRY_RUN="1"))
    assert dry.returncode == 0 and f"> results/synthetic_worst_seed_0_fixes_{sha[:8]}/training.log" in dry.stdout
    missing = subprocess.run(["bash", "run.sh", "--label_fixes", str(tmp_path / "absent.csv")], cwd=ROOT,
                             capture_output=True, text=True, env=dict(os.environ, DATASET="synthetic", DRY_RUN="1"))
    assert missing.returncode == 2 and "is not a readable file" in missing.stderr


def test_fixes_of_a_real_run_apply(synthetic_run, tmp_path):
    """Fixes from a run's label_issues.csv: every flagged image whose suggestion differs from its label, relabelled to
    it, given_label = its label; written and applied, they leave fewer wrong labels."""
    d = synthetic_run["dir"]
    table = read_label_issues(d / "label_issues.csv", 4000)
    expected = sorted((int(i), "", int(g), "relabel", str(s)) for i, g, s, f in zip(
        table["index"], table["given_label"], table["suggested_label"], table["flagged"]) if f and g != s)
    data = load_dataset("synthetic", "worst", None)
    write_label_fixes(tmp_path / "relabel.csv", relabel_flagged(data, in_dataset_order(table, "flagged"),
                                                                in_dataset_order(table, "suggested_label")))
    with open(tmp_path / "relabel.csv", newline="") as f:
        header, *rows = csv.reader(f)
    assert tuple(header) == COLUMNS and [(int(i), p, int(g), a, n) for i, p, g, a, n in rows] == expected
    fixed = apply_label_fixes(data, str(tmp_path / "relabel.csv"))
    assert fixed.label_fixes.info["relabelled"] == len(expected) > 500
    assert fixed.label_fixes.info["wrong_after"] < fixed.label_fixes.info["wrong_before"] - 0.1


# ---------------------------------------------------------------------------- a run trained with fixes
def test_bad_fixes_stop_every_script_before_anything_is_written(fake_run, fake_cifar, tmp_path):
    label = (fake_cifar["labels10"][3] + 1) % 10  # every third label of the fake run is wrong
    path = fixes_file(tmp_path / "fixes.csv", f"3,,{label},relabel,12")
    result = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--results_dir", tmp_path / "results",
                 "--label_fixes", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        f"error: {path}, line 2: new_label 12 is not a class of this data set (0..9)")
    # the evaluation scripts look for the run these fixes name first, and there is none: one line each
    for script, said in (("learning.py", "no checkpoint at"), ("detection.py", "has not split yet")):
        result = run(script, *fake_run["flags"], "--results_dir", tmp_path / "results", "--label_fixes", path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "results").exists()
    absent = run("blind_knowledge_dist_training.py", *fake_run["flags"], "--label_fixes", tmp_path / "absent.csv")
    assert absent.returncode == 2 and "argument --label_fixes" in absent.stderr and "not a readable file" in absent.stderr


def draw_in_process(flags, run_dir, monkeypatch):
    """plots.py's main on a run, in this process, its figures recorded instead of drawn: {figure function: the
    arrays it was given}, and "shown": the images the suspicious-images grid captions."""
    import plots
    from utils import plots as figures
    from flags import check_args, get_args_parser
    drawn = {}

    def recorder(name):
        def record(plt, *arrays, **kwargs):
            drawn[name] = [np.asarray(a) for a in arrays if isinstance(a, np.ndarray)]
            return plt.figure()
        return record
    for name in ("scores_figure", "precision_recall_figure"):
        monkeypatch.setattr(plots, name, recorder(name))
    real = figures.suspicious_figure

    def suspicious(plt, images, table, *args, **kwargs):
        fig = real(plt, images, table, *args, **kwargs)
        drawn["shown"] = [int(ax.get_title().split("#")[1].split("\n")[0]) for ax in fig.axes if ax.get_title()]
        return fig
    monkeypatch.setattr(plots, "suspicious_figure", suspicious)
    monkeypatch.setattr(plots, "save_figure", lambda plt, fig, path: plt.close(fig))
    parser = get_args_parser("plots")
    plots.main(check_args(parser, parser.parse_args([str(f) for f in flags])))
    return drawn


def test_run_with_fixes_end_to_end(fake_run, fake_cifar, tmp_path, monkeypatch):
    """The fake CIFAR-10 run (every third label wrong): relabel ten wrong labels to the truth, drop five images.
    The run lands in its own directory, trains and validates without the dropped images, never flags them, lists
    them last in label_issues.csv, and every script says what it counts."""
    clean = fake_cifar["labels10"]
    noisy = np.where(np.arange(100) % 3 == 0, (clean + 1) % 10, clean)
    rows = [f"{i},,{noisy[i]},relabel,{clean[i]}" for i in range(0, 30, 3)]
    rows += [f"{i},,{noisy[i]},drop," for i in (1, 2, 4, 5, 7)]
    path = fixes_file(tmp_path / "fixes.csv", *rows)
    results = tmp_path / "results"
    flags = [*fake_run["flags"], "--results_dir", results, "--label_fixes", path]
    train = run("blind_knowledge_dist_training.py", *flags)
    assert train.returncode == 0, train.stderr[-2000:]
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    d = results / f"cifar10_worst_seed_0_fixes_{sha[:8]}"
    assert os.listdir(results) == [d.name]  # never where the run without fixes goes
    assert (d / "label_fixes.csv").read_bytes() == open(path, "rb").read()  # the run keeps the fixes it trained on
    assert "86 training, 9 validation, 20 test images; noise rate 25.26 %" in train.stdout  # 24 wrong of 95
    assert (f"label fixes {path} (sha256 {sha[:16]}...): 10 images relabelled, 5 dropped, 0 kept as they were; "
            f"wrong labels 34.00 % before the fixes, 25.26 % after (of the images kept)") in train.stdout
    m = json.loads((d / "metrics.json").read_text())
    assert m["label_fixes"] == dict(path=path, sha256=sha, rows=15, relabelled=10, dropped=5, kept=0,
                                    wrong_before=0.34, wrong_after=24 / 95)
    assert m["tipping_epoch"] is not None and m["detection"]["images"] == 95
    dropped = np.zeros(100, bool)
    dropped[[1, 2, 4, 5, 7]] = True
    flagged = np.load(d / "detection.npy")
    assert flagged.shape == (100,) and not flagged[dropped].any()
    table = read_label_issues(d / "label_issues.csv", 100)
    column = ranking_column(m)  # the ranking's score: the final teacher's where it judged
    ranking = dict(zip(table["index"].tolist(), table[column].tolist()))
    assert table["index"][-5:].tolist() == sorted([1, 2, 4, 5, 7], key=lambda i: ranking[i])  # dropped: last, ranked
    assert table["group"][-5:] == ["dropped"] * 5 and not table["flagged"][-5:].any()
    assert "dropped" not in table["group"][:-5]
    assert table["given_label"][list(table["index"]).index(3)] == clean[3]  # the label after the fixes

    detection = run("detection.py", *flags)
    assert detection.returncode == 0, detection.stderr
    lines = detection.stdout.splitlines()
    assert lines[0] == (f"trained with the label fixes {path}: 10 images relabelled, 5 dropped; every number below "
                        f"counts the 95 images kept, with their labels after the fixes")
    assert lines[1] == f"flagged as noisy: {flagged.sum()} of 95 images kept"
    assert lines[2] == "truly noisy: 24"  # the reference's line as it is; the first line says what it counts
    written = json.loads((d / "detection.json").read_text())
    assert set(written.pop("final_ranking")) == {"auroc", "average_precision", "k", "precision_at_k"}
    assert set(written.pop("final_teacher_ranking")) == {"auroc", "average_precision", "k", "precision_at_k"}
    column = written.pop("flagged_column")  # the flagged column of label_issues.csv, scored on the kept images too
    assert written == m["detection"] and column["images"] == 95 and column == dict(m["flagged"],
                                                                                 ranking=ranking_column(m))
    assert (d / "review.html").is_file() and not (d / "label_fixes_suggested.csv").exists()  # docs/review.md
    on_disk = load_dataset("cifar10", "worst", fake_cifar["dir"], str(tmp_path / "labels.pt"))
    write_label_fixes(tmp_path / "again.csv", relabel_flagged(apply_label_fixes(on_disk, path),
                                                              in_dataset_order(table, "flagged"),
                                                              in_dataset_order(table, "suggested_label")))
    again = apply_label_fixes(on_disk, str(tmp_path / "again.csv"))  # fixes on top of the fixes, applicable
    assert again.dropped.sum() == 5 and np.sum(again.noisy_labels != noisy) >= 10
    learning = run("learning.py", *flags)
    assert learning.returncode == 0 and f"evaluated the final networks of {d}" in learning.stdout, learning.stderr
    if importlib.util.find_spec("matplotlib"):  # the pictures leave the dropped images out
        plots = run("plots.py", *flags)
        assert plots.returncode == 0 and f"written: {d / 'suspicious_images.png'}" in plots.stdout, plots.stderr
        drawn = draw_in_process(flags, d, monkeypatch)  # what each picture was given to draw
        assert len(drawn["scores_figure"][0]) == len(drawn["precision_recall_figure"][0]) == 95
        assert np.array_equal(drawn["scores_figure"][0], np.load(d / "detection_scores.npy")[~dropped])
        assert not set(drawn["shown"]) & {1, 2, 4, 5, 7} and len(drawn["shown"]) == 32
    rows = collect(str(results))
    assert [(r["noise_type"], r["seeds"]) for r in rows] == [(f"worst + fixes {sha[:8]}", [0])]
