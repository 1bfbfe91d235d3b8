"""Checks of the deployment files (docker/, docker/k8s/, docs/fleet.md), no Docker needed."""
