"""Misc ATen lowerings (OpInfo coverage): scans, bucketing, histograms, statistics, strided views,
distances and batch norm's training form, onto existing IR ops and kernels."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends.torch.aten_ops import _dim
from vnpu.frontends.torch.importer import ImportContext as Cx, aten
from vnpu.ir.graph import Value
