"""MiniLM on this CPU: slimforge's ``optimize --target cpu`` against the tools people would use instead, in one run.

Timed side by side with slimforge's one timing loop (``bench.compare``: interleaved rounds, same inputs, same
threads, intervals of every median and ratio), at batch 1 and batch 32:

- PyTorch FP32 eager (sentence-transformers, the baseline);
- Optimum's ONNX Runtime INT8 (``AutoQuantizationConfig.avx512_vnni``, dynamic), made by Optimum in its own venv
  (``.venv-peers``: Optimum needs transformers < 4.58, which slimforge does not pin), mean-pooled + normalised as
  sentence-transformers does;
- OpenVINO with NNCF INT8 (``nncf.quantize`` with ``ModelType.TRANSFORMER`` on 300 bundled sentences, the NNCF
  recipe for BERT-class models);
- the artifact that ``slimforge optimize --target cpu --min-cosine 0.995`` chooses.

Fidelity is the embedding cosine to FP32 on 256 held-out bundled sentences. Prints latency ratios to FP32 and to the
best peer, and writes JSON.

With ``--student`` (a searched + distilled sub-network: a model file, or the folder ``minilm_nas.py
--export-student`` wrote), the run also times the sub-network in FP32 and in INT8 (ONNX Runtime dynamic and static,
OpenVINO static), and Optimum's FP32 ONNX export as a peer, and prints the quality-speed front: at cosine >= 0.99,
>= 0.98 and >= 0.95, slimforge's fastest variant meeting that level against the fastest peer variant meeting it, at
batch 1 and 32 (the ratio's interval), with a plot of every variant (latency against cosine).

    .venv/bin/python benchmarks/cpu_minilm_vs_peers.py [--rounds 5] [--student PATH]
        [--out benchmarks/results/cpu_minilm_vs_peers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

import slimforge  # noqa: E402
from slimforge.bench import BenchSpec, Ratio, compare  # noqa: E402
from slimforge.env import environment  # noqa: E402
from slimforge.evaluation.metrics import cosine_similarity  # noqa: E402
from slimforge.io.data import TextLines, bundled_sentences_path  # noqa: E402
from slimforge.io.models import default_model_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".venv-peers"
PEER_SCRIPT = """
import sys
from pathlib import Path
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
src, out = sys.argv[1], Path(sys.argv[2])
model = ORTModelForFeatureExtraction.from_pretrained(src, export=True)
model.save_pretrained(out)
q = ORTQuantizer.from_pretrained(out)
q.quantize(save_dir=out, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False))
"""


def ensure_peers_venv() -> Path:
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        print("creating .venv-peers (Optimum + ONNX Runtime, transformers < 4.58) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)  # the local CPU wheel, before anything pulls CUDA
        subprocess.run(pip + ["optimum-onnx[onnxruntime]", "transformers<4.58"], check=True)
    return py


class Pooled:
    """An ONNX Runtime session on Optimum's export (token states), mean-pooled and normalised like the ST model."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        tokens = self.sess.run(None, {k: feeds[k].astype(np.int64) for k in self.names})[0]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        emb = (tokens * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        return [emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)]


class OvCompiled:
    def __init__(self, compiled) -> None:
        self.c = compiled
        self.names = [i.get_any_name() for i in compiled.inputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = self.c({k: feeds[k] for k in self.names})
        return [res[self.c.outputs[0]]]


def nncf_int8(fp32_onnx: Path, calib: list[dict[str, np.ndarray]], threads: int) -> OvCompiled:
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(fp32_onnx))
    q = nncf.quantize(model, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
    return OvCompiled(core.compile_model(q, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}))


class _Timed:
    """A peer's session as the timing loop sees it (no device to synchronise, nothing to close)."""

    def __init__(self, sess) -> None:
        self.sess = sess

    def run(self, feeds):
        return self.sess.run(feeds)

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def _x(r: dict, b: int) -> str:
    lo, hi = r[f"speedup_ci_b{b}"]
    return f"{r[f'speedup_b{b}']:.2f}x [{lo:.2f}, {hi:.2f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_minilm_vs_peers.json")
    ap.add_argument("--work", type=Path, default=ROOT / "slimforge-out" / "peers")
    ap.add_argument("--student", type=Path, default=None,
                    help="a distilled sub-network (model file, or a minilm_nas.py --export-student folder)")
    args = ap.parse_args()
    import torch

    threads = torch.get_num_threads()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    src = default_model_path()
    base = slimforge.load(src)
    data = bundled_sentences_path()
    sentences = data.read_text(encoding="utf-8").splitlines()
    heldout = work / "heldout.txt"
    heldout.write_text("\n".join(sentences[-256:]) + "\n", encoding="utf-8")  # what optimize holds out too
    calib_txt = work / "calib.txt"
    calib_txt.write_text("\n".join(sentences[:300]) + "\n", encoding="utf-8")

    # 1. Optimum, in its own venv
    t = time.perf_counter()
    py = ensure_peers_venv()
    (work / "peer_optimum.py").write_text(PEER_SCRIPT)
    shutil.rmtree(work / "optimum", ignore_errors=True)  # ORTQuantizer refuses a folder that holds two models
    proc = subprocess.run([str(py), str(work / "peer_optimum.py"), str(src), str(work / "optimum")],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 2
    print(f"Optimum export + quantize: {time.perf_counter() - t:.0f} s", file=sys.stderr)

    # 2. slimforge optimize --target cpu (goal: cosine >= 0.995)
    t = time.perf_counter()
    res = slimforge.optimize(base, target="cpu", goals={"min_cosine": 0.995}, data=data, output_dir=work / "slimforge")
    print(f"slimforge optimize: {time.perf_counter() - t:.0f} s ({'cached' if res.from_cache else 'searched'}), "
          f"chose {res.report['chosen']['name'] if res.report['chosen'] else 'nothing'}", file=sys.stderr)
    chosen = res.artifact
    chosen_rt = res.report["chosen"]["runtime"] if res.report["chosen"] else "torch"

    # 3. OpenVINO + NNCF INT8 on the FP32 ONNX export (the same graph slimforge exports)
    fp32_onnx = slimforge.export(base, work / "minilm_fp32.onnx", workdir=work)
    ds = TextLines(heldout, base)
    calib = [b.feeds for b in TextLines(calib_txt, base).batches(1)]
    t = time.perf_counter()
    nncf_sess = nncf_int8(fp32_onnx.path, calib, threads)
    print(f"NNCF INT8: {time.perf_counter() - t:.0f} s", file=sys.stderr)

    sessions = {
        "PyTorch FP32 eager": slimforge.open_session(base, "torch"),
        "Optimum ORT INT8 (avx512_vnni)": Pooled(work / "optimum" / "model_quantized.onnx", threads),
        "OpenVINO + NNCF INT8": nncf_sess,
        f"slimforge optimize --target cpu ({res.report['chosen']['name'] if res.report['chosen'] else '-'})":
            slimforge.open_session(chosen, chosen_rt),
    }
    peers = ["Optimum ORT INT8 (avx512_vnni)", "OpenVINO + NNCF INT8"]
    ours = list(sessions)[-1]
    mine = [ours]
    if args.student:
        extra = student_variants(base, args.student, calib_txt, work)
        sessions.update(extra)
        mine += list(extra)
        sessions["Optimum ORT FP32"] = Pooled(work / "optimum" / "model.onnx", threads)
        peers.append("Optimum ORT FP32")
    batches = [b.feeds for b in ds.batches(32)]
    ref = np.concatenate([sessions["PyTorch FP32 eager"].run(f)[0] for f in batches])
    fidelity = {k: float(cosine_similarity(ref, np.concatenate([s.run(f)[0] for f in batches])).mean())
                for k, s in sessions.items()}
    feeds = {1: next(ds.batches(1)).feeds, 32: batches[0]}
    # slimforge's one timing loop: interleaved rounds, intervals of every median and of every ratio (paired per round)
    spec = BenchSpec(warmup=3, repeats=4 * args.rounds, min_time_s=1.0 * args.rounds, max_time_s=240.0,
                     rounds=args.rounds, max_rounds=3 * args.rounds, rel_ci=0.03)
    comp = compare({k: _Timed(s) for k, s in sessions.items()}, feeds, spec, reference="PyTorch FP32 eager")
    print(f"timing: {comp.note()}", file=sys.stderr)
    rows = []
    print(f"\n{'variant':62s} {'b1 ms':>8s} {'x FP32 [95%]':>18s} {'b32 ms':>8s} {'x FP32 [95%]':>18s} {'cosine':>8s}")
    for k in sessions:
        r = {"variant": k, "cosine": fidelity[k]}
        for b in feeds:
            t = comp.timing(k, b)
            r[f"p50_ms_b{b}"], r[f"p50_ci_ms_b{b}"] = t.p50, [t.lo, t.hi]
            x = comp.ratio(k, b) if k != "PyTorch FP32 eager" else Ratio(1.0, 1.0, 1.0)
            r[f"speedup_b{b}"], r[f"speedup_ci_b{b}"] = x.value, [x.lo, x.hi]
        rows.append(r)
        print(f"{k:62s} {r['p50_ms_b1']:8.2f} {_x(r, 1):>18s} {r['p50_ms_b32']:8.1f} {_x(r, 32):>18s} "
              f"{r['cosine']:8.4f}")
    verdict = {}
    qualifying = [k for k in peers if fidelity[k] >= 0.995]  # peers whose output meets the same goal
    for b in feeds:
        best_any = min(peers, key=lambda k: comp.timing(k, b).p50)
        vs_any = comp.ratio(ours, b, reference=best_any)
        v = {"best_peer_any_fidelity": best_any, "ours_vs_best_peer_any": vs_any.to_dict(),
             "ours_vs_fp32": comp.ratio(ours, b).to_dict()}
        if qualifying:
            best_q = min(qualifying, key=lambda k: comp.timing(k, b).p50)
            v.update(best_peer_meeting_goal=best_q,
                     ours_vs_best_peer_meeting_goal=comp.ratio(ours, b, reference=best_q).to_dict())
        verdict[b] = v
        print(f"batch {b}: ours {comp.ratio(ours, b).describe()} FP32; vs the fastest peer ({best_any}, cosine "
              f"{fidelity[best_any]:.4f}): {vs_any.describe()} ({vs_any.verdict})"
              + (f"; vs the fastest peer meeting cosine >= 0.995 ({v['best_peer_meeting_goal']}): "
                 f"{comp.ratio(ours, b, reference=v['best_peer_meeting_goal']).describe()} "
                 f"({v['ours_vs_best_peer_meeting_goal']['verdict']})" if qualifying else
                 "; no peer meets cosine >= 0.995"))
    # slower only when the interval of the ratio lies below 1.0 (the one no-slowdown rule)
    ok = (fidelity[ours] >= 0.995 and all(v["ours_vs_fp32"]["speedup"] >= 3.0 for v in verdict.values())
          and all(v.get("ours_vs_best_peer_meeting_goal", {}).get("verdict") != "slower" for v in verdict.values()))
    front = quality_front(comp, fidelity, mine, peers, list(feeds)) if args.student else None
    if front is not None:
        front_plot(rows, mine, peers, args.out.with_name(args.out.stem + "_front.png"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(threads), "rows": rows, "verdict": verdict,
                                    "front": front,
                                    "chosen": res.report["chosen"], "ok": ok, "timing": comp.note(),
                                    "search_candidates": [{k: c[k] for k in ("name", "status", "reason",
                                                                             "latency_ms", "quality")}
                                                          for c in res.report["candidates"]]}, indent=2))
    print(("PASS" if ok else "FAIL") + ": cosine >= 0.995, >= 3x FP32 at batch 1 and 32, not slower than the fastest "
          "peer that meets the same cosine goal (its ratio's interval not below 1.0)")
    if front is not None:
        got = front["0.95"]
        front_ok = all(got.get(str(b), {}).get("ratio", {}).get("lo", 0.0) >= 1.5 for b in feeds)
        print(("PASS" if front_ok else "FAIL") + ": at cosine >= 0.95, slimforge's fastest model >= 1.5x the fastest "
              "peer variant at batch 1 and 32 (the interval's low end)")
        ok = ok and front_ok
    return 0 if ok else 1


def student_variants(base, student: Path, calib_txt: Path, work: Path) -> dict:
    """The sub-network in FP32 (PyTorch) and INT8 (ONNX Runtime dynamic and static, OpenVINO static)."""
    if student.is_dir():
        sys.path.insert(0, str(Path(__file__).parent))
        from minilm_nas import import_student

        art, _ = import_student(base, student)
    else:
        art = slimforge.load(student)
    out = {"slimforge sub-network FP32 (torch)": slimforge.open_session(art, "torch")}
    for label, method, runtime, data in (("ORT INT8 dynamic", "dynamic", "onnxruntime", None),
                                         ("ORT INT8 static", "static", "onnxruntime", calib_txt),
                                         ("OpenVINO INT8 static", "static", "openvino", calib_txt)):
        try:
            q = slimforge.quantize(art, method, runtime=runtime, data=data, check_speed=False,
                                   workdir=work / f"student-{method}-{runtime}")
        except Exception as exc:  # a variant that fails its own check is reported, not timed
            print(f"sub-network {label}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
            continue
        out[f"slimforge sub-network + {label}"] = slimforge.open_session(q, runtime)
    return out


def quality_front(comp, fidelity: dict, mine: list[str], peers: list[str], batches: list[int]) -> dict:
    """At each cosine level: the fastest of ours and of the peers' variants meeting it, and their ratio."""
    front: dict = {}
    for level in (0.99, 0.98, 0.95):
        ours_ok = [k for k in mine if fidelity[k] >= level]
        peers_ok = [k for k in peers if fidelity[k] >= level]
        row: dict = {"ours_meeting": ours_ok, "peers_meeting": peers_ok}
        for b in batches:
            if not ours_ok or not peers_ok:
                row[str(b)] = {"note": "no variant of ours" if not ours_ok else "no peer variant"}
                continue
            a = min(ours_ok, key=lambda k: comp.timing(k, b).p50)
            p = min(peers_ok, key=lambda k: comp.timing(k, b).p50)
            r = comp.ratio(a, b, reference=p)
            row[str(b)] = {"ours": a, "ours_cosine": fidelity[a], "peer": p, "peer_cosine": fidelity[p],
                           "ratio": r.to_dict()}
            print(f"cosine >= {level}: batch {b}: {a} ({fidelity[a]:.4f}) vs {p} ({fidelity[p]:.4f}): "
                  f"{r.describe()} ({r.verdict})")
        front[str(level)] = row
    return front


def front_plot(rows: list[dict], mine: list[str], peers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, b in zip(axes, (1, 32)):
        for r in rows:
            who = "slimforge" if r["variant"] in mine else "peer" if r["variant"] in peers else "baseline"
            ax.scatter(r[f"p50_ms_b{b}"], r["cosine"], marker={"slimforge": "o", "peer": "s", "baseline": "x"}[who],
                       color={"slimforge": "tab:blue", "peer": "tab:orange", "baseline": "grey"}[who])
            ax.annotate(r["variant"][:34], (r[f"p50_ms_b{b}"], r["cosine"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        for level in (0.99, 0.98, 0.95):
            ax.axhline(level, color="grey", linewidth=0.5, linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel(f"batch {b} p50 latency, ms (log)")
        ax.set_ylabel("held-out cosine to FP32")
        ax.set_title(f"MiniLM on this CPU, batch {b}: circles slimforge, squares peers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"front plot: {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
