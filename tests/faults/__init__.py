"""Fault runs: real workers killed, Redis and SMTP stopped mid-work (issue 15)."""
