"""Check the links of README.md, docs/*.md (the manual), studies/*.md (the evidence) and tests/README.md: every
relative link names a file or folder of the repository, every #anchor a heading of the page it points to, every page
of docs/ and the studies' index (studies/README.md) are linked from the README, and every other page of studies/ from
that index.

    python tests/check_links.py          # prints each broken link; exit code 1 if there is one
"""
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def outside_code(text):
    """The text without fenced code blocks and inline code (links there are examples, not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path):
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"^```.*?^```", "", f.read(), flags=re.M | re.S)
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.*)$", text, re.M)}


def pages(root=ROOT):
    """README.md, then the manual's pages, then the studies' (their index first)."""
    studies = sorted(glob.glob(os.path.join(root, "studies", "*.md")), key=lambda p: not p.endswith("README.md"))
    tests = [p for p in [os.path.join(root, "tests", "README.md")] if os.path.exists(p)]  # what the tests check
    return [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md"))) + studies + tests


def manual_pages(root=ROOT):
    return sorted(glob.glob(os.path.join(root, "docs", "*.md")))


def linked_from(index, page, root):
    """Whether the page `index` links to `page` (both paths under root)."""
    with open(index, encoding="utf-8") as f:
        text = f.read()
    name = os.path.relpath(page, os.path.dirname(index))
    return f"]({name})" in text or f"]({name}#" in text


def broken_links(root=ROOT):
    """[(page, link, why)] of every link of the pages under `root` that does not resolve."""
    problems = []
    for page in pages(root):
        with open(page, encoding="utf-8") as f:
            text = outside_code(f.read())
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):  # https:, mailto: ...: not checked (no network here)
                continue
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not resolved.startswith(root + os.sep) and resolved != root:
                problems.append((page, target, "points outside the repository"))
            elif not os.path.exists(resolved):
                problems.append((page, target, "no such file"))
            elif anchor and (not resolved.endswith(".md") or anchor not in anchors(resolved)):
                problems.append((page, target, f"no heading #{anchor} in {os.path.relpath(resolved, root)}"))
    readme, index = os.path.join(root, "README.md"), os.path.join(root, "studies", "README.md")
    for page in manual_pages(root) + ([index] if os.path.exists(index) else []):
        if not linked_from(readme, page, root):
            problems.append((readme, os.path.relpath(page, root), "a page the README does not link"))
    for page in glob.glob(os.path.join(root, "studies", "*.md")):
        if page != index and not (os.path.exists(index) and linked_from(index, page, root)):
            problems.append((index, os.path.relpath(page, root), "a study's page the studies' index does not link"))
    return problems


def main():
    problems = broken_links()
    for page, link, why in problems:
        print(f"{os.path.relpath(page, ROOT)}: ({link}): {why}")
    print(f"{len(pages())} pages checked, {len(problems)} broken link{'s' if len(problems) != 1 else ''}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
