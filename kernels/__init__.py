"""Triton kernels of wmpo's fused ops, one op per module (shipped in the wheel as wmpo.kernels).

Each module has the @triton.jit kernel(s) and a launcher taking torch tensors. Import the modules
lazily: importing this package does not import triton.
"""
