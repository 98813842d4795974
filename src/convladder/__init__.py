"""convladder: design compact CNNs under a parameter budget, one change at a time."""

__version__ = "0.1.0"
