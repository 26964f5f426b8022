"""Airflow integration for Ray's Job API: a hook, and an operator that runs one Ray job per task."""
