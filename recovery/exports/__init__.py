"""CSV exports of the dashboard's lists: transactions, recoveries and the outbox."""
