"""Frozen backbone features computed once per frame and cached (issue 5)."""
