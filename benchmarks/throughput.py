"""Prefill / decode throughput of a Jet-Nemotron student vs its all-attention teacher.

    python benchmarks/throughput.py                       # CPU defaults (small configs)
    python benchmarks/throughput.py --student jet-nemotron-2b --teacher qwen2.5-1.5b \
        --contexts 1024,4096,16384,65536 --budget-gib 60  # GPU (the defaults there)

Same as `jet-jax bench`; the implementation lives in `jet_jax/commands/bench.py`.
"""

import sys

from jet_jax.commands.bench import main

if __name__ == "__main__":
    sys.exit(main())
