"""Serving: load @champion models, score customers, place them in the portfolio."""
