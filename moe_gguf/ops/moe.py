"""Fused decode ops (csrc/moe.c): the MoE FFN step (routing -> gate/up -> SwiGLU -> down -> weighted sum, routed +
shared experts), batched matrix-vector products, and bound per-token ops for a lean decode loop.

    ffn = MoEFFN(down, k, gate=gate, up=up, shared=(gate_sh, up_sh, down_sh), router=gate_inp, gating=1, norm=False)
    out, ids, w = ffn(pool, h)                    # h float32 (n_tok, n_embd); routing inside
    out, _, _ = MoEFFN(down, k, gate=gate, up=up)(pool, h, ids, w)   # without a router: ids / w are inputs
    step = ffn.bind(h, ids, w, out); step.run(pool)                  # fixed buffers, checked once

Weights are validated once (in the constructor); a call checks only h / ids / weights / out and runs ONE C call
with ONE pool dispatch.  Each expert's output equals matmul_id's bit for bit (same activation quantization and dot
kernels); the k slots are summed in order and the shared expert added last, so results are bit-identical for any
thread count.  Scratch comes from a MoEWorkspace (one per MoEFFN unless shared, e.g. by all layers of a model).
Streams the weights once per token: meant for decode and short batches (prefill: expert-grouped matmul_id).
`bind` fixes the arrays of a call once (for a decode loop over preallocated buffers).

GemvBatch: several (2-D or per-expert) matrix products over fixed buffers in one C call and one pool dispatch,
in up to 4 stages (stage s may read stage s-1's outputs), each distinct input quantized once.
BoundRmsNorm, MlaDecodePrep, BoundLatentAttention: ops.nn's kernels over fixed buffers (checked once), and the
MLA per-token bookkeeping (rope q_pe / k_pe, norm c_kv, cache row) in one call.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .._kernels import ffi, lib
from . import nn
from .matmul import QWeight, ThreadPool, _pool_ptr
from .nn import GATING_SOFTMAX

_MAX_PAIRS = 2**31 - 1


class MoEWorkspace:
    """Reusable scratch memory for MoEFFN calls (grows on demand, never shrinks).  Calls using one workspace are
    serialized by its lock, so one workspace may serve every layer of a model (and several threads)."""

    def __init__(self) -> None:
        self._buf = np.empty(0, dtype=np.uint8)
        self._ptr: Any = ffi.from_buffer("char[]", self._buf, require_writable=True)
        self.lock = threading.Lock()

    def get(self, nbytes: int) -> tuple[Any, int]:
        """A C pointer to at least nbytes bytes and its size (call with `lock` held)."""
        if self._buf.nbytes < nbytes:
            self._buf = np.empty(nbytes + nbytes // 4 + 4096, dtype=np.uint8)
            self._ptr = ffi.from_buffer("char[]", self._buf, require_writable=True)
        return self._ptr, self._buf.nbytes

    @property
    def nbytes(self) -> int:
        return self._buf.nbytes


def _check_weight(w: Any, name: str, shape: tuple[int, ...]) -> QWeight:
    if not isinstance(w, QWeight):
        raise TypeError(f"{name} must be a QWeight, got {type(w).__name__}")
    if w.shape != shape:
        raise ValueError(f"{name} has shape {w.shape}, expected {shape}")
    return w


class MoEFFN:
    """One MoE FFN layer's weights for the fused kernel.

    down: QWeight [n_expert, n_embd, n_ff]; k: experts per token.  gate and up [n_expert, n_ff, n_embd], or
    gate_up [n_expert, 2*n_ff, n_embd] (gate rows then up rows).  shared: optional (gate, up, down) of the
    always-on shared expert(s), [n_ff_sh, n_embd], [n_ff_sh, n_embd], [n_embd, n_ff_sh].  router: optional
    [n_expert, n_embd]; with it, routing (as ops.nn.moe_route with gating / bias / n_group / n_group_used / norm /
    scale) runs inside the call.  workspace: scratch to share (a new one by default).
    """

    def __init__(
        self,
        down: QWeight,
        k: int,
        *,
        gate: QWeight | None = None,
        up: QWeight | None = None,
        gate_up: QWeight | None = None,
        shared: tuple[QWeight, QWeight, QWeight] | None = None,
        router: QWeight | None = None,
        gating: int = GATING_SOFTMAX,
        bias: np.ndarray | None = None,
        n_group: int = 1,
        n_group_used: int = 1,
        norm: bool = False,
        scale: float = 1.0,
        workspace: MoEWorkspace | None = None,
    ) -> None:
        if not isinstance(down, QWeight):
            raise TypeError(f"down must be a QWeight, got {type(down).__name__}")
        if len(down.shape) != 3:
            raise ValueError(f"down must be 3-D [n_expert, n_embd, n_ff], got shape {down.shape}")
        E, D, F = down.shape
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 < k <= E:
            raise ValueError(f"k must be an int in [1, {E}], got {k!r}")
        c = ffi.new("mg_moe_weights *")
        c.n_embd, c.n_ff, c.n_expert, c.n_expert_used = D, F, E, int(k)
        keep: list[Any] = [down]
        if gate_up is not None:
            if gate is not None or up is not None:
                raise ValueError("give either gate_up or gate and up, not both")
            _check_weight(gate_up, "gate_up", (E, 2 * F, D))
            c.gate_up_merged, c.gate_type, c.gate = 1, gate_up._type_id, gate_up._cptr
            keep.append(gate_up)
        else:
            if gate is None or up is None:
                raise ValueError("MoEFFN needs gate and up (or gate_up)")
            _check_weight(gate, "gate", (E, F, D))
            _check_weight(up, "up", (E, F, D))
            c.gate_type, c.gate, c.up_type, c.up = gate._type_id, gate._cptr, up._type_id, up._cptr
            keep += [gate, up]
        c.down_type, c.down = down._type_id, down._cptr
        if shared is not None:
            if not isinstance(shared, (tuple, list)) or len(shared) != 3:
                raise TypeError("shared must be a (gate, up, down) tuple of QWeights")
            sg, su, sd = shared
            if not isinstance(sg, QWeight) or len(sg.shape) != 2:
                raise ValueError("shared gate must be a 2-D QWeight [n_ff_sh, n_embd]")
            Fs = sg.shape[0]
            _check_weight(sg, "shared gate", (Fs, D))
            _check_weight(su, "shared up", (Fs, D))
            _check_weight(sd, "shared down", (D, Fs))
            c.n_ff_sh = Fs
            c.sh_gate_type, c.sh_gate = sg._type_id, sg._cptr
            c.sh_up_type, c.sh_up = su._type_id, su._cptr
            c.sh_down_type, c.sh_down = sd._type_id, sd._cptr
            keep += [sg, su, sd]
        self.has_router = router is not None
        if router is not None:
            _check_weight(router, "router", (E, D))
            # the routing parameters are checked exactly as ops.nn.moe_route checks them (on a dummy row)
            nn.moe_route(np.zeros((1, E), np.float32), int(k), gating, bias, n_group, n_group_used, norm, scale)
            if bias is not None:
                bias = np.ascontiguousarray(bias)
                keep.append(bias)
            if n_group <= 1:
                n_group = n_group_used = 1
            c.router_type, c.router = router._type_id, router._cptr
            c.gating, c.n_group, c.n_group_used = int(gating), int(n_group), int(n_group_used)
            c.norm, c.scale = int(bool(norm)), float(scale)
            c.bias = ffi.from_buffer("float[]", bias) if bias is not None else ffi.NULL
            keep.append(router)
        nb = ffi.new("size_t *")
        rc = lib.mg_moe_ffn_work_bytes(c, 1, nb)
        if rc != 0:  # a type the kernels lack or a row length that is not a block multiple
            raise ValueError(f"MoEFFN: the kernel rejected these weights (code {rc}): unsupported type or block size")
        self._c = c
        self._nb = nb
        self._keep = keep  # the C struct points into these
        self._work_bytes: dict[int, int] = {}
        self.workspace = workspace if workspace is not None else MoEWorkspace()
        if not isinstance(self.workspace, MoEWorkspace):
            raise TypeError("workspace must be a MoEWorkspace")
        self.n_embd, self.n_ff, self.n_expert, self.k = D, F, E, int(k)

    def work_bytes(self, n_tok: int) -> int:
        """Scratch bytes a call with n_tok rows needs."""
        nb = self._work_bytes.get(n_tok)
        if nb is None:
            rc = lib.mg_moe_ffn_work_bytes(self._c, n_tok, self._nb)
            if rc != 0:
                raise ValueError(f"MoEFFN: bad row count {n_tok}")
            nb = self._work_bytes[n_tok] = int(self._nb[0])
        return nb

    def __call__(
        self,
        pool: ThreadPool | None,
        h: np.ndarray,
        ids: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(out, ids, weights) for h float32 (n_tok, n_embd).  With a router, ids int32 / weights float32
        (n_tok, k) are outputs (preallocated arrays may be passed); without one they are required inputs."""
        b = self.bind(h, ids, weights, out)
        b.run(pool)
        return b.out, b.ids, b.weights

    def bind(
        self, h: np.ndarray, ids: np.ndarray | None = None, weights: np.ndarray | None = None, out: np.ndarray | None = None
    ) -> "BoundMoEFFN":
        """The call's arguments checked once and fixed: `run(pool)` then recomputes out from whatever h holds
        (for a decode loop over preallocated buffers: no per-call checks or allocations)."""
        if not isinstance(h, np.ndarray) or h.dtype != np.float32:
            raise TypeError(f"h must be a float32 numpy array, got {getattr(h, 'dtype', type(h).__name__)}")
        if h.ndim != 2 or h.shape[1] != self.n_embd:
            raise ValueError(f"h must have shape (n_tok, {self.n_embd}), got {h.shape}")
        if not h.flags.c_contiguous or not h.flags.aligned:
            raise ValueError("h must be C-contiguous and aligned")
        n_tok, k = h.shape[0], self.k
        if n_tok * k > _MAX_PAIRS:
            raise ValueError(f"too many (token, expert) pairs: {n_tok * k}")
        if not self.has_router and (ids is None or weights is None):
            raise ValueError("without a router, ids and weights are required")
        ids = _io(ids, np.int32, (n_tok, k), "ids", self.has_router)
        weights = _io(weights, np.float32, (n_tok, k), "weights", self.has_router)
        out = _io(out, np.float32, (n_tok, self.n_embd), "out", True)
        if np.may_share_memory(out, h) or np.may_share_memory(out, ids) or np.may_share_memory(out, weights):
            raise ValueError("out must not overlap h, ids or weights")
        if self.has_router and np.may_share_memory(ids, weights):
            raise ValueError("ids and weights must not overlap")
        return BoundMoEFFN(self, h, ids, weights, out)


class BoundMoEFFN:
    """A MoEFFN call over fixed, checked arrays (see MoEFFN.bind)."""

    def __init__(self, ffn: MoEFFN, h: np.ndarray, ids: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
        self.ffn, self.h, self.ids, self.weights, self.out = ffn, h, ids, weights, out
        self.n_tok = h.shape[0]
        self._need = ffn.work_bytes(self.n_tok)
        self._args = (
            ffn._c, _fptr(h, False), self.n_tok, ffi.from_buffer("int32_t[]", ids, require_writable=ffn.has_router),
            _fptr(weights, ffn.has_router), _fptr(out, True),
        )  # fmt: skip

    def run(self, pool: ThreadPool | None) -> np.ndarray:
        """Runs the step (reading h, writing out and, with a router, ids / weights); returns out."""
        if self.n_tok == 0:
            return self.out
        pp = _pool_ptr(pool)
        ws = self.ffn.workspace
        with ws.lock:
            wp, wn = ws.get(self._need)
            if pool is None:
                rc = lib.mg_moe_ffn(pp, *self._args, wp, wn)
            else:
                with pool.lock:
                    rc = lib.mg_moe_ffn(_pool_ptr(pool), *self._args, wp, wn)
        if rc != 0:
            ids, E = self.ids, self.ffn.n_expert
            if not self.ffn.has_router and (int(ids.min()) < 0 or int(ids.max()) >= E):
                raise ValueError(f"expert ids must be in [0, {E}), got range [{ids.min()}, {ids.max()}]")
            if rc == -3:
                raise MemoryError("moe_ffn: out of memory")
            raise ValueError(f"moe_ffn: kernel rejected the arguments (code {rc})")
        return self.out


def _fptr(a: np.ndarray, writable: bool) -> Any:
    """A float * over a float32 array."""
    return ffi.from_buffer("float[]", a, require_writable=writable)


class GemvBatch:
    """Several matrix products y = x @ W.T over fixed buffers, run as ONE C call and ONE pool dispatch.

        gb = GemvBatch([(wq, h, q, 0), (wkv_a, h, ckv, 0)])     # h quantized once for both
        gb.run(pool)                                              # recomputes q, ckv from h's current values

    Each item is (weight, x, y, stage): weight a 2-D QWeight or (3-D QWeight, expert index); x float32
    (n_tok, n_in) and y float32 (n_tok, n_out) views whose last axis is contiguous (rows may be strided, e.g. one
    head of a wider array).  Items of stage s (0..3) run after every output of stage s-1 is written, so they may
    read them.  All items share n_tok.  Results equal matmul's bit for bit.  Meant for decode-sized n_tok.
    """

    MAX_STAGES = 4

    def __init__(self, items: list[tuple[Any, np.ndarray, np.ndarray, int]], workspace: MoEWorkspace | None = None) -> None:
        if not items:
            raise ValueError("GemvBatch needs at least one item")
        n_tok = None
        d = ffi.new("mg_gemv_desc[]", len(items))
        keep: list[Any] = []
        outs: list[np.ndarray] = []
        for i, it in enumerate(items):
            if not isinstance(it, (tuple, list)) or len(it) != 4:
                raise TypeError("each item must be (weight, x, y, stage)")
            wt, x, y, stage = it
            ptr, n_out, n_in, w = _weight_ptr(wt)
            for name, a, n, writable in (("x", x, n_in, False), ("y", y, n_out, True)):
                if not isinstance(a, np.ndarray) or a.dtype != np.float32:
                    raise TypeError(f"item {i}: {name} must be a float32 numpy array")
                if a.ndim != 2 or a.shape[1] != n:
                    raise ValueError(f"item {i}: {name} must have shape (n_tok, {n}), got {a.shape}")
                if a.strides[1] != 4 or a.strides[0] % 4 or a.strides[0] < 0 or not a.flags.aligned:
                    raise ValueError(f"item {i}: {name}'s rows must be contiguous, aligned and non-negatively strided")
                if writable and not a.flags.writeable:
                    raise ValueError(f"item {i}: y must be writeable")
            if n_tok is None:
                n_tok = x.shape[0]
            if x.shape[0] != n_tok or y.shape[0] != n_tok:
                raise ValueError(f"item {i}: every x and y must have {n_tok} rows")
            if n_tok > 1 and (x.strides[0] < 4 * n_in or y.strides[0] < 4 * n_out):
                raise ValueError(f"item {i}: rows of x / y overlap")
            if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)) or not 0 <= stage < self.MAX_STAGES:
                raise ValueError(f"item {i}: stage must be an int in [0, {self.MAX_STAGES}), got {stage!r}")
            if any(np.shares_memory(y, o) for o in outs):
                raise ValueError(f"item {i}: y overlaps another item's output")
            outs.append(y)
            e = d[i]
            e.type, e.w, e.n_out, e.n_in = w._type_id, ptr, n_out, n_in
            e.x, e.x_stride = ffi.cast("const float *", x.ctypes.data), x.strides[0] // 4
            e.y, e.y_stride = ffi.cast("float *", y.ctypes.data), y.strides[0] // 4
            e.stage = int(stage)
            keep += [w, x, y]
        nb = ffi.new("size_t *")
        rc = lib.mg_gemv_batch_work_bytes(d, len(items), n_tok, nb)
        if rc != 0:
            raise ValueError(f"GemvBatch: the kernel rejected the items (code {rc})")
        self._d, self._n, self.n_tok, self._need = d, len(items), int(n_tok), int(nb[0])
        self._keep = keep  # the descriptors point into these
        self.workspace = workspace if workspace is not None else MoEWorkspace()
        if not isinstance(self.workspace, MoEWorkspace):
            raise TypeError("workspace must be a MoEWorkspace")

    def run(self, pool: ThreadPool | None) -> None:
        pp = _pool_ptr(pool)
        ws = self.workspace
        with ws.lock:
            wp, wn = ws.get(self._need)
            if pool is None:
                rc = lib.mg_gemv_batch(pp, self._d, self._n, self.n_tok, wp, wn)
            else:
                with pool.lock:
                    rc = lib.mg_gemv_batch(_pool_ptr(pool), self._d, self._n, self.n_tok, wp, wn)
        if rc != 0:  # pragma: no cover - everything was checked at construction
            raise ValueError(f"gemv_batch: kernel rejected the arguments (code {rc})")


def _weight_ptr(wt: Any) -> tuple[Any, int, int, QWeight]:
    """(C pointer to the rows, n_out, n_in, the QWeight) of a 2-D QWeight or a (3-D QWeight, expert) pair."""
    if isinstance(wt, QWeight):
        if len(wt.shape) != 2:
            raise ValueError(f"a 3-D weight {wt.shape} needs an expert index: (weight, e)")
        return wt._cptr, wt.n_out, wt.n_in, wt
    if isinstance(wt, (tuple, list)) and len(wt) == 2 and isinstance(wt[0], QWeight):
        w, e = wt
        if len(w.shape) != 3:
            raise ValueError(f"(weight, e) needs a 3-D weight, got {w.shape}")
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not 0 <= e < w.shape[0]:
            raise ValueError(f"expert index must be in [0, {w.shape[0]}), got {e!r}")
        off = int(e) * w.n_out * w.row_bytes
        return ffi.cast("const char *", w._cptr) + off, w.n_out, w.n_in, w
    raise TypeError(f"weight must be a QWeight or (QWeight, expert index), got {type(wt).__name__}")


def _io(a: np.ndarray | None, dtype: type, shape: tuple[int, ...], name: str, writable: bool) -> np.ndarray:
    """Checks (or allocates, if None) a C-contiguous array of dtype and shape."""
    if a is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous or not a.flags.aligned or (writable and not a.flags.writeable):
        raise ValueError(f"{name} must be C-contiguous and aligned{' and writeable' if writable else ''}")
    return a


# ------------------------------------------------------------------------------------------------ bound decode ops
def _buf(a: Any, name: str, shape: tuple[int, ...] | None = None, dtype: Any = np.float32) -> np.ndarray:
    """Checks a C-contiguous, aligned, writeable array of dtype (and shape)."""
    if not isinstance(a, np.ndarray) or a.dtype != dtype:
        raise TypeError(f"{name} must be a {np.dtype(dtype).name} numpy array")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous or not a.flags.aligned or not a.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous, aligned and writeable")
    return a


def _cache_rows(kv: Any, width: int, p0: int, n: int) -> int:
    """Checks a (n_ctx, width) float32 / float16 cache array holding positions p0 .. p0 + n - 1; its type id."""
    if not isinstance(kv, np.ndarray) or kv.ndim != 2 or kv.dtype not in (np.float32, np.float16):
        raise TypeError("kv must be a 2-D float32 or float16 cache array")
    if kv.shape[1] != width or not kv.flags.c_contiguous or not kv.flags.writeable:
        raise ValueError(f"kv must be a C-contiguous writeable (n_ctx, {width}) array, got {kv.shape}")
    if isinstance(p0, bool) or not isinstance(p0, (int, np.integer)) or not 0 <= p0 <= kv.shape[0] - n:
        raise ValueError(f"position {p0!r} outside the cache's {kv.shape[0]} rows")
    return 0 if kv.dtype == np.float32 else 1


class BoundRmsNorm:
    """out = RMSNorm(x) * w over fixed float32 (n, d) arrays (ops.nn.rms_norm's kernel, checked once)."""

    def __init__(self, x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> None:
        _buf(x, "x")
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D, got {x.shape}")
        _buf(out, "out", x.shape)
        w = np.ascontiguousarray(_f32_vector(w, "w", x.shape[1]))
        if not eps >= 0.0:
            raise ValueError("eps must be >= 0")
        self._keep = (x, w, out)
        self._args = (_fptr(out, True), _fptr(x, False), _fptr(w, False), x.shape[0], x.shape[1], float(eps))

    def run(self) -> None:
        lib.mg_rms_norm(*self._args)  # rc: every argument was checked here


class MlaDecodePrep:
    """One decoded token's MLA bookkeeping (mg_mla_decode_prep) over fixed buffers: q (1, H, q_head) gets q_pe roped
    and copied into qa (1, H, kv_lora + n_rot); ckv (1, kv_lora + n_rot) = [c_kv | k_pe] is normed / roped and
    stored into cache row p0 (`run(kv, p0)`, kv (n_ctx, kv_lora + n_rot) float32 or float16)."""

    def __init__(
        self,
        q: np.ndarray,
        qa: np.ndarray,
        ckv: np.ndarray,
        norm_w: np.ndarray,
        eps: float,
        inv_freq: np.ndarray,
        magnitude: float,
    ) -> None:
        _buf(q, "q")
        if q.ndim != 3 or q.shape[0] != 1:
            raise ValueError(f"q must be (1, n_head, q_head), got {q.shape}")
        _, H, QH = q.shape
        inv_freq = np.ascontiguousarray(_f32_vector(inv_freq, "inv_freq", None))
        R = 2 * inv_freq.shape[0]
        C = norm_w.shape[0] if isinstance(norm_w, np.ndarray) and norm_w.ndim == 1 else -1
        if R <= 0 or R > QH or C <= 0:
            raise ValueError(f"bad MLA geometry: q_head {QH}, n_rot {R}, kv_lora {C}")
        _buf(qa, "qa", (1, H, C + R))
        _buf(ckv, "ckv", (1, C + R))
        norm_w = np.ascontiguousarray(_f32_vector(norm_w, "norm_w", C))
        if not eps >= 0.0:
            raise ValueError("eps must be >= 0")
        self.width = C + R
        self._keep = (q, qa, ckv, norm_w, inv_freq)
        self._head = (_fptr(q, True), H, QH, R, _fptr(qa, True), C, _fptr(ckv, True), _fptr(norm_w, False), float(eps))
        self._tail = (_fptr(inv_freq, False), float(magnitude))

    def run(self, kv: np.ndarray, p0: int) -> None:
        kv_type = _cache_rows(kv, self.width, p0, 1)
        row = ffi.from_buffer("char[]", kv, require_writable=True) + int(p0) * kv.strides[0]
        rc = lib.mg_mla_decode_prep(*self._head, int(p0), *self._tail, row, kv_type)
        if rc != 0:  # pragma: no cover - checked above
            raise ValueError(f"mla_decode_prep: kernel rejected the arguments (code {rc})")


class BoundLatentAttention:
    """ops.nn.latent_attention for one query token over fixed buffers: out (1, H, d_v) from q (1, H, d_k) and cache
    rows 0 .. p0 (`run(pool, kv, p0)`; key = row[:d_k], value = row[:d_v])."""

    def __init__(self, q: np.ndarray, out: np.ndarray, scale: float) -> None:
        _buf(q, "q")
        _buf(out, "out")
        if q.ndim != 3 or out.ndim != 3 or q.shape[:2] != out.shape[:2] or out.shape[2] > q.shape[2] or q.shape[0] != 1:
            raise ValueError(f"q (1, H, d_k) and out (1, H, d_v <= d_k) expected, got {q.shape} and {out.shape}")
        if np.may_share_memory(q, out):
            raise ValueError("out must not overlap q")
        _, self.n_head, self.d_k = q.shape
        self.d_v = out.shape[2]
        self._keep = (q, out)
        self._out, self._q, self._scale = _fptr(out, True), _fptr(q, False), float(scale)

    def run(self, pool: ThreadPool | None, kv: np.ndarray, p0: int) -> None:
        if not isinstance(kv, np.ndarray) or kv.ndim != 2 or kv.shape[1] < self.d_k:
            raise ValueError(f"kv must be a 2-D cache array with rows of >= {self.d_k} values")
        kv_type = _cache_rows(kv, kv.shape[1], p0, 1)
        args = (self._out, self._q, 1, self.n_head, self.d_k, self.d_v, ffi.from_buffer("char[]", kv), kv_type, kv.shape[1], int(p0), self._scale)
        pp = _pool_ptr(pool)
        if pool is None:
            rc = lib.mg_latent_attention(pp, *args)
        else:
            with pool.lock:
                rc = lib.mg_latent_attention(_pool_ptr(pool), *args)
        if rc != 0:
            raise ValueError(f"latent_attention: kernel rejected the arguments (code {rc})")


def _f32_vector(a: Any, name: str, n: int | None) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 1 or (n is not None and a.shape[0] != n):
        raise ValueError(f"{name} must be a float32 vector" + (f" of {n} values" if n is not None else ""))
    return a
