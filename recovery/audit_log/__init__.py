"""`/audit`: who did what and when in the organization, for its admins; filterable, exportable to CSV."""
