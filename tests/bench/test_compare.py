"""The one timing loop: interleaved rounds, intervals that can tell a real difference from noise, and a verdict
that says "too noisy" instead of guessing."""

import time

import numpy as np
import pytest

import slimforge

from slimforge.bench import BenchSpec, Ratio, compare
from slimforge.bench.compare import FASTER, SLOWER, TIE


class Sleeper:
    """A session whose run takes ``ms`` milliseconds (plus optional jitter): known truth for the loop."""

    def __init__(self, ms, jitter=0.0, seed=0):
        self.ms, self.jitter, self.rng = ms, jitter, np.random.default_rng(seed)

    def run(self, feeds):
        extra = self.rng.exponential(self.jitter) if self.jitter else 0.0
        time.sleep((self.ms + extra) / 1000.0)
        return []

    def sync(self):
        pass

    def close(self):
        pass


FEEDS = {1: {"x": np.zeros((1, 4), np.float32)}, 8: {"x": np.zeros((8, 4), np.float32)}}


def test_a_real_difference_is_found_with_an_interval_that_excludes_one():
    spec = BenchSpec(warmup=1, repeats=6, min_time_s=0.3, rounds=4, max_rounds=8, max_time_s=10, rel_ci=0.05)
    comp = compare({"base": Sleeper(4.0), "fast": Sleeper(2.0), "slow": Sleeper(8.0)}, FEEDS, spec, reference="base")
    for b in (1, 8):
        fast, slow = comp.ratio("fast", b), comp.ratio("slow", b)
        assert fast.verdict == FASTER and 1.6 < fast.value < 2.4 and fast.lo > 1.0
        assert slow.verdict == SLOWER and 0.4 < slow.value < 0.6 and slow.hi < 1.0
        t = comp.timing("base", b)
        assert t.lo <= t.p50 <= t.hi and 3.5 < t.p50 < 6.0 and t.rounds >= 4


def test_equal_sessions_are_a_tie_not_a_verdict():
    spec = BenchSpec(warmup=1, repeats=6, min_time_s=0.3, rounds=4, max_rounds=8, max_time_s=10, rel_ci=0.05)
    comp = compare({"a": Sleeper(3.0, jitter=0.3, seed=1), "b": Sleeper(3.0, jitter=0.3, seed=2)}, FEEDS, spec,
                   reference="a")
    assert all(comp.ratio("b", b).verdict == TIE for b in (1, 8))


def test_a_noisy_machine_is_reported_as_too_noisy_to_decide():
    # heavy-tailed jitter as large as the work itself, few rounds allowed: the intervals cannot get tight
    spec = BenchSpec(warmup=1, repeats=3, min_time_s=0.05, rounds=3, max_rounds=3, max_time_s=5, rel_ci=0.01)
    comp = compare({"a": Sleeper(1.0, jitter=3.0, seed=3), "b": Sleeper(1.0, jitter=3.0, seed=4)}, FEEDS, spec,
                   reference="a")
    assert comp.noisy and "too noisy" in comp.note()


def test_ratio_verdict_needs_the_interval_to_exclude_one():
    assert Ratio(0.9, 0.85, 0.95).verdict == SLOWER
    assert Ratio(0.9, 0.7, 1.02).verdict == TIE
    assert Ratio(1.5, 1.2, 1.8).verdict == FASTER
    with pytest.raises(ValueError):
        compare({"a": Sleeper(1.0)}, {1: {}}, BenchSpec(repeats=1, min_time_s=0, rounds=2), reference="zz")
    with pytest.raises(slimforge.ConfigError, match="rounds must be >= 2"):
        BenchSpec(rounds=1)
