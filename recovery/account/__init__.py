"""`/account`: the signed-in staff member's own name and password."""
