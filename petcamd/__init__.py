"""petcamd: a private-by-construction Raspberry Pi pet camera daemon."""

__version__ = "0.1.0"
