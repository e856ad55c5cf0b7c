"""Prefect flows and deployments of the m3ret pipeline: thin tasks around m3ret functions."""
