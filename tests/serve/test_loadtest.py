"""The load test's throughput curve: a partial last second is a rate over the time it covers, never a drop."""

import numpy as np

from slimforge.serve.loadtest import LoadResult, _plot, per_second


def _steady(rate: float, duration: float) -> list[float]:
    return list((np.arange(int(round(rate * duration))) + 0.5) / rate)  # one request every 1/rate s, off the edges


def test_a_steady_rate_stays_flat_to_the_end():
    t, r = per_second(_steady(10, 2.3), 2.3)  # the 0.3 s tail (3 requests) would have plotted as 3 per second
    assert t.tolist() == [0.5, 1.5] and r.tolist() == [10.0, 10.0]
    t, r = per_second(_steady(10, 2.6), 2.6)  # the 0.6 s tail: 6 requests in 0.6 s are 10 per second
    assert np.allclose(t, [0.5, 1.5, 2.3]) and np.allclose(r, [10.0, 10.0, 10.0])
    t, r = per_second(_steady(10, 0.4), 0.4)  # shorter than a second: its one bin, rescaled
    assert np.allclose(t, [0.2]) and np.allclose(r, [10.0])
    assert per_second([], 0.0)[0].size == 0


def test_a_real_drop_still_shows():
    done = _steady(20, 2.0) + [2.125 + 0.25 * i for i in range(4)]  # 20/s for 2 s, then 4/s for 1 s
    t, r = per_second(done, 3.0)
    assert t.tolist() == [0.5, 1.5, 2.5] and r.tolist() == [20.0, 20.0, 4.0]


def test_the_plot_draws_the_rescaled_curve(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, x, y, *a, **k: (drawn.append((list(x), list(y))),
                                                                                      real(self, x, y, *a, **k))[1])
    done = _steady(10, 2.6)
    res = LoadResult("http://x", 1, 2.6, requests=len(done), latencies_ms=[5.0] * len(done), finished_at_s=done)
    _plot(res, tmp_path / "p.png")
    assert np.allclose(drawn[-1][1], [10.0, 10.0, 10.0]) and (tmp_path / "p.png").stat().st_size > 5000


def test_preprocessing_threads_follow_the_cores_between_2_and_8(monkeypatch):
    """Decoding images on the host in 2 threads capped a 16-core GPU server at ~240 req/s: the default is half the
    cores the process may use, at least 2 (a 2-core machine keeps 2) and at most 8."""
    import os

    from slimforge.serve.app import ServeConfig
    from slimforge.serve.limits import Limits, default_preprocess_workers

    for cores, want in ((1, 2), (2, 2), (4, 2), (16, 8), (64, 8), (10, 5)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert default_preprocess_workers() == want
        assert Limits().preprocess_workers == want and ServeConfig(paths=[]).preprocess_workers == want
    assert ServeConfig(paths=[], preprocess_workers=3).preprocess_workers == 3
