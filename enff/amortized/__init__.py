"""Learned amortized posteriors trained by flow matching (FMPE, FMCPE)."""

__all__: list[str] = []
