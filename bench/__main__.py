"""``python -m bench [all|overhead|engine|parser|vllm|routing|report] [--quick] [--rounds N]``

Runs the side-by-side benchmarks, prints tables, writes JSON and PNG plots under
bench/results/ and the tables into docs/BENCHMARKS.md. See docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

PARTS = ("overhead", "engine", "parser", "vllm", "routing")


def _run_part(name: str, quick: bool, rounds: int) -> Any:
    if name == "overhead":
        from . import overhead

        if quick:
            return overhead.run(rounds=1, latency_n=50, stream_n=5, duration=1.0)
        return overhead.run(rounds=rounds)
    if name == "engine":
        from . import engine

        if quick:
            return engine.run(rounds=1, max_tokens=32, single_n=2)
        return engine.run(rounds=rounds)
    if name == "parser":
        from . import parsers

        if quick:
            return parsers.run(max_size=64 * 1024, cap_s=10.0)
        return parsers.run()
    if name == "vllm":
        from . import vllm_path

        if quick:
            return vllm_path.run(rounds=1, n=3)
        return vllm_path.run(rounds=rounds)
    if name == "routing":
        from . import routing

        return routing.run(rounds=1 if quick else rounds)
    raise ValueError(name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "part",
        nargs="?",
        default="all",
        choices=("all", *PARTS, "report"),
        help="which part to run (default: all); 'report' only rewrites docs and plots",
    )
    parser.add_argument("--quick", action="store_true", help="small sample counts (smoke test)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per part (default 3)")
    parser.add_argument(
        "--no-docs", action="store_true", help="do not rewrite docs/BENCHMARKS.md and docs/*.png"
    )
    args = parser.parse_args(argv)

    parts = PARTS if args.part == "all" else (() if args.part == "report" else (args.part,))
    failed: list[str] = []
    start = time.perf_counter()
    for name in parts:
        try:
            _run_part(name, args.quick, args.rounds)
        except KeyboardInterrupt:
            print(f"\n{name}: interrupted", file=sys.stderr)
            return 130
        except Exception:
            traceback.print_exc()
            print(f"\n{name}: FAILED (the other parts go on)", file=sys.stderr)
            failed.append(name)
    from . import report

    report.write(docs=not args.no_docs)
    print(
        f"\ndone in {time.perf_counter() - start:.0f} s" + (f"; failed: {failed}" if failed else "")
    )
    return 1 if failed else 0


_: Callable[..., Any] = main

if __name__ == "__main__":
    sys.exit(main())
