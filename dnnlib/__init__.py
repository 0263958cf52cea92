"""Small utilities shared by every part of the toolkit."""

from . import util
from .util import EasyDict

__all__ = ["EasyDict", "util"]
