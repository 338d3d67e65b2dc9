"""Metrics, traces and error reports: set up once, from settings."""
