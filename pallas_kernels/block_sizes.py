"""Block-size choices for every Pallas kernel in this package, in one place.

Defaults per backend (why):
  gdr chunk length C = 64 on TPU and GPU: the chunk length of the released model's
    chunked form (Jet-Nemotron / FLA), a multiple of 8 sublanes (TPU) and a power of two
    (Triton). The in-chunk work is O(C^2 (Dk + Dv)) and the per-chunk state update
    O(C Dk Dv); 64 balances the two for Dk, Dv in 96..256.
  gdr value blocks BV (GPU only), per kernel of gdr_gpu (columns of the delta-rule state
    are independent, so splitting Dv is exact): 64 for the state pass (the f32 state
    [Dk, 64] = 32 KiB at Dk = 128 lives in registers, as in FLA's chunk_delta_h), the
    output and dvl kernels and the chunk-local kernel; 32 for the reverse state-gradient
    pass, which has three [C, Dk] operands per chunk. TPU keeps the whole [Dk, Dv] state
    in VMEM scratch (<= 256 KiB), so it does not split (BV = Dv).
  GPU shared memory: Triton stages the operands of every tl.dot through shared memory.
    `gdr_gpu_smem_bytes` counts, per kernel, the f32 bytes of the operands of EVERY dot
    in its body as if all were live at once (an over-estimate: the compiler reuses
    buffers; the old one-kernel forward models at 589824 B where the H200 reported 311296
    B requested). `check_gdr_gpu_smem` refuses any kernel above HOPPER_SMEM_BYTES, the
    per-block opt-in limit of H100/H200 (232448 B = 227 KiB); the defaults stay at or
    below 71% of it for Dk <= 128 (the per-kernel numbers
    do not depend on Dv, which is split into BV blocks).
  dynamic conv time block = 256 rows on TPU (multiple of 8; 256 x 128 lanes x 4 B x (x, y,
    4 taps) stays well inside the default 16 MiB scoped VMEM with double buffering),
    channel block = 128 lanes (TPU lane width) or the full channel count when smaller
    or not a multiple of 128.
"""
from __future__ import annotations

GDR_CHUNK = {"tpu": 64, "gpu": 64}
GDR_SOLVE_BLOCK = 16  # diagonal block of the UT-transform block substitution
GDR_GPU_BLOCK_V = {"local": 64, "state": 64, "output": 64, "dvl": 64, "dstate": 32, "local_bwd": 32}
HOPPER_SMEM_BYTES = 232448  # max dynamic shared memory per block (opt-in), sm_90
CONV_TIME_BLOCK = {"tpu": 256, "gpu": 256}
CONV_CHANNEL_BLOCK = {"tpu": 128, "gpu": 128}


def gdr_chunk(backend: str) -> int:
    """Chunk length for the gated-delta-rule kernels of `backend` ("tpu" | "gpu")."""
    return GDR_CHUNK[backend]


def gdr_gpu_block_v(kernel: str, dv: int) -> int:
    """Value-dim block of GPU kernel `kernel` (a key of GDR_GPU_BLOCK_V), or dv when smaller."""
    return min(GDR_GPU_BLOCK_V[kernel], dv)


def _pow2(n: int) -> int:
    """Head-dim padding of the GPU kernels: a power of two, at least 16 (as gdr_gpu._pow2)."""
    return max(16, 1 << (int(n) - 1).bit_length())


def gdr_gpu_smem_bytes(dk: int, dv: int, chunk: int = 64, local_bwd: bool = False) -> dict[str, int]:
    """Modelled shared-memory bytes of each gdr_gpu kernel: sum over the dots in its body of
    (lhs + rhs) elements x 4 B (f32 operands), Dk and Dv padded to powers of two.
    local_bwd: include the optional Pallas chunk-local backward kernel."""
    c, nb, k = chunk, GDR_SOLVE_BLOCK, _pow2(dk)
    bv = {name: gdr_gpu_block_v(name, _pow2(dv)) for name in GDR_GPU_BLOCK_V}
    dots = {
        # A_ij = (beta k_i) k_j^T; diagonal inverse row step; T_ij products; w_i and u_i
        "local": [(nb * k, nb * k), (nb * nb, nb * nb), (nb * nb, nb * nb), (nb * nb, nb * k),
                  (nb * nb, nb * bv["local"])],
        # vn = u - w S; S' = .. + (k . to_end)^T vn
        "state": [(c * k, k * bv["state"]), (c * k, c * bv["state"])],
        # q k^T; (q carry) S_c; P vn
        "output": [(c * k, c * k), (c * k, k * bv["output"]), (c * c, c * bv["output"])],
        # q k^T; P^T do
        "dvl": [(c * k, c * k), (c * c, c * bv["dvl"])],
        # kd dS; (q carry)^T do; w^T dvn
        "dstate": [(c * k, k * bv["dstate"]), (c * k, c * bv["dstate"]), (c * k, c * bv["dstate"])],
    }
    if local_bwd:
        b = bv["local_bwd"]
        cc, ck, cb, kb = c * c, c * k, c * b, k * b
        dots["local_bwd"] = (
            [(ck, ck)] + [(cc, cc)] * 5                        # k k^T; the masked [C, C] inverse
            + [(cc, cb), (cc, ck), (ck, kb), (ck, ck), (cc, cb), (ck, kb), (cb, cb), (cb, kb), (cc, ck),
               (cb, kb), (cc, ck), (cb, kb), (cb, cb), (ck, ck), (cc, cb), (cc, ck), (cc, cc), (cc, cc),
               (cc, ck), (cc, ck)])
    return {name: 4 * sum(a + b for a, b in ds) for name, ds in dots.items()}


class KernelResourceError(RuntimeError):
    """A Pallas kernel configuration that cannot run on the device (named in the message)."""


def check_gdr_gpu_smem(dk: int, dv: int, chunk: int = 64, limit: int = HOPPER_SMEM_BYTES,
                       local_bwd: bool = False) -> None:
    """Raise KernelResourceError naming the kernel, its block sizes and the shared memory it
    needs when any gdr_gpu kernel's modelled need exceeds `limit` bytes."""
    for name, need in gdr_gpu_smem_bytes(dk, dv, chunk, local_bwd).items():
        if need > limit:
            raise KernelResourceError(
                f"pallas gated_delta_rule GPU kernel gdr_gpu_{name} (chunk {chunk}, Dk {dk} -> {_pow2(dk)}, "
                f"Dv {dv} -> {_pow2(dv)}, block_v {gdr_gpu_block_v(name, _pow2(dv))}) needs ~{need} B of "
                f"shared memory, over the {limit} B per-block limit; use implementation='chunked' or "
                f"smaller blocks in pallas_kernels/block_sizes.py")


def conv_time_block(backend: str, t: int) -> int:
    """Time block of the dynamic-conv kernel: the default, or t rounded up to 8 if shorter."""
    tb = CONV_TIME_BLOCK[backend]
    return tb if t >= tb else max(8, -(-t // 8) * 8)


def conv_channel_block(backend: str, c: int) -> int:
    """Channel block of the dynamic-conv kernel: 128 lanes when it divides c, else c."""
    cb = CONV_CHANNEL_BLOCK[backend]
    return cb if c % cb == 0 else c
