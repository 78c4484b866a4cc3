"""Check the links of README.md and docs/*.md: every relative link names a file or folder of the repository, every
#anchor a heading of the page it points to, and every page of docs/ is linked from the README.

    python tools/check_links.py          # prints each broken link; exit code 1 if there is one
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
    return [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))


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
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for page in pages(root)[1:]:
        name = os.path.relpath(page, root)
        if f"]({name})" not in readme and f"]({name}#" not in readme:
            problems.append((os.path.join(root, "README.md"), name, "a page of docs/ the README does not link"))
    return problems


def main():
    problems = broken_links()
    for page, link, why in problems:
        print(f"{os.path.relpath(page, ROOT)}: ({link}): {why}")
    print(f"{len(pages())} pages checked, {len(problems)} broken link{'s' if len(problems) != 1 else ''}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
