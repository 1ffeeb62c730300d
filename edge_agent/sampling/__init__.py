"""Sampling: when each collector is read (policies, their rules, the load and baseline signals)."""
