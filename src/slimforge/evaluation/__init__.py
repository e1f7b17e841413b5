"""Evaluators and metrics: accuracy, output fidelity, embedding neighbour agreement."""

from slimforge.evaluation.metrics import Metric, accuracy, cosine_similarity, neighbour_agreement, sqnr_db

__all__ = ["Metric", "accuracy", "cosine_similarity", "neighbour_agreement", "sqnr_db"]
