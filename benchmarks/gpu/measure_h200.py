"""Measure a real Hopper GPU on the workloads vnpu predicts, for calibrating the GPU profiles.

    python benchmarks/gpu/measure_h200.py --out DIR        # on a machine with an NVIDIA GPU
    python benchmarks/gpu/measure_h200.py --smoke --out DIR  # tiny shapes on the CPU: checks the script only

Writes DIR/gpu_measured.json and prints one line per measurement. No vnpu import: it runs under the
GPU machine's own PyTorch/transformers. Models are built exactly as vnpu's zoo builds them
(src/vnpu/workloads/zoo.py, loaded by file path) or from Qwen3's public model-card configs, with
random bf16 weights. Each figure is the median of timed repetitions after warm-up, by CUDA events;
"kernel_ms" is the sum of GPU kernel durations from torch.profiler for one call (device time,
free of Python and launch overhead); "graph_ms" replays a captured CUDA graph of the call.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

# Qwen3 dense configs from the public model cards (config.json of Qwen/Qwen3-8B and Qwen/Qwen3-32B).
QWEN3 = {
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1_000_000.0,
                     max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "qwen3-32b": dict(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
                      num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1_000_000.0,
                      max_position_embeddings=40960, rms_norm_eps=1e-6, tie_word_embeddings=False),
}
SMOKE_QWEN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=4096,
                  tie_word_embeddings=False)


def log(msg: str) -> None:
    print(msg, flush=True)


class Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def median_ms(self, fn, reps: int, warmup: int = 3) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if self.cuda:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def kernel_ms(self, fn) -> float | None:
        """Sum of device-kernel durations of one call (torch.profiler), in ms."""
        if not self.cuda:
            return None
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        total_us = sum(ev.time_range.elapsed_us() for ev in prof.events()
                       if ev.device_type == torch.autograd.DeviceType.CUDA)
        return total_us / 1e3

    def graph_ms(self, fn, reps: int) -> float | None:
        if not self.cuda:
            return None
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            return self.median_ms(g.replay, reps)
        except Exception as e:  # some calls are not capturable; say so rather than fail the run
            log(f"  (cuda graph capture failed: {type(e).__name__}: {str(e)[:120]})")
            return None


def load_zoo():
    spec = importlib.util.spec_from_file_location("vnpu_zoo", ROOT / "src" / "vnpu" / "workloads" / "zoo.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vnpu_zoo"] = mod
    spec.loader.exec_module(mod)
    return mod


def device_info(dev: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(dev)}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(name=p.name, sms=p.multi_processor_count, memory_gib=p.total_memory / 2**30)
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as e:  # noqa: BLE001
            info["nvidia_smi"] = f"unavailable: {e}"
    return info


def bench_copy(dev: torch.device, t: Timer, smoke: bool) -> dict:
    n = (1 << 20) if smoke else (2 << 30)  # bytes per buffer
    a = torch.empty(n, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    ms = t.median_ms(lambda: b.copy_(a), 10)
    return {"bytes_per_buffer": n, "ms": ms, "tb_per_s_read_plus_write": 2 * n / (ms * 1e-3) / 1e12}


def bench_gemm(dev: torch.device, t: Timer, smoke: bool) -> list[dict]:
    out = []
    for s in ([64] if smoke else [1024, 2048, 4096, 8192]):
        a = torch.randn(s, s, device=dev, dtype=torch.bfloat16)
        b = torch.randn(s, s, device=dev, dtype=torch.bfloat16)
        ms = t.median_ms(lambda: a @ b, 10 if s >= 4096 else 30)
        out.append({"m": s, "n": s, "k": s, "ms": ms, "tflops": 2 * s**3 / (ms * 1e-3) / 1e12})
        log(f"gemm {s}^3 bf16: {ms:.3f} ms, {out[-1]['tflops']:.0f} TFLOPS")
    return out


def bench_zoo(dev: torch.device, t: Timer, smoke: bool) -> list[dict]:
    zoo = load_zoo()
    cases = [("resnet50", 1, None), ("resnet50", 8, None), ("bert-base", 1, 128), ("bert-base", 1, 512)]
    if smoke:
        cases = [("mlp", 1, None)]
    out = []
    for name, batch, seq in cases:
        if name == "bert-base":
            model, inputs = zoo.build_bert_base(batch, seq)
        else:
            model, inputs = zoo.get_workload(name).build(batch)
        model = model.to(dev, torch.bfloat16 if not smoke else torch.float32).eval()
        inputs = tuple(x.to(dev) if not x.is_floating_point() else x.to(dev, next(model.parameters()).dtype)
                       for x in inputs)

        def call():
            with torch.inference_mode():
                return model(*inputs)

        r = {"model": name, "batch": batch, "seq_len": seq, "dtype": "bf16",
             "eager_ms": t.median_ms(call, 20), "kernel_ms": t.kernel_ms(call), "graph_ms": t.graph_ms(call, 20)}
        out.append(r)
        log(f"{name} b{batch}{f' seq{seq}' if seq else ''}: eager {r['eager_ms']:.3f} ms, kernels {r['kernel_ms']}, "
            f"graph {r['graph_ms']}")
        del model
    return out


def bench_qwen3(dev: torch.device, t: Timer, smoke: bool) -> list[dict]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = []
    specs = [("qwen3-8b", [1, 8], [512, 2048]), ("qwen3-32b", [1], [2048])]
    if smoke:
        specs = [("qwen3-smoke", [1, 2], [16])]
    for name, batches, prompts in specs:
        cfg = Qwen3Config(**(SMOKE_QWEN if smoke else QWEN3[name]), torch_dtype=torch.bfloat16)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(0)
        t0 = time.perf_counter()
        torch.set_default_dtype(torch.bfloat16)  # build in bf16: a 32B model in fp32 would not fit
        try:
            with torch.device(dev):
                model = Qwen3ForCausalLM(cfg).eval()
        finally:
            torch.set_default_dtype(torch.float32)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        n_params = sum(p.numel() for p in model.parameters())
        log(f"{name}: {n_params / 1e9:.2f} B params, built in {time.perf_counter() - t0:.1f} s")
        for prompt in prompts:
            ids = torch.randint(0, cfg.vocab_size, (1, prompt), device=dev)

            def prefill():
                with torch.inference_mode():
                    return model(input_ids=ids, use_cache=True)

            r = {"model": name, "phase": "prefill", "batch": 1, "prompt_len": prompt, "params": n_params,
                 "eager_ms": t.median_ms(prefill, 3, warmup=1), "kernel_ms": t.kernel_ms(prefill)}
            out.append(r)
            log(f"  prefill {prompt}: eager {r['eager_ms']:.2f} ms, kernels {r['kernel_ms']}")
        ctx = prompts[-1]
        for batch in batches:
            ids = torch.randint(0, cfg.vocab_size, (batch, ctx), device=dev)
            with torch.inference_mode():
                pkv = model(input_ids=ids, use_cache=True).past_key_values
            tok = torch.randint(0, cfg.vocab_size, (batch, 1), device=dev)
            base_len = pkv.get_seq_length()

            def decode():
                # one step at context `ctx`: append, then drop the appended entry so every
                # repetition sees the same cache length
                with torch.inference_mode():
                    o = model(input_ids=tok, past_key_values=pkv, use_cache=True)
                pkv.crop(-1)  # negative = drop that many tokens, in every transformers version
                assert pkv.get_seq_length() == base_len
                return o

            r = {"model": name, "phase": "decode", "batch": batch, "context": ctx, "params": n_params,
                 "eager_ms": t.median_ms(decode, 10), "kernel_ms": t.kernel_ms(decode)}
            out.append(r)
            log(f"  decode b{batch} ctx{ctx}: eager {r['eager_ms']:.2f} ms/step, kernels {r['kernel_ms']}")
            del pkv
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    t = Timer(dev)
    res: dict = {"info": device_info(dev)}
    log(json.dumps(res["info"]))
    for key, fn in [("copy", bench_copy), ("gemm", bench_gemm), ("zoo", bench_zoo), ("qwen3", bench_qwen3)]:
        t0 = time.perf_counter()
        try:
            res[key] = fn(dev, t, args.smoke)
        except Exception as e:  # one failing section must not lose the others
            import traceback
            traceback.print_exc()
            res[key] = {"error": f"{type(e).__name__}: {e}"}
        log(f"[{key} done in {time.perf_counter() - t0:.1f} s]")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_measured.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
