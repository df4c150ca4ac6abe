"""Shared maths, usable from every layer: pure torch, no compute back end."""
