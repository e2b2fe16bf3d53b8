"""Recoveries: attempts that message a customer on a schedule until they pay."""
