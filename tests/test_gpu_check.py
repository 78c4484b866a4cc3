"""tests/gpu_check.sh without a GPU: a stand-in PYTHON that claims CUDA records every command, and prints, fails,
sleeps or signals as each test's rules say. The stages run their commands in order, summary.md gets each check's
row the moment it ends (with the last 40 lines of a failed log and the smoke and benchmark tables), timeouts, the
stage budget and SIGTERM/SIGINT cut checks short and leave their rows; with the real Python and no CUDA every stage
says so in one line and writes nothing."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # starts scripts: not in the quick tier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("OUT", "PYTHON", "GPU_CHECK_STAGE_S", "GPU_CHECK_MAX_S", "TORCH_LOGS", "FAKE_CUDA", "FAKE_DIR", "FAKE_IDS")
PROBE = "-c import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
IDS = ("test_a[fp32-tol0]", "test_b", "test_c", "test_d")

# Stands in for `python` on a CUDA machine: each call's arguments (with TORCH_LOGS when set) go to a line of
# $FAKE_DIR/argv.log and its pid to $FAKE_DIR/pids; the CUDA probe succeeds when FAKE_CUDA=1; other `-c` code
# prints a version line. Otherwise the first line "PATTERN<tab>BASH" of $FAKE_DIR/rules whose PATTERN is in the
# arguments runs; without one, `default` prints what the real command would print when all is well: test ids for
# the collection, "1 passed" for pytest, a `| quantity` table for the smoke test, a `| measure` table for a benchmark.
FAKE_PYTHON = r"""#!/usr/bin/env bash
args="${TORCH_LOGS:+TORCH_LOGS=$TORCH_LOGS }$*"
echo "${args//$'\n'/ }" >> "$FAKE_DIR/argv.log"
echo $$ >> "$FAKE_DIR/pids"
if [ "$1" = -c ]; then
  [[ $2 == *"torch.cuda.is_available() else 1"* ]] && exit $(( ${FAKE_CUDA:-0} == 1 ? 0 : 1 ))
  echo "torch 0.0 (stand-in), CUDA 0.0; 1 x Fake GPU"; exit 0
fi
default() {
  case "$*" in
    *--collect-only*) read -ra ids <<< "$FAKE_IDS"; printf 'tests/test_cuda.py::%s\n' "${ids[@]}"
                      echo; echo "${#ids[@]} tests collected in 0.01s" ;;
    *"-m pytest"*) echo "."; echo "1 passed in 0.01s" ;;
    *gpu_smoke.py*) printf '%s\n' "device: Fake GPU" "| quantity | largest difference |" "|---|---|" "| loss | 0.0 |" ;;
    *benchmark.py*) printf '%s\n' "device: Fake GPU" "" "| measure | value |" "|---|---|" "| fake $* | 1 |" ;;
  esac
}
if [ -f "$FAKE_DIR/rules" ]; then
  mapfile -t rules < "$FAKE_DIR/rules"
  for rule in "${rules[@]}"; do
    [[ " $* " == *"${rule%%$'\t'*}"* ]] && { eval "${rule#*$'\t'}"; exit 0; }
  done
fi
default "$@"
"""

EXPECTED = {
    "smoke": ["tests/gpu_smoke.py"],
    "tier": ["-m pytest --collect-only -q tests/test_cuda.py"]
            + [f"-m pytest -q -p no:cacheprovider tests/test_cuda.py::{test}" for test in IDS],
    "bench": ["tests/benchmark.py --precision bf16", "tests/benchmark.py --precision fp32 --no_baseline --loop_epochs 2"],
    "compile": ["TORCH_LOGS=recompiles tests/benchmark.py --compile --no_baseline --loop_epochs 2"],
    "cpu-pinned": ["-m pytest -q -p no:cacheprovider tests/test_resume.py",
                   "-m pytest -q -p no:cacheprovider tests/test_distributed.py"],
}
LOGS = {"smoke": ["smoke.log"], "tier": ["tier_1_test_a_fp32-tol0.log", "tier_2_test_b.log", "tier_3_test_c.log",
                                          "tier_4_test_d.log"],
        "bench": ["bench_bf16.log", "bench_fp32.log"], "compile": ["bench_compile.log"],
        "cpu-pinned": ["cpu_pinned_resume.log", "cpu_pinned_distributed.log"]}
ROW = re.compile(r"^- \*\*(\S+)\*\* `([^`]*)`: (.*?)(?: \((\d+) s, log `([^`]+)`\))?$", re.M)


def setup(tmp_path, rules=(), **settings):
    """The stand-in, its rules file and the environment of a gpu_check.sh call with OUT under tmp_path."""
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (tmp_path / "rules").write_text("".join(f"{pattern}\t{action}\n" for pattern, action in rules))
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(OUT=str(tmp_path / "out"), PYTHON=str(fake), FAKE_DIR=str(tmp_path), FAKE_CUDA="1",
               FAKE_IDS=" ".join(IDS))
    env.update(settings)
    return env


def gpu_check(tmp_path, *args, rules=(), **settings):
    return subprocess.run(["bash", "tests/gpu_check.sh", *args], cwd=ROOT, env=setup(tmp_path, rules, **settings),
                          capture_output=True, text=True, timeout=60)


def calls(tmp_path):
    """The stand-in's calls after the CUDA probe (which must come first), without the version query."""
    lines = (tmp_path / "argv.log").read_text().splitlines()
    assert lines[0] == PROBE
    return [line for line in lines[1:] if not line.startswith("-c ")]


def summary(tmp_path):
    return (tmp_path / "out" / "summary.md").read_text()


def rows(tmp_path):
    """(stage, check, result, log) of every check row in summary.md, in order."""
    return [(stage, name, result, log) for stage, name, result, _, log in ROW.findall(summary(tmp_path))]


@pytest.fixture
def leftovers(tmp_path):
    """Ends any stand-in still running after the test, by the pids it wrote (checked to be the stand-in)."""
    yield
    pids = tmp_path / "pids"
    for pid in pids.read_text().split() if pids.exists() else []:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"fake_python" in f.read():
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def test_syntax():
    assert subprocess.run(["bash", "-n", os.path.join(ROOT, "tests", "gpu_check.sh")]).returncode == 0


@pytest.mark.parametrize("stage", ["smoke", "tier", "bench", "compile", "cpu-pinned", "all"])
def test_without_cuda_every_stage_says_so_in_one_line(tmp_path, stage):
    """With this machine's Python and no CUDA (hidden, should there be a GPU): one line, exit 0, nothing written."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(OUT=str(tmp_path / "out"), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(["bash", "tests/gpu_check.sh", stage], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"gpu_check.sh {stage}: no CUDA device here (torch.cuda.is_available() is "
                                     "False): nothing to check; run it on a CUDA machine"]
    assert r.stderr == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [((), "no stage given"), (("bogus",), "unknown stage 'bogus'"),
                                           (("smoke", "tier"), "one stage at a time")])
def test_bad_call_prints_usage_and_exits_2(tmp_path, args, message):
    """No stage, an unknown one or two: one usage line on stderr, exit 2, before the probe and without writing."""
    r = gpu_check(tmp_path, *args)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and message in r.stderr
    assert "usage: bash tests/gpu_check.sh {smoke|tier|bench|compile|cpu-pinned|all}" in r.stderr
    assert not (tmp_path / "argv.log").exists() and not (tmp_path / "out").exists()


def test_bad_budget_is_a_bad_call(tmp_path):
    r = gpu_check(tmp_path, "smoke", GPU_CHECK_STAGE_S="ten")
    assert r.returncode == 2 and "GPU_CHECK_STAGE_S must be a positive number of seconds" in r.stderr


def test_broken_python_is_an_error_not_no_cuda(tmp_path):
    """A PYTHON that cannot import torch fails the probe with a traceback: exit 1, not 'no CUDA'."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    broken = tmp_path / "broken_python"
    broken.write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -c 'import no_such_module_here'\n")
    broken.chmod(0o755)
    env.update(OUT=str(tmp_path / "out"), PYTHON=str(broken))
    r = subprocess.run(["bash", "tests/gpu_check.sh", "smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "no CUDA" not in r.stdout
    assert "the CUDA probe failed" in r.stderr and "ModuleNotFoundError" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stage", ["smoke", "tier", "bench", "compile", "cpu-pinned"])
def test_each_stage_runs_its_commands_in_order(tmp_path, stage):
    """The stage's commands, in order, one check per collected test id in the tier; a row and a log per check,
    device.txt, and the stage's table printed last."""
    r = gpu_check(tmp_path, stage)
    assert r.returncode == 0, r.stdout + r.stderr
    assert calls(tmp_path) == EXPECTED[stage]
    results = rows(tmp_path)
    assert [(s, log) for s, _, _, log in results] == [(stage, log) for log in LOGS[stage]]
    assert all(result.startswith("ok") for _, _, result, _ in results)
    for log in LOGS[stage]:
        assert (tmp_path / "out" / log).read_text() != ""
    if stage == "tier":
        assert [name for _, name, _, _ in results] == list(IDS)
    assert "Fake GPU" in (tmp_path / "out" / "device.txt").read_text()
    assert re.search(rf"^## gpu_check.sh {stage}, \d{{4}}-\d\d-\d\d .* UTC\n\n.*torch 0.0 \(stand-in\).*Fake GPU",
                     summary(tmp_path), re.M)
    table = r.stdout.splitlines()[-len(results) - 2:]
    assert table[:2] == ["| check | result | seconds |", "|---|---|---|"]
    assert [line.split(" | ")[:2] for line in table[2:]] == [["| " + name, result] for _, name, result, _ in results]


def test_all_runs_every_stage_in_order(tmp_path):
    r = gpu_check(tmp_path, "all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert calls(tmp_path) == [c for stage in EXPECTED for c in EXPECTED[stage]]
    assert [stage for stage, _, _, _ in rows(tmp_path)] == [s for s in EXPECTED for _ in LOGS[s]]
    assert re.findall(r"^gpu_check.sh (\S+): (\d+) checks? in ", r.stdout, re.M) \
        == [(stage, str(len(LOGS[stage]))) for stage in EXPECTED]  # each stage's table at its end


def test_summary_rows_failure_tails_and_tables(tmp_path):
    """A row per check with its result and log; a failed check's row followed by exactly its log's last 40 lines;
    the smoke and benchmark tables appended, failed or not; the recompilations counted; a skipped test is SKIPPED;
    a second call appends to the same summary.md."""
    hundred = 'for i in $(seq 100); do echo "line $i"; done; exit 3'
    rules = [("::test_b", hundred), ("--precision bf16", 'default "$@"; echo "Traceback: fake" >&2; exit 1'),
             ("--compile", 'default "$@"; echo "Recompiling function forward"; echo "Recompiling function forward"'),
             ("::test_c", 'echo s; echo "1 skipped in 0.01s"')]
    r = gpu_check(tmp_path, "all", rules=rules)
    assert r.returncode == 1
    assert rows(tmp_path) == [
        ("smoke", "gpu_smoke.py", "ok", "smoke.log"),
        ("tier", "test_a[fp32-tol0]", "ok", "tier_1_test_a_fp32-tol0.log"),
        ("tier", "test_b", "FAILED (exit 3)", "tier_2_test_b.log"),
        ("tier", "test_c", "SKIPPED", "tier_3_test_c.log"),
        ("tier", "test_d", "ok", "tier_4_test_d.log"),
        ("bench", "benchmark bf16", "FAILED (exit 1)", "bench_bf16.log"),
        ("bench", "benchmark fp32, no baseline, 2 epochs", "ok", "bench_fp32.log"),
        ("compile", "benchmark bf16 --compile, no baseline, 2 epochs", "ok, 2 recompilations", "bench_compile.log"),
        ("cpu-pinned", "tests/test_resume.py", "ok", "cpu_pinned_resume.log"),
        ("cpu-pinned", "tests/test_distributed.py", "ok", "cpu_pinned_distributed.log")]
    text = summary(tmp_path)
    tail = "\n".join(f"line {i}" for i in range(61, 101))
    assert re.search(r"`test_b`: FAILED \(exit 3\) \(\d+ s, log `tier_2_test_b.log`\)\n\n```text\n" + tail
                     + "\n```\n\n- \\*\\*tier\\*\\* `test_c`", text)
    smoke_table = "| quantity | largest difference |\n|---|---|\n| loss | 0.0 |\n"
    assert re.search(r"`gpu_smoke.py`: ok \(\d+ s, log `smoke.log`\)\n\n" + re.escape(smoke_table) + "\n", text)
    bf16_table = "| measure | value |\n|---|---|\n| fake tests/benchmark.py --precision bf16 | 1 |\n"
    bf16 = text.split("`benchmark bf16`")[1].split("- **bench**")[0]  # its row, tail and table
    assert "Traceback: fake\n```\n" in bf16 and bf16.endswith("```\n\n" + bf16_table + "\n")  # tail, table
    assert "| fake tests/benchmark.py --precision fp32 --no_baseline --loop_epochs 2 | 1 |" in text
    assert "| fake tests/benchmark.py --compile --no_baseline --loop_epochs 2 | 1 |" in text
    assert text.count("```") % 2 == 0 and text.count("```text") == 2  # only the two failures have a tail
    assert "- **cpu-pinned** done: 2 checks in " in text and "- **smoke** done: 1 check in " in text

    r = gpu_check(tmp_path, "smoke")
    assert r.returncode == 0
    again = summary(tmp_path)
    assert again.startswith(text) and again.count("\n## gpu_check.sh ") == 2


def test_exit_code_0_when_checks_pass_or_skip(tmp_path):
    r = gpu_check(tmp_path, "tier", rules=[("::", 'echo s; echo "1 skipped in 0.01s"')])
    assert r.returncode == 0 and [result for _, _, result, _ in rows(tmp_path)] == ["SKIPPED"] * 4


def test_failed_collection_is_one_failed_row(tmp_path):
    r = gpu_check(tmp_path, "tier", rules=[("--collect-only", 'echo "ERROR collecting tests/test_cuda.py"; exit 2')])
    assert r.returncode == 1
    assert calls(tmp_path) == EXPECTED["tier"][:1]
    assert rows(tmp_path) == [("tier", "collect tests/test_cuda.py", "FAILED (exit 2)", "tier_collect.log")]
    assert "```text\nERROR collecting tests/test_cuda.py\n```" in summary(tmp_path)


def test_a_check_past_its_timeout_is_killed_and_the_next_runs(tmp_path, leftovers):
    """GPU_CHECK_MAX_S=2: a benchmark that prints its table and then hangs is killed after 2 s, its row says
    TIMEOUT with its tail and table, and the next benchmark still runs."""
    t0 = time.monotonic()
    r = gpu_check(tmp_path, "bench", rules=[("--precision bf16", 'default "$@"; echo hanging; sleep 30')],
                  GPU_CHECK_MAX_S="2")
    assert time.monotonic() - t0 < 8
    assert r.returncode == 1
    assert calls(tmp_path) == EXPECTED["bench"]
    assert [result for _, _, result, _ in rows(tmp_path)] == ["TIMEOUT after 2 s", "ok"]
    bf16 = summary(tmp_path).split("`benchmark bf16`")[1].split("- **bench**")[0]
    assert "hanging\n```" in bf16 and "| fake tests/benchmark.py --precision bf16 | 1 |" in bf16
    assert "[bench] benchmark bf16: TIMEOUT after 2 s" in r.stdout


def test_stage_budget_used_up_leaves_later_checks_not_run(tmp_path, leftovers):
    """GPU_CHECK_STAGE_S=3: the first test hangs and gets what is left of the budget; the others are not run."""
    t0 = time.monotonic()
    r = gpu_check(tmp_path, "tier", rules=[("::test_a", "sleep 30")], GPU_CHECK_STAGE_S="3")
    assert time.monotonic() - t0 < 9
    assert r.returncode == 1
    assert calls(tmp_path) == EXPECTED["tier"][:2]
    results = rows(tmp_path)
    assert re.fullmatch(r"TIMEOUT after [23] s \(stage budget\)", results[0][2])
    assert results[1:] == [("tier", test, "not run: stage budget used up", "") for test in IDS[1:]]
    assert r.stdout.splitlines()[-3:] == [f"| {test} | not run: stage budget used up | - |" for test in IDS[1:]]


def as_from_a_terminal():
    """SIGINT as a shell started from a terminal gets it. A suite started in the background (`pytest ... &`, nohup)
    ignores SIGINT, its children inherit that, and bash cannot trap a signal ignored when it started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_the_running_check_and_keeps_the_finished_rows(tmp_path, leftovers, sig, code):
    """The third check starts and hangs; the rows of the first two are already in summary.md; SIGTERM (a scheduler
    ending the job) or SIGINT ends it at once, records it as STOPPED with its tail, and exits 143 or 130."""
    started = tmp_path / "started"
    rules = [("::test_c", f'echo "third started"; touch {started}; sleep 30')]
    proc = subprocess.Popen(["bash", "tests/gpu_check.sh", "all"], cwd=ROOT, env=setup(tmp_path, rules),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=as_from_a_terminal)
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        assert [(stage, name, result) for stage, name, result, _ in rows(tmp_path)] == [
            ("smoke", "gpu_smoke.py", "ok"), ("tier", "test_a[fp32-tol0]", "ok"), ("tier", "test_b", "ok")]
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 5
        assert proc.returncode == code, out + err
        results = rows(tmp_path)
        assert results[:3] == [("smoke", "gpu_smoke.py", "ok", "smoke.log"),
                               ("tier", "test_a[fp32-tol0]", "ok", "tier_1_test_a_fp32-tol0.log"),
                               ("tier", "test_b", "ok", "tier_2_test_b.log")]
        assert len(results) == 4 and re.fullmatch(r"STOPPED after \d+ s", results[3][2])
        assert results[3][3] == "tier_3_test_c.log"
        text = summary(tmp_path)
        assert "```text\nthird started\n```" in text and text.endswith(f"- gpu_check.sh all stopped by {sig.name}\n")
        assert calls(tmp_path) == EXPECTED["smoke"] + EXPECTED["tier"][:4]  # nothing started after it
        table = out.splitlines()[-3:]  # the tier's table comes last
        assert [line.split(" | ")[:2] for line in table] == [["| test_a[fp32-tol0]", "ok"], ["| test_b", "ok"],
                                                             ["| test_c", table[2].split(" | ")[1]]]
        assert re.fullmatch(r"\| test_c \| STOPPED after \d+ s \| \d+ \|", table[2])
        stand_ins = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
        time.sleep(0.2)
        for pid in stand_ins:  # the hanging stand-in ended with the check
            assert not os.path.exists(f"/proc/{pid}") or b"fake_python" not in open(f"/proc/{pid}/cmdline", "rb").read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_failed_smoke_without_a_table_says_so(tmp_path):
    """A smoke test that dies before its table: FAILED, its last lines on stdout and in summary.md, and a note that
    there was no table."""
    r = gpu_check(tmp_path, "smoke", rules=[("gpu_smoke.py", 'echo "Traceback (most recent call last):"; '
                                                            'echo "RuntimeError: CUDA error: boom" >&2; exit 1')])
    assert r.returncode == 1
    assert "[smoke] gpu_smoke.py: FAILED (exit 1)" in r.stdout and "    RuntimeError: CUDA error: boom" in r.stdout
    assert re.search(r"`gpu_smoke.py`: FAILED \(exit 1\) \(\d+ s, log `smoke.log`\)\n\n```text\nTraceback \(most "
                     r"recent call last\):\nRuntimeError: CUDA error: boom\n```\n\n\(no table starting with '\| "
                     r"quantity' in smoke.log\)\n", summary(tmp_path))
