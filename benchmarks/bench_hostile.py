"""Peak memory and time of `cache info`, `cache verify` and `distill` on each hostile cache of tests/hostile.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_hostile.py [--student models/tiny-gpt2-student]

Each command runs in a child process; its own peak RSS and CPU time come from wait4, its wall time from the
clock. Target (issue 14): every run ends with exit status 1 and one line, under 1 GiB and 10 s.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import cache_schema as cs
from tests import hostile

CASES = {
    "missing shard (rehashed)": lambda c, t: hostile.make_missing_shard(c, forged=True),
    "examples.parquet -> /dev/zero": lambda c, t: hostile.make_dev_zero(c, cs.EXAMPLES_FILE),
    "zarr.json -> /dev/zero": lambda c, t: hostile.make_dev_zero(c, cs.GROUP_META_FILE),
    "zarr.json a FIFO": lambda c, t: hostile.make_fifo(c, cs.GROUP_META_FILE),
    "64 KB zstd chunk -> 2 GiB": lambda c, t: hostile.make_zstd_bomb(c),
    "3 MB gzip chunk -> 3 GiB": lambda c, t: hostile.make_gzip_bomb(c),
    "link outside the cache": lambda c, t: hostile.make_link_outside(c, t / "outside.bin"),
    "NaN tail (rehashed)": lambda c, t: hostile.make_nan_rows(c),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="models/tiny-gpt2-student")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        valid = hostile.write_valid_cache(tmp / "valid")
        print(f"{'case':<32} {'command':<8} {'exit':>4} {'peak MiB':>9} {'cpu s':>6} {'wall s':>7}  message")
        for name, damage in CASES.items():
            work = tmp / name.replace(" ", "_").replace("/", "_")
            cache = Path(shutil.copytree(valid, work / "cache"))
            damage(cache, work)
            _report(name, cache, work, args.student, tmp)
        bomb = hostile.make_zip_bomb(valid, tmp / "bomb.zip")
        for command in ("info", "verify", "unpack"):
            extra = [str(tmp / "unpacked")] if command == "unpack" else []
            result = hostile.run_bounded("cache", command, str(bomb), *extra)
            _row("zip: 3 MB entry -> 3 GiB", command, result, tmp)


def _report(name: str, cache: Path, work: Path, student: str, tmp: Path) -> None:
    _row(name, "info", hostile.run_bounded("cache", "info", str(cache)), tmp)
    _row(name, "verify", hostile.run_bounded("cache", "verify", str(cache)), tmp)
    distill = ["distill", "--cache", str(cache), "--out", str(work / "out"), "--student", student]
    result = hostile.run_bounded(*distill, "--steps", "1", "--batch-size", "2", "--lanes", "1")
    _row(name, "distill", result, tmp)


def _row(name: str, command: str, r: hostile.Bounded, tmp: Path) -> None:
    first = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    message = next((line for line in r.stderr.splitlines() if line.startswith("Error:")), first)
    message = message.replace(str(tmp), "$TMP")
    print(
        f"{name:<32} {command:<8} {r.returncode:>4} {r.peak_rss / 2**20:>9.0f} {r.cpu_seconds:>6.1f} "
        f"{r.seconds:>7.1f}  {message[:150]}"
    )


if __name__ == "__main__":
    main()
