"""The GEMM-family cases of bench/peers.py's ops section, as plain data every worker reads the
same way (stdlib only: the tvmfront, numpy and PyTorch workers import it).

A case: {"kind": "gemm", "n": N} is the square A B of size N; "m", "k" give other sizes (an
[M, K] x [K, N] product), "form" the transposed forms that gradients use, "batch" a batched
product (attention's [B, M, K] x [B, K, N]):

- "A B": [M, K] @ [K, N] (matmul; a Linear layer's d/dx)
- "A B^T": [M, K] @ [N, K]^T (dense: a Linear layer's forward; matmul's d/da)
- "A^T B": [K, M]^T @ [K, N] (a Linear layer's d/dw; matmul's d/db)
"""

FORMS = ("A B", "A B^T", "A^T B")


def gemm_dims(case):
    """(batch or None, M, K, N, form) of a GEMM case."""
    n = case["n"]
    form = case.get("form", "A B")
    if form not in FORMS:
        raise ValueError(f"unknown GEMM form {form!r} (one of {', '.join(FORMS)})")
    if case.get("batch") and form != "A B":
        raise ValueError("batched GEMM cases are A B only")
    return case.get("batch"), case.get("m", n), case.get("k", n), n, form


def gemm_shapes(case):
    """The shapes of the two operands as the form stores them."""
    batch, m, k, n, form = gemm_dims(case)
    a = (k, m) if form == "A^T B" else (m, k)
    b = (n, k) if form == "A B^T" else (k, n)
    lead = (batch,) if batch else ()
    return lead + a, lead + b


def gemm_apply(case, a, b):
    """The case's product of two arrays (numpy or torch: 2-D .T, @)."""
    form = gemm_dims(case)[4]
    if form == "A B^T":
        return a @ b.T
    if form == "A^T B":
        return a.T @ b
    return a @ b


def gemm_flops(case):
    batch, m, k, n, _ = gemm_dims(case)
    return 2.0 * (batch or 1) * m * k * n
