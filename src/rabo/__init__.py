"""rabo."""
