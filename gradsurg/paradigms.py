"""Presets: the paradigms of the five effective contrastive losses.

``paradigms.info_nce(temperature=0.05)``, ``paradigms.arccon(temperature=0.05,
margin=radians(10))``, ``paradigms.mpt(margin=0.23)``, ``paradigms.met(margin=0.45)``,
``paradigms.mat(margin=0.15*pi)``: defaults are the paper's.
"""
from .paradigm import arccon, info_nce, mat, met, mpt, siglip

__all__ = ["info_nce", "arccon", "mpt", "met", "mat", "siglip"]
