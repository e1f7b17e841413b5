"""Thread-count tuning: the rule (another count only where measurably faster and nowhere slower), the record in the
artifact's metadata, and sessions opened with it."""

from __future__ import annotations

import numpy as np

import slimforge
from slimforge.bench import BenchSpec, Comparison
from slimforge.bench import threads as bt
from slimforge.core.artifact import Step
from slimforge.runtimes import open_session, tuned_threads

SPEC = BenchSpec(warmup=1, repeats=6, min_time_s=0.05, max_time_s=5.0, rounds=6, max_rounds=8, rel_ci=0.05)


class _Session:
    def __init__(self, threads: int) -> None:
        self.threads, self.input_names, self.closed = threads, ["input"], False

    def close(self) -> None:
        self.closed = True


def _fake(monkeypatch, table: dict[int, dict[int, float]], noisy: bool = False) -> list[_Session]:
    """Sessions and a timing with fixed latencies per (threads, batch), spread +-0.5% over 8 rounds: the rule is
    tested, not this machine (nor how busy it is)."""
    opened: list[_Session] = []

    def fake_open(art, runtime, *, threads=None, **_):
        opened.append(_Session(threads or 2))  # None: the runtime's default, 2 threads here
        return opened[-1]

    def fake_compare(sessions, feeds, spec, *, reference):
        comp = Comparison(list(sessions), list(feeds), reference)
        for name, sess in sessions.items():
            for b in feeds:
                rounds = [table[sess.threads][b] * (1 + 0.005 * np.sin(i)) for i in range(8)]
                comp.rounds[(name, b)], comp.runs[(name, b)] = rounds, rounds
        comp.noisy = noisy
        return comp

    monkeypatch.setattr(bt, "open_session", fake_open)
    monkeypatch.setattr(bt, "compare", fake_compare)
    monkeypatch.setattr(bt, "default_threads", lambda: 2)
    return opened


FEEDS = {1: {"input": np.zeros((1, 4), np.float32)}, 64: {"input": np.zeros((64, 4), np.float32)}}


def test_fewer_threads_are_chosen_only_when_faster_somewhere_and_slower_nowhere(monkeypatch, mlp_onnx):
    art = slimforge.load(mlp_onnx)
    # one thread faster at batch 1 and slower at batch 64: the default stays
    opened = _fake(monkeypatch, {1: {1: 0.001, 64: 0.006}, 2: {1: 0.002, 64: 0.003}})
    kept = bt.measure_threads(art, "onnxruntime", FEEDS, spec=SPEC)
    assert kept.threads is None and "not slower" in kept.note
    assert {(r["threads"], r["batch"]): r["verdict"] for r in kept.table} == {
        (1, 1): "faster", (1, 64): "slower", (2, 1): "default", (2, 64): "default"}
    assert all(s.closed for s in opened)
    # faster at both: one thread is chosen, recorded, and described with its figures
    _fake(monkeypatch, {1: {1: 0.001, 64: 0.002}, 2: {1: 0.002, 64: 0.004}})
    choice = bt.measure_threads(art, "onnxruntime", FEEDS, spec=SPEC)
    assert choice.threads == 1, choice.table
    assert "runs on 1 of 2 threads" in choice.describe() and "batch 64" in choice.describe()
    # the same within the tie margin: the default stays
    _fake(monkeypatch, {1: {1: 0.002, 64: 0.004}, 2: {1: 0.002, 64: 0.004}})
    assert bt.measure_threads(art, "onnxruntime", FEEDS, spec=SPEC).threads is None
    # faster at batch 1, 1% slower at batch 64 (a tie by the margin): no slowdown is handed over, the default stays
    _fake(monkeypatch, {1: {1: 0.001, 64: 0.00404}, 2: {1: 0.002, 64: 0.004}})
    assert bt.measure_threads(art, "onnxruntime", FEEDS, spec=SPEC).threads is None
    # a noisy timing decides nothing
    _fake(monkeypatch, {1: {1: 0.001, 64: 0.002}, 2: {1: 0.002, 64: 0.004}}, noisy=True)
    assert bt.measure_threads(art, "onnxruntime", FEEDS, spec=SPEC).threads is None


def test_torch_and_one_core_are_not_tuned(mlp_art, monkeypatch):
    assert "one thread pool per process" in bt.measure_threads(mlp_art, "torch", FEEDS).note
    monkeypatch.setattr(bt, "default_threads", lambda: 1)
    assert bt.measure_threads(mlp_art, "onnxruntime", FEEDS).note == "one core: nothing to choose"


def test_the_choice_travels_with_the_file_and_sessions_use_it(mlp_onnx, tmp_path):
    art = slimforge.load(mlp_onnx)
    choice = bt.ThreadChoice("onnxruntime", [1], 2, 1, [], "")
    tuned = bt.with_threads(art, choice)
    assert tuned_threads(tuned) == 1 and tuned_threads(art) is None
    # only for the runtime it was measured on, on the CPU; a model made from it (quantized, converted) is another
    # model and inherits nothing
    assert tuned_threads(tuned, "openvino") is None and tuned_threads(tuned, "onnxruntime", "cuda") is None
    child = tuned.derive(Step("quantize_dynamic", {}), meta={"precision": "int8"})
    assert "threads" not in child.meta and "thread_tuning" not in child.meta and child.meta["precision"] == "int8"
    saved = slimforge.save(tuned, tmp_path / "tuned.onnx")
    again = slimforge.load(saved.path)
    assert again.meta["threads"] == 1 and again.meta["thread_tuning"]["default"] == 2
    sess = open_session(again, "onnxruntime")
    assert sess.sess.get_session_options().intra_op_num_threads == 1
    explicit = open_session(again, "onnxruntime", threads=2)  # an explicit count wins
    assert explicit.sess.get_session_options().intra_op_num_threads == 2
    # a count above this machine's cores (a file from a bigger machine) is not used
    big = bt.with_threads(art, bt.ThreadChoice("onnxruntime", [1], 4096, 4096, [], ""))
    assert tuned_threads(big) is None
    # the default kept: nothing recorded but the evidence
    kept = bt.with_threads(tuned, bt.ThreadChoice("onnxruntime", [1], 2, None, [], "no other count"))
    assert "threads" not in kept.meta and kept.meta["thread_tuning"]["note"] == "no other count"


def test_tune_threads_on_a_real_session_records_its_table(mlp_onnx):
    tuned = slimforge.tune_threads(mlp_onnx, "onnxruntime", batch_sizes=(1, 8), spec=SPEC)
    doc = tuned.meta["thread_tuning"]
    counts = bt.candidates(bt.default_threads())
    assert doc["batches"] == [1, 8] and len(doc["table"]) == 2 * len(counts)
    assert all(r["p50_ms"] > 0 and r["lo_ms"] <= r["p50_ms"] <= r["hi_ms"] for r in doc["table"])
    assert tuned.meta.get("threads") == doc["threads"]  # recorded exactly when another count won
