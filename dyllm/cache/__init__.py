"""Per-layer activation caches of the sparse step (`CacheManager`)."""

from dyllm.cache.manager import BUFFERS, CacheInvariantError, CacheManager, LayerCache

__all__ = ["BUFFERS", "CacheInvariantError", "CacheManager", "LayerCache"]
