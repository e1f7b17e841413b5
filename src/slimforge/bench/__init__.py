"""Latency, throughput and memory measurement: one timing loop (interleaved rounds with intervals), one memory
method (a fresh process), for every runtime."""

from slimforge.bench.compare import Comparison, Ratio, compare
from slimforge.bench.measure import BenchResult, measure, measure_all
from slimforge.bench.timing import BenchSpec, Timing, time_session

__all__ = ["BenchResult", "BenchSpec", "Comparison", "Ratio", "Timing", "compare", "measure", "measure_all",
           "time_session"]
