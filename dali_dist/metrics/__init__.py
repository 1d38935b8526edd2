"""Metric implementations; each names the protocol it follows (docs/design.md, 'Metric protocols')."""
