"""Shared mathematics: pure torch, importable from any layer of the package."""
