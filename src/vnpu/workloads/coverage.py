"""The model-coverage list: architectures users bring, not vnpu's own zoo.

Each entry builds a real model from its library's own definition — a `transformers` config
class at a tiny size with random weights from a fixed seed, or a Keras application with
`weights=None` — called the way its users call it (the default attention implementation,
attention masks of ones, the library's own MoE experts), with only the main output tensor
selected. `benchmarks/model_coverage.py` compiles each one strict and non-strict, runs it on
the chip, compares with the framework and writes docs/coverage.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

SEED = 0
VOCAB = 512
SEQ = 16
IMAGE = 32


@dataclass(frozen=True)
class CoverageModel:
    name: str
    family: str  # vision | detection | segmentation | language | llm | moe | encoder-decoder | speech | multimodal | state-space | time-series | recommendation
    framework: str  # "torch" (transformers / torch) or "keras"
    build: Callable[[], tuple[Any, tuple]] = field(repr=False)  # -> (model, example inputs)
    note: str = ""


def _seeded() -> None:
    import torch

    torch.manual_seed(SEED)


class _Main:
    """Calls a transformers model with keyword inputs and returns its main output tensor(s)."""

    @staticmethod
    def wrap(model: Any, names: tuple[str, ...], out: str | tuple[str, ...], fixed: dict | None = None) -> Any:
        import torch

        outs = (out,) if isinstance(out, str) else out

        class Main(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                kwargs = dict(zip(names, args))
                kwargs.update(fixed or {})
                res = self.model(**kwargs, return_dict=True)
                vals = tuple(getattr(res, o) for o in outs)
                return vals[0] if len(vals) == 1 else vals

        m = Main().eval()
        m.__class__.__name__ = type(model).__name__
        return m


def _ids(batch: int = 2, seq: int = SEQ, vocab: int = VOCAB) -> Any:
    import torch

    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(SEED + 1))


def _pixels(batch: int = 1, size: int = IMAGE, channels: int = 3) -> Any:
    import torch

    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(SEED + 2))


def _hf(config_cls: str, model_cls: str, **config: Any) -> Any:
    import transformers

    _seeded()
    cfg = getattr(transformers, config_cls)(**config)
    return getattr(transformers, model_cls)(cfg).eval()


_TEXT = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
_DECODER = dict(_TEXT, num_key_value_heads=2, max_position_embeddings=128)


def _text(config_cls: str, model_cls: str, out: str = "last_hidden_state", mask: bool = True, **extra: Any):
    def build() -> tuple[Any, tuple]:
        import torch

        m = _hf(config_cls, model_cls, **{**_TEXT, **extra})
        ids = _ids()
        if mask:
            return _Main.wrap(m, ("input_ids", "attention_mask"), out), (ids, torch.ones_like(ids))
        return _Main.wrap(m, ("input_ids",), out), (ids,)
    return build


def _decoder(config_cls: str, model_cls: str = "AutoModelForCausalLM", **extra: Any):
    def build() -> tuple[Any, tuple]:
        import torch
        import transformers

        _seeded()
        cfg = getattr(transformers, config_cls)(**{**_DECODER, **extra})
        m = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        ids = _ids()
        return _Main.wrap(m, ("input_ids", "attention_mask"), "logits", {"use_cache": False}), (ids, torch.ones_like(ids))
    return build


def _vision(config_cls: str, model_cls: str, out: str = "logits", size: int = IMAGE, **extra: Any):
    def build() -> tuple[Any, tuple]:
        m = _hf(config_cls, model_cls, **extra)
        return _Main.wrap(m, ("pixel_values",), out), (_pixels(size=size, channels=extra.get("num_channels", 3)),)
    return build


_VIT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=IMAGE,
            patch_size=8, num_labels=10)


def _whisper() -> tuple[Any, tuple]:
    import torch

    m = _hf("WhisperConfig", "WhisperModel", vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
            num_mel_bins=16, max_source_positions=32, max_target_positions=32, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, decoder_start_token_id=1)
    feats = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(SEED + 3))
    dec = _ids(1, 8)
    return _Main.wrap(m, ("input_features", "decoder_input_ids"), "last_hidden_state"), (feats, dec)


def _audio(config_cls: str, model_cls: str) -> Callable[[], tuple[Any, tuple]]:
    def build() -> tuple[Any, tuple]:
        import torch

        m = _hf(config_cls, model_cls, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, do_stable_layer_norm=False)
        wave = torch.randn(1, 1600, generator=torch.Generator().manual_seed(SEED + 4))
        return _Main.wrap(m, ("input_values",), "last_hidden_state"), (wave,)
    return build


def _seq2seq(config_cls: str, model_cls: str, **cfg: Any) -> Callable[[], tuple[Any, tuple]]:
    def build() -> tuple[Any, tuple]:
        import torch

        m = _hf(config_cls, model_cls, **cfg)
        ids = _ids()
        return (_Main.wrap(m, ("input_ids", "attention_mask", "decoder_input_ids"), "logits"),
                (ids, torch.ones_like(ids), _ids(2, 8)))
    return build


def _clip_text() -> tuple[Any, tuple]:
    import torch

    m = _hf("CLIPTextConfig", "CLIPTextModel", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=128, max_position_embeddings=32)
    ids = _ids()
    return _Main.wrap(m, ("input_ids", "attention_mask"), "pooler_output"), (ids, torch.ones_like(ids))


def _clip() -> tuple[Any, tuple]:
    import torch
    import transformers

    _seeded()
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=32),
        vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           image_size=IMAGE, patch_size=8), projection_dim=32)
    m = transformers.CLIPModel(cfg).eval()
    ids = _ids()
    return (_Main.wrap(m, ("input_ids", "attention_mask", "pixel_values"), "logits_per_image"),
            (ids, torch.ones_like(ids), _pixels(2)))


def _time_series() -> tuple[Any, tuple]:
    import torch

    m = _hf("PatchTSTConfig", "PatchTSTForPrediction", num_input_channels=3, context_length=32, patch_length=8,
            patch_stride=8, prediction_length=8, d_model=32, num_attention_heads=4, num_hidden_layers=2,
            ffn_dim=64)
    x = torch.randn(2, 32, 3, generator=torch.Generator().manual_seed(SEED + 5))
    return _Main.wrap(m, ("past_values",), "prediction_outputs"), (x,)


def _dlrm() -> tuple[Any, tuple]:
    """A DLRM-style recommender (sparse features through EmbeddingBag, dense through an MLP,
    pairwise dot-product interaction, top MLP), as the DLRM paper describes it: transformers
    and Keras ship none, and vnpu's zoo has none, so it is written here from torch.nn parts."""
    import torch
    from torch import nn

    class DLRM(nn.Module):
        def __init__(self, tables: int = 4, rows: int = 100, dim: int = 16, dense: int = 13) -> None:
            super().__init__()
            self.emb = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for _ in range(tables))
            self.bottom = nn.Sequential(nn.Linear(dense, 32), nn.ReLU(), nn.Linear(32, dim), nn.ReLU())
            n = tables + 1
            self.top = nn.Sequential(nn.Linear(dim + n * (n - 1) // 2, 32), nn.ReLU(), nn.Linear(32, 1))

        def forward(self, dense: Any, idx: Any, offsets: Any) -> Any:
            x = self.bottom(dense)
            feats = [x] + [e(idx[i], offsets[i]) for i, e in enumerate(self.emb)]
            z = torch.stack(feats, 1)
            inter = torch.bmm(z, z.transpose(1, 2))
            iu = torch.triu_indices(z.shape[1], z.shape[1], 1)
            return torch.sigmoid(self.top(torch.cat([x, inter[:, iu[0], iu[1]]], 1)))

    _seeded()
    g = torch.Generator().manual_seed(SEED + 6)
    b, per = 4, 3
    return (DLRM().eval(), (torch.randn(b, 13, generator=g), torch.randint(0, 100, (4, b * per), generator=g),
                            torch.arange(0, b * per, per).repeat(4, 1)))


def _keras(app: str, size: int = 64, **kw: Any) -> Callable[[], tuple[Any, tuple]]:
    def build() -> tuple[Any, tuple]:
        import keras

        keras.utils.set_random_seed(SEED)
        m = getattr(keras.applications, app)(weights=None, input_shape=(size, size, 3), classes=10, **kw)
        x = np.random.default_rng(SEED).standard_normal((1, size, size, 3)).astype(np.float32)
        return m, (x,)
    return build


MODELS: list[CoverageModel] = [
    # vision
    CoverageModel("vit", "vision", "torch", _vision("ViTConfig", "ViTForImageClassification", **_VIT)),
    CoverageModel("deit", "vision", "torch", _vision("DeiTConfig", "DeiTForImageClassification", **_VIT)),
    CoverageModel("beit", "vision", "torch", _vision("BeitConfig", "BeitForImageClassification", **_VIT)),
    CoverageModel("dinov2", "vision", "torch", _vision("Dinov2Config", "Dinov2Model", out="pooler_output",
                                                      **{k: v for k, v in _VIT.items() if k != "num_labels"})),
    CoverageModel("swin", "vision", "torch", _vision(
        "SwinConfig", "SwinForImageClassification", image_size=IMAGE, patch_size=2, embed_dim=16, depths=[1, 1],
        num_heads=[2, 2], window_size=4, num_labels=10)),
    CoverageModel("convnext", "vision", "torch", _vision(
        "ConvNextConfig", "ConvNextForImageClassification", num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
        num_labels=10)),
    CoverageModel("resnet-hf", "vision", "torch", _vision(
        "ResNetConfig", "ResNetForImageClassification", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
        num_labels=10)),
    CoverageModel("mobilenet-v2-hf", "vision", "torch", _vision(
        "MobileNetV2Config", "MobileNetV2ForImageClassification", depth_multiplier=0.35, num_labels=10)),
    CoverageModel("efficientnet", "vision", "torch", _vision(
        "EfficientNetConfig", "EfficientNetForImageClassification", width_coefficient=0.1, depth_coefficient=0.1,
        hidden_dim=128, image_size=IMAGE, num_labels=10)),
    CoverageModel("regnet", "vision", "torch", _vision(
        "RegNetConfig", "RegNetForImageClassification", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
        groups_width=8, num_labels=10)),
    CoverageModel("poolformer", "vision", "torch", _vision(
        "PoolFormerConfig", "PoolFormerForImageClassification", hidden_sizes=[16, 32], depths=[1, 1],
        num_encoder_blocks=2, patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1], num_labels=10)),
    # detection / segmentation
    CoverageModel("yolos", "detection", "torch", _vision(
        "YolosConfig", "YolosForObjectDetection", out=("logits", "pred_boxes"),
        **{**{k: v for k, v in _VIT.items() if k != "image_size"}, "image_size": [IMAGE, IMAGE], "num_detection_tokens": 5})),
    CoverageModel("segformer", "segmentation", "torch", _vision(
        "SegformerConfig", "SegformerForSemanticSegmentation", num_encoder_blocks=2, depths=[1, 1],
        sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
        mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=5)),
    CoverageModel("dpt", "segmentation", "torch", _vision(
        "DPTConfig", "DPTForDepthEstimation", out="predicted_depth",
        **{**{k: v for k, v in _VIT.items() if k != "num_labels"}, "hidden_size": 32, "num_hidden_layers": 4,
           "backbone_out_indices": [0, 1, 2, 3], "neck_hidden_sizes": [16, 16, 32, 32], "fusion_hidden_size": 32,
           "head_hidden_size": 16}), note="depth estimation"),
    # language encoders
    CoverageModel("bert", "language", "torch", _text("BertConfig", "BertModel")),
    CoverageModel("roberta", "language", "torch", _text("RobertaConfig", "RobertaModel", pad_token_id=1)),
    CoverageModel("distilbert", "language", "torch", _text(
        "DistilBertConfig", "DistilBertModel", dim=64, n_layers=2, n_heads=4, hidden_dim=128)),
    CoverageModel("albert", "language", "torch", _text("AlbertConfig", "AlbertModel", embedding_size=32)),
    CoverageModel("electra", "language", "torch", _text("ElectraConfig", "ElectraModel", embedding_size=32)),
    CoverageModel("deberta-v2", "language", "torch", _text("DebertaV2Config", "DebertaV2Model")),
    # decoder LLMs
    CoverageModel("gpt2", "llm", "torch", _decoder("GPT2Config", n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    CoverageModel("llama", "llm", "torch", _decoder("LlamaConfig")),
    CoverageModel("mistral", "llm", "torch", _decoder("MistralConfig")),
    CoverageModel("qwen3", "llm", "torch", _decoder("Qwen3Config", head_dim=16)),
    CoverageModel("phi3", "llm", "torch", _decoder("Phi3Config", pad_token_id=0)),
    CoverageModel("gemma2", "llm", "torch", _decoder("Gemma2Config", head_dim=16)),
    CoverageModel("gpt-neox", "llm", "torch", _decoder("GPTNeoXConfig")),
    CoverageModel("opt", "llm", "torch", _decoder("OPTConfig", ffn_dim=128, word_embed_proj_dim=64)),
    # MoE, in transformers' own experts implementation
    CoverageModel("mixtral", "moe", "torch", _decoder("MixtralConfig", num_local_experts=4, num_experts_per_tok=2)),
    CoverageModel("qwen3-moe", "moe", "torch", _decoder(
        "Qwen3MoeConfig", head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)),
    # encoder-decoder
    CoverageModel("t5", "encoder-decoder", "torch", _seq2seq(
        "T5Config", "T5ForConditionalGeneration", vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2,
        num_heads=4, decoder_start_token_id=0)),
    CoverageModel("bart", "encoder-decoder", "torch", _seq2seq(
        "BartConfig", "BartForConditionalGeneration", vocab_size=VOCAB, d_model=64, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_position_embeddings=64)),
    # speech
    CoverageModel("whisper", "speech", "torch", _whisper),
    CoverageModel("wav2vec2", "speech", "torch", _audio("Wav2Vec2Config", "Wav2Vec2Model")),
    CoverageModel("hubert", "speech", "torch", _audio("HubertConfig", "HubertModel")),
    # multimodal
    CoverageModel("clip", "multimodal", "torch", _clip),
    CoverageModel("clip-text", "multimodal", "torch", _clip_text),
    # state space, time series, recommendation
    CoverageModel("mamba", "state-space", "torch", _text(
        "MambaConfig", "MambaModel", mask=False, hidden_size=64, num_hidden_layers=2, state_size=8,
        intermediate_size=128)),
    CoverageModel("patchtst", "time-series", "torch", _time_series),
    CoverageModel("dlrm", "recommendation", "torch", _dlrm, note="DLRM-style, written from torch.nn parts"),
    # Keras applications (TensorFlow backend, through tf2onnx)
    CoverageModel("keras-mobilenet-v3-small", "vision", "keras", _keras("MobileNetV3Small", include_preprocessing=False)),
    CoverageModel("keras-efficientnet-b0", "vision", "keras", _keras("EfficientNetB0")),
    CoverageModel("keras-densenet121", "vision", "keras", _keras("DenseNet121")),
    CoverageModel("keras-resnet50-v2", "vision", "keras", _keras("ResNet50V2")),
    CoverageModel("keras-xception", "vision", "keras", _keras("Xception", size=71)),
    CoverageModel("keras-convnext-tiny", "vision", "keras", _keras("ConvNeXtTiny", include_preprocessing=False)),
]


def coverage_model(name: str) -> CoverageModel:
    for m in MODELS:
        if m.name == name:
            return m
    raise KeyError(f"no coverage model {name!r}; known: {', '.join(m.name for m in MODELS)}")
