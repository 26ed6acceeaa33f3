"""Source Package Registry: keeps source-code packages of applications and modules."""

__version__ = "0.1.0"
