"""Latency, throughput and memory measurement, following one spec (warm-up, sync, many repeats, percentiles)."""

from slimforge.bench.timing import BenchResult, BenchSpec, Timing, measure, time_session

__all__ = ["BenchResult", "BenchSpec", "Timing", "measure", "time_session"]
