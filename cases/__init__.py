"""Ready-to-run experiment cases (TOML), one per published setting; list them with ``enff cases``."""
