"""Metric implementations; each names the protocol it follows (DESIGN.md section 2)."""
