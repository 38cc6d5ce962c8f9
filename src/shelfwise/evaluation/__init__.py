"""Offline evaluation: splits (leave-one-out, temporal, cold items, cold shoppers), metrics, the runner (same pipeline
as the API), report."""

from shelfwise.evaluation.data import Dataset, load_dataset
from shelfwise.evaluation.runner import DEFAULT_MODELS, evaluate_dataset, evaluate_split, model_spec
from shelfwise.evaluation.splits import Split, cold_items, cold_shoppers, leave_one_out, temporal

__all__ = ["DEFAULT_MODELS", "Dataset", "Split", "cold_items", "cold_shoppers", "evaluate_dataset", "evaluate_split",
           "leave_one_out", "load_dataset", "model_spec", "temporal"]
