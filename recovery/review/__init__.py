"""The review queue: transactions a rule or a campaign's end put aside for staff to approve or dismiss."""
