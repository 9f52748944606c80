"""Project recipes for verl (PAPO)."""
