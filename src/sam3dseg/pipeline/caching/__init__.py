"""Caching: every slice encoded once by the frozen encoder (``run_cache``), and the cache's record (``manifest``)."""
