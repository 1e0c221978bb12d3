"""Causal grouped-query softmax attention with segment ids, sliding windows and explicit
positions (for continuing a cached stream), behind one `implementation=` switch.

Visibility (one rule for training, prefill and decode): key j is seen by query i iff

    kv_positions[j] >= 0                                   (-1 = empty cache slot / padding)
    kv_positions[j] <= q_positions[i]                      (causal)
    q_positions[i] - kv_positions[j] < window              (sliding window, if given)
    q_segment_ids[i] == kv_segment_ids[j]                  (packed documents, if given)

Positions are absolute stream indices (not RoPE positions); they default to 0..T-1. A query
that sees no key (padding) outputs zeros.

Implementations:
  "xla"     the reference: dense [Tq, Tk] scores, explicit mask, softmax.
  "chunked" query blocks x key blocks with an online softmax (XLA): memory O(block * T);
            per tile a `lax.switch` skips key blocks no query of the block can see (beyond
            the causal edge or the sliding window) and builds no mask for tiles every query
            sees whole; each query block is rematerialised in the backward pass, so
            training memory is also linear in T.
  "cudnn"   jax.nn.dot_product_attention(implementation="cudnn") (GPU flash attention):
            causal + `local_window_size`, padding via `key_value_seq_lengths`; only the
            self-attention layouts it can express (default positions, right padding),
            no segment ids.
  "splash"  TPU Splash attention (jax.experimental.pallas.ops.tpu.splash_attention) with
            segment ids and causal/local masks; self-attention with default positions.
            `splash_interpret=True` runs it in the Pallas interpreter (CPU tests).
  "auto"    only what has run on the current backend (VERIFIED below): "xla" for short
            sequences, "chunked" otherwise where verified (today: CPU only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jet_jax.ops.shard_map_kernel import call_per_shard

__all__ = ["dot_product_attention", "IMPLEMENTATIONS", "VERIFIED"]

IMPLEMENTATIONS = ("auto", "xla", "chunked", "cudnn", "splash")
# Backend -> implementations `auto` may pick there: only those with a recorded passing run
# against the reference on that backend (CPU: tests/test_attention.py). Nothing new has run
# on a GPU or TPU yet: there `auto` keeps the dense reference (the attention these backends
# ran before), and "chunked", "cudnn" and "splash" must be asked for explicitly until a
# recorded run of tests/test_attention.py there adds them here.
VERIFIED = {"cpu": ("xla", "chunked"), "gpu": ("xla",), "tpu": ("xla",)}
Q_BLOCK = 512
KV_BLOCK = 512
NEG_INF = -1e30
# Below this many score entries per (batch, head) "auto" keeps the dense reference.
_DENSE_MAX_SCORES = 1024 * 1024


def _validate(q, k, v, q_positions, kv_positions, q_segment_ids, kv_segment_ids, window):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention: q, k, v must be [B, T, heads, D]; got shapes {q.shape}, "
                         f"{k.shape}, {v.shape}")
    b, tq, h, d = q.shape
    if k.shape != v.shape[:3] + (d,) or k.shape[0] != b or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"attention: k {k.shape} and v {v.shape} must be [B, Tk, KV, D] with "
                         f"B={b}, D={d} of q {q.shape}")
    if h % k.shape[2]:
        raise ValueError(f"attention: {h} query heads is not a multiple of {k.shape[2]} kv heads")
    for name, x, t in (("q_positions", q_positions, tq), ("kv_positions", kv_positions, k.shape[1]),
                       ("q_segment_ids", q_segment_ids, tq),
                       ("kv_segment_ids", kv_segment_ids, k.shape[1])):
        if x is not None and tuple(x.shape) != (b, t):
            raise ValueError(f"attention: {name} must be [{b}, {t}], got shape {tuple(x.shape)}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("attention: give both q_segment_ids and kv_segment_ids, or neither")
    if window is not None and window < 1:
        raise ValueError(f"attention: window must be >= 1, got {window}")


def visibility_mask(q_positions, kv_positions, q_segment_ids=None, kv_segment_ids=None,
                    window=None):
    """[B, Tq], [B, Tk] -> bool [B, Tq, Tk] (the rule in the module docstring)."""
    qp, kp = q_positions[:, :, None], kv_positions[:, None, :]
    mask = (kp >= 0) & (kp <= qp)
    if window is not None:
        mask &= (qp - kp) < window
    if q_segment_ids is not None:
        mask &= q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    return mask


def _xla(q, k, v, qpos, kpos, qseg, kseg, window, scale):
    """Reference. q: [B, Tq, KV, G, D], k/v: [B, Tk, KV, D] -> [B, Tq, KV, G, D]."""
    mask = visibility_mask(qpos, kpos, qseg, kseg, window)
    s = jnp.einsum("bqngd,bknd->bngqk", q, k, preferred_element_type=jnp.float32) * scale
    s = jnp.where(mask[:, None, None], s, NEG_INF)
    p = jax.nn.softmax(s, axis=-1)
    # A query with no visible key (padding rows) gets zeros instead of a uniform average.
    p = jnp.where(mask[:, None, None].any(-1, keepdims=True), p, 0.0)
    return jnp.einsum("bngqk,bknd->bqngd", p.astype(v.dtype), v)


def _pad_to(x, axis, multiple, value):
    n = x.shape[axis]
    pad = -n % multiple
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _blocks(x, size):
    """[B, T, ...] -> [T // size, B, size, ...]."""
    b, t = x.shape[:2]
    return jnp.moveaxis(x.reshape((b, t // size, size) + x.shape[2:]), 1, 0)


def _chunked(q, k, v, qpos, kpos, qseg, kseg, window, scale, q_block, kv_block):
    """Online-softmax attention over [q_block, kv_block] tiles; same shapes as `_xla`."""
    b, tq, n, g, d = q.shape
    tk = k.shape[1]
    bq, bk = min(q_block, tq), min(kv_block, tk)
    if qseg is None:
        qseg = jnp.zeros(qpos.shape, jnp.int32)
        kseg = jnp.zeros(kpos.shape, jnp.int32)
    # Padded queries (position -1) see nothing; padded keys (position -1) are never seen.
    q, qpos, qseg = _pad_to(q, 1, bq, 0), _pad_to(qpos, 1, bq, -1), _pad_to(qseg, 1, bq, 0)
    k, v = _pad_to(k, 1, bk, 0), _pad_to(v, 1, bk, 0)
    kpos, kseg = _pad_to(kpos, 1, bk, -1), _pad_to(kseg, 1, bk, 0)
    # K and V tiles head-major once, [nk, B, n, bk, d], so no tile product transposes them
    kb, vb = (jnp.moveaxis(_blocks(x, bk), 3, 2) for x in (k, v))
    kposb, ksegb = _blocks(kpos, bk), _blocks(kseg, bk)
    # Per key block and batch row: the range of valid key positions (to skip tiles no query
    # sees), whether every key is valid, and the segment range (to spot fully visible tiles).
    big = jnp.iinfo(jnp.int32).max
    kmin = jnp.where(kposb >= 0, kposb, big).min(-1)  # [nk, B]
    kmax = kposb.max(-1)
    kall = (kposb >= 0).all(-1)
    ksmin, ksmax = ksegb.min(-1), ksegb.max(-1)

    # float32 queries take the scale once per block instead of once per score (a full pass
    # over every tile); lower precisions keep scaling the float32 scores, as the reference.
    q_scale, s_scale = (scale, None) if q.dtype == jnp.float32 else (None, scale)

    def q_block_out(xs):
        qi, qposi, qsegi = xs  # [B, bq, n, g, d], [B, bq], [B, bq]
        qi = jnp.moveaxis(qi, 1, 3)  # [B, n, g, bq, d], once per query block
        if q_scale is not None:
            qi = qi * q_scale
        qmax = qposi.max(-1)  # [B]
        qmin = jnp.where(qposi >= 0, qposi, big).min(-1)
        qall = (qposi >= 0).all(-1)
        qsmin, qsmax = qsegi.min(-1), qsegi.max(-1)

        def kv_step(carry, ys):
            kj, vj, kposj, ksegj, kminj, kmaxj, kallj, ksminj, ksmaxj = ys
            live = (kminj <= qmax) & (kmaxj >= 0)
            # every query sees every key: all valid, keys at or before the first query, inside
            # the window of the last one, one shared segment. Most tiles of a long prefill are
            # like this, and they need no mask (the masks cost as much as the exp on CPU).
            full = qall & kallj & (kmaxj <= qmin) & (qsmin == qsmax) & (ksminj == ksmaxj) & (qsmin == ksminj)
            if window is not None:
                live &= kmaxj > qmin - window
                full &= qmax - kminj < window
            branch = jnp.where(live.any(), jnp.where(full.all(), 2, 1), 0)

            def update(carry, masked):
                m, l, acc = carry
                s = jnp.einsum("bngqd,bnkd->bngqk", qi, kj, preferred_element_type=jnp.float32)
                if s_scale is not None:
                    s = s * s_scale
                if masked:
                    mask = visibility_mask(qposi, kposj, qsegi, ksegj, window)[:, None, None]
                    s = jnp.where(mask, s, NEG_INF)
                m_new = jnp.maximum(m, s.max(-1))
                # a row with nothing visible yet keeps m = NEG_INF; shifting it by 0 instead
                # makes its masked entries exp(NEG_INF) = 0 (no second select over the tile)
                shift = jnp.where(m_new > NEG_INF, m_new, 0.0) if masked else m_new
                p = jnp.exp(s - shift[..., None])
                corr = jnp.exp(m - shift)
                l = l * corr + p.sum(-1)
                acc = acc * corr[..., None] + jnp.einsum(
                    "bngqk,bnkd->bngqd", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32)
                return m_new, l, acc

            branches = (lambda c: c, lambda c: update(c, True), lambda c: update(c, False))
            return jax.lax.switch(branch, branches, carry), None

        init = (jnp.full((b, n, g, bq), NEG_INF, jnp.float32), jnp.zeros((b, n, g, bq), jnp.float32),
                jnp.zeros((b, n, g, bq, d), jnp.float32))
        (_, l, acc), _ = jax.lax.scan(kv_step, init, (kb, vb, kposb, ksegb, kmin, kmax, kall, ksmin, ksmax))
        out = acc / jnp.where(l > 0, l, 1.0)[..., None]
        return jnp.moveaxis(out, 3, 1).astype(q.dtype)  # [B, bq, n, g, d]

    # Rematerialise each query block in the backward pass: residuals stay O(bq * Tk).
    out = jax.lax.map(jax.checkpoint(q_block_out), (_blocks(q, bq), _blocks(qpos, bq), _blocks(qseg, bq)))
    out = jnp.moveaxis(out, 0, 1).reshape((b, -1, n, g, d))
    return out[:, :tq]


def _default_layout(qpos, kpos):
    return qpos is None and kpos is None


def cudnn_arguments(q, k, v, *, window, scale, kv_lengths):
    """The jax.nn.dot_product_attention call "cudnn" makes (the test runs it with "xla").

    q: [B, T, H, D], k/v: [B, T, KV, D]; kv_lengths: [B] valid (right-padded) lengths or None.
    """
    kw = dict(scale=scale, is_causal=True)
    if window is not None:
        kw["local_window_size"] = (window - 1, 0)
    if kv_lengths is not None:
        kw["query_seq_lengths"] = kv_lengths
        kw["key_value_seq_lengths"] = kv_lengths
    return (q, k, v), kw


def _splash(q, k, v, qseg, kseg, window, scale, interpret, block=128):
    """Splash attention per batch row (vmap), kv heads expanded for GQA. Default positions."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, h, d = q.shape
    tp = -(-t // block) * block
    shape = (tp, tp)
    one = sm.CausalMask(shape) if window is None else sm.LocalMask(shape, (window - 1, 0), 0)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                          block_kv_dq=block)
    kernel = sk.make_splash_mha(sm.MultiHeadMask([one] * h), head_shards=1, q_seq_shards=1,
                                block_sizes=sizes, interpret=interpret)
    rep = h // k.shape[2]
    k = jnp.repeat(k, rep, axis=2)
    v = jnp.repeat(v, rep, axis=2)
    # Padding tokens get their own segment (-1) so real tokens never see them.
    if qseg is None:
        qseg = jnp.zeros((b, t), jnp.int32)
        kseg = qseg
    qseg, kseg = _pad_to(qseg, 1, block, -1), _pad_to(kseg, 1, block, -1)
    to_hd = lambda x: jnp.swapaxes(_pad_to(x, 1, block, 0), 1, 2)  # [B, H, Tp, D]
    qh = to_hd(q * jnp.asarray(scale, q.dtype))  # splash does not scale q
    out = jax.vmap(lambda qq, kk, vv, qs, ks: kernel(qq, kk, vv, segment_ids=sk.SegmentIds(qs, ks)))(
        qh, to_hd(k), to_hd(v), qseg, kseg)
    return jnp.swapaxes(out, 1, 2)[:, :t]


def backend_problem(implementation: str, backend: str | None = None) -> str | None:
    """Why `implementation` cannot run on `backend` (default: JAX's), or None: Splash is a
    TPU (Mosaic) kernel and cuDNN an NVIDIA one. For checking a run's settings up front; it
    asks JAX for the backend (which starts it) only for those two."""
    if implementation not in ("splash", "cudnn"):
        return None
    backend = backend or jax.default_backend()
    if implementation == "splash" and backend != "tpu":
        return f"'splash' runs on TPU only, this backend is {backend}"
    if implementation == "cudnn" and backend not in ("gpu", "cuda"):
        return f"'cudnn' runs on NVIDIA GPUs only, this backend is {backend}"
    return None


def choose_implementation(tq: int, tk: int, backend: str | None = None) -> str:
    """What "auto" runs: the dense reference while [Tq, Tk] scores are small, else chunked."""
    backend = backend or jax.default_backend()
    verified = VERIFIED.get("gpu" if backend in ("cuda", "rocm") else backend, ("xla",))
    if tq * tk <= _DENSE_MAX_SCORES or tq == 1 or "chunked" not in verified:
        return "xla"
    return "chunked"


@jax.named_scope("attention")  # labels its compiled ops in profiles
def dot_product_attention(q, k, v, *, q_positions=None, kv_positions=None, q_segment_ids=None,
                          kv_segment_ids=None, window: int | None = None, scale: float | None = None,
                          implementation: str = "auto", q_block: int | None = None,
                          kv_block: int | None = None, splash_interpret: bool = False):
    """q: [B, Tq, H, D], k/v: [B, Tk, KV, D] (H a multiple of KV) -> [B, Tq, H, D].

    q_positions: [B, Tq], kv_positions: [B, Tk] int (default 0..T-1; -1 = invisible key);
    q_segment_ids / kv_segment_ids: [B, Tq] / [B, Tk] (both or neither); window: sliding
    window in positions (query sees keys with q_pos - k_pos < window); scale defaults to
    D**-0.5; q_block / kv_block: "chunked" tile sizes (default Q_BLOCK / KV_BLOCK). See the
    module docstring for the implementations.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention: unknown implementation {implementation!r}; expected one of "
                         f"{IMPLEMENTATIONS}")
    _validate(q, k, v, q_positions, kv_positions, q_segment_ids, kv_segment_ids, window)
    b, tq, h, d = q.shape
    tk, nkv = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else float(scale)
    if implementation == "auto":
        implementation = choose_implementation(tq, tk)

    if implementation in ("cudnn", "splash"):
        if not _default_layout(q_positions, kv_positions) or tq != tk:
            raise ValueError(f"attention(implementation={implementation!r}) supports self-attention "
                             "with default positions only; use 'chunked' with a cache")
        if implementation == "splash":
            # per device under a mesh (batch over data/fsdp, heads over tensor): no gather. k/v
            # heads share the name "heads" so q and kv heads split together (GQA groups stay whole).
            bthd, bt = ("batch", None, "heads", None), ("batch", None)
            kernel = lambda q, k, v, qs, ks: _splash(q, k, v, qs, ks, window, scale, splash_interpret)
            return call_per_shard(kernel, (q, k, v, q_segment_ids, kv_segment_ids),
                                  (bthd, bthd, bthd, bt, bt), bthd)
        if q_segment_ids is not None:
            raise ValueError("attention(implementation='cudnn') takes no segment ids (only right "
                             "padding via key_value_seq_lengths); use 'chunked' or 'splash'")
        args, kw = cudnn_arguments(q, k, v, window=window, scale=scale, kv_lengths=None)
        return jax.nn.dot_product_attention(*args, **kw, implementation="cudnn")

    if q_positions is None:
        q_positions = jnp.broadcast_to(jnp.arange(tq, dtype=jnp.int32), (b, tq))
    if kv_positions is None:
        kv_positions = jnp.broadcast_to(jnp.arange(tk, dtype=jnp.int32), (b, tk))
    qg = q.reshape(b, tq, nkv, h // nkv, d)
    args = (qg, k.astype(q.dtype), v.astype(q.dtype), q_positions.astype(jnp.int32),
            kv_positions.astype(jnp.int32), q_segment_ids, kv_segment_ids, window, scale)
    if implementation == "xla":
        out = _xla(*args)
    else:
        out = _chunked(*args, q_block or Q_BLOCK, kv_block or KV_BLOCK)
    return out.reshape(b, tq, h, d)
