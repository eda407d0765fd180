"""Deployment helpers: render and validate the Helm chart offline, and the image healthcheck."""
