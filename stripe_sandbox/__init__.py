"""A fake Stripe: the API subset the app uses, hosted Checkout pages, signed webhooks, fault injection.

Independent of the main app (stdlib, Flask and werkzeug only). Run it with
`python -m stripe_sandbox`; configure it with the `SANDBOX_*` variables in
`config.py`.
"""
