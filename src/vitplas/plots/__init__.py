"""Figures. Every figure reads tidy tables (pandas DataFrames) only, never run folders or models."""
