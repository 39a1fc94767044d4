"""Containers: models built from layers."""
from .sequential import Sequential

__all__ = ["Sequential"]
