"""Does the quick tier bite? A small mutation sweep, run by hand (not in CI: minutes per file):

    python tests/mutation_sweep.py                      # utils/bkd.py, utils/watch.py, utils/findings.py
    python tests/mutation_sweep.py utils/tipping.py     # any module: it runs the quick tier's tests named below

Each mutant changes one operator of the code (strings and comments are left alone: a comparison flipped, + and -
swapped, * and /, and and or, max and min, is None and is not None), the module's tests run without the slow ones,
and a mutant whose tests all pass is listed as a survivor: a behaviour no test checks, or a change that makes no
difference. The file is restored after every mutant and at the end, whatever happens. docs/tests.md says what the
last sweep found."""
import ast
import io
import os
import subprocess
import sys
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = {"utils/bkd.py": ["tests/test_bkd.py", "tests/test_flagging.py"],
         "utils/watch.py": ["tests/test_watch.py", "tests/test_recipes.py"],
         "utils/findings.py": ["tests/test_findings.py"],
         "utils/tipping.py": ["tests/test_tipping.py"]}
SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "+": "-", "-": "+", "*": "/",
         "and": "or", "or": "and", "max": "min", "min": "max"}


def mutants(source):
    """(line, column, old text, new text, the mutated source) of each operator outside strings and comments."""
    lines = source.splitlines(keepends=True)
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for k, tok in enumerate(tokens):
        new = SWAPS.get(tok.string) if tok.type in (tokenize.OP, tokenize.NAME) else None
        if tok.string in ("max", "min") and not (k + 1 < len(tokens) and tokens[k + 1].string == "("):
            new = None  # a name, not a call
        if tok.string == "-" and k and tokens[k - 1].type == tokenize.OP and tokens[k - 1].string not in (")", "]"):
            new = None  # a sign, not a subtraction
        if tok.string == "is" and k + 1 < len(tokens) and tokens[k + 1].string == "None":
            new = "is not"
        if new is None:
            continue
        (row, col), (_, end) = tok.start, tok.end
        line = lines[row - 1]
        mutated = "".join(lines[:row - 1] + [line[:col] + new + line[end:]] + lines[row:])
        try:
            ast.parse(mutated)
        except SyntaxError:  # *args made /args: not a mutant
            continue
        yield row, col, tok.string, new, mutated


def sweep(path, tests):
    with open(os.path.join(ROOT, path)) as f:
        source = f.read()
    survivors, n = [], 0
    try:
        for row, col, old, new, mutated in mutants(source):
            with open(os.path.join(ROOT, path), "w") as f:
                f.write(mutated)
            n += 1
            r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider",
                                *tests], cwd=ROOT, capture_output=True, text=True, timeout=900)
            if r.returncode == 0:
                survivors.append((row, col, old, new))
                print(f"{path}:{row}:{col} {old} -> {new} SURVIVED: {source.splitlines()[row - 1].strip()}", flush=True)
    finally:
        with open(os.path.join(ROOT, path), "w") as f:
            f.write(source)
    print(f"{path}: {len(survivors)} of {n} mutants survived", flush=True)
    return survivors


if __name__ == "__main__":
    for path in sys.argv[1:] or ["utils/bkd.py", "utils/watch.py", "utils/findings.py"]:
        sweep(path, TESTS[path])
