"""Re-ranking after the blend: weighted business score, slot filling (pins, reserved slots, caps) and MMR diversity.

``Reranker`` is the stage ``Pipeline.recommend`` calls; ``business``, ``mmr`` and ``slots`` are its parts.
"""

from shelfwise.rerank.reranker import Reranker

__all__ = ["Reranker"]
