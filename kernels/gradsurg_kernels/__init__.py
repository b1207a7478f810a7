"""Triton kernels of gradsurg: a pure layer, the package ``gradsurg_kernels``.

Its source lives in the repository's top-level ``kernels/`` folder, which is a source root (like
``src/``), not a package: a ``kernels/__init__.py`` there would shadow Hugging Face's ``kernels``
distribution (which transformers imports) whenever the repository root is on ``sys.path``.

Kernels and launchers on plain tensors and scalars; nothing here imports
``gradsurg``. ``tiles`` holds the ``@triton.jit`` helpers every kernel shares,
``fused`` the small-d kernels, ``chunked`` the kernel of the large-d path,
``launch`` the choice of path and tiles and the launchers, ``inspect`` the
ahead-of-time compilation report (``python -m gradsurg_kernels.inspect``).
See docs/kernels.md.
"""
