"""Evaluation: metrics with patient-level bootstrap intervals, breakdowns, reports, batch inference."""
