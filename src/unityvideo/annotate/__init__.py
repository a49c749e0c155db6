"""Annotate plain RGB videos with teacher models for the five modalities."""
