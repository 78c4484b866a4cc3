"""review.html (utils/review.py, utils/review_template.html): the page's JSON and thumbnails without a browser, then
the page of real runs in a real headless browser (Selenium + Chromium): cards, order and captions, decisions by
keyboard and mouse, the class picker, the filters, a reload, the downloaded label_fixes.csv byte for byte, training
with that very file, hostile and undecodable file names, and a page of 5,000 cards of 100 classes.

The browser tests skip where Chromium, its driver or selenium is missing (and fail instead with BKD_REQUIRE_BROWSER=1,
as in CI): apt-get install chromium chromium-driver; pip install selenium."""
import base64
import csv
import hashlib
import io
import json
import os
import re
import time

import numpy as np
import pytest
from PIL import Image

from data import load_dataset
from tests.conftest import N_SYNTHETIC, run
from tests.test_own_data import write_noisy_folder
from utils.label_issues import ranking_column, read_label_issues
from utils.review import review_page, write_review_page

INSTALL = "install them with `apt-get install chromium chromium-driver` and `pip install selenium`"
CHROMIUM = os.environ.get("BKD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BKD_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000"]
HEADER = "index,file,given_label,action,new_label"
SYNTHETIC_CLASSES = ("disk", "ring", "square", "frame", "hstripe", "vstripe", "plus", "cross", "tri_up", "tri_down")
HOSTILE = '<img src=x onerror="window.pwned=1">.png'


# ---------------------------------------------------------------------------- the page without a browser
def page_data(html):
    """The JSON of a written page, parsed back, and the raw text of its data element."""
    m = re.search(r'<script type="application/json" id="bkd-data">(.*?)</script>', html, re.S)
    assert m, "no data element"
    return json.loads(m.group(1)), m.group(1)


def card(index, file="", given=0, suggested=1, score=0.01, group=4, truth=None, original=None):
    return dict(index=index, file=file, given=given, original=given if original is None else original,
                suggested=suggested, score=score, suggested_score=0.9, group=group, truth=truth)


def small_run(**kwargs):
    return dict(dict(dataset="npz", noise_type="given", seed=0, tipping_epoch=5, images=100, flagged=2, uncertain=1,
                     shown=3, cap=5000, detection=None, label_fixes=None, dropped=0), **kwargs)


def test_json_cannot_close_the_script_element(tmp_path):
    files = ["</script><script>window.pwned=1</script>.png", "<!--<script>.png", "a&amp;b>c.png",
             "line\u2028sep\u2029.png", "caf\\xe9.png", 'quo"te,comma.png', "\U0001f600.png"]
    cards = [card(i, f) for i, f in enumerate(files)]
    path = tmp_path / "review.html"
    size = write_review_page(path, run=small_run(shown=len(cards)), cards=cards,
                             images=np.zeros((len(cards), 8, 8, 3), np.uint8),
                             class_names=["</script>", "b&c"], storage_key="k</script>")
    raw = path.read_bytes()
    assert size == len(raw) and raw.isascii()
    html = raw.decode("ascii")
    assert len(re.findall(r"</script", html, re.I)) == 2  # the data element's end and the code's end, no other
    data, text = page_data(html)
    assert not set("<>&\u2028\u2029") & set(text)
    assert [c["file"] for c in data["cards"]] == files  # verbatim, the backslash of caf\xe9.png included
    assert data["class_names"] == ["</script>", "b&c"] and data["storage_key"] == "k</script>"
    assert data["cards"][0] == dict(card(0, files[0]), score=0.01, suggested_score=0.9)
    assert not [p for p in tmp_path.iterdir() if p.name != "review.html"]  # written atomically


@pytest.mark.parametrize("side, kind, stored", [(8, "PNG", 8), (16, "PNG", 16), (32, "PNG", 32), (33, "JPEG", 33),
                                                (64, "JPEG", 64), (96, "JPEG", 96), (128, "JPEG", 128),
                                                (224, "JPEG", 128), (500, "JPEG", 128)])
def test_thumbnail_format_and_size(side, kind, stored):
    rng = np.random.default_rng(side)
    images = rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    data, _ = page_data(review_page(run=small_run(), cards=[card(0), card(1)], images=images, class_names=["a", "b"],
                                    storage_key="k").decode())
    assert data["thumb_mime"] == f"image/{kind.lower()}" and data["pixelated"] == (side <= 128)  # never blurred
    assert data["image_side"] == side
    for thumb, image in zip(data["thumbs"], images):
        picture = Image.open(io.BytesIO(base64.b64decode(thumb)))
        assert picture.format == kind and picture.size == (stored, stored) and picture.mode == "RGB"
        if kind == "PNG":
            assert np.array_equal(np.asarray(picture), image)  # lossless, at its own size


def test_page_size_for_100_cards(tmp_path):
    """100 cards of random 32x32 pixels (an upper bound: noise does not compress): about 4 KB per card."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    cards = [card(i, f"train/class{i % 7}/{i:05d}.png", given=i % 7, suggested=(i + 1) % 7, score=i / 1000)
             for i in range(100)]
    size = write_review_page(tmp_path / "review.html", run=small_run(flagged=100, uncertain=0, shown=100),
                             cards=cards, images=images, class_names=[f"class{i}" for i in range(7)],
                             storage_key="k")
    template = os.path.getsize(os.path.join(os.path.dirname(os.path.dirname(__file__)), "utils",
                                            "review_template.html"))
    per_card = (size - template) / 100
    assert 3072 * 4 / 3 < per_card < 5000, per_card  # base64 of a ~3.1 KB PNG, plus the card's JSON
    flat = np.zeros((100, 32, 32, 3), np.uint8)  # images that compress (as most do): far smaller
    assert write_review_page(tmp_path / "flat.html", run=small_run(), cards=cards, images=flat,
                             class_names=[f"class{i}" for i in range(7)], storage_key="k") < template + 100 * 400


def test_refuses_images_that_do_not_match_the_cards(tmp_path):
    with pytest.raises(ValueError, match="2 cards need 2 RGB images"):
        write_review_page(tmp_path / "review.html", run=small_run(), cards=[card(0), card(1)],
                          images=np.zeros((1, 8, 8, 3), np.uint8), class_names=["a", "b"], storage_key="k")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- the browser
def browser_problem():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    for path, what in ((CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"no {what} at {path}"
    return None


class Browser:
    """One headless Chromium and the few things the tests do with it."""
    def __init__(self, driver, tmp):
        self.driver, self.tmp, self.downloads = driver, tmp, 0

    def open(self, path, clear=False):
        """Open a page from disk and wait for its script; clear=True forgets its stored decisions first."""
        self.driver.get(path.resolve().as_uri())
        self.wait("return !!window.bkdReview")
        if clear:
            self.js("localStorage.clear()")
            self.driver.refresh()
            self.wait("return !!window.bkdReview")
        return self

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, script, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            if self.js(script):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for: {script}")

    def keys(self, *keys):
        from selenium.webdriver.common.action_chains import ActionChains
        ActionChains(self.driver).send_keys(*keys).perform()

    def css(self, selector):
        from selenium.webdriver.common.by import By
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def severe(self):
        """Console errors (level SEVERE) since the last call."""
        return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def cards(self):
        """(index, caption dict) of the cards on the current page, in order."""
        return self.js("""return Array.from(document.querySelectorAll('#grid .card')).map(function (c) {
            var t = function (s) { var e = c.querySelector(s); return e ? e.textContent : null; };
            return {index: Number(c.dataset.index), idx: t('.idx'), file: t('.file'), given: t('.given'),
                    suggested: t('.suggested'), score: t('.score'), badge: t('.badge .what'), truth: t('.truth'),
                    decided: c.classList.contains('keep') ? 'keep' : c.classList.contains('relabel') ? 'relabel'
                             : c.classList.contains('drop') ? 'drop' : '', current: c.classList.contains('cur')};
        });""")

    def current(self):
        return self.js("return window.bkdReview.current()")

    def card(self, index):
        found = self.css(f'#grid .card[data-index="{index}"]')
        assert found, f"card {index} is not on this page"
        return found[0]

    def click(self, index, act):
        self.card(index).find_element("css selector", f'button[data-act="{act}"]').click()

    def find(self, index):
        """Turn the pages (PageDown) until card `index` shows; returns its element."""
        self.keys(self.key("HOME"))
        for _ in range(1000):
            if self.css(f'#grid .card[data-index="{index}"]'):
                return self.card(index)
            if self.js("return document.getElementById('next').disabled"):
                break
            self.keys(self.key("PAGE_DOWN"))
        raise AssertionError(f"card {index} is in no page of the view")

    def visible_count(self):
        """Cards of the filtered view, counted page by page."""
        self.keys(self.key("HOME"))
        n = len(self.css("#grid .card"))
        while not self.js("return document.getElementById('next').disabled"):
            self.css("#next")[0].click()
            n += len(self.css("#grid .card"))
        return n

    def select(self, selector, value):
        from selenium.webdriver.support.ui import Select
        Select(self.css(selector)[0]).select_by_value(str(value))

    @staticmethod
    def key(name):
        from selenium.webdriver.common.keys import Keys
        return getattr(Keys, name)

    def download(self):
        """Click "Download fixes"; the bytes of the label_fixes.csv it saved."""
        self.downloads += 1
        folder = self.tmp / f"download{self.downloads}"
        folder.mkdir()
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})
        self.css("#download")[0].click()
        end = time.time() + 20
        while time.time() < end:
            names = os.listdir(folder)
            if names == ["label_fixes.csv"]:
                time.sleep(0.1)
                return (folder / "label_fixes.csv").read_bytes()
            time.sleep(0.05)
        raise AssertionError(f"no label_fixes.csv downloaded, found {os.listdir(folder)}")


@pytest.fixture(scope="session")
def chromium():
    """Skips (or fails, with BKD_REQUIRE_BROWSER=1) where there is no browser to test in. Session-scoped and named
    first (needs_browser) so that a test skips before the training runs it would need are made."""
    problem = browser_problem()
    if problem:
        message = f"{problem}: the review page is tested in a real browser; {INSTALL}"
        if os.environ.get("BKD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message} (BKD_REQUIRE_BROWSER=1: no skipping)")
        pytest.skip(f"{message} (BKD_REQUIRE_BROWSER=1 makes this a failure)")
    return CHROMIUM


needs_browser = pytest.mark.usefixtures("chromium")


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    tmp = tmp_path_factory.mktemp("browser")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS + [f"--user-data-dir={tmp / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no driver download: the given one
    try:
        yield Browser(driver, tmp)
    finally:
        driver.quit()


# ---------------------------------------------------------------------------- a run's page and its decisions
def flagged_then_uncertain(table):
    """Rows of label_issues.csv in the page's order: the flagged ones from the most suspicious down, then the
    uncertain ones (groups 3 and 4, not flagged)."""
    rows = [i for i in range(len(table["index"])) if table["flagged"][i]]
    return rows + [i for i in range(len(table["index"])) if table["group"][i] in ("3", "4") and not table["flagged"][i]]


def review_html(run_dir):
    """The review.html detection.py wrote into the run directory."""
    path = run_dir / "review.html"
    assert path.is_file(), f"detection.py wrote no {path}"
    return path


def expected_fixes(decided, by_index):
    """label_fixes.csv as Python's csv module writes it, for {index: final label or 'drop'}."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER.split(","))
    for index in sorted(decided):
        c, final = by_index[index], decided[index]
        if final == "drop":
            writer.writerow([index, c["file"], c["original"], "drop", ""])
        elif final == c["original"]:
            writer.writerow([index, c["file"], c["original"], "keep", ""])
        else:
            writer.writerow([index, c["file"], c["original"], "relabel", final])
    return buf.getvalue().encode("utf-8")


def train_with_fixes(fixes_path, results, *flags):
    """Train a couple of epochs with --label_fixes; the metrics.json of the run (its directory has the fixes'
    sha256 in its name)."""
    sha = hashlib.sha256(fixes_path.read_bytes()).hexdigest()
    result = run("blind_knowledge_dist_training.py", *flags, "--results_dir", results, "--label_fixes", fixes_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = list(results.glob(f"*_fixes_{sha[:8]}/metrics.json"))
    assert len(found) == 1, (sha[:8], list(results.iterdir()))
    metrics = json.loads(found[0].read_text())
    assert metrics["label_fixes"]["sha256"] == sha
    return metrics


@pytest.fixture(scope="module")
def synthetic_page(synthetic_run):
    path = review_html(synthetic_run["dir"])
    table = read_label_issues(synthetic_run["dir"] / "label_issues.csv", N_SYNTHETIC)
    data, _ = page_data(path.read_text(encoding="utf-8"))
    return dict(path=path, table=table, rows=flagged_then_uncertain(table), data=data,
                by_index={c["index"]: c for c in data["cards"]})


@needs_browser
def test_synthetic_page_cards_order_captions_and_ground_truth(browser, synthetic_page, synthetic_run):
    b, table, rows = browser.open(synthetic_page["path"], clear=True), synthetic_page["table"], synthetic_page["rows"]
    assert b.severe() == []
    data = synthetic_page["data"]
    # every card, in the table's order: the flagged ones by ascending score (card group 4), then the uncertain (3)
    assert [c["index"] for c in data["cards"]] == table["index"][rows].tolist()
    assert [c["group"] for c in data["cards"]] == [4 if table["flagged"][r] else 3 for r in rows]
    n4 = int(table["flagged"].sum())
    n3 = sum(g in ("3", "4") and not f for g, f in zip(table["group"], table["flagged"]))
    assert n4 > 500 and n3 > 0 and data["run"]["flagged"] == n4 and data["run"]["uncertain"] == n3
    assert all(c["original"] == c["given"] for c in data["cards"])  # trained without fixes
    synthetic = load_dataset("synthetic", "worst", None)
    assert [c["truth"] for c in data["cards"]] == synthetic.clean_labels[table["index"][rows]].tolist()
    for k in list(range(60)) + [len(rows) - 1]:  # the thumbnails are the images of the cards, losslessly
        picture = Image.open(io.BytesIO(base64.b64decode(data["thumbs"][k])))
        assert np.array_equal(np.asarray(picture), synthetic.train_images[data["cards"][k]["index"]])
    metrics = json.loads((synthetic_run["dir"] / "metrics.json").read_text())
    header = b.js("return document.querySelector('header').textContent")
    assert "synthetic" in header and "worst" in header and "seed 0" in header
    assert f"tipping epoch {metrics['tipping_epoch']}" in header and f"{n4:,} flagged" in header
    assert "precision" in header and "AUROC" in header and "raise --review_max_images" not in header
    # the scores of what the page shows: the flagged column, and the AUROC of its order (the final networks' ranking)
    column = metrics["flagged"]
    assert f"F1 {column['f1']:.3f}" in header and f"AUROC {column['auroc']:.3f}" in header, header
    assert b.js("return document.querySelector('#progress').textContent") == (
        f"0 of {n4:,} flagged decided, 0 of {n3:,} uncertain")
    # the first page: 60 cards with their captions, the first focused
    shown = b.cards()
    assert len(shown) == 60 and [c["index"] for c in shown] == table["index"][rows[:60]].tolist()
    for c, r in zip(shown, rows):
        assert c["idx"] == f"#{table['index'][r]}" and c["file"] is None  # synthetic images have no files
        assert c["given"] == table["given_class"][r] and c["suggested"] == table["suggested_class"][r]
        score = table[ranking_column(metrics)][r]  # the ranking's score (the split judged); 3 decimals, or 2
        # significant digits below 0.001
        assert abs(float(c["score"]) - score) <= (0.0005 if score >= 0.001 else 0.051 * score) + 1e-12, (c, score)
        assert c["badge"] is None and c["truth"] is None
    assert shown[0]["current"] and sum(c["current"] for c in shown) == 1
    assert b.js("return document.querySelector('#grid .section').textContent").startswith("Flagged")
    images = b.js("""return Array.from(document.querySelectorAll('#grid .card img')).map(function (i) {
        return [i.complete && i.naturalWidth, getComputedStyle(i).imageRendering, i.getBoundingClientRect().width];
    })""")
    assert images == [[32, "pixelated", 128]] * 60  # 32x32 PNGs shown 4x, without blurring
    # the uncertain section starts on its page, after the last flagged card
    b.keys(b.key("END"))
    assert b.current() == int(table["index"][rows[-1]]) and b.cards()[-1]["current"]
    for _ in range(2):  # the focused card is scrolled into view, below the sticky bar, at either end of a page
        assert b.js("""var r = document.querySelector('.card.cur').getBoundingClientRect();
            return r.top >= document.getElementById('bar').getBoundingClientRect().bottom && r.bottom <= innerHeight""")
        b.keys(b.key("PAGE_UP"))
    b.find(int(table["index"][rows[n4]]))
    headings = b.js("return Array.from(document.querySelectorAll('#grid .section')).map(h => h.textContent)")
    assert any(h.startswith("Uncertain") for h in headings)
    page = b.cards()
    first3 = [c["index"] for c in page].index(int(table["index"][rows[n4]]))
    assert all(synthetic_page["by_index"][c["index"]]["group"] == 3 for c in page[first3:])
    # the ground truth: a switch, off by default, that shows on each card whether its label is truly wrong
    assert b.js("return document.getElementById('truth').checked") is False
    b.css("#truth")[0].click()
    for c in b.cards():
        truth = synthetic_page["by_index"][c["index"]]["truth"]
        given = synthetic_page["by_index"][c["index"]]["given"]
        assert c["truth"] == ("\u2713 label right" if truth == given else
                              f"\u2717 label wrong, true: {SYNTHETIC_CLASSES[truth]}")
    b.css("#truth")[0].click()
    assert all(c["truth"] is None for c in b.cards())
    assert b.severe() == []


@needs_browser
def test_synthetic_decisions_filters_reload_and_download(browser, synthetic_page, synthetic_run, tmp_path):
    b, table, rows, by_index = (browser.open(synthetic_page["path"], clear=True), synthetic_page["table"],
                                synthetic_page["rows"], synthetic_page["by_index"])
    order = table["index"][rows].tolist()
    name = lambda label: SYNTHETIC_CLASSES[label]  # noqa: E731
    decided = {}

    def badge(index):
        final = decided[index]
        return "drop" if final == "drop" else "keep" if final == by_index[index]["given"] else f"\u2192 {name(final)}"

    # keyboard: a, g, d, c + type-to-filter + Enter, skip, undo of the last decision, Backspace on a decided card
    b.keys("a")
    decided[order[0]] = by_index[order[0]]["suggested"]
    assert b.current() == order[1]
    b.keys("g")
    decided[order[1]] = by_index[order[1]]["given"]
    b.keys("d")
    decided[order[2]] = "drop"
    assert b.current() == order[3]
    target = next(c for c in range(10) if c not in (by_index[order[3]]["given"], by_index[order[3]]["suggested"]))
    b.keys("c")
    assert b.js("return !document.getElementById('picker').hidden && document.activeElement.id") == "picker-input"
    assert b.js("return document.getElementById('picker-input').value") == ""  # the c was not typed
    b.keys(name(target)[:3])
    listed = b.js("return Array.from(document.querySelectorAll('#picker-list li .cls')).map(e => e.textContent)")
    assert listed[0] == name(target) and all(name(target)[:3] in s for s in listed)
    b.keys(b.key("ENTER"))
    decided[order[3]] = target
    assert b.js("return document.getElementById('picker').hidden") and b.current() == order[4]
    b.keys("j", "a")  # order[4] skipped, order[5] accepted ...
    assert b.current() == order[6]
    b.keys("u")  # ... and taken back: the focus returns to it
    assert b.current() == order[5] and order[5] not in dict(b.js("return window.bkdReview.decisions()"))
    b.keys("c", b.key("ESCAPE"))  # the picker cancelled: nothing decided
    assert b.current() == order[5] and b.js("return document.getElementById('picker').hidden")
    b.keys("k", "k", "k", b.key("BACK_SPACE"))  # on a decided card, Backspace undoes its own decision
    assert b.current() == order[2]
    b.keys(b.key("ARROW_RIGHT"), b.key("ARROW_LEFT"), "d")
    assert b.current() == order[3]
    # the mouse: accept, drop then undo by its badge, keep, another class from the picker by click
    b.click(order[10], "a")
    decided[order[10]] = by_index[order[10]]["suggested"]
    assert b.current() == order[11]
    b.click(order[11], "d")
    b.card(order[11]).find_element("css selector", ".badge button").click()
    assert order[11] not in dict(b.js("return window.bkdReview.decisions()"))
    b.click(order[11], "g")
    decided[order[11]] = by_index[order[11]]["given"]
    b.click(order[12], "c")
    choice = next(c for c in range(10) if c != by_index[order[12]]["given"])
    b.css(f"#picker-list li[data-i='{choice}']")[0].click()  # no filter typed: item i is class i
    decided[order[12]] = choice
    assert b.current() == order[13]
    # past the last card of the page: the next page; PageUp back
    b.card(order[59]).click()
    assert b.current() == order[59]
    b.keys(b.key("ARROW_RIGHT"))
    assert b.current() == order[60] and b.cards()[0]["index"] == order[60]
    b.keys("g")
    decided[order[60]] = by_index[order[60]]["given"]
    b.keys(b.key("PAGE_UP"))
    page = {c["index"]: c for c in b.cards()}
    assert b.current() == order[0]
    for index in decided:
        if index in page:
            assert page[index]["badge"] == badge(index), index
            final = decided[index]
            assert page[index]["decided"] == ("drop" if final == "drop" else
                                              "keep" if final == by_index[index]["given"] else "relabel")
    assert all(page[i]["badge"] is None for i in order[:60] if i not in decided)
    n4 = int(table["flagged"].sum())
    n3 = len(synthetic_page["rows"]) - n4
    assert b.js("return document.querySelector('#progress').textContent") == (
        f"{len(decided)} of {n4:,} flagged decided, 0 of {n3:,} uncertain")
    assert dict(b.js("return window.bkdReview.decisions()")) == {
        i: (-1 if f == "drop" else f) for i, f in decided.items()}
    # the filters narrow the view to the table's counts; the keyboard then moves within it
    reviewed = synthetic_page["rows"]  # the flagged and the uncertain images
    given = int(table["given_label"][rows[0]])
    suggested = int(table["suggested_label"][rows[0]])
    b.select("#f-given", given)
    count = sum(int(table["given_label"][r]) == given for r in reviewed)
    assert b.visible_count() == count
    b.keys(b.key("HOME"), "j")
    assert by_index[b.current()]["given"] == given
    b.select("#f-given", -1)
    b.select("#f-sugg", suggested)
    assert b.visible_count() == sum(int(table["suggested_label"][r]) == suggested for r in reviewed)
    b.select("#f-given", given)
    both = [int(table["index"][r]) for r in rows
            if int(table["given_label"][r]) == given and int(table["suggested_label"][r]) == suggested]
    assert b.visible_count() == len(both)
    b.keys(b.key("HOME"), b.key("ARROW_RIGHT"))
    assert b.current() == both[min(1, len(both) - 1)]
    b.select("#f-given", -1)
    b.select("#f-sugg", -1)
    assert b.visible_count() == len(rows)
    # a reload (or a closed tab) keeps the decisions
    b.driver.refresh()
    b.wait("return !!window.bkdReview")
    assert dict(b.js("return window.bkdReview.decisions()")) == {
        i: (-1 if f == "drop" else f) for i, f in decided.items()}
    page = {c["index"]: c for c in b.cards()}
    assert all(page[i]["badge"] == badge(i) for i in decided if i in page)
    # the download: exactly what Python's csv module writes for these decisions
    text = b.download()
    assert text == expected_fixes(decided, by_index)
    assert text.startswith(HEADER.encode() + b"\n") and b"\r" not in text and len(text.splitlines()) == 1 + len(decided)
    assert b.severe() == []
    path = tmp_path / "label_fixes.csv"
    path.write_bytes(text)
    # ... and this very file trains
    metrics = train_with_fixes(path, tmp_path / "results", "--dataset", "synthetic", "--noise_type", "worst",
                               "--n_epoch", 1, "--lr", 0.1)
    assert metrics["label_fixes"]["sha256"] == hashlib.sha256(text).hexdigest()


@needs_browser
def test_undo_picker_focus_filters_and_stored_decisions_of_other_pages(browser, synthetic_page):
    """An undone decision never comes back by a later undo; the picker keeps the keys whatever is clicked in it and
    Tab does not leave it; a filter select that kept the focus does not take the page's letter keys; decisions
    about images a page does not show (another --review_max_images) stay stored."""
    b, order = browser.open(synthetic_page["path"], clear=True), synthetic_page["table"]["index"][synthetic_page["rows"]]
    by_index = synthetic_page["by_index"]
    decisions = lambda: dict(b.js("return window.bkdReview.decisions()"))  # noqa: E731
    b.keys("g")  # A kept ...
    b.keys("k", "a")  # ... then accepted ...
    b.keys("k", "u")  # ... and that undone: A is undecided
    assert decisions() == {} and b.current() == order[0]
    b.keys("u")  # on an undecided card: the last decision made, and none is left
    assert decisions() == {}
    b.keys("c")
    b.css("#picker-title")[0].click()  # a click beside the input ...
    b.keys(b.key("TAB"), "fr")  # ... and a Tab keep the keys in the picker
    assert b.js("return document.activeElement.id") == "picker-input"
    assert b.js("return document.getElementById('picker-input').value") == "fr"
    b.keys(b.key("ESCAPE"))
    assert b.js("return document.getElementById('picker').hidden") and decisions() == {}
    b.css("#f-sugg")[0].click()  # opened and closed without a choice: the select keeps the focus
    b.keys(b.key("ESCAPE"))
    b.js("document.getElementById('f-sugg').focus()")
    b.keys("a")  # acts on the focused card, and the filter stays "all"
    assert b.js("return document.getElementById('f-sugg').value") == "-1"
    assert decisions() == {int(order[0]): by_index[int(order[0])]["suggested"]}
    key = "bkd-review:" + synthetic_page["data"]["storage_key"]
    stored = json.loads(b.js("return localStorage.getItem(arguments[0])", key))
    stored["decisions"]["123456"] = 3  # an image this page does not show
    b.js("localStorage.setItem(arguments[0], arguments[1])", key, json.dumps(stored))
    b.driver.refresh()
    b.wait("return !!window.bkdReview")
    b.keys("g")
    assert json.loads(b.js("return localStorage.getItem(arguments[0])", key))["decisions"]["123456"] == 3
    assert b.severe() == []


@needs_browser
def test_cards_show_and_sort_by_the_agreement_on_the_suggestion_but_take_no_suggestion_in_bulk(browser, synthetic_page):
    """Each card shows the agreement on its suggestion and the cards sort by it within their sections; nothing marks a
    suggestion "sure" or takes suggestions in bulk (every such cut cost accuracy somewhere: docs/review.md), and the
    header says to look before taking a suggestion. "s" does nothing."""
    b, by_index = browser.open(synthetic_page["path"], clear=True), synthetic_page["by_index"]
    cards = synthetic_page["data"]["cards"]
    assert "sure_cut" not in synthetic_page["data"]["run"]
    assert "look at each image before you take its suggestion" in b.js("return document.querySelector('header').textContent")
    assert not b.css("#accept-sure, #f-sure, .sure-mark, .unsure-mark")
    shown = b.js("""return Array.from(document.querySelectorAll('#grid .card')).map(function (c) {
        return [Number(c.dataset.index), c.querySelector('.suggested-score').textContent]; })""")
    for index, score in shown:
        assert abs(float(score) - by_index[index]["suggested_score"]) <= 0.0005
    view = lambda: b.js("return window.bkdReview.view()")  # noqa: E731
    in_order = [c["index"] for c in cards]
    for order, sign in (("agree-desc", -1), ("agree-asc", 1)):  # within each section, ties in the table's order
        b.select("#order", order)
        expected = sorted(range(len(cards)), key=lambda k: (-cards[k]["group"], sign * cards[k]["suggested_score"], k))
        assert view() == [cards[k]["index"] for k in expected]
        assert b.js("return document.querySelector('#grid .section small').textContent").endswith(
            "highest agreement on the suggestion first" if order == "agree-desc"
            else "lowest agreement on the suggestion first")
    b.select("#order", "suspicious")
    assert view() == in_order
    b.keys("s")  # no bulk action behind the key
    assert b.js("return window.bkdReview.decisions()") == []
    b.keys("a", "a", "u")  # one decision at a time, one undo at a time
    assert dict(b.js("return window.bkdReview.decisions()")) == {in_order[0]: by_index[in_order[0]]["suggested"]}
    assert b.severe() == []


@needs_browser
def test_csv_fields_are_quoted_as_python_does(browser, synthetic_page):
    b = browser.open(synthetic_page["path"])
    fields = ["plain.png", "a,b.png", 'say "hi".png', "two\nlines.png", "crlf\r\n.png", "", " space .png",
              "caf\\xe9.png", "tab\t.png", "'single'.png", "\u00fc.png", "semi;colon.png"]
    line = b.js("return arguments[0].map(window.bkdReview.csvField).join(',')", fields)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    assert line + "\n" == buf.getvalue()
    # a lone CR is quoted too (Python's csv quotes it since 3.11.9 / 3.12.3; older ones wrote it bare)
    assert b.js("return window.bkdReview.csvField('a\\rb')") == '"a\rb"'


@needs_browser
def test_decisions_on_a_run_trained_with_fixes_map_the_labels_on_disk(browser, tmp_path):
    """The cards show the labels the run trained on; the download maps the labels on disk to the final ones and
    carries the run's own fixes over for the images not decided on the page. Then "Clear all decisions"."""
    names = ["ant", "bee", "cow", "dog"]
    cards = [card(5, "d/bee/5.png", given=2, original=1, suggested=3),  # the run's fixes relabelled 1 -> 2
             card(7, "d/ant/7.png", given=0, suggested=1),
             card(9, "d/cow/9.png", given=1, original=2, suggested=2),  # relabelled 2 -> 1 by the run's fixes
             card(3, "d/dog/3.png", given=3, suggested=0, group=3)]
    base = [(5, "d/bee/5.png", 1, "relabel", 2), (9, "d/cow/9.png", 2, "relabel", 1), (11, "d/a,b.png", 0, "drop", ""),
            (15, 'd/"q".png', 3, "relabel", 0), (20, "d/ant/20.png", 0, "keep", None)]
    path = tmp_path / "review.html"
    fixes = dict(path="results/x/label_fixes.csv", sha256="ab" * 32, rows=5, relabelled=3, dropped=1, kept=1)
    write_review_page(path, run=small_run(flagged=3, uncertain=1, shown=4, label_fixes=fixes, dropped=1), cards=cards,
                      images=np.zeros((4, 16, 16, 3), np.uint8), class_names=names, storage_key="with-fixes",
                      base_fixes=base)
    b = browser.open(path, clear=True)
    header = b.js("return document.querySelector('header').textContent")
    assert "trained with the label fixes results/x/label_fixes.csv (sha256 abababab): 3 relabelled, 1 dropped" in header
    shown = b.js("return Array.from(document.querySelectorAll('#grid .card')).map(c => "
                 "[c.querySelector('.given').textContent, (c.querySelector('.original') || {}).textContent])")
    assert shown == [["cow", "bee"], ["ant", None], ["bee", "cow"], ["dog", None]]
    b.keys("g", "a", "a", "d")  # 5: keep the trained label 2; 7: 0 -> 1; 9: back to 2, its label on disk; 3: drop
    badges = [c["badge"] for c in b.cards()]
    assert badges == ["keep", "\u2192 bee", "\u2192 cow", "drop"]
    text = b.download().decode()
    assert text == ("index,file,given_label,action,new_label\n"
                    "3,d/dog/3.png,3,drop,\n"
                    "5,d/bee/5.png,1,relabel,2\n"
                    "7,d/ant/7.png,0,relabel,1\n"
                    "9,d/cow/9.png,2,keep,\n"
                    '11,"d/a,b.png",0,drop,\n'
                    '15,"d/""q"".png",3,relabel,0\n'
                    "20,d/ant/20.png,0,keep,\n")
    # "Clear all decisions" asks first: dismissed, nothing changes; accepted, the page and the storage forget them
    b.css("#clear")[0].click()
    b.driver.switch_to.alert.dismiss()
    assert len(b.js("return window.bkdReview.decisions()")) == 4
    b.css("#clear")[0].click()
    b.driver.switch_to.alert.accept()
    assert b.js("return window.bkdReview.decisions()") == [] and all(c["badge"] is None for c in b.cards())
    b.driver.refresh()
    b.wait("return !!window.bkdReview")
    assert b.js("return window.bkdReview.decisions()") == []
    assert b.download().decode() == "index,file,given_label,action,new_label\n" + "".join(
        f"{line}\n" for line in ("5,d/bee/5.png,1,relabel,2", "9,d/cow/9.png,2,relabel,1", '11,"d/a,b.png",0,drop,',
                                 '15,"d/""q"".png",3,relabel,0', "20,d/ant/20.png,0,keep,"))
    assert b.severe() == []


# ---------------------------------------------------------------------------- hostile and undecodable file names
@needs_browser
def test_hostile_and_undecodable_file_names_end_to_end(browser, tmp_path):
    root = tmp_path / "data"
    flipped = {}  # class folder: its images that belong to another class
    for path in sorted(write_noisy_folder(str(root), n=240, n_test=0, num_classes=4)):
        flipped.setdefault(os.path.dirname(path), []).append(os.path.basename(path))
    for folder, files in flipped.items():  # in each class folder, two flipped images get the names to survive
        os.rename(os.path.join(folder, files[0]), os.path.join(folder, HOSTILE))
        os.rename(os.path.join(os.fsencode(folder), os.fsencode(files[1])),
                  os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    results = tmp_path / "results"
    flags = ["--dataset", "folder", "--data_dir", root, "--image_size", 16, "--results_dir", results]
    # the reference's tipping rule: in 16 epochs of 4 steps the plateau rule waits on (it splits this run at epoch
    # 18 of 30); what is tested here is the names
    train = run("blind_knowledge_dist_training.py", *flags, "--arch", "small_cnn", "--n_epoch", 16, "--lr", 0.1,
                "--lr_decay_every", 5, "--batch_size", 64, "--tipping_rule", "reference")
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    out = results / "folder_given_seed_0"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tipping_epoch"] is not None and np.load(out / "detection.npy").sum() > 0
    detection = run("detection.py", *flags)
    assert detection.returncode == 0, detection.stdout[-3000:] + detection.stderr[-3000:]
    path = review_html(out)
    data, _ = page_data(path.read_text(encoding="utf-8"))
    by_index = {c["index"]: c for c in data["cards"]}
    hostile = [c for c in data["cards"] if c["file"].endswith("/" + HOSTILE)]
    undecodable = [c for c in data["cards"] if c["file"].endswith("/caf\\xe9.png")]  # a backslash, x, e, 9
    assert hostile and undecodable, "no flipped image with these names was flagged or found uncertain"
    assert all(c["truth"] is None for c in data["cards"])  # a folder has no ground truth

    b = browser.open(path, clear=True)
    assert b.js("return typeof window.pwned") == "undefined"
    assert f"files in {root}/train/" in b.js("return document.querySelector('header').textContent")
    assert b.js("return document.getElementById('truth')") is None  # no ground truth, no switch
    decided = {}
    for i, c in enumerate(hostile[:1] + undecodable[:1]):
        b.find(c["index"])
        shown = next(s for s in b.cards() if s["index"] == c["index"])
        # the characters, as text: the path below the data folder on the card, all of it in its tooltip
        assert shown["file"] == c["file"][len(f"{root}/train/"):] and c["file"].startswith(f"{root}/train/class")
        assert b.card(c["index"]).find_element("css selector", ".file").get_attribute("title") == c["file"]
        if i == 0:
            b.click(c["index"], "d")
            decided[c["index"]] = "drop"
        else:
            b.card(c["index"]).click()
            b.keys("a")
            decided[c["index"]] = c["suggested"]
    assert b.js("return document.querySelectorAll('img').length") == b.js(
        "return document.querySelectorAll('#grid .card .thumb img').length")  # no image but the thumbnails
    assert b.js("return typeof window.pwned") == "undefined" and b.severe() == []
    text = b.download()
    assert text == expected_fixes(decided, by_index)
    assert HOSTILE.replace('"', '""').encode() in text and b"/caf\\xe9.png" in text
    fixes = tmp_path / "label_fixes.csv"
    fixes.write_bytes(text)
    train_with_fixes(fixes, tmp_path / "fixed", "--dataset", "folder", "--data_dir", root, "--image_size", 16,
                     "--arch", "small_cnn", "--n_epoch", 2, "--lr", 0.1, "--batch_size", 64)


# ---------------------------------------------------------------------------- a large page
@needs_browser
def test_5000_cards_of_100_classes_open_fast_and_the_picker_filters(browser, tmp_path):
    from data.cifar import CIFAR100_CLASSES
    rng = np.random.default_rng(0)
    n = 5000
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # noise: the largest a 32x32 page gets
    given, suggested = rng.integers(0, 100, n), rng.integers(0, 100, n)
    cards = [dict(index=int(i), file="", given=int(g), original=int(g), suggested=int(s), score=float(x),
                  suggested_score=0.9, group=4 if k < 4000 else 3, truth=None)
             for k, (i, g, s, x) in enumerate(zip(rng.permutation(50_000)[:n], given, suggested,
                                                  np.sort(rng.uniform(0, 0.3, n))))]
    path = tmp_path / "review.html"
    size = write_review_page(path, run=dict(dataset="cifar100", noise_type="noisy100", seed=0, tipping_epoch=90,
                                            images=50_000, flagged=14_000, uncertain=3_000, shown=n, cap=n,
                                            detection=None, label_fixes=None, dropped=0),
                             cards=cards, images=images, class_names=list(CIFAR100_CLASSES), storage_key="large")
    assert size < 30e6
    b = browser.open(path, clear=True)
    ready = b.js("return window.bkdReview.readyAt")
    assert len(b.cards()) == 60 and ready < 20_000, ready  # ms from navigation to the first cards
    assert "showing the 5,000 most suspicious of 17,000" in b.js("return document.querySelector('header').textContent")
    decision_ms = b.driver.execute_async_script("""var done = arguments[0], t = performance.now();
        document.dispatchEvent(new KeyboardEvent('keydown', {key: 'g', bubbles: true}));
        requestAnimationFrame(function () { setTimeout(function () { done(performance.now() - t); }, 0); });""")
    assert decision_ms < 1000 and b.current() == cards[1]["index"]
    # the picker with 100 classes: type to filter, Up/Down, Enter; PageDown past the last class stays on it
    b.keys("c")
    assert len(b.css("#picker-list li[data-i]")) == 100
    b.keys("tr")
    listed = b.js("return Array.from(document.querySelectorAll('#picker-list li .cls')).map(e => e.textContent)")
    assert listed[:3] == ["tractor", "train", "trout"]  # names that start with it first, in class order
    assert set(listed) == {c for c in CIFAR100_CLASSES if "tr" in c}
    assert listed.index("trout") < listed.index("oak_tree")
    b.keys(b.key("ARROW_DOWN"), b.key("ARROW_DOWN"), b.key("ARROW_UP"), b.key("ENTER"))
    final = CIFAR100_CLASSES.index(listed[1])
    assert dict(b.js("return window.bkdReview.decisions()"))[cards[1]["index"]] == final
    assert b.card(cards[1]["index"]).find_element("css selector", ".badge .what").text == (
        "keep" if final == cards[1]["given"] else f"\u2192 {listed[1]}")
    b.keys(b.key("PAGE_DOWN"), b.key("END"))
    assert b.current() == cards[-1]["index"] and b.cards()[-1]["index"] == cards[-1]["index"]
    assert b.js("return document.getElementById('pageinfo').textContent") == (
        "page 84/84 \u00b7 4,981\u20135,000 of 5,000")
    assert b.severe() == []


def test_review_max_images_caps_the_page(synthetic_run, tmp_path):
    """detection.py --review_max_images N: the page holds the first N cards of the table's order (the flagged images
    first, from the most suspicious down), says how many it shows, and a negative N is refused in one line."""
    from tests.test_plots import copy_run
    d, flags = copy_run(synthetic_run, tmp_path / "results")
    table = read_label_issues(d / "label_issues.csv", N_SYNTHETIC)
    first_flagged = [int(i) for i in np.asarray(table["index"])[np.asarray(table["flagged"])][:5]]
    for cap, expected in ((5, first_flagged), (0, [])):
        r = run("detection.py", *flags, "--review_max_images", cap)
        assert r.returncode == 0 and f"({len(expected)} images to review," in r.stdout, r.stderr
        data, _ = page_data((d / "review.html").read_text())
        assert [c["index"] for c in data["cards"]] == expected and data["run"]["cap"] == cap
        assert data["run"]["shown"] == len(expected)
    r = run("detection.py", *flags, "--review_max_images", -1)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip() == "detection.py: error: --review_max_images -1: must be 0 or more"
