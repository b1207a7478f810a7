"""Triton kernels of gradsurg (installed as ``gradsurg.kernels``): a pure layer.

Kernels and launchers on plain tensors and scalars; nothing here imports
``gradsurg``. ``tiles`` holds the ``@triton.jit`` helpers every kernel shares,
``fused`` the small-d kernels, ``chunked`` the kernel of the large-d path,
``launch`` the choice of path and tiles and the launchers, ``inspect`` the
ahead-of-time compilation report (``python -m gradsurg.kernels.inspect``).
See docs/kernels.md.
"""
