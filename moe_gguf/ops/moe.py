"""The fused MoE FFN step (csrc/moe.c): routing -> gate/up -> SwiGLU -> down -> weighted sum, routed + shared experts.

    ffn = MoEFFN(down, k, gate=gate, up=up, shared=(gate_sh, up_sh, down_sh), router=gate_inp, gating=1, norm=False)
    out, ids, w = ffn(pool, h)                    # h float32 (n_tok, n_embd); routing inside
    out, _, _ = ffn_norouter(pool, h, ids, w)     # without a router: ids/w are inputs

Weights are validated once (in the constructor); a call checks only h / ids / weights / out and runs ONE C call
with ONE pool dispatch.  Each expert's output equals matmul_id's bit for bit (same activation quantization and dot
kernels); the k slots are summed in order and the shared expert added last, so results are bit-identical for any
thread count.  Scratch comes from a MoEWorkspace (one per MoEFFN unless shared, e.g. by all layers of a model).
Streams the weights once per token: meant for decode and short batches (prefill: expert-grouped matmul_id).
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .._kernels import ffi, lib
from .matmul import QWeight, ThreadPool, _pool_ptr
from . import nn
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
            c.gating, c.n_group, c.n_group_used, c.norm, c.scale = int(gating), int(n_group), int(n_group_used), int(bool(norm)), float(scale)
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
        if n_tok == 0:
            return out, ids, weights
        need = self.work_bytes(n_tok)
        pp = _pool_ptr(pool)
        ws = self.workspace
        args = (
            self._c, ffi.from_buffer("float[]", h), n_tok, ffi.from_buffer("int32_t[]", ids, require_writable=self.has_router),
            ffi.from_buffer("float[]", weights, require_writable=self.has_router), ffi.from_buffer("float[]", out, require_writable=True),
        )  # fmt: skip
        with ws.lock:
            wp, wn = ws.get(need)
            if pool is None:
                rc = lib.mg_moe_ffn(pp, *args, wp, wn)
            else:
                with pool._lock:
                    rc = lib.mg_moe_ffn(_pool_ptr(pool), *args, wp, wn)
        if rc != 0:
            if not self.has_router and (int(ids.min()) < 0 or int(ids.max()) >= self.n_expert):
                raise ValueError(f"expert ids must be in [0, {self.n_expert}), got range [{ids.min()}, {ids.max()}]")
            if rc == -3:
                raise MemoryError("moe_ffn: out of memory")
            raise ValueError(f"moe_ffn: kernel rejected the arguments (code {rc})")
        return out, ids, weights


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
