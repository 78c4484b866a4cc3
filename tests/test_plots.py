"""plots.py: the four pictures of a real synthetic run are valid PNG files; without matplotlib one line says how to
get them and nothing is written; bad run directories end in one clear line; the user's own data without ground
truth, test set or class names still gets its pictures."""
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from data import Dataset
from tests.conftest import N_SYNTHETIC, ROOT, run
from utils.label_issues import write_label_issues

PICTURES = ["confidence.png", "precision_recall.png", "scores_histogram.png", "suspicious_images.png"]
SPLIT_FILES = ["metrics.json", "detection.npy", "detection_scores.npy", "label_issues.csv"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) of a PNG file, after checking its signature."""
    data = open(path, "rb").read(24)
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    return struct.unpack(">II", data[16:24])


def copy_run(synthetic_run, results, names=SPLIT_FILES):
    """The named files of the session's synthetic run in a run directory of its own under `results`, so that the
    pictures and broken files made here never touch the shared run. Returns (run directory, flags)."""
    d = results / "synthetic_worst_seed_0"
    d.mkdir(parents=True)
    for name in names:
        shutil.copy(synthetic_run["dir"] / name, d / name)
    return d, ["--dataset", "synthetic", "--noise_type", "worst", "--seed", "0", "--results_dir", results]


def run_without_matplotlib(script, *args):
    """Run a script as a user would, on a Python where `import matplotlib` fails."""
    code = (f"import runpy, sys; sys.modules['matplotlib'] = None; sys.argv = {[script, *map(str, args)]!r}; "
            f"runpy.run_path({script!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_pictures_of_a_run(synthetic_run, tmp_path):
    pytest.importorskip("matplotlib")
    d, flags = copy_run(synthetic_run, tmp_path)
    result = run("plots.py", *flags)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"written: {d / name}" for name in
                                          ["confidence.png", "scores_histogram.png", "precision_recall.png",
                                           "suspicious_images.png"]]
    assert sorted(os.listdir(d)) == sorted(SPLIT_FILES + PICTURES)  # no temporary file left behind
    for name in PICTURES:
        width, height = png_size(d / name)
        assert 500 < width < 3000 and 400 < height < 2000, (name, width, height)
        assert os.path.getsize(d / name) > 10_000


def test_without_matplotlib_one_line_and_nothing_written(synthetic_run, tmp_path):
    d, flags = copy_run(synthetic_run, tmp_path)
    result = run_without_matplotlib("plots.py", *flags)
    assert_one_line_error(result, "matplotlib", "pip install matplotlib")
    assert sorted(os.listdir(d)) == sorted(SPLIT_FILES)


@pytest.mark.parametrize("case, fragments", [
    ("no run", ["metrics.json", "blind_knowledge_dist_training.py"]),
    ("no split", ["detection.npy", "has not split yet"]),
    ("scores of the wrong length", ["detection_scores.npy", f"shape ({N_SYNTHETIC},)"]),
    ("table of another run", ["label_issues.csv", "given labels"]),
])
def test_bad_run_directories(synthetic_run, tmp_path, case, fragments):
    pytest.importorskip("matplotlib")  # without it, plots.py stops before reading anything
    d, flags = copy_run(synthetic_run, tmp_path, {"no run": [], "no split": ["metrics.json"]}.get(case, SPLIT_FILES))
    if case == "scores of the wrong length":
        np.save(d / "detection_scores.npy", np.load(d / "detection_scores.npy")[:-1])
    if case == "table of another run":  # rows of other labels: swap two given labels of differing class
        lines = (d / "label_issues.csv").read_text().splitlines()
        cells = [line.split(",") for line in lines[1:3]]
        cells[0][2], cells[1][2] = str((int(cells[0][2]) + 1) % 10), cells[1][2]
        (d / "label_issues.csv").write_text("\n".join([lines[0], *map(",".join, cells), *lines[3:]]) + "\n")
    before = sorted(os.listdir(d))
    assert_one_line_error(run("plots.py", *flags), *fragments)
    assert sorted(os.listdir(d)) == before


@pytest.mark.slow
def test_figures_of_runs_without_a_tipping_epoch_test_set_or_split(tmp_path):
    """The branches a synthetic run does not reach: drawn, saved, valid PNGs."""
    pytest.importorskip("matplotlib")
    from utils.plots import confidence_figure, pyplot, save_figure, scores_figure
    plt = pyplot()
    scores = np.linspace(0, 1, 50)
    figures = {"no_tipping.png": confidence_figure(plt, [0.1, 0.2, 0.3], None, None, []),
               "degenerate.png": scores_figure(plt, scores, None, np.zeros(50, bool), scores < 0.3)}
    for name, fig in figures.items():
        save_figure(plt, fig, str(tmp_path / name))
        png_size(tmp_path / name)


def test_the_suspicious_images_leave_the_dropped_ones_out():
    """An image dropped by label fixes is in no picture, even where the table ranks it among the first (its rows
    come last in label_issues.csv; here, a table made by hand, it comes second)."""
    pytest.importorskip("matplotlib")
    from utils.plots import pyplot, suspicious_figure
    plt = pyplot()
    table = dict(index=np.array([5, 2, 0, 4]), given_class=["", "", "", ""], given_label=np.array([1, 0, 1, 0]),
                 suggested_class=["", "", "", ""], suggested_label=np.array([0, 0, 0, 1]), file=["", "", "", ""],
                 group=["4", "dropped", "3", "1"], agreement_given=np.array([0.1, 0.2, 0.3, 0.9]))
    fig = suspicious_figure(plt, np.zeros((6, 8, 8, 3), np.uint8), table, None, rows=1, cols=3)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes if ax.get_title()] == ["#5", "#0", "#4"]
    plt.close(fig)


@pytest.mark.slow
def test_own_data_without_ground_truth_test_set_or_names(tmp_path, monkeypatch, capsys):
    """--dataset npz of a user: no clean labels, no test set, no class names; 3 pictures, and a line on the 4th."""
    pytest.importorskip("matplotlib")
    import plots
    from flags import check_args, get_args_parser
    rng = np.random.default_rng(0)
    n = 200
    given = rng.integers(0, 3, n)
    scores = np.clip(np.r_[rng.normal(0.15, 0.1, 60), rng.normal(0.7, 0.15, n - 60)], 0, 1)
    flagged = scores < 0.2
    data = Dataset("npz", 3, rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), given, None, None, None)
    monkeypatch.setattr(plots, "load_data", lambda args: data)
    parser = get_args_parser("plots")
    args = check_args(parser, parser.parse_args(["--dataset", "npz", "--data_dir", str(tmp_path / "my.npz"),
                                                 "--results_dir", str(tmp_path)]))
    d = tmp_path / "npz_given_seed_0"
    d.mkdir()
    metrics = dict(confidence=[0.2, 0.3, 0.35, 0.4, 0.38, 0.37, 0.39], tipping_epoch=3, tipping_found_epoch=5,
                   test=[], detection_split=dict(upper_mean=0.7, upper_sigma=0.15, lower_mean=0.2, lower_sigma=0.1,
                                                 threshold=0.4))
    (d / "metrics.json").write_text(json.dumps(metrics))
    np.save(d / "detection.npy", flagged)
    np.save(d / "detection_scores.npy", scores.astype(np.float32))
    files = [f"photos/{'holiday_' if i % 2 else ''}img_{i:04d}.jpg" for i in range(n)]  # long names shortened
    write_label_issues(d / "label_issues.csv", given, (given + 1) % 3, scores, np.maximum(scores, 0.5), None, flagged,
                       files=files)
    plots.main(args)
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "no precision_recall.png: the ground truth of these labels is unknown"
    written = sorted(os.listdir(d))
    assert [name for name in written if name.endswith(".png")] == [p for p in PICTURES if p != "precision_recall.png"]
    for name in ["confidence.png", "scores_histogram.png", "suspicious_images.png"]:
        png_size(d / name)
