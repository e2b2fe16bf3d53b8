"""Rules: which campaign each failure gets, chosen by why it failed, previewed before it runs."""
