"""Tooling over the core and the API: benchmark and its peers, projections, distillation, demo models."""
