"""`aavs estimate`: what an experiment will cost before it runs (sheet.py has the formulas)."""
