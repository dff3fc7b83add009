"""The end-to-end harness: a Kubernetes API double and simulated cluster parts for cdmo's tests."""
