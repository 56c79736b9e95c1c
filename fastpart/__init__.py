"""fastpart: fast, tested Pixel-reweighted Adversarial Training (PART) and its baselines."""

__version__ = "0.1.0"
