"""cityops — an open platform on which a Chinese city runs its daily operations."""

__version__ = "0.1.0"
