"""Apply each mutation of ``mutations.py`` to a copy of the repository and run the tests that should catch it.

    python tests/mutation/run.py                 # all mutations; prints a table, writes results.json here
    python tests/mutation/run.py T01 B03         # only these
    python tests/mutation/run.py --check         # only check that every snippet occurs exactly once

The copy (tracked and untracked files of the working tree, without ``.venv`` and generated folders) lives in a
temporary folder, so the working tree is never changed. Each test run uses ``-x`` and a fresh ``QPMLIB_HOME``;
``QPMLIB_DATA`` is passed through so generated SynthBirds folders are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from mutations import AREA_TESTS, MUTATIONS, Mutation  # noqa: E402

SKIP = {".venv", ".qpm", ".git", "_build", "__pycache__", ".pytest_cache"}


def _copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for rel in files:
        if SKIP & set(Path(rel).parts) or not (REPO / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)


def check(mutation: Mutation, root: Path) -> str | None:
    """None when the snippet occurs exactly once in its file, else the problem."""
    text = (root / mutation.file).read_text()
    count = text.count(mutation.old)
    return None if count == 1 else f"{mutation.id}: snippet found {count} times in {mutation.file}"


def run_one(mutation: Mutation, root: Path, timeout: float) -> dict:
    path = root / mutation.file
    original = path.read_text()
    path.write_text(original.replace(mutation.old, mutation.new, 1))
    home = Path(tempfile.mkdtemp(prefix="mut-home-"))
    env = dict(os.environ, PYTHONPATH=str(root), QPMLIB_HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *AREA_TESTS[mutation.area]]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        # 0: every test passed; 1: a test failed; anything else (a mutant that does not even import) is no
        # evidence for the tests and is reported as invalid, outside the count
        outcome = {0: "survived", 1: "caught"}.get(proc.returncode, "invalid")
        tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
        failed = next((line for line in proc.stdout.splitlines() if line.startswith("FAILED")), "")
        if outcome == "invalid":
            failed = tail[0] if tail else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        outcome, failed = "caught (timeout)", f"no result within {timeout:.0f} s"
    finally:
        path.write_text(original)
        shutil.rmtree(home, ignore_errors=True)
    return {"id": mutation.id, "area": mutation.area, "what": mutation.what, "outcome": outcome,
            "by": failed.removeprefix("FAILED ").split(" - ")[0], "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutation ids to run (default: all)")
    parser.add_argument("--check", action="store_true", help="only check the snippets")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutation")
    parser.add_argument("--out", default=str(HERE / "results.json"), help="where to write the results")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.ids or m.id in args.ids]
    problems = [p for m in chosen if (p := check(m, REPO))]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    if args.check:
        print(f"{len(chosen)} mutations, every snippet found once")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="mut-repo-") as tmp:
        root = Path(tmp)
        _copy_repo(root)
        for m in chosen:
            r = run_one(m, root, args.timeout)
            results.append(r)
            print(f"{r['id']:4} {r['outcome']:17} {r['seconds']:7.1f} s  {r['what']}  {r['by']}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    invalid = [r["id"] for r in results if r["outcome"] == "invalid"]
    counted = [r for r in results if r["outcome"] != "invalid"]
    caught = sum(r["outcome"].startswith("caught") for r in counted)
    print(f"\ncaught {caught} of {len(counted)} ({100 * caught / max(len(counted), 1):.0f} %)"
          + (f"; invalid (do not import): {', '.join(invalid)}" if invalid else ""))
    by_area: dict[str, list[int]] = {}
    for r in counted:
        by_area.setdefault(r["area"], [0, 0])
        by_area[r["area"]][0] += r["outcome"].startswith("caught")
        by_area[r["area"]][1] += 1
    for area, (c, n) in by_area.items():
        print(f"  {area}: {c} of {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
