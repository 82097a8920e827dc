"""hq: a job manager for Unix clusters that needs no administrator rights."""

__version__ = "0.1.0"
