"""Long suite (~6 min on 2 cores): torch.compile(backend="vnpu") on tiny random-weight Hugging
Face models against eager, and HF generate() greedy tokens against eager's.

    PYTHONPATH=src python -m pytest tests/test_torch_compile_hf_models.py -q

The quick checks (symbolic shapes, the program cache, GPT-2) are in
tests/test_torch_compile_dynamic.py.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from hf_tiny import NAMES, assert_close_fp32, build, check_generate, fallback_ops, main_output

# ops with no chip lowering yet in these models (they run on the host; the test tolerates
# exactly these, so a new fallback fails it and a new lowering is noticed by the report)
KNOWN_FALLBACKS = {
    "whisper": {"convolution.default"},  # conv1d front end
    "roberta": {"cumsum.default"},  # position ids from the padding mask
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", NAMES)
def test_hf_model_matches_eager(name):
    """Two calls with different shapes: the second meets Dynamo's automatic-dynamic graph."""
    model, calls = build(name)
    cm = torch.compile(model, backend="vnpu")
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kw in calls:
            assert_close_fp32(main_output(cm(**kw)), main_output(model(**kw)))
    assert fallback_ops(caught) <= KNOWN_FALLBACKS.get(name, set())


@pytest.mark.parametrize("name,use_cache,batch", [
    ("gpt2", True, 1), ("gpt2", False, 2), ("mistral", True, 1), ("mistral", True, 2), ("mistral", False, 1), ("gpt2", False, 1),
    ("phi3", True, 2), ("phi3", False, 1), ("gemma2", True, 2), ("gemma2", False, 1)])
def test_hf_generate_greedy_matches_eager_tokens(name, use_cache, batch):
    check_generate(name, use_cache, batch)
