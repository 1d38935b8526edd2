"""dali-dist: distributed training of DALI (Decomposed Adversarial Learned Inference)."""

__version__ = "0.1.0"
