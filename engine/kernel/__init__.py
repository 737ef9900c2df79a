"""The tile kernel: per-entity time tiles and window reads for the pipeline.

`TileState` is the compiled kernel (`_tiles.pyx`, built by ``pip install -e .``); its API and
semantics are `reference.TileState`'s, bit for bit, which stays importable as the plain-Python
reference the kernel is tested against (`ReferenceTileState`). There is no fallback: without
the built extension this package does not import.
"""

from .reference import AGGREGATES, HOPPING, NO_TS, SLIDING, TUMBLING, WindowSpec
from .reference import TileState as ReferenceTileState

try:
    from ._rows import SeenFilter, encode_decisions, murmur2_partition
    from ._tiles import TileState
except ImportError as e:  # pragma: no cover - depends on the build, not on the code
    raise ImportError(
        "the compiled kernel is not built: run `pip install -e .` (needs a C++ compiler); "
        f"{e.name or 'engine.kernel'} failed to import: {e}") from e

__all__ = ["AGGREGATES", "HOPPING", "KERNEL", "NO_TS", "SLIDING", "TUMBLING",
           "ReferenceTileState", "TileState", "SeenFilter", "WindowSpec", "encode_decisions",
           "murmur2_partition"]

KERNEL = "compiled"  # which TileState this package exports (for the README and the bench)
