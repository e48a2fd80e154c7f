"""Tiny Hugging Face models built from transformers config classes with random weights (no
downloads): 2 layers, hidden 64, vocabulary 128, 32x32 images. `build(name)` returns the
model in eval mode and two calls' keyword inputs of different shapes (batch 1 then batch 2
with a longer sequence), so that the second call meets Dynamo's automatic-dynamic graph.
Also the checks the torch.compile test files share (fp32 closeness to eager, the host
fallback ops a run reported, greedy generate() against eager)."""
from __future__ import annotations

import re
import warnings
from typing import Any, Callable

import torch

from vnpu.api import vnpu_backend
from vnpu.frontends.errors import FallbackWarning

VOCAB = 128
_TEXT = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=VOCAB)
_DECODER = dict(_TEXT, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=0, eos_token_id=0)
_VIT = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def _configs() -> dict[str, Callable[[], Any]]:
    import transformers as T

    return {
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                                                       bos_token_id=0, eos_token_id=0)),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**_DECODER, head_dim=16)),
        "phi3": lambda: T.Phi3ForCausalLM(T.Phi3Config(**_DECODER)),
        # untied: Gemma scales embeddings by sqrt(hidden), so a tied random head echoes the input token
        "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**_DECODER, head_dim=16, sliding_window=8,
                                                                            tie_word_embeddings=False)),
        "convnext": lambda: T.ConvNextForImageClassification(T.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2,
                                                                              num_labels=5, image_size=32)),
        "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                                              num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                                                              eos_token_id=1)),
        "swin": lambda: T.SwinForImageClassification(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                                  num_heads=[2, 2], window_size=4, num_labels=5)),
        "dinov2": lambda: T.Dinov2Model(T.Dinov2Config(**_VIT)),
        "clip_vision": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**_VIT)),
        "clip_text": lambda: T.CLIPTextModel(T.CLIPTextConfig(**_TEXT, max_position_embeddings=32)),
        "whisper": lambda: T.WhisperForConditionalGeneration(T.WhisperConfig(
            vocab_size=VOCAB, num_mel_bins=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=16,
            max_target_positions=32, pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0)),
        "bert": lambda: T.BertModel(T.BertConfig(**_TEXT, max_position_embeddings=64)),
        "roberta": lambda: T.RobertaModel(T.RobertaConfig(**_TEXT, max_position_embeddings=64, pad_token_id=1)),
    }


NAMES = list(_configs())
DECODERS = ("gpt2", "mistral", "phi3", "gemma2")


def build(name: str, weight_std: float | None = None) -> tuple[torch.nn.Module, list[dict[str, torch.Tensor]]]:
    """The model (seeded) and two calls' inputs. `weight_std` re-draws every matrix N(0, std)
    (HF's default 0.02 makes a tiny random LM repeat one token; generation tests want variety)."""
    torch.manual_seed(0)
    model = _configs()[name]().eval()
    if weight_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, weight_std)
    g = torch.Generator().manual_seed(1)

    def ids(b: int, n: int) -> torch.Tensor:
        return torch.randint(2, VOCAB, (b, n), generator=g)

    if name in ("convnext", "swin", "dinov2", "clip_vision"):
        calls = [{"pixel_values": torch.randn(b, 3, 32, 32, generator=g)} for b in (1, 2)]
    elif name == "t5":
        calls = [{"input_ids": ids(b, n), "decoder_input_ids": ids(b, n // 2)} for b, n in ((1, 8), (2, 10))]
    elif name == "whisper":
        calls = [{"input_features": torch.randn(b, 16, 32, generator=g), "decoder_input_ids": ids(b, n)}
                 for b, n in ((1, 4), (2, 5))]
    else:
        calls = [{"input_ids": ids(b, n)} for b, n in ((1, 8), (2, 11))]
    return model, calls


def main_output(out: Any) -> torch.Tensor:
    """logits (LMs, classifiers) or last_hidden_state (encoders)."""
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    raise TypeError(f"no logits / last_hidden_state in {type(out).__name__}")


def assert_close_fp32(out: torch.Tensor, ref: torch.Tensor) -> None:
    """fp32 on the chip against eager: max|err| <= 1e-4 * max|ref|, same shape and dtype."""
    assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, ref.shape, out.dtype, ref.dtype)
    err = (out - ref).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), (err, ref.abs().max().item())


def fallback_ops(caught: list[warnings.WarningMessage]) -> set[str]:
    """The ATen ops that FallbackWarnings among `caught` say ran on the host."""
    return {op for w in caught if issubclass(w.category, FallbackWarning)
            for op in re.findall(r"([\w.]+) \(x\d+\)", str(w.message))}


class Recorder:
    """The vnpu backend with options, keeping each Dynamo graph and the callable vnpu made of it."""

    def __init__(self, **options: Any):
        self.options = options
        self.graphs: list[tuple[torch.fx.GraphModule, list]] = []
        self.runs: list = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        self.graphs.append((gm, list(example_inputs)))
        fn = vnpu_backend(gm, example_inputs, options=self.options)
        self.runs.append(fn)
        return fn

    def symbolic(self, i: int = -1) -> bool:
        """The i-th graph has a SymInt input (Dynamo compiled it for dynamic sizes)."""
        return any(isinstance(e, torch.SymInt) for e in self.graphs[i][1])


def check_generate(name: str, use_cache: bool, batch: int, new_tokens: int = 8) -> None:
    """HF generate() (greedy) with model.forward compiled for vnpu gives eager's tokens exactly.
    Batch 2 left-pads its second row (a masked attention). With the KV cache every step has a
    new length: a cached program of Dynamo's dynamic graph each."""
    model, _ = build(name, weight_std=0.3)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, VOCAB, (batch, 6), generator=g)
    mask = torch.ones_like(ids)
    if batch == 2:
        mask[1, :2] = 0
    kw = dict(attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, use_cache=use_cache, pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        rec = Recorder(cache_size=16)
        model.forward = torch.compile(model.forward, backend=rec)
        out = model.generate(ids, **kw)
    assert ref.shape == (batch, 6 + new_tokens)
    assert len(set(ref[0, 6:].tolist())) > 2, ref.tolist()  # a non-degenerate continuation
    assert torch.equal(out, ref), (out.tolist(), ref.tolist())
    assert sum(r.vnpu_stats["builds"] for r in rec.runs) >= new_tokens  # every step ran a chip program
