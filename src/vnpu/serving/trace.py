"""Request traces for serving simulations: synthetic (arrival process + length distributions) or
read from a CSV / JSONL file.

A length is a number (fixed) or a distribution `name:key=value,...`:
    uniform:low=100,high=900        integers uniform in [low, high]
    normal:mean=600,std=100         rounded, clipped to >= 1
    lognormal:mean=600,sigma=0.8    mean of the distribution (mu = ln(mean) - sigma^2 / 2), rounded
    zipf:a=1.2,max=4096             P(n) ~ n^-a over 1..max
each optionally with `min=` / `max=` bounds (zipf's max is its support). Arrivals at `rate`
requests/s are Poisson (exponential gaps) or `gamma:cv=C` (Gamma gaps with mean 1 / rate and
coefficient of variation C: C > 1 is burstier than Poisson).

A trace file has one request per row: `arrival_s`, `prompt_tokens`, `output_tokens`, and
optionally `prefix_id` / `prefix_tokens` (requests with the same prefix_id share their first
prefix_tokens prompt tokens). CSV needs a header row; JSONL one object per line. Rows are sorted
by arrival (stable). A bad row is refused with its line number.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# a conversation-like sample (benchmarks/make_sample_trace.py: statistics of Azure's public 2023 trace)
SAMPLE_TRACE = Path(__file__).resolve().parent / "data" / "conversation_sample.csv"
MAX_TOKENS = 1 << 24  # per request: far past any context window, low enough to catch a typo
MAX_REQUESTS = 10_000_000


class TraceError(ValueError):
    """A trace or trace option that cannot be used; the message names it and what to do."""


@dataclass(frozen=True)
class Request:
    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_id: str | None = None
    prefix_tokens: int = 0  # leading prompt tokens shared by every request with this prefix_id


# -- length distributions -------------------------------------------------------------------------------
_KEYS = {"uniform": ({"low", "high"}, set()), "normal": ({"mean", "std"}, set()),
         "lognormal": ({"mean", "sigma"}, set()), "zipf": ({"a", "max"}, set())}


@dataclass(frozen=True)
class LengthDist:
    """Token counts drawn per request (see the module docstring for the forms)."""
    kind: str  # fixed | uniform | normal | lognormal | zipf
    params: tuple[tuple[str, float], ...]
    text: str

    def p(self, key: str, default: float | None = None) -> float:
        return dict(self.params).get(key, default)  # type: ignore[return-value]

    @property
    def mean(self) -> float:
        """The distribution's mean before rounding and bounds (a guide for capacity planning)."""
        k = self.kind
        if k == "fixed":
            return self.p("value")
        if k == "uniform":
            return (self.p("low") + self.p("high")) / 2
        if k in ("normal", "lognormal"):
            return self.p("mean")
        n = np.arange(1, int(self.p("max")) + 1, dtype=np.float64)
        w = n ** -self.p("a")
        return float((n * w).sum() / w.sum())

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        k = self.kind
        if k == "fixed":
            x = np.full(n, self.p("value"))
        elif k == "uniform":
            x = rng.integers(int(self.p("low")), int(self.p("high")) + 1, n).astype(np.float64)
        elif k == "normal":
            x = rng.normal(self.p("mean"), self.p("std"), n)
        elif k == "lognormal":
            sigma = self.p("sigma")
            x = rng.lognormal(math.log(self.p("mean")) - sigma * sigma / 2, sigma, n)
        else:  # zipf over 1..max, by inverse CDF (numpy's zipf has no upper bound and needs a > 1)
            support = np.arange(1, int(self.p("max")) + 1, dtype=np.float64)
            cdf = np.cumsum(support ** -self.p("a"))
            x = support[np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n)), support.size - 1)]
        lo = self.p("min", 1.0)
        hi = float(MAX_TOKENS) if k == "zipf" else self.p("max", float(MAX_TOKENS))  # zipf's max is its support
        return np.clip(np.rint(x), max(lo, 1.0), hi).astype(np.int64)


def parse_length(text: str | int, what: str = "length") -> LengthDist:
    """`600`, or `lognormal:mean=600,sigma=0.8` etc.: a TraceError naming `what` otherwise."""
    s = str(text).strip()
    try:
        v = float(s)
    except ValueError:
        pass
    else:
        if not (v >= 1 and v == int(v) and v <= MAX_TOKENS):
            raise TraceError(f"{what} {s!r}: a fixed length is a whole number of tokens in 1..{MAX_TOKENS}")
        return LengthDist("fixed", (("value", v),), s)
    kind, _, rest = s.partition(":")
    if kind not in _KEYS:
        raise TraceError(f"{what} {s!r}: give a number of tokens or one of {', '.join(_KEYS)} "
                         "(e.g. lognormal:mean=600,sigma=0.8)")
    params: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, val = item.partition("=")
        try:
            if not eq:
                raise ValueError
            params[key.strip()] = float(val)
        except ValueError:
            raise TraceError(f"{what} {s!r}: {item!r} is not key=number") from None
    need, _ = _KEYS[kind]
    allowed = need | {"min", "max"}
    if need - params.keys() or params.keys() - allowed:
        raise TraceError(f"{what} {s!r}: {kind} takes {', '.join(sorted(need))} (and optionally min, max)")
    if any(not math.isfinite(v) for v in params.values()):
        raise TraceError(f"{what} {s!r}: parameters must be finite numbers")
    bad = {"uniform": lambda p: not 1 <= p["low"] <= p["high"] <= MAX_TOKENS,
           "normal": lambda p: p["mean"] < 1 or p["std"] < 0,
           "lognormal": lambda p: p["mean"] < 1 or p["sigma"] < 0 or p["sigma"] > 10,
           "zipf": lambda p: p["a"] <= 0 or not 1 <= p["max"] <= MAX_TOKENS}[kind]
    if bad(params) or params.get("min", 1) < 1 or params.get("min", 1) > params.get("max", MAX_TOKENS):
        raise TraceError(f"{what} {s!r}: parameters out of range (lengths are >= 1 token; std, sigma >= 0; "
                         "zipf a > 0)")
    return LengthDist(kind, tuple(sorted(params.items())), s)


# -- arrivals -----------------------------------------------------------------------------------------
def arrival_times(rate: float, n: int, process: str, rng: np.random.Generator) -> np.ndarray:
    """n arrival times (s) from t = 0 at `rate` requests/s: `poisson` or `gamma:cv=C`."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise TraceError(f"--rate must be a positive number of requests per second, got {rate}")
    p = process.strip()
    if p == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif p.startswith("gamma:cv="):
        try:
            cv = float(p.split("=", 1)[1])
        except ValueError:
            cv = -1.0
        if not (0 < cv <= 100):
            raise TraceError(f"arrivals {process!r}: cv must be a number in (0, 100]")
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    else:
        raise TraceError(f"arrivals {process!r}: use poisson or gamma:cv=C")
    return np.cumsum(gaps)


def synthetic_trace(rate: float, requests: int, prompt_len: str | int, output_len: str | int,
                    arrivals: str = "poisson", seed: int = 0) -> list[Request]:
    """`requests` requests at `rate` per second with the given length distributions; the same
    seed gives the same trace."""
    if not (isinstance(requests, int) and 1 <= requests <= MAX_REQUESTS):
        raise TraceError(f"--requests must be a whole number in 1..{MAX_REQUESTS}, got {requests}")
    pd, od = parse_length(prompt_len, "--prompt-len"), parse_length(output_len, "--output-len")
    rng = np.random.default_rng(seed)
    t = arrival_times(rate, requests, arrivals, rng)
    pl, ol = pd.sample(rng, requests), od.sample(rng, requests)
    return [Request(i, float(t[i]), int(pl[i]), int(ol[i])) for i in range(requests)]


# -- files --------------------------------------------------------------------------------------------
FIELDS = ("arrival_s", "prompt_tokens", "output_tokens", "prefix_id", "prefix_tokens")


def _row(where: str, row: dict, index: int) -> Request:
    missing = [f for f in FIELDS[:3] if row.get(f) in (None, "")]
    if missing:
        raise TraceError(f"{where}: missing {', '.join(missing)} (columns: {', '.join(FIELDS)})")
    try:
        t = float(row["arrival_s"])
        pt, ot = row["prompt_tokens"], row["output_tokens"]
        pt, ot = int(float(pt)), int(float(ot))
        if float(row["prompt_tokens"]) != pt or float(row["output_tokens"]) != ot:
            raise ValueError
        pid = row.get("prefix_id")
        pid = None if pid in (None, "") else str(pid)
        ptk = row.get("prefix_tokens")
        ptk = 0 if ptk in (None, "") else int(float(ptk))
    except (TypeError, ValueError):
        raise TraceError(f"{where}: arrival_s must be a number and the token counts whole numbers") from None
    if not (math.isfinite(t) and t >= 0):
        raise TraceError(f"{where}: arrival_s must be a finite time >= 0 s, got {row['arrival_s']}")
    if not (1 <= pt <= MAX_TOKENS and 1 <= ot <= MAX_TOKENS):
        raise TraceError(f"{where}: prompt_tokens and output_tokens must be in 1..{MAX_TOKENS}")
    if not 0 <= ptk <= pt or (ptk and pid is None):
        raise TraceError(f"{where}: prefix_tokens must be in 0..prompt_tokens, with a prefix_id")
    return Request(index, t, pt, ot, pid, ptk)


def read_trace(path: str | Path) -> list[Request]:
    """A CSV (header row) or JSONL trace file: requests sorted by arrival, ids in that order."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {p} does not exist")
    rows: list[Request] = []
    with p.open(newline="") as f:
        if p.suffix.lower() in (".jsonl", ".ndjson"):
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    raise TraceError(f"{p}:{n}: not a JSON object") from None
                if not isinstance(obj, dict):
                    raise TraceError(f"{p}:{n}: not a JSON object")
                rows.append(_row(f"{p}:{n}", obj, len(rows)))
                if len(rows) > MAX_REQUESTS:
                    raise TraceError(f"{p}: more than {MAX_REQUESTS} requests")
        elif p.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not set(FIELDS[:3]) <= set(reader.fieldnames):
                raise TraceError(f"{p}:1: the header must name {', '.join(FIELDS[:3])} (optional: {', '.join(FIELDS[3:])})")
            for row in reader:
                rows.append(_row(f"{p}:{reader.line_num}", row, len(rows)))
                if len(rows) > MAX_REQUESTS:
                    raise TraceError(f"{p}: more than {MAX_REQUESTS} requests")
        else:
            raise TraceError(f"trace file {p}: use a .csv or .jsonl file")
    if not rows:
        raise TraceError(f"trace file {p} holds no requests")
    rows.sort(key=lambda r: r.arrival_s)
    return [Request(i, r.arrival_s, r.prompt_tokens, r.output_tokens, r.prefix_id, r.prefix_tokens)
            for i, r in enumerate(rows)]


def write_trace(path: str | Path, requests: list[Request]) -> None:
    """The requests as a CSV trace file (the format read_trace reads)."""
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in requests:
            w.writerow([repr(r.arrival_s), r.prompt_tokens, r.output_tokens, r.prefix_id or "", r.prefix_tokens])
