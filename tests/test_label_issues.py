"""label_issues.csv (utils/label_issues.py): written and read back on hand-made arrays, bad files, and the table a
real synthetic run leaves in its run directory."""
import csv
import json

import numpy as np
import pytest

from tests.conftest import N_SYNTHETIC
from utils import InputError
from utils.label_issues import COLUMNS, in_dataset_order, load_scores, read_label_issues, write_label_issues

SYNTHETIC_CLASSES = ("disk", "ring", "square", "frame", "hstripe", "vstripe", "plus", "cross", "tri_up", "tri_down")
SYNTHETIC_NUM_CLASSES = len(SYNTHETIC_CLASSES)


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


FINAL = np.array([0.8, 0.02, 0.02, 0.4, 0.5])  # the final networks' agreement on each given label
TEACHER = np.array([0.7, 0.01, 0.03, 0.35, 0.45])  # the final teacher's probability of each given label


def small_table(path, groups=(1, 4, 4, 2, 3), class_names=("cat", "dog", "frog"), files=None, ranking=FINAL):
    """Five images; images 1 and 2 tie on the lowest score, so index order decides between them; the final
    agreement ranks image 3 before image 4, the tipping pass's the other way round."""
    write_label_issues(path, given=np.array([0, 1, 2, 2, 0]), suggested=np.array([0, 0, 1, 2, 2]),
                       agreement_given=np.array([0.9, 0.05, 0.05, 0.6, 0.3]),
                       agreement_suggested=np.array([0.9, 0.8, 0.7, 0.6, 0.5]),
                       groups=None if groups is None else np.array(groups),
                       flagged=np.array([False, True, True, False, False]), class_names=class_names, files=files,
                       final_given=FINAL, final_teacher_given=TEACHER, ranking=ranking)


def test_rows_sorted_by_the_ranking_ties_by_index(tmp_path):
    path = tmp_path / "label_issues.csv"
    small_table(path, files=["a.png", "b.png", "c.png", "d,e.png", "ü.png"])
    header, *rows = read_rows(path)
    assert tuple(header) == COLUMNS
    assert rows == [["1", "b.png", "1", "dog", "0", "cat", "0.02", "0.01", "0.05", "0.8", "4", "True"],
                    ["2", "c.png", "2", "frog", "1", "dog", "0.02", "0.03", "0.05", "0.7", "4", "True"],
                    ["3", "d,e.png", "2", "frog", "2", "frog", "0.4", "0.35", "0.6", "0.6", "2", "False"],  # quoted
                    ["4", "ü.png", "0", "cat", "2", "frog", "0.5", "0.45", "0.3", "0.5", "3", "False"],
                    ["0", "a.png", "0", "cat", "0", "cat", "0.8", "0.7", "0.9", "0.9", "1", "False"]]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written atomically
    small_table(path, ranking=None)  # without a ranking of its own: by the tipping pass's agreement
    assert [row[0] for row in read_rows(path)[1:]] == ["1", "2", "4", "3", "0"]


def test_empty_cells_without_names_files_or_groups(tmp_path):
    path = tmp_path / "label_issues.csv"
    small_table(path, groups=None, class_names=None)
    header, *rows = read_rows(path)
    assert tuple(header) == COLUMNS and len(rows) == 5
    assert rows[0] == ["1", "", "1", "", "0", "", "0.02", "0.01", "0.05", "0.8", "", "True"]


@pytest.mark.parametrize("left_out", [[7], [6, 7]])
def test_a_table_of_an_earlier_version_reads_without_the_final_columns(tmp_path, left_out):
    """label_issues.csv of a run of an earlier version (no final_teacher_given, or neither final column): read,
    the columns it lacks as nan."""
    path = tmp_path / "label_issues.csv"
    small_table(path)
    rows = read_rows(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([[c for i, c in enumerate(row) if i not in left_out]
                                                      for row in rows])
    table = read_label_issues(path, 5)
    assert np.isnan(table["final_teacher_given"]).all() and table["index"].tolist() == [1, 2, 3, 4, 0]
    assert np.isnan(table["final_agreement_given"]).all() == (6 in left_out)
    assert in_dataset_order(table, "agreement_given").tolist() == [0.9, 0.05, 0.05, 0.6, 0.3]


def test_read_back(tmp_path):
    path = tmp_path / "label_issues.csv"
    small_table(path)
    table = read_label_issues(path, 5)
    assert table["index"].tolist() == [1, 2, 3, 4, 0]
    assert in_dataset_order(table, "suggested_label").tolist() == [0, 0, 1, 2, 2]
    assert in_dataset_order(table, "agreement_given").tolist() == [0.9, 0.05, 0.05, 0.6, 0.3]
    assert in_dataset_order(table, "final_agreement_given").tolist() == FINAL.tolist()
    assert in_dataset_order(table, "final_teacher_given").tolist() == TEACHER.tolist()
    assert table["flagged"].tolist() == [True, True, False, False, False]
    assert table["given_class"][:2] == ["dog", "frog"] and table["group"][:2] == ["4", "4"]


def test_write_refuses_arrays_of_other_lengths(tmp_path):
    with pytest.raises(ValueError, match="suggested has 2 entries, given has 3"):
        write_label_issues(tmp_path / "x.csv", [0, 1, 2], [0, 1], [0.1] * 3, [0.1] * 3, None, [False] * 3)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("edit, fragment", [
    (lambda text: text.replace("given_label", "label"), "expected the columns"),
    (lambda text: text.rsplit("\n", 2)[0] + "\n", "expected 5 rows"),  # a row missing
    (lambda text: text.replace("\n2,", "\n1,", 1), "every image index"),  # an index twice
    (lambda text: text.replace("0.05", "low", 1), "not a number"),
    (lambda text: "", "expected the columns"),
])
def test_read_bad_files(tmp_path, edit, fragment):
    path = tmp_path / "label_issues.csv"
    small_table(path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(InputError, match=fragment) as e:
        read_label_issues(path, 5)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_read_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(InputError, match="has not split yet.*blind_knowledge_dist_training.py"):
        read_label_issues(tmp_path / "label_issues.csv", 5)


def test_scores_outside_0_1_are_refused(tmp_path):
    np.save(tmp_path / "s.npy", np.array([0.5, 1.5], dtype=np.float32))
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        load_scores(str(tmp_path / "s.npy"), 2)


# ---------------------------------------------------------------------------- the table of a real run
def test_run_writes_the_table(synthetic_run):
    d = synthetic_run["dir"]
    header, *rows = read_rows(d / "label_issues.csv")
    assert tuple(header) == COLUMNS and len(rows) == N_SYNTHETIC
    table = read_label_issues(d / "label_issues.csv", N_SYNTHETIC)  # also checks: each index exactly once
    assert sorted(table["index"]) == list(range(N_SYNTHETIC))
    # most to least suspicious: ascending agreement on the given label of the tipping pass (the split judged this
    # run, the default); the final networks' agreement and the final teacher's probability are written beside it
    m = json.loads((d / "metrics.json").read_text())
    assert m["judged_by"] == "split" and np.all(np.diff(table["agreement_given"]) >= 0)
    for column in ("final_agreement_given", "final_teacher_given"):
        assert np.all((table[column] >= 0) & (table[column] <= 1))
        assert not np.array_equal(np.argsort(table[column], kind="stable"), np.arange(N_SYNTHETIC))
    # agreement_given is the tipping pass's, as detection_scores.npy (the reference's ranking)
    scores = np.load(d / "detection_scores.npy")
    a = table["agreement_given"]
    assert np.allclose(in_dataset_order(table, "agreement_given"), scores, rtol=1e-5, atol=1e-12)
    groups = np.array(table["group"], dtype=int)
    order = np.argsort(table["index"])
    # detection.npy is the reference's: group 4 of the tipping pass, below the lower mean
    assert set(groups) <= {1, 2, 3, 4} and np.array_equal(groups[order] == 4, np.load(d / "detection.npy"))
    lower_mean = m["detection_split"]["lower_mean"]
    assert np.all(a[groups == 4] < lower_mean) and np.all(a[groups != 4] >= lower_mean * (1 - 1e-5))
    # the flagged column: the suggestion (of the split's last passes) is not the given label, and the teacher refused it
    # (a subset of the differing suggestions: tests/test_scripts.py recomputes it from recorded passes)
    differs = table["suggested_label"] != table["given_label"]
    assert np.all(differs[table["flagged"]]) and table["flagged"].sum() <= differs.sum()
    assert m["flagged"]["flagged"] == int(table["flagged"].sum()) and 0 < m["flagged"]["flagged"] < N_SYNTHETIC
    # the suggestion's agreement is the highest of an average of distributions: between 1 / classes and 1
    assert np.all(table["agreement_suggested"] >= (1 - 1e-5) / SYNTHETIC_NUM_CLASSES)
    assert np.all(table["agreement_suggested"] <= 1 + 1e-6)
    # class names of the synthetic data set, file names empty (it has none)
    assert table["given_class"] == [SYNTHETIC_CLASSES[i] for i in table["given_label"]]
    assert table["suggested_class"] == [SYNTHETIC_CLASSES[i] for i in table["suggested_label"]]
    assert set(table["file"]) == {""}
