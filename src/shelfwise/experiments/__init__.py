"""Online experiments: assignment, the experiment store, the exposure & outcome log, analysis, interleaving,
bandits and a storefront simulator to prove them (issue 15).

| module | what |
| --- | --- |
| ``schema`` | the experiment document, variants and their declared pipeline configuration |
| ``assignment`` | deterministic sticky bucketing: layers, global holdout, ramps, variants (pure) |
| ``config`` | how a variant's configuration overrides the pipeline settings (the request-path hook); validation |
| ``store`` | ``ExperimentStore`` protocol and its SQL (SQLite here, PostgreSQL in ``pg``) |
| ``backends`` | ``open_experiment_store`` / ``open_experiment_log`` for a DSN (the events DSN by default) |
| ``log`` | ``ExperimentLog``: served rails and the outcomes that follow them, joined for analysis |
| ``analysis`` | per-variant metrics, intervals, CUPED, Bayesian readout, confidence sequences, SRM, power |
| ``guardrails`` | guardrail evaluation and automatic stop + rollback to control |
| ``runtime`` | what a serving process holds: store snapshot, identity, assignment, exposure records |
| ``interleaving`` | team-draft interleaving and its analysis |
| ``bandits`` | Thompson sampling over items and over variants; off-policy evaluation |
| ``simulator`` | synthetic shoppers with known preferences driving a policy |
"""
