"""``glm-gateway`` with llama.cpp's prompt (batch) thread count pinned, for part 2 only.

    BENCH_THREADS_BATCH=1 python -m bench.gateway_launch serve --config FILE

The gateway's ``threads`` setting sets llama.cpp's generation threads but not its batch
threads, which llama-cpp-python then sets to every core. On this 2-core VM that makes prompt
evaluation 10-30x slower whenever another process holds a core (``threads_batch_probe`` in
part 2 measures it), so the engine comparison would measure that, not the gateway. This
wrapper fills in ``n_threads_batch`` where the gateway leaves it unset and otherwise runs the
unchanged CLI; the direct and llama-cpp-python-server paths get the same value.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any


def _pin_threads_batch(n: int) -> None:
    import backends.llamacpp as llamacpp

    original = llamacpp._Engine.__init__

    def init(self: Any, options: Any) -> None:
        if options.n_threads_batch is None:
            options = dataclasses.replace(options, n_threads_batch=n)
        original(self, options)

    llamacpp._Engine.__init__ = init  # type: ignore[method-assign]


def main() -> int:
    value = os.environ.get("BENCH_THREADS_BATCH")
    if value:
        _pin_threads_batch(int(value))
    from gateway.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
