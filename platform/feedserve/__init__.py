"""feedserve: a disaggregated inference platform for feed recommendation."""

__version__ = "0.1.0"
