"""Block-size choices for every Pallas kernel in this package, in one place.

Defaults per backend (why):
  gdr chunk length C = 64 on TPU and GPU: the chunk length of the released model's
    chunked form (Jet-Nemotron / FLA), a multiple of 8 sublanes (TPU) and a power of two
    (Triton). The in-chunk work is O(C^2 (Dk + Dv)) and the per-chunk state update
    O(C Dk Dv); 64 balances the two for Dk, Dv in 96..256.
  gdr value block BV (GPU only) = 64: the Triton route keeps the f32 state [Dk, BV] in
    registers; 128 x 64 x 4 B = 32 KiB per program is what FLA uses. Columns of the state
    are independent in the delta rule, so splitting Dv is exact. TPU keeps the whole
    [Dk, Dv] state in VMEM scratch (<= 256 KiB), so it does not split (BV = Dv).
  dynamic conv time block = 256 rows on TPU (multiple of 8; 256 x 128 lanes x 4 B x (x, y,
    4 taps) stays well inside the default 16 MiB scoped VMEM with double buffering),
    channel block = 128 lanes (TPU lane width) or the full channel count when smaller
    or not a multiple of 128.
"""
from __future__ import annotations

GDR_CHUNK = {"tpu": 64, "gpu": 64}
GDR_GPU_BLOCK_V = 64
CONV_TIME_BLOCK = {"tpu": 256, "gpu": 256}
CONV_CHANNEL_BLOCK = {"tpu": 128, "gpu": 128}


def gdr_chunk(backend: str) -> int:
    """Chunk length for the gated-delta-rule kernels of `backend` ("tpu" | "gpu")."""
    return GDR_CHUNK[backend]


def gdr_gpu_block_v(dv: int) -> int:
    """Value-dim block of the GPU kernel: GDR_GPU_BLOCK_V, or dv when smaller."""
    return min(GDR_GPU_BLOCK_V, dv)


def conv_time_block(backend: str, t: int) -> int:
    """Time block of the dynamic-conv kernel: the default, or t rounded up to 8 if shorter."""
    tb = CONV_TIME_BLOCK[backend]
    return tb if t >= tb else max(8, -(-t // 8) * 8)


def conv_channel_block(backend: str, c: int) -> int:
    """Channel block of the dynamic-conv kernel: 128 lanes when it divides c, else c."""
    cb = CONV_CHANNEL_BLOCK[backend]
    return cb if c % cb == 0 else c
