"""Drift monitoring: a reference window of traffic against a current one (``drift.py`` runs a report,
``stats.py`` decides each check, ``windows.py`` says which times, ``samples.py`` reads the data, ``plot.py`` draws
the drifted checks). ``shelfwise monitor`` (``cli.py``) and ``GET /v1/monitor/drift`` run it."""
