"""Triton kernels of gradsurg (installed as ``gradsurg.kernels``)."""
