"""The front page and the manual: the README stays short, its Quick start is the two set-up lines CI runs, every link
of the README, docs/, studies/ and tests/README.md resolves (tests/check_links.py), every page of docs/ and the
studies' index are linked from the README, every manual page is short and the training script's main() too."""
import ast
import os
import re
import sys

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests"))
import check_links  # noqa: E402


def quick_start():
    """The command lines of the README's Quick start, without their comments."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        section = f.read().split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_is_a_front_page_of_at_most_200_lines():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert len(text.splitlines()) <= 200


def test_every_manual_page_is_at_most_200_lines():
    """A page says how to use a thing and what its numbers mean; the evidence lives in studies/ (README: the index)."""
    lines = {os.path.relpath(page, ROOT): len(open(page, encoding="utf-8").read().splitlines())
             for page in check_links.manual_pages()}
    assert {page: n for page, n in lines.items() if n > 200} == {}


def test_the_training_scripts_main_reads_like_the_method():
    """main() is setup, the loop, the split and the report, each phase a named call: at most 150 lines."""
    tree = ast.parse(open(os.path.join(ROOT, "blind_knowledge_dist_training.py"), encoding="utf-8").read())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    assert main.end_lineno - main.lineno + 1 <= 150


def test_no_figure_is_left_to_fill_in():
    for path in [*check_links.pages(), os.path.join(ROOT, "flags.py")]:  # flags.py: the help of every flag
        with open(path, encoding="utf-8") as f:
            assert "@@" not in f.read(), path


def test_quick_start_is_two_lines_and_ci_runs_the_second():
    lines = quick_start()
    assert lines == ["pip install -r requirements.txt && DATASET=synthetic bash run.sh",
                     "pip install -r requirements-test.txt && python -m pytest -q -n 2 --dist loadgroup tests"]
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = [line for line in f.read().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == lines[1]  # exactly the README's test command, the last thing CI does
    with open(os.path.join(ROOT, "requirements-test.txt")) as f:
        wanted = f.read()
    assert all(f"\n{r}" in wanted for r in ("-r requirements.txt", "-r requirements-plots.txt", "pytest", "pytest-xdist",
                                             "selenium"))


def test_every_link_resolves_and_every_page_is_linked():
    assert check_links.broken_links() == []
    assert len(check_links.pages()) >= 10
    for page in check_links.manual_pages():  # each page opens with its title and one sentence saying what it is for
        with open(page, encoding="utf-8") as f:
            lines = f.read().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "" and lines[2].startswith("This page is for"), page


def test_the_link_check_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Part one\n\n[b](b.md) [code](../x.py) [part](#part-one) "
                                            "[gone](#part-two) [web](https://example.com) `[not](a link)`\n")
    (tmp_path / "docs" / "b.md").write_text("# B\n\n[up](../../outside.md)\n")
    (tmp_path / "README.md").write_text("# R\n\n[a](docs/a.md#part-one) [s](studies/README.md)\n\n```\n"
                                        "[in code](missing.md)\n```\n")
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "README.md").write_text("# Studies\n\n[one](one.md#results) [manual](../docs/a.md)\n")
    (tmp_path / "studies" / "one.md").write_text("# One\n\n## Results\n")
    (tmp_path / "studies" / "two.md").write_text("# Two\n\n[back](README.md)\n")
    found = sorted((os.path.relpath(page, tmp_path), link, why) for page, link, why in
                   check_links.broken_links(str(tmp_path)))
    assert found == [("README.md", "docs/b.md", "a page the README does not link"),
                     ("docs/a.md", "#part-two", "no heading #part-two in docs/a.md"),
                     ("docs/a.md", "../x.py", "no such file"),
                     ("docs/b.md", "../../outside.md", "points outside the repository"),
                     ("studies/README.md", "studies/two.md", "a study's page the studies' index does not link")]
