"""Campaigns: what a recovery does, step by step (messages, card retries, staff alerts), in versions."""
