"""Random small PyTorch graphs over the ops vnpu lowers strictly, for property-based tests.

A `GraphBuilder` draws a graph op by op from a `Chooser` (hypothesis' `data.draw` in
tests/test_fuzz_graphs.py, a seeded `random.Random` in benchmarks/fuzz_graphs.py). Every
op is one line of Python source (`v3 = torch.matmul(v1, self.w0)`), evaluated eagerly on
the graph's real input data as it is drawn, so shapes are exact and the data can be
checked: a line whose result is not finite or too big is dropped, and ops with a
discontinuity (comparisons, floor/round/sign, topk/argmax) are only drawn where every
element is at least `MARGIN` (relative) away from the discontinuity, so float rounding
in vnpu cannot flip them. Ops with a restricted domain get a guard in the graph
(log(|x| + 0.5), x / (|y| + 0.5), exp(clamp(x))). The finished graph is an nn.Module
whose forward runs the same source lines; its `source()` is a standalone reproducer.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MARGIN = 1e-3          # relative distance kept from a discontinuity (comparison tie, integer boundary)
MAX_NUMEL = 40_000     # elements per tensor (keeps one simulated graph well under a second)
MAX_ABS = 1e4          # values beyond this are dropped (fp32 relative error stays meaningful)
# sizes: 1, primes, powers of two and one either side of the 64/128 tile sizes
SIZES = [1, 1, 2, 3, 4, 5, 7, 8, 11, 13, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129]
SMALL_SIZES = [1, 2, 3, 4, 5, 7, 8, 11, 13, 16]


class Chooser(Protocol):
    def int(self, lo: int, hi: int) -> int: ...           # lo..hi inclusive
    def choice(self, seq: Sequence[Any]) -> Any: ...
    def bool(self, p: float = 0.5) -> bool: ...


class RandomChooser:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.rng.randrange(len(seq))]

    def bool(self, p: float = 0.5) -> bool:
        return self.rng.random() < p


class HypothesisChooser:
    """Draws through hypothesis' `data` object, so failing graphs shrink (to fewer, simpler ops)."""

    def __init__(self, data: Any):
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.data.draw(self.st.integers(0, len(seq) - 1))]

    def bool(self, p: float = 0.5) -> bool:
        # shrinks towards False: the "extra" branch
        return self.data.draw(self.st.integers(0, 999)) >= 1000 * (1 - p)


@dataclass
class Val:
    name: str
    kind: str  # "f" float32, "b" bool, "i" int64

    def t(self, env: dict) -> torch.Tensor:
        return env[self.name]


@dataclass
class InputSpec:
    name: str
    shape: tuple[int, ...]
    kind: str  # "f", "i" (int64 in [0, hi)), "b"
    hi: int = 0
    scale: float = 1.0


@dataclass
class FuzzGraph:
    inputs: list[InputSpec]
    params: list[InputSpec]  # float weights (module parameters)
    lines: list[str]
    outputs: list[str]
    data_seed: int
    chip: str = "default"  # key of CHIPS in the test/benchmark
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    created: list[InputSpec] = field(default_factory=list)  # inputs and params in the order their data was drawn

    def module(self) -> torch.nn.Module:
        return _make_module(self)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.tensors[s.name] for s in self.inputs)

    def source(self) -> str:
        """A standalone reproducer: the same data (drawn in creation order), module and inputs."""
        out = ["import torch", "import torch.nn.functional as F", "",
               f"g = torch.Generator().manual_seed({self.data_seed})"]
        for s in self.created:
            out.append(f"{s.name} = {_input_expr(s)}")
        out += ["", "", "class M(torch.nn.Module):", "    def __init__(self):", "        super().__init__()"]
        for p in self.params:
            out.append(f"        self.{p.name} = torch.nn.Parameter({p.name}, requires_grad=False)")
        if not self.params:
            out.append("        pass")
        out.append(f"    def forward(self, {', '.join(s.name for s in self.inputs)}):")
        out += [f"        {ln}" for ln in self.lines]
        out.append(f"        return ({', '.join(self.outputs)},)")
        out += ["", "", "m = M()", f"inputs = ({''.join(s.name + ', ' for s in self.inputs)})", f"# chip: {self.chip}"]
        return "\n".join(out)


def _input_expr(s: InputSpec) -> str:
    if s.kind == "f":
        return f"torch.randn({s.shape}, generator=g) * {s.scale:g}"
    if s.kind == "i":
        return f"torch.randint(0, {s.hi}, {s.shape}, generator=g)"
    return f"torch.rand({s.shape}, generator=g) > 0.5"


_GLOBALS = {"torch": torch, "F": F}


def _make_module(fg: FuzzGraph) -> torch.nn.Module:
    src = [f"def forward(self, {', '.join(s.name for s in fg.inputs)}):"]
    src += [f"    {ln}" for ln in fg.lines]
    src.append(f"    return ({', '.join(fg.outputs)},)")
    ns: dict[str, Any] = {}
    exec("\n".join(src), dict(_GLOBALS), ns)

    class FuzzModule(torch.nn.Module):
        forward = ns["forward"]

    m = FuzzModule()
    for p in fg.params:
        setattr(m, p.name, torch.nn.Parameter(fg.tensors[p.name].clone(), requires_grad=False))
    return m.eval()


class _Self:
    """Stands for the module while lines are evaluated eagerly (self.w0 -> the tensor)."""

    def __init__(self, env: dict):
        self.__dict__["env"] = env

    def __getattr__(self, k: str) -> torch.Tensor:
        return self.__dict__["env"][k]


def _far_from_int(x: torch.Tensor, offset: float = 0.0) -> bool:
    """Every element at least MARGIN (relative) from an integer + offset."""
    d = (x - offset - torch.round(x - offset)).abs()
    return bool((d > MARGIN * max(1.0, float(x.abs().max()))).all()) if x.numel() else True


def _separated(a: torch.Tensor, b: torch.Tensor | float, allow_equal: bool = False) -> bool:
    d = (a - b).abs()
    scale = max(1.0, float(a.abs().max()) if a.numel() else 1.0)
    ok = d > MARGIN * scale
    if allow_equal:
        ok = ok | (d == 0)
    return bool(ok.all())


def _topk_separated(x: torch.Tensor, k: int) -> bool:
    """The k largest of each row (along the last axis) and the (k+1)-th are pairwise MARGIN apart."""
    n = x.shape[-1]
    s = torch.sort(x, dim=-1, descending=True).values[..., :min(k + 1, n)]
    if s.shape[-1] < 2:
        return True
    gaps = s[..., :-1] - s[..., 1:]
    return bool((gaps > MARGIN * max(1.0, float(x.abs().max()))).all())


def _well_spread(x: torch.Tensor, dims: list[int]) -> bool:
    """Rows along `dims` are not (nearly) constant: the std of each is a fair part of max|x|."""
    if math.prod(x.shape[d] for d in dims) < 2:
        return False
    sd = x.std(dim=dims, correction=0)
    return bool((sd > 0.05 * max(1e-3, float(x.abs().max()))).all())


class GraphBuilder:
    def __init__(self, ch: Chooser, data_seed: int, max_ops: int = 8, avoid_known_bugs: bool = False):
        self.ch = ch
        self.avoid_known_bugs = avoid_known_bugs
        self.g = torch.Generator().manual_seed(data_seed)
        self.fg = FuzzGraph([], [], [], [], data_seed)
        self.env: dict[str, torch.Tensor] = self.fg.tensors
        self.self_ = _Self(self.env)
        self.vals: list[Val] = []
        self.used: dict[str, int] = {}
        self.max_ops = max_ops
        self.n = 0

    # -- values ------------------------------------------------------------------------
    def shape(self, v: Val) -> tuple[int, ...]:
        return tuple(self.env[v.name].shape)

    def _cap_shape(self, shape: list[int]) -> tuple[int, ...]:
        while math.prod(shape) > MAX_NUMEL:
            i = max(range(len(shape)), key=lambda j: shape[j])
            shape[i] = max(1, shape[i] // 2)
        return tuple(shape)

    def rand_shape(self, rank: int | None = None, small: bool = False) -> tuple[int, ...]:
        rank = self.ch.int(1, 4) if rank is None else rank
        pool = SMALL_SIZES if small else SIZES
        return self._cap_shape([self.ch.choice(pool) for _ in range(rank)])

    def new_input(self, shape: tuple[int, ...], kind: str = "f", hi: int = 0, param: bool = False,
                  scale: float = 1.0) -> Val:
        lst = self.fg.params if param else self.fg.inputs
        name = f"w{len(self.fg.params)}" if param else f"x{len(self.fg.inputs)}"
        spec = InputSpec(name, tuple(shape), kind, hi, scale)
        lst.append(spec)
        self.fg.created.append(spec)
        g = self.g
        self.env[name] = eval(_input_expr(spec), {"torch": torch, "g": g})
        ref = f"self.{name}" if param else name
        if param:
            return Val(ref, kind)  # weights are not offered as operands of other ops
        v = Val(name, kind)
        self.vals.append(v)
        return v

    def tensor(self, v: Val) -> torch.Tensor:
        if v.name.startswith("self."):
            return self.env[v.name[5:]]
        return self.env[v.name]

    def emit(self, expr: str, kind: str, ok: Callable[[torch.Tensor], bool] | None = None,
             n_out: int = 1) -> list[Val] | None:
        """Evaluates `expr` (names: the values so far) and keeps it as a new line if the result is sane."""
        env = dict(self.env)
        env["self"] = self.self_
        try:
            r = eval(expr, dict(_GLOBALS), env)
        except Exception as e:  # the generator drew an invalid combination: a generator bug
            raise AssertionError(f"generator produced invalid torch code {expr!r}: {e}") from e
        rs = list(r) if n_out > 1 else [r]
        kinds = kind if isinstance(kind, (list, tuple)) else [kind] * n_out
        for t in rs:
            if t.numel() == 0 or t.numel() > MAX_NUMEL:
                return None
            if t.dtype.is_floating_point and not (torch.isfinite(t).all() and t.abs().max() <= MAX_ABS):
                return None
        if ok is not None and not ok(rs[0]):
            return None
        names = [f"v{self.n + i}" for i in range(n_out)]
        self.n += n_out
        lhs = ", ".join(names) if n_out > 1 else names[0]
        self.fg.lines.append(f"{lhs} = {expr}")
        out = []
        for nm, t, k in zip(names, rs, kinds):
            self.env[nm] = t
            v = Val(nm, k)
            self.vals.append(v)
            out.append(v)
        for tok in re.findall(r"\b[vx]\d+\b", expr):
            self.used[tok] = self.used.get(tok, 0) + 1
        return out

    def pick(self, kind: str = "f", pred: Callable[[tuple[int, ...]], bool] | None = None,
             allow_scalar: bool = False) -> Val | None:
        cands = [v for v in self.vals if v.kind == kind and (allow_scalar or len(self.shape(v)) > 0)
                 and (pred is None or pred(self.shape(v)))]
        if not cands:
            return None
        if self.ch.bool(0.5):
            return cands[-1]  # chains
        return self.ch.choice(cands)  # DAGs: reuse of earlier values (shared subexpressions)

    def float_val(self, pred: Callable[[tuple[int, ...]], bool] | None = None, rank: int | None = None) -> Val:
        v = self.pick("f", pred)
        if v is None:
            shape = self.rand_shape(rank)
            if pred is not None and not pred(shape):
                shape = self.rand_shape(rank, small=True)
            v = self.new_input(shape)
        return v

    def broadcast_partner(self, a: Val) -> str:
        """A float operand that broadcasts with `a`: an existing value, a fresh input or weight, or a scalar."""
        sa = self.shape(a)
        r = self.ch.int(0, 5)
        if r == 0:
            return repr(self.ch.choice([0.5, -1.25, 2.0, 3.0]))
        if r == 1:
            v = self.pick("f", lambda s: _broadcastable(s, sa), allow_scalar=True)
            if v is not None:
                return v.name
        shape = list(sa)
        # drop leading dims, make some dims 1, or grow a's 1-dims
        drop = self.ch.int(0, len(shape)) if self.ch.bool(0.3) else 0
        shape = shape[drop:]
        for i in range(len(shape)):
            if shape[i] != 1 and self.ch.bool(0.3):
                shape[i] = 1
            elif shape[i] == 1 and self.ch.bool(0.3):
                shape[i] = self.ch.choice([2, 3, 5, 17])
        if self.ch.bool(0.15) and len(shape) == len(sa) < 4:
            shape = [self.ch.choice([1, 2, 3])] + shape  # a 1 raises the rank without adding data
        try:
            out = torch.broadcast_shapes(tuple(shape), sa)
        except RuntimeError:
            out = None
        if out is None or math.prod(out) > MAX_NUMEL:
            shape = [1 if d != e else d for d, e in zip(shape, sa[len(sa) - len(shape):])] if len(shape) <= len(sa) else []
        v = self.new_input(tuple(shape), param=self.ch.bool(0.3))
        return v.name

    # -- ops ---------------------------------------------------------------------------
    def op_unary(self) -> Any:
        x = self.float_val()
        t = self.tensor(x)
        amax = float(t.abs().max())
        n = x.name
        forms = [f"torch.relu({n})", f"torch.neg({n})", f"torch.abs({n})", f"torch.tanh({n})",
                 f"torch.sigmoid({n})", f"F.silu({n})", f"F.gelu({n})", f"F.gelu({n}, approximate='tanh')",
                 f"F.hardswish({n})", f"F.hardsigmoid({n})", f"torch.erf({n})", f"F.relu6({n})",
                 f"torch.exp({n}.clamp(-6.0, 6.0))", f"torch.log({n}.abs() + 0.5)", f"torch.sqrt({n}.abs() + 0.1)",
                 f"torch.rsqrt({n}.abs() + 0.5)", f"torch.reciprocal({n}.abs() + 0.5)",
                 f"torch.clamp({n}, {self.ch.choice([-1.0, -0.25, 0.0])}, {self.ch.choice([0.5, 1.0, 2.0])})",
                 f"torch.clamp({n}, min={self.ch.choice([-0.5, 0.1])})", f"torch.clamp({n}, max={self.ch.choice([-0.5, 0.3])})",
                 f"F.hardtanh({n}, -0.5, 1.5)",
                 f"{n} * {self.ch.choice([2.5, -0.5, 0.125])}", f"{n} + 1.0", f"1.0 - {n}", f"{n} / 3.0", f"{n} - 0.5",
                 f"torch.pow({n}.abs() + 0.5, {self.ch.choice([0.5, 1.5, -1.0, 3.0])})"]
        if amax < 30:
            forms += [f"{n} ** 2", f"{n} ** 3"]
        if amax < 8:
            forms += [f"torch.sin({n})", f"torch.cos({n})"]
        i = self.ch.int(0, len(forms) + 3)
        if i < len(forms):
            return self.emit(forms[i], "f")
        j = i - len(forms)
        if j == 0:
            return self.emit(f"torch.floor({n})", "f", ok=lambda _: _far_from_int(t))
        if j == 1:
            return self.emit(f"torch.ceil({n})", "f", ok=lambda _: _far_from_int(t))
        if j == 2:
            return self.emit(f"torch.round({n})", "f", ok=lambda _: _far_from_int(t, 0.5))
        return self.emit(f"torch.sign({n})", "f", ok=lambda _: _separated(t, 0.0))

    def op_binary(self) -> Any:
        a = self.float_val()
        b = self.broadcast_partner(a)
        A = self.tensor(a)
        B = self._eval(b)
        forms = [f"{a.name} + {b}", f"{a.name} - {b}", f"{b} - {a.name}", f"torch.maximum({a.name}, {self._as_tensor(b)})",
                 f"torch.minimum({a.name}, {self._as_tensor(b)})", f"torch.add({a.name}, {self._as_tensor(b)}, alpha=2.0)"]
        if (A.abs().max() * (B.abs().max() if isinstance(B, torch.Tensor) else abs(B))) < 1e3:
            forms += [f"{a.name} * {b}", f"{b} * {a.name}"]
        forms += [f"{a.name} / ({self._as_tensor(b)}.abs() + 0.5)", f"{b} / ({a.name} * {a.name} + 0.25)"]
        return self.emit(self.ch.choice(forms), "f")

    def _as_tensor(self, b: str) -> str:
        return b if not _is_number(b) else f"torch.tensor({b})"

    def _eval(self, expr: str) -> Any:
        env = dict(self.env)
        env["self"] = self.self_
        return eval(expr, dict(_GLOBALS), env)

    def op_compare(self) -> Any:
        a = self.float_val()
        b = self.broadcast_partner(a)
        A, B = self.tensor(a), self._eval(b)
        op = self.ch.choice([">", "<", ">=", "<=", "==", "!="])
        eq = op in ("==", "!=")
        return self.emit(f"{a.name} {op} {b}", "b", ok=lambda _: _separated(A, B, allow_equal=eq))

    def op_bool(self) -> Any:
        c = self.pick("b")
        if c is None:
            return self.op_compare()
        sc = self.shape(c)
        r = self.ch.int(0, 6)
        if r == 0:
            return self.emit(f"torch.logical_not({c.name})", "b")
        if r == 1:
            d = self.pick("b", lambda s: _broadcastable(s, sc))
            if d is None:
                return None
            return self.emit(f"{c.name} {self.ch.choice(['&', '|'])} {d.name}", "b")
        if r == 2:
            return self.emit(f"{c.name}.float()", "f")
        if r == 3:
            a = self.pick("f", lambda s: _broadcastable(s, sc))
            if a is None:
                return None
            return self.emit(f"{c.name} * {a.name}", "f")
        if r == 4:
            a = self.pick("f", lambda s: _broadcastable(s, sc))
            if a is None:
                return None
            return self.emit(f"{a.name}.masked_fill({c.name}, {self.ch.choice([0.0, -1.5])})", "f",
                             ok=lambda t: tuple(t.shape) == self.shape(a))
        a = self.pick("f", lambda s: _broadcastable(s, sc))
        if a is None:
            return None
        b = self.broadcast_partner(a)
        bt = self._eval(b)
        try:
            torch.broadcast_shapes(sc, self.shape(a), tuple(bt.shape) if isinstance(bt, torch.Tensor) else ())
        except RuntimeError:
            return None
        return self.emit(f"torch.where({c.name}, {a.name}, {b})", "f")

    def op_matmul(self) -> Any:
        r = self.ch.int(0, 5)
        if r <= 1:  # x @ W, F.linear(x, W, b)
            a = self.float_val(lambda s: len(s) >= 1)
            sa = self.shape(a)
            k = sa[-1]
            n = self.ch.choice(SIZES)
            if r == 0:
                w = self.new_input((k, n), param=True, scale=1 / math.sqrt(k))
                return self.emit(f"torch.matmul({a.name}, {w.name})", "f")
            w = self.new_input((n, k), param=True, scale=1 / math.sqrt(k))
            if self.ch.bool(0.6):
                bias = self.new_input((n,), param=True)
                return self.emit(f"F.linear({a.name}, {w.name}, {bias.name})", "f")
            return self.emit(f"F.linear({a.name}, {w.name})", "f")
        if r == 2:  # addmm
            a = self.float_val(lambda s: len(s) == 2, rank=2)
            k = self.shape(a)[-1]
            n = self.ch.choice(SIZES)
            w = self.new_input((k, n), param=True, scale=1 / math.sqrt(k))
            bias = self.new_input((n,) if self.ch.bool() else (self.shape(a)[0], n), param=self.ch.bool())
            return self.emit(f"torch.addmm({bias.name}, {a.name}, {w.name}, beta={self.ch.choice([1.0, 0.5])}, "
                             f"alpha={self.ch.choice([1.0, 2.0])})", "f")
        if r == 3:  # a @ a^T style (shared operand), on the last two dims
            a = self.float_val(lambda s: len(s) >= 2 and s[-1] <= 129)
            sa = self.shape(a)
            if len(sa) < 2:
                return None
            k = sa[-1]
            return self.emit(f"torch.matmul({a.name}, {a.name}.transpose(-1, -2)) * {1 / k:.6g}", "f")
        if r == 4:  # bmm with a fresh runtime operand
            a = self.float_val(lambda s: len(s) == 3, rank=3)
            b_, m, k = self.shape(a)
            n = self.ch.choice(SIZES)
            if self.ch.bool():
                b = self.new_input((b_, n, k), scale=1 / math.sqrt(k))
                return self.emit(f"torch.bmm({a.name}, {b.name}.transpose(1, 2))", "f")
            b = self.new_input((b_, k, n), scale=1 / math.sqrt(k))
            return self.emit(f"torch.bmm({a.name}, {b.name})", "f")
        # broadcast batched matmul between two runtime values
        a = self.float_val(lambda s: len(s) >= 2)
        sa = self.shape(a)
        if len(sa) < 2:
            return None
        k = sa[-1]
        n = self.ch.choice(SIZES)
        batch = list(sa[:-2])
        bshape = [1 if (d > 1 and self.ch.bool(0.4)) else d for d in batch]
        if bshape and self.ch.bool(0.3):
            bshape = bshape[1:]
        if math.prod(bshape + [k, n]) > MAX_NUMEL:
            bshape, n = [1] * len(bshape), min(n, max(1, MAX_NUMEL // k))
        if k * n > MAX_NUMEL:
            return None
        b = self.new_input(tuple(bshape + [k, n]), scale=1 / math.sqrt(k))
        return self.emit(f"torch.matmul({a.name}, {b.name})", "f")

    def op_reduce(self) -> Any:
        x = self.float_val()
        s = self.shape(x)
        rank = len(s)
        dims = sorted({self.ch.int(0, rank - 1) for _ in range(self.ch.int(1, rank))})
        neg = self.ch.bool(0.3)
        dtxt = ", ".join(str(d - rank if neg else d) for d in dims)
        keep = self.ch.bool()
        kind = self.ch.choice(["sum", "mean", "amax", "amin", "var", "full_sum", "full_mean"])
        if kind == "full_sum":
            return self.emit(f"{x.name}.sum()", "f")
        if kind == "full_mean":
            return self.emit(f"{x.name}.mean()", "f")
        if kind == "var":
            t = self.tensor(x)
            if not _well_spread(t, dims):
                return None
            return self.emit(f"torch.var({x.name}, dim=({dtxt},), correction={self.ch.choice([0, 1])}, keepdim={keep})",
                             "f")
        return self.emit(f"{x.name}.{kind}(dim=({dtxt},), keepdim={keep})", "f")

    def op_softmax(self) -> Any:
        x = self.float_val()
        rank = len(self.shape(x))
        d = self.ch.int(-rank, rank - 1)
        fn = self.ch.choice(["torch.softmax", "torch.log_softmax"])
        return self.emit(f"{fn}({x.name}, dim={d})", "f")

    def op_layer_norm(self) -> Any:
        x = self.float_val()
        s = self.shape(x)
        k = self.ch.int(1, min(2, len(s)))
        dims = list(range(len(s) - k, len(s)))
        if not _well_spread(self.tensor(x), dims):
            return None
        ns = tuple(s[-k:])
        args = ""
        if self.ch.bool(0.7):
            w = self.new_input(ns, param=True, scale=0.5)
            args += f", {w.name}"
            if self.ch.bool(0.7):
                b = self.new_input(ns, param=True, scale=0.5)
                args += f", {b.name}"
        return self.emit(f"F.layer_norm({x.name}, {ns}{args})", "f")

    def op_view(self) -> Any:
        x = self.float_val() if self.ch.bool(0.85) else (self.pick("b") or self.float_val())
        s = self.shape(x)
        rank = len(s)
        n = x.name
        r = self.ch.int(0, 13)
        if r == 0 and rank >= 2:
            perm = list(range(rank))
            for i in range(rank - 1, 0, -1):
                j = self.ch.int(0, i)
                perm[i], perm[j] = perm[j], perm[i]
            return self.emit(f"{n}.permute({', '.join(map(str, perm))})", x.kind)
        if r == 1 and rank >= 2:
            a, b = self.ch.int(0, rank - 1), self.ch.int(0, rank - 1)
            return self.emit(f"{n}.transpose({a}, {b - rank})", x.kind)
        if r == 2:  # reshape: merge two adjacent dims or split one
            if rank >= 2 and self.ch.bool():
                i = self.ch.int(0, rank - 2)
                new = list(s[:i]) + [s[i] * s[i + 1]] + list(s[i + 2:])
            else:
                i = self.ch.int(0, rank - 1)
                f = next((f for f in (2, 3, 4, 5, 7, 8, 16, 32) if s[i] % f == 0 and s[i] > f), None)
                if f is None or rank >= 4:
                    new = list(s[:i]) + [1, s[i]] + list(s[i + 1:]) if rank < 4 else list(s)
                else:
                    new = list(s[:i]) + [f, s[i] // f] + list(s[i + 1:])
            if self.ch.bool(0.3) and new:
                new[self.ch.int(0, len(new) - 1)] = -1
            fn = self.ch.choice(["reshape", "view"]) if self._contiguous(x) else "reshape"
            return self.emit(f"{n}.{fn}({', '.join(map(str, new))})", x.kind)
        if r == 3:  # expand a 1-dim or add a leading dim
            ones = [i for i, d in enumerate(s) if d == 1]
            new = list(s)
            if ones and self.ch.bool(0.7):
                for i in ones:
                    new[i] = self.ch.choice([2, 3, 7, 64, 129]) if self.ch.bool(0.8) else -1
            elif rank < 4:
                new = [self.ch.choice([2, 3])] + new
            else:
                return None
            return self.emit(f"{n}.expand({', '.join(map(str, new))})", x.kind)
        if r == 4:  # slice with a step
            d = self.ch.int(0, rank - 1)
            if s[d] < 2:
                return None
            a = self.ch.int(0, s[d] - 1)
            b = self.ch.int(a + 1, s[d])
            st = self.ch.choice([1, 1, 2, 3])
            idx = ", ".join([":"] * d + [f"{a}:{b}:{st}" if st > 1 else f"{a}:{b}"])
            return self.emit(f"{n}[{idx}]", x.kind)
        if r == 5 and rank >= 2:  # select
            d = self.ch.int(0, rank - 1)
            i = self.ch.int(-s[d], s[d] - 1)
            return self.emit(f"{n}.select({d}, {i})", x.kind)
        if r == 6:  # split / chunk: one or two pieces used
            d = self.ch.int(0, rank - 1)
            if s[d] < 2:
                return None
            sz = self.ch.int(1, s[d] - 1)
            pieces = math.ceil(s[d] / sz)
            if pieces > 8:
                return None
            return self.emit(f"torch.split({n}, {sz}, dim={d})", [x.kind] * pieces, n_out=pieces)
        if r == 7:  # cat with itself / a transformed self / a fresh input
            d = self.ch.int(0, rank - 1)
            other = list(s)
            other[d] = self.ch.choice([1, 2, 5, s[d]])
            if x.kind != "f" or self.ch.bool(0.4):
                parts = [n, n] if x.kind != "f" else [n, f"torch.tanh({n})"]
            else:
                if math.prod(other) > MAX_NUMEL:
                    other[d] = 1
                parts = [n, self.new_input(tuple(other)).name]
            if self.ch.bool(0.3):
                parts.reverse()
            return self.emit(f"torch.cat([{', '.join(parts)}], dim={d - rank if self.ch.bool() else d})", x.kind)
        if r == 8 and x.kind == "f":  # constant pad
            k = self.ch.int(1, min(2, rank))
            pads = [self.ch.choice([0, 1, 2, 3]) for _ in range(2 * k)]
            if not any(pads):
                pads[0] = 1
            return self.emit(f"F.pad({n}, {tuple(pads)}, value={self.ch.choice([0.0, 1.5])})", "f")
        if r == 9:
            d = self.ch.int(-rank - 1, rank)
            return self.emit(f"{n}.unsqueeze({d})", x.kind)
        if r == 10:
            ones = [i for i, v in enumerate(s) if v == 1]
            if not ones:
                return None
            return self.emit(f"{n}.squeeze({self.ch.choice(ones)})", x.kind)
        if r == 11 and rank >= 2:
            return self.emit(f"{n}.flatten({self.ch.int(0, rank - 2)})", x.kind)
        if r == 12 and rank == 2:
            return self.emit(f"{n}.t()", x.kind)
        if r == 13:
            return self.emit(f"torch.stack([{n}, {n} * 0.5], dim={self.ch.int(0, rank)})" if x.kind == "f"
                             else f"torch.stack([{n}, {n}], dim={self.ch.int(0, rank)})", x.kind)
        return None

    def _contiguous(self, x: Val) -> bool:
        return self.tensor(x).is_contiguous()

    def op_gather(self) -> Any:
        r = self.ch.int(0, 4)
        if r == 0:  # embedding
            vocab = self.ch.choice([5, 17, 64, 129, 300])
            dim = self.ch.choice([1, 3, 8, 33, 64, 65])
            idx = self.new_input(self.rand_shape(self.ch.int(1, 2), small=True), kind="i", hi=vocab)
            w = self.new_input((vocab, dim), param=True)
            return self.emit(f"F.embedding({idx.name}, {w.name})", "f")
        x = self.float_val()
        s = self.shape(x)
        rank = len(s)
        if r == 1:  # index_select
            d = self.ch.int(0, rank - 1)
            idx = self.new_input((self.ch.choice([1, 2, 5, 9]),), kind="i", hi=s[d])
            return self.emit(f"torch.index_select({x.name}, {d - rank if self.ch.bool() else d}, {idx.name})", "f")
        if r == 2:  # x[idx] on one axis
            d = self.ch.int(0, min(rank - 1, 1))
            idx = self.new_input(self.rand_shape(self.ch.int(1, 2), small=True), kind="i", hi=s[d])
            return self.emit(f"{x.name}[{':, ' * d}{idx.name}]", "f")
        if r == 3:  # torch.gather along the last axis
            m = self.ch.choice([1, 2, 3, 7])
            idx = self.new_input(tuple(s[:-1]) + (m,), kind="i", hi=s[-1])
            return self.emit(f"torch.gather({x.name}, -1, {idx.name})", "f")
        # gather of the indices topk found (shared subexpression)
        k = self.ch.int(1, min(4, s[-1]))
        t = self.tensor(x)
        if not _topk_separated(t, k):
            return None
        return self.emit(f"torch.gather({x.name}, -1, torch.topk({x.name}, {k}).indices) * 2.0", "f")

    def op_topk(self) -> Any:
        x = self.float_val()
        s = self.shape(x)
        t = self.tensor(x)
        if self.ch.bool():
            keep = self.ch.bool()
            return self.emit(f"torch.argmax({x.name}, dim=-1, keepdim={keep})", "i", ok=lambda _: _topk_separated(t, 1))
        k = self.ch.int(1, min(8, s[-1]))
        if self.ch.bool():
            return self.emit(f"torch.topk({x.name}, {k}, dim=-1)", ["f", "i"], n_out=2,
                             ok=lambda _: _topk_separated(t, k))
        return self.emit(f"torch.topk({x.name}, {k}).values", "f", ok=lambda _: _topk_separated(t, k))

    def op_conv(self) -> Any:
        x = self.pick("f", lambda s: len(s) == 4 and s[1] <= 64 and s[2] * s[3] <= 4096)
        if x is None:
            shape = (self.ch.choice([1, 2]), self.ch.choice([1, 3, 4, 8, 16]), self.ch.choice([1, 5, 7, 8, 13, 17]),
                     self.ch.choice([1, 4, 7, 9, 16]))
            x = self.new_input(shape)
        n_, c, h, w = self.shape(x)
        r = self.ch.int(0, 4)
        if r <= 1:
            groups = self.ch.choice([g for g in (1, 1, 2, 4, c) if c % g == 0])
            o = groups * self.ch.choice([1, 2, 3, 8]) if groups > 1 else self.ch.choice([1, 4, 8, 17, 64])
            kh, kw = self.ch.choice([1, 3, 5]), self.ch.choice([1, 3])
            st = self.ch.choice([1, 1, 2])
            dil = self.ch.choice([1, 1, 2])
            pad = self.ch.choice([0, 1, 2])
            if (h + 2 * pad - dil * (kh - 1) - 1) < 0 or (w + 2 * pad - dil * (kw - 1) - 1) < 0:
                return None
            wt = self.new_input((o, c // groups, kh, kw), param=True, scale=1 / math.sqrt(c // groups * kh * kw))
            bias = self.new_input((o,), param=True) if self.ch.bool() else None
            return self.emit(f"F.conv2d({x.name}, {wt.name}, {bias.name if bias else None}, stride={st}, "
                             f"padding={pad}, dilation={dil}, groups={groups})", "f")
        k = self.ch.choice([1, 2, 3])
        st = self.ch.choice([1, 2, k])
        pad = self.ch.int(0, k // 2)
        if h + 2 * pad < k or w + 2 * pad < k:
            return None
        if r == 2:
            return self.emit(f"F.max_pool2d({x.name}, {k}, stride={st}, padding={pad})", "f")
        if r == 3:
            return self.emit(f"F.avg_pool2d({x.name}, {k}, stride={st}, padding={pad})", "f")
        oh = self.ch.choice([d for d in (1, 2, h) if h % d == 0])
        ow = self.ch.choice([d for d in (1, 2, w) if w % d == 0])
        return self.emit(f"F.adaptive_avg_pool2d({x.name}, ({oh}, {ow}))", "f")

    def op_pattern(self) -> Any:
        """Chains vnpu's pattern rewrites match (RMSNorm, rotate-half RoPE, softmax -> topk
        routing, sibling matmuls on one input, attention), drawn with variations around them."""
        r = self.ch.int(0, 4)
        if r == 0:  # RMSNorm
            x = self.float_val(lambda s: s[-1] >= 2)
            t = self.tensor(x)
            if t.shape[-1] < 2 or not bool((t.pow(2).mean(-1).sqrt() > 0.05 * float(t.abs().max())).all()):
                return None
            eps = self.ch.choice(["1e-6", "1e-5"])
            if self.ch.bool(0.3):
                eps = self.new_input((1,) * self.ch.int(1, 3), param=True, scale=1e-5).name
            y = self.emit(f"{x.name} * torch.rsqrt({x.name}.pow(2).mean(-1, keepdim=True) + {eps})", "f")
            if y is not None and self.ch.bool(0.6):
                w = self.new_input((t.shape[-1],), param=self.ch.bool(0.8))
                return self.emit(f"{y[0].name} * {w.name}", "f")
            return y
        if r == 1:  # rotate-half RoPE
            x = self.float_val(lambda s: s[-1] % 2 == 0 and s[-1] >= 2)
            s = self.shape(x)
            d = s[-1]
            if d % 2:
                return None
            cs = list(s[-self.ch.int(1, min(2, len(s))):])
            if len(cs) == 2 and self.ch.bool(0.3):
                cs[-1] = 1
            param = self.ch.bool()
            c = self.new_input(tuple(cs), param=param)
            sn = self.new_input(tuple(cs), param=param)
            h = d // 2
            return self.emit(f"{x.name} * {c.name} + torch.cat([-{x.name}[..., {h}:], {x.name}[..., :{h}]], dim=-1) * "
                             f"{sn.name}", "f")
        if r == 2:  # softmax -> topk routing, optionally normalized
            x = self.float_val()
            k = self.ch.int(1, min(4, self.shape(x)[-1]))
            p = torch.softmax(self.tensor(x), -1)
            out = self.emit(f"torch.topk(torch.softmax({x.name}, dim=-1), {k})", ["f", "i"], n_out=2,
                            ok=lambda _: _topk_separated(p, k))
            if out is not None and self.ch.bool(0.5):
                v = out[0].name
                return self.emit(f"{v} / {v}.sum(-1, keepdim=True)", "f")
            return out
        if r == 3:  # sibling matmuls on one 2-D input
            x = self.float_val(lambda s: len(s) == 2, rank=2)
            k = self.shape(x)[-1]
            outs = []
            for _ in range(self.ch.int(2, 3)):
                w = self.new_input((k, self.ch.choice(SIZES)), param=True, scale=1 / math.sqrt(k))
                if self.ch.bool(0.3):
                    bias = self.new_input((self.tensor(w).shape[1],), param=True)
                    outs.append(self.emit(f"{x.name} @ {w.name} + {bias.name}", "f"))
                else:
                    outs.append(self.emit(f"{x.name} @ {w.name}", "f"))
            return outs[-1]
        # scaled dot-product attention
        b, hds, s_, d = self.ch.choice([1, 2]), self.ch.choice([1, 2, 3]), self.ch.choice([1, 3, 8, 17]), \
            self.ch.choice([4, 8, 16, 64, 320])
        l_ = s_ if self.ch.bool(0.7) else self.ch.choice([1, 5, 16])
        q = self.new_input((b, hds, s_, d))
        k = self.new_input((b, hds, l_, d))
        v = self.new_input((b, hds, l_, d))
        mode = self.ch.int(0, 2)
        if mode == 0:
            return self.emit(f"F.scaled_dot_product_attention({q.name}, {k.name}, {v.name})", "f")
        if mode == 1:
            return self.emit(f"F.scaled_dot_product_attention({q.name}, {k.name}, {v.name}, is_causal=True)", "f")
        mask = self.new_input((s_, l_), param=self.ch.bool())
        return self.emit(f"F.scaled_dot_product_attention({q.name}, {k.name}, {v.name}, attn_mask={mask.name})", "f")

    OPS = [("op_pattern", 2), ("op_unary", 4), ("op_binary", 4), ("op_compare", 1), ("op_bool", 1), ("op_matmul", 3), ("op_reduce", 2),
           ("op_softmax", 1), ("op_layer_norm", 1), ("op_view", 5), ("op_gather", 1), ("op_topk", 1), ("op_conv", 2)]

    def build(self, n_ops: int | None = None) -> FuzzGraph:
        n_ops = self.ch.int(1, self.max_ops) if n_ops is None else n_ops
        table = [name for name, w in self.OPS for _ in range(w)]
        made, tries = 0, 0
        while made < n_ops and tries < 4 * n_ops + 8:
            tries += 1
            if self.ch.bool(0.1) or not self.vals:
                self.new_input(self.rand_shape())
            if getattr(self, self.ch.choice(table))() is not None:
                made += 1
        if not self.fg.lines:
            x = self.float_val()
            self.emit(f"torch.relu({x.name})", "f")
        self._choose_outputs()
        return self.fg

    def _choose_outputs(self) -> None:
        computed = [v for v in self.vals if v.name.startswith("v")]
        sinks = [v.name for v in computed if self.used.get(v.name, 0) == 0]
        outs = sinks[-4:] if sinks else [computed[-1].name]
        inner = [v.name for v in computed if v.name not in outs]
        if inner and self.ch.bool(0.25):
            outs.append(self.ch.choice(inner))  # an intermediate also used by later ops
        if self.ch.bool(0.05):
            outs.append(self.ch.choice([v.name for v in self.vals]))  # may be an input or a repeat
        self.fg.outputs = outs


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _broadcastable(s: tuple[int, ...], t: tuple[int, ...]) -> bool:
    """s broadcasts to t's shape without changing it (s's dims are 1 or equal, rank <= t's)."""
    if len(s) > len(t):
        return False
    return all(a == 1 or a == b for a, b in zip(reversed(s), reversed(t)))


# -- comparison ------------------------------------------------------------------------------
def compare(out: Any, ref: torch.Tensor, rel: float = 1e-4, floor: float = 1e-5) -> str | None:
    """None when vnpu's output matches eager PyTorch; else what differs."""
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(np.asarray(out))
    if tuple(out.shape) != tuple(ref.shape):
        return f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    if ref.dtype.is_floating_point:
        if not out.dtype.is_floating_point:
            return f"dtype {out.dtype} != {ref.dtype}"
        if ref.numel() == 0:
            return None
        o, r = out.double(), ref.double()
        if not torch.isfinite(o).all():
            return "non-finite output"
        err = float((o - r).abs().max())
        tol = max(rel * float(r.abs().max()), floor)
        return None if err <= tol else f"max|err| {err:.3g} > tol {tol:.3g} (max|ref| {float(r.abs().max()):.3g})"
    if out.dtype != ref.dtype:
        return f"dtype {out.dtype} != {ref.dtype}"
    bad = int((out != ref).sum())
    return None if bad == 0 else f"{bad} of {ref.numel()} {ref.dtype} elements differ"


@dataclass
class Outcome:
    status: str  # "ok", "mismatch", "crash", "unsupported" (a generator bug)
    detail: str = ""


def run_graph(fg: FuzzGraph, chip: Any) -> Outcome:
    """Compiles the graph with vnpu (strict, fp32), runs it on the simulated chip, compares with eager."""
    import vnpu
    from vnpu.frontends.errors import UnsupportedOpError

    m = fg.module()
    xs = fg.example_inputs()
    with torch.no_grad():
        ref = m(*xs)
    try:
        cm = vnpu.compile(m, xs, chip=chip, dtype="fp32", strict=True)
        outs = cm(*xs)
    except UnsupportedOpError as e:
        return Outcome("unsupported", str(e))
    except Exception as e:  # noqa: BLE001  (any other error is a finding)
        return Outcome("crash", f"{type(e).__name__}: {e}")
    outs = outs if isinstance(outs, tuple) else (outs,)
    if len(outs) != len(ref):
        return Outcome("mismatch", f"{len(outs)} outputs, expected {len(ref)}")
    msgs = [(i, m_) for i, (o, r) in enumerate(zip(outs, ref)) if (m_ := compare(o, r)) is not None]
    if msgs:  # eager fp32 is not exact either: an output as close to the float64 result also matches
        exact = _float64_reference(m, xs)
        if exact is not None:
            msgs = [(i, m_) for i, m_ in msgs if compare(outs[i], exact[i]) is not None]
    text = "; ".join(f"output {i} ({fg.outputs[i]}): {m_}" for i, m_ in msgs)
    return Outcome("mismatch", text) if msgs else Outcome("ok")


def _float64_reference(m: torch.nn.Module, xs: tuple) -> tuple | None:
    """The graph evaluated in float64 (float inputs and parameters promoted), its float
    outputs rounded to their fp32 dtype's shape; None when the graph does not run in float64."""
    import copy

    try:
        m64 = copy.deepcopy(m).double()
        xs64 = tuple(x.double() if x.is_floating_point() else x for x in xs)
        with torch.no_grad():
            out = m64(*xs64)
    except Exception:  # noqa: BLE001  (an op without a float64 kernel: no second reference)
        return None
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# -- chips -------------------------------------------------------------------------------------
# The default chip and two small ones whose scratchpads force many tiles, uneven splits over
# an odd core count and the chunked-row paths of the vector kernels.
CHIP_OVERRIDES: dict[str, dict[str, Any] | None] = {
    "vnpu-v1": None,
    "2core-64k": {"name": "fuzz-2core", "cores": 2, "core.scratchpad.bytes": 65536},
    "3core-8x8-32k": {"name": "fuzz-3core", "cores": 3, "core.matrix.rows": 8, "core.matrix.cols": 8,
                      "core.scratchpad.bytes": 32768, "core.vector.lanes": 16, "core.vector.sfu_lanes": 4},
}
_CHIPS: dict[str, Any] = {}


def fuzz_chip(name: str) -> Any:
    if name not in _CHIPS:
        from conftest import make_chip  # tests/ is on sys.path (pytest rootdir, or the benchmark adds it)

        from vnpu.chip import load_chip

        ov = CHIP_OVERRIDES[name]
        _CHIPS[name] = load_chip("vnpu-v1") if ov is None else make_chip(ov)
    return _CHIPS[name]


def draw_graph(ch: Chooser, data_seed: int, max_ops: int = 8, avoid_known_bugs: bool = False) -> FuzzGraph:
    """One random graph and the chip to run it on. avoid_known_bugs: no graph that hits a bug
    already pinned by an xfail test in tests/test_fuzz_regressions.py (see KNOWN_BUGS)."""
    chip = ch.choice(list(CHIP_OVERRIDES))
    fg = GraphBuilder(ch, data_seed, max_ops, avoid_known_bugs).build()
    fg.chip = chip
    return fg


# -- shrinking -----------------------------------------------------------------------------------
def prune(fg: FuzzGraph, outputs: list[str]) -> FuzzGraph:
    """The graph computing only `outputs`: lines, inputs and weights nothing needs are dropped
    (every tensor's data is still drawn in the same order, so the rest keep their values)."""
    need = set(outputs)
    keep: list[str] = []
    for ln in reversed(fg.lines):
        lhs, expr = ln.split(" = ", 1)
        if any(n in need for n in lhs.split(", ")):
            keep.append(ln)
            need |= set(re.findall(r"\b[vxw]\d+\b", expr))
    keep.reverse()
    return FuzzGraph([s for s in fg.inputs if s.name in need], [p for p in fg.params if p.name in need], keep,
                     list(outputs), fg.data_seed, fg.chip, fg.tensors, fg.created)


def shrink(fg: FuzzGraph, status: str) -> FuzzGraph:
    """A smaller graph failing the same way: one output if one suffices, else fewer outputs;
    the default chip if it fails there too."""
    def fails(g: FuzzGraph) -> bool:
        return run_graph(g, fuzz_chip(g.chip)).status == status

    best = prune(fg, fg.outputs)
    for o in dict.fromkeys(fg.outputs):
        cand = prune(fg, [o])
        if fails(cand):
            best = cand
            break
    else:
        outs = list(dict.fromkeys(best.outputs))
        for o in list(outs):
            if len(outs) > 1:
                cand = prune(fg, [x for x in outs if x != o])
                if fails(cand):
                    outs.remove(o)
                    best = cand
    if best.chip != "vnpu-v1":
        cand = FuzzGraph(best.inputs, best.params, best.lines, best.outputs, best.data_seed, "vnpu-v1",
                         best.tensors, best.created)
        if fails(cand):
            best = cand
    return best
