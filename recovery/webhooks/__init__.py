"""Stripe webhooks: receive, store, process, replay, sweep and reconcile (docs/webhooks.md)."""
